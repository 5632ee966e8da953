"""``check-config --probe``: ask each tier's upstream for its model list and say whether it serves the configured
model id, before the first request finds out with a 404.

The question goes through the proxy's own upstream client (``UpstreamPool``): the same key, TLS files and HTTP
proxy as serving, so a probe that passes is the hop the proxy will make. Each probe is bounded in time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from routeproxy.errors import UpstreamError
from routeproxy.settings import Settings, Tier, UpstreamKind
from routeproxy.settings.redaction import redacted_url
from routeproxy.settings.tier_config import TierConfig
from routeproxy.wire.upstream import UpstreamPool

PROBE_TIMEOUT_S = 10.0
_SHOWN_IDS = 10


@dataclass(frozen=True, slots=True)
class ProbeResult:
    tier: Tier
    ok: bool
    message: str


def probe_tiers(settings: Settings, *, out: Callable[[str], None]) -> int:
    """Probe every tier, write one line per tier; 0 when every tier serves its model, else 1."""
    results = asyncio.run(probe(settings))
    for result in results:
        out(f"{'ok' if result.ok else 'FAILED'} {result.message}")
    return 0 if all(result.ok for result in results) else 1


async def probe(settings: Settings) -> list[ProbeResult]:
    pool = UpstreamPool(settings.tiers, forward_client_auth=False)
    try:
        return [await _probe_tier(pool, tier, config) for tier, config in settings.tiers.items()]
    finally:
        await pool.aclose()


async def _probe_tier(pool: UpstreamPool, tier: Tier, config: TierConfig) -> ProbeResult:
    url = f"{redacted_url(config.base_url)}/models"
    where = f"{config.label}: GET {url}"
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            response = await pool.send(tier, b"", [], path="/models", method="GET")
            try:
                body = await response.read()
            finally:
                await response.aclose()
    except TimeoutError:
        return ProbeResult(tier, False, f"{where}: no answer within {PROBE_TIMEOUT_S:g} s")
    except UpstreamError as exc:
        return ProbeResult(tier, False, f"{where}: {exc.message}")
    status = response.status
    if status in (401, 403):
        key = f"the key from {config.api_key_env}" if config.api_key_env else f"tiers.{tier}.api_key"
        what = f"refused {key}" if config.api_key else f"wants a key (tiers.{tier}.api_key is unset)"
        return ProbeResult(tier, False, f"{where}: HTTP {status}: the upstream {what}")
    if status == 404:
        return ProbeResult(
            tier, False, f"{where}: HTTP 404: nothing serves the OpenAI API there; is tiers.{tier}.base_url right?"
        )
    if status != 200:
        return ProbeResult(tier, False, f"{where}: HTTP {status}")
    served = _model_ids(body)
    if served is None:
        return ProbeResult(tier, False, f"{where}: the answer is not an OpenAI model list")
    more = len(served) - _SHOWN_IDS
    shown = ", ".join(served[:_SHOWN_IDS]) + (f" and {more} more" if more > 0 else "")
    if config.kind is UpstreamKind.TGI:
        return ProbeResult(
            tier, True, f"{where}: serves {shown} (TGI answers whatever the model field says; it is sent as 'tgi')"
        )
    # The Hugging Face router takes org/repo with an optional :policy or :provider suffix.
    wanted = config.model.partition(":")[0] if config.kind is UpstreamKind.HF else config.model
    if wanted in served:
        return ProbeResult(tier, True, f"{where}: serves {config.model}")
    variable = f"ROUTEPROXY_{tier.upper()}_MODEL"
    return ProbeResult(
        tier,
        False,
        f"{where}: does not serve {config.model!r}; it serves {shown or 'nothing'}. Set tiers.{tier}.model "
        f"({variable}) to the served name (vLLM: --served-model-name)",
    )


def _model_ids(body: bytes) -> list[str] | None:
    try:
        listing = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        return None
    return [entry["id"] for entry in data if isinstance(entry, dict) and isinstance(entry.get("id"), str)]
