"""The quality stores a replica uses: in Redis when ``REDIS_URL`` is set (shared by every replica, kept across
restarts), else in this process. The Redis client is imported only when Redis is configured."""

from __future__ import annotations

import time
from collections.abc import Callable

from routeproxy.counters.store import CounterStore
from routeproxy.quality.analysis import analyse, thresholds_of
from routeproxy.quality.controller import MemoryRolloutStore, RolloutController, RolloutStore, policy_of
from routeproxy.quality.decisions import DecisionStore, MemoryDecisionStore
from routeproxy.settings import Settings


def open_decisions(settings: Settings, counters: CounterStore) -> DecisionStore:
    """Redis when ``counters.redis_url`` is set (every replica finds every decision), else this process's map."""
    quality = settings.quality
    if settings.counters.redis_url is None:
        return MemoryDecisionStore(
            counters,
            ttl_s=quality.decision_ttl_s,
            regeneration_window_s=quality.regeneration_window_s,
            max_entries=quality.max_remembered,
        )
    from routeproxy.quality.redis_decisions import RedisDecisionStore  # the Redis client only when Redis is configured

    return RedisDecisionStore(
        counters,
        settings.counters.redis_url,
        settings.counters.namespace,
        ttl_s=quality.decision_ttl_s,
        regeneration_window_s=quality.regeneration_window_s,
        flush_interval=counters.flush_interval,
        max_pending=quality.max_remembered,
        max_queued=quality.max_queued_feedback,
    )


def open_rollout(
    settings: Settings, counters: CounterStore, clock: Callable[[], float] = time.time
) -> RolloutController:
    """The controller, its state in Redis when ``counters.redis_url`` is set (shared, kept across restarts, timed by
    Redis's clock); else in this process, timed by ``clock``."""
    redis_url = settings.counters.redis_url
    store: RolloutStore
    if redis_url is None:
        store = MemoryRolloutStore(counters, clock)
    else:
        from routeproxy.quality.redis_rollout import RedisRolloutStore

        store = RedisRolloutStore(redis_url, settings.counters.namespace)
    thresholds = thresholds_of(settings.quality)
    uses_implicit = settings.quality.verdict_uses_implicit
    labels = settings.tier_labels
    return RolloutController(
        policy_of(settings),
        store,
        counters,
        lambda snapshot: analyse(snapshot, thresholds, labels, uses_implicit=uses_implicit),
        enabled=settings.routing.rollout.enabled,
        interval_s=settings.routing.rollout.interval_s,
    )
