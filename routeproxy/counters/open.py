"""Which counter store a replica uses: Redis when ``REDIS_URL`` is set, else memory."""

from __future__ import annotations

from collections.abc import Mapping

from routeproxy.counters.memory import MemoryCounterStore
from routeproxy.counters.store import CounterStore
from routeproxy.settings import CounterConfig, Tier


def open_store(
    config: CounterConfig,
    labels: Mapping[Tier, str],
    *,
    replica_id: str | None = None,
    flush_interval: float = 0.5,
    about: Mapping[str, object] | None = None,
) -> CounterStore:
    """The Redis store when ``config.redis_url`` is set, else the in-memory one. No I/O until start().

    ``about``: what a serving replica publishes about itself in the shared store (its own routing settings,
    which ``routeproxy stats`` reports where the shared runtime config leaves them unset)."""
    if config.redis_url is None:
        return MemoryCounterStore(labels, replica_id=replica_id, flush_interval=flush_interval)
    # Imported here: a proxy without Redis never loads the Redis client.
    from routeproxy.counters.redis_store import RedisCounterStore

    return RedisCounterStore(
        config.redis_url, config.namespace, labels, replica_id=replica_id, flush_interval=flush_interval, about=about
    )
