"""Settings of the counters store and of the quality analysis (A/B verdict, feedback, remembered decisions)."""

from __future__ import annotations

from routeproxy.settings.declaration import (
    Setting,
    _bool,
    _int_in,
    _optional_seconds,
    _percent,
    _positive,
    _redis_url,
    _text,
)

COUNTER_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "counters.redis_url",
        "ROUTEPROXY_REDIS_URL",
        None,
        _redis_url,
        "Redis for counters shared by all replicas (redis://, rediss://, unix://); unset = in-memory.",
        aliases=("REDIS_URL",),
    ),
    Setting(
        "counters.namespace",
        "ROUTEPROXY_REDIS_NAMESPACE",
        "routeproxy",
        _text,
        "Prefix of every Redis key, so several deployments can share one Redis.",
    ),
    Setting(
        "counters.baseline_latency_ms",
        "ROUTEPROXY_BASELINE_LATENCY_MS",
        None,
        _optional_seconds,
        "Baseline of latency_improvement_pct in ms; unset (or 0) = measured: the large tier's average latency in "
        "the same period. A fixed number (4500, say) is reported as configured, not measured.",
    ),
)

QUALITY_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "quality.review_at_pct",
        "ROUTEPROXY_QUALITY_REVIEW_AT_PCT",
        5.0,
        _percent,
        "Degradation of 3B against 8B (%) from which the A/B verdict is `review` (below it: `pass`).",
    ),
    Setting(
        "quality.rollback_at_pct",
        "ROUTEPROXY_QUALITY_ROLLBACK_AT_PCT",
        10.0,
        _percent,
        "Degradation (%) above which the A/B verdict is `rollback`.",
    ),
    Setting(
        "quality.min_feedback_per_tier",
        "ROUTEPROXY_QUALITY_MIN_FEEDBACK",
        30,
        _int_in(2, 10_000_000),
        "Feedback events each tier needs on MEDIUM queries before there is any verdict.",
    ),
    Setting(
        "quality.verdict_uses_implicit",
        "ROUTEPROXY_QUALITY_VERDICT_USES_IMPLICIT",
        False,
        _bool,
        "Let the implicit signals (errors, clients leaving, regenerations) also decide the verdict (the worse wins).",
    ),
    Setting(
        "quality.decision_ttl_s",
        "ROUTEPROXY_DECISION_TTL_S",
        86400.0,
        _positive,
        "Seconds a request's routing decision is remembered for feedback (Redis TTL; in memory, the same).",
    ),
    Setting(
        "quality.max_remembered",
        "ROUTEPROXY_MAX_REMEMBERED",
        100_000,
        _int_in(100, 100_000_000),
        "Decisions kept in memory without Redis, and decisions waiting for Redis while it is down (oldest go).",
    ),
    Setting(
        "quality.max_queued_feedback",
        "ROUTEPROXY_MAX_QUEUED_FEEDBACK",
        10_000,
        _int_in(1, 10_000_000),
        "Feedback events kept while Redis is down; past it, feedback is refused with 503 (never dropped).",
    ),
    Setting(
        "quality.regeneration_window_s",
        "ROUTEPROXY_REGENERATION_WINDOW_S",
        120.0,
        _positive,
        "The same sticky key and query asked again within this many seconds counts as a regeneration.",
    ),
)
