"""Settings of the response cache (its own area: ``cache.*``)."""

from __future__ import annotations

from dataclasses import dataclass

from routeproxy.settings.declaration import Setting, _bool, _int_in, _one_of, _positive, _redis_url


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool = False
    redis_url: str | None = None  # None: the counters' Redis (REDIS_URL), or memory without one
    requests: str = "deterministic"  # or "all"
    multiple_choices: bool = False
    ttl_s: float = 3600.0
    max_entry_bytes: int = 1024 * 1024
    max_bytes: int = 64 * 1024 * 1024


CACHE_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "cache.enabled",
        "ROUTEPROXY_CACHE",
        False,
        _bool,
        "Answer repeated requests from a response cache (Redis when one is configured, else this process's memory).",
    ),
    Setting(
        "cache.redis_url",
        "ROUTEPROXY_CACHE_REDIS_URL",
        None,
        _redis_url,
        "Redis for the cache when it is not the counters' one; unset = REDIS_URL (and memory without it).",
    ),
    Setting(
        "cache.requests",
        "ROUTEPROXY_CACHE_REQUESTS",
        "deterministic",
        _one_of("deterministic", "all"),
        "Which requests are cached: `deterministic` (temperature 0, or a seed) or `all`.",
    ),
    Setting(
        "cache.multiple_choices",
        "ROUTEPROXY_CACHE_MULTIPLE_CHOICES",
        False,
        _bool,
        "Also cache requests asking for several choices (`n` above 1).",
    ),
    Setting(
        "cache.ttl_s",
        "ROUTEPROXY_CACHE_TTL_S",
        3600.0,
        _positive,
        "Seconds an answer is kept; a request may ask for less (`ttl=N`), never for more.",
    ),
    Setting(
        "cache.max_entry_bytes",
        "ROUTEPROXY_CACHE_MAX_ENTRY_BYTES",
        1024 * 1024,
        _int_in(1024, 1024**3),
        "Largest answer stored (bytes before compression); a larger one is relayed and not stored.",
    ),
    Setting(
        "cache.max_bytes",
        "ROUTEPROXY_CACHE_MAX_BYTES",
        64 * 1024 * 1024,
        _int_in(64 * 1024, 1024**4),
        "Bytes the cache may hold, in memory or in Redis; past it the least recently used answers go.",
    ),
)
