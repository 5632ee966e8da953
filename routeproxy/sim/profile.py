"""What one simulated upstream is configured with (``SimProfile``), and the seed report's two tiers as profiles
(``seed_profile``). How the simulator paces and words its answers from these is in ``routeproxy.sim.simulator``."""

from __future__ import annotations

from dataclasses import dataclass

from routeproxy.settings import Tier
from routeproxy.sim.wire import Dialect


@dataclass(frozen=True, slots=True)
class SimProfile:
    model: str  # the served model name
    dialect: Dialect = Dialect.VLLM
    ttft_s: float = 0.3  # time to first token
    tokens_per_s: float = 50.0
    answer_tokens: int = 110  # tokens in a typical answer (max_tokens in the request caps it)
    speed: float = 1.0  # divides every delay; 1000 makes tests fast
    keepalive_s: float | None = None  # TGI-style ":\n\n" comment after this many idle seconds (TGI: 15)
    api_key: str | None = None  # when set, require Authorization: Bearer <key> (401 in the dialect's shape)
    weak_share: float = 0.0  # share of prompts answered with a short refusal (see routeproxy.sim.simulator)

    def __post_init__(self) -> None:
        if self.ttft_s < 0 or self.tokens_per_s <= 0 or self.speed <= 0 or self.answer_tokens < 0:
            raise ValueError("SimProfile needs ttft_s >= 0, tokens_per_s > 0, speed > 0 and answer_tokens >= 0")
        if not 0.0 <= self.weak_share <= 1.0:
            raise ValueError("SimProfile.weak_share must be from 0.0 to 1.0")
        if self.keepalive_s is not None and self.keepalive_s <= 0:
            raise ValueError("SimProfile.keepalive_s must be positive (or None for no keep-alive comments)")


def seed_profile(tier: Tier, model: str, *, speed: float = 1.0, dialect: Dialect = Dialect.VLLM) -> SimProfile:
    """The seed report's latencies for a typical 110-token answer: small 0.3 + 110/50 = 2.5 s,
    large 0.5 + 110/27.5 = 4.5 s. TGI dialects get TGI's 15 s keep-alive comments."""
    keepalive = 15.0 if dialect in (Dialect.TGI, Dialect.TGI_LEGACY) else None
    if tier is Tier.SMALL:
        return SimProfile(model, dialect, ttft_s=0.3, tokens_per_s=50.0, speed=speed, keepalive_s=keepalive)
    return SimProfile(model, dialect, ttft_s=0.5, tokens_per_s=27.5, speed=speed, keepalive_s=keepalive)
