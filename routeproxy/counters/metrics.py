"""The Prometheus series served on ``GET /metrics``.

Each ``Metrics`` owns its own ``CollectorRegistry`` (never prometheus_client's global one), so several apps in
one process, as in the tests, keep separate series. With ``--workers N`` the workers share their series through
prometheus_client's multiprocess mode (``routeproxy serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh
directory before the workers start): a scrape that reaches any worker answers the sum over all of them, the
in-flight gauge is kept on the request path (summed over live workers), and the gauges read from the shared
state (runtime config, quality, rollout) show the last value set.

``observe`` is on the request path. Every labelled child is resolved once, at construction, into plain dicts,
so a call is a few dict look-ups and lock-protected float additions, and every series exists (at zero) from the
first scrape, which keeps ``rate()`` and ``histogram_quantile()`` in Grafana free of gaps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from routeproxy.counters.cascade_metrics import CascadeSeries
from routeproxy.counters.stats import BUCKETS_MS, PINNED, STATUS_CLASSES, Outcome, status_class
from routeproxy.routing.classify import Complexity
from routeproxy.settings import Tier

PREFIX = "routeproxy"
# The classic text format every Prometheus reads; prometheus_client 0.26 labels its output 1.0.0 by default,
# which is the same text for names like ours (no characters that need escaping).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The stats histograms' bounds (50 ms .. 120 s), so /metrics and /v1/model-routing/stats bucket alike.
LATENCY_BUCKETS_S: tuple[float, ...] = tuple(bound / 1000 for bound in BUCKETS_MS)
OVERHEAD_BUCKETS_S: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
)  # fmt: skip
# A typical prompt classifies in about 20 us; a 1 MB message in about 1.4 ms.
CLASSIFY_BUCKETS_S: tuple[float, ...] = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
)  # fmt: skip

# Every series name /metrics exposes (histograms add _bucket, _sum and _count; counters _total).
SERIES: tuple[str, ...] = tuple(
    f"{PREFIX}_{name}"
    for name in (
        "requests_total",
        "rejected_total",
        "upstream_latency_seconds",
        "ttfb_seconds",
        "proxy_overhead_seconds",
        "classify_seconds",
        "upstream_errors_total",
        "fallbacks_total",
        "disconnects_total",
        "classify_failures_total",
        "tokens_total",
        "redis_errors_total",
        "redis_flush_lag_seconds",
        "inflight_requests",
        "ab_test_ratio",
        "routing_enabled",
        "feedback_total",
        "feedback_rejected_total",
        "quality_mean_score",
        "quality_feedback_events",
        "quality_degradation_ratio",
        "quality_verdict",
        "rollout_step",
        "rollout_paused",
        "cascade_checked_total",
        "cascade_escalations_total",
        "cascade_escalation_failures_total",
        "cascade_small_seconds_total",
        "cascade_small_tokens_total",
        "cascade_added_latency_seconds",
        "cascade_hold_seconds",
        "cascade_mode",
        "cascade_explored_total",
        "cascade_signal_calls_total",
        "cascade_signal_seconds",
    )
)
VERDICTS: tuple[str, ...] = ("pass", "review", "rollback", "insufficient_data")
FEEDBACK_KINDS: tuple[str, ...] = ("thumbs", "score")
FEEDBACK_REJECTIONS: tuple[str, ...] = ("invalid", "unknown_id", "unauthorized", "store_full", "other_key")

REJECT_STATUSES: tuple[int, ...] = (400, 401, 403, 404, 413, 415, 429, 503)

_SLOTS: dict[Complexity | None, str] = {**{c: c.value for c in Complexity}, None: PINNED}


class Metrics:
    """The proxy's Prometheus series, in a registry of their own."""

    def __init__(self, labels: Mapping[Tier, str], *, multiprocess_workers: bool = False) -> None:
        """``labels`` names the tiers in every series (``Settings.tier_labels``); ``multiprocess_workers``: the
        series are shared by several worker processes (see the module docstring)."""
        self.multiprocess_workers = multiprocess_workers
        # No `_created` series (one per counter and histogram child: 151 of them): Prometheus does not read them
        # from the text format. The switch is prometheus_client's, process-wide, and read at every scrape.
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry

        requests = Counter(
            f"{PREFIX}_requests",
            "Finished proxied requests, by tier, complexity (pinned = named a tier's model) and status class "
            "(none = the client left before the response started).",
            ["tier", "complexity", "status"],
            registry=registry,
        )
        self._requests = {
            (tier, complexity, status): requests.labels(labels[tier], slot, status)
            for tier in Tier
            for complexity, slot in _SLOTS.items()
            for status in STATUS_CLASSES
        }
        self._rejected = Counter(
            f"{PREFIX}_rejected",
            "Requests the proxy refused before routing (bad request, unknown model, too large...), by status code.",
            ["status"],
            registry=registry,
        )
        # The proxy's own refusals (errors.py), present at zero from the start; any other status is added on use.
        self._rejected_by_status = {status: self._rejected.labels(str(status)) for status in REJECT_STATUSES}

        latency = Histogram(
            f"{PREFIX}_upstream_latency_seconds",
            "Request start to last byte relayed, by tier.",
            ["tier"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        ttfb = Histogram(
            f"{PREFIX}_ttfb_seconds",
            "Streams: request start to the first body byte from the upstream, by tier.",
            ["tier"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self._latency = {tier: latency.labels(labels[tier]) for tier in Tier}
        self._ttfb = {tier: ttfb.labels(labels[tier]) for tier in Tier}
        self._overhead = Histogram(
            f"{PREFIX}_proxy_overhead_seconds",
            "Time spent in the proxy before the upstream request was sent.",
            buckets=OVERHEAD_BUCKETS_S,
            registry=registry,
        )
        self._classify = Histogram(
            f"{PREFIX}_classify_seconds",
            "Time to classify a prompt (requests pinned by model id are not classified).",
            buckets=CLASSIFY_BUCKETS_S,
            registry=registry,
        )

        def per_tier(name: str, help_text: str) -> dict[Tier, Counter]:
            counter = Counter(f"{PREFIX}_{name}", help_text, ["tier"], registry=registry)
            return {tier: counter.labels(labels[tier]) for tier in Tier}

        self._errors = per_tier("upstream_errors", "Upstream failures (refused, timeout, 5xx, broken stream).")
        self._fallbacks = per_tier("fallbacks", "Requests retried on the other tier, under the tier that answered.")
        self._disconnects = per_tier("disconnects", "Clients that went away before the end of the response.")
        self._classify_failures = per_tier("classify_failures", "Requests whose classification raised.")
        tokens = Counter(
            f"{PREFIX}_tokens",
            "Tokens the upstream reported in its usage, by tier and type (prompt, completion).",
            ["tier", "type"],
            registry=registry,
        )
        self._prompt_tokens = {tier: tokens.labels(labels[tier], "prompt") for tier in Tier}
        self._completion_tokens = {tier: tokens.labels(labels[tier], "completion") for tier in Tier}

        self._redis_failures_seen = 0
        self._redis_errors = Counter(
            f"{PREFIX}_redis_errors", "Failed calls to the shared counter store.", registry=registry
        )
        self._flush_lag = Gauge(
            f"{PREFIX}_redis_flush_lag_seconds",
            "Seconds since this process's counters last reached the shared store (0 when in memory).",
            registry=registry,
            multiprocess_mode="max",
        )
        self._inflight = Gauge(
            f"{PREFIX}_inflight_requests",
            "Proxied requests in progress in this process.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._ab_test_ratio = Gauge(
            f"{PREFIX}_ab_test_ratio",
            "Share of MEDIUM queries sent to the small tier, in force now.",
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self._routing_enabled = Gauge(
            f"{PREFIX}_routing_enabled",
            "1 when auto requests are routed by complexity, else 0.",
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self._cascade = CascadeSeries(registry, PREFIX, LATENCY_BUCKETS_S, _SLOTS.values())

        feedback = Counter(
            f"{PREFIX}_feedback",
            "Feedback accepted by this process, by the tier and complexity of the request it rates and its kind.",
            ["tier", "complexity", "kind"],
            registry=registry,
        )
        self._feedback = {
            (labels[tier], slot, kind): feedback.labels(labels[tier], slot, kind)
            for tier in Tier
            for slot in _SLOTS.values()
            for kind in FEEDBACK_KINDS
        }
        rejected = Counter(
            f"{PREFIX}_feedback_rejected", "Feedback this process refused, by reason.", ["reason"], registry=registry
        )
        self._feedback_rejected = {reason: rejected.labels(reason) for reason in FEEDBACK_REJECTIONS}
        mean = Gauge(
            f"{PREFIX}_quality_mean_score",
            "Mean feedback score on MEDIUM queries in the current A/B period, by tier (shared totals; NaN = none).",
            ["tier"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        count = Gauge(
            f"{PREFIX}_quality_feedback_events",
            "Feedback events on MEDIUM queries in the current A/B period, by tier (shared totals).",
            ["tier"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self._quality_mean = {labels[tier]: mean.labels(labels[tier]) for tier in Tier}
        self._quality_count = {labels[tier]: count.labels(labels[tier]) for tier in Tier}
        degradation = Gauge(
            f"{PREFIX}_quality_degradation_ratio",
            "Relative degradation of 3B against 8B on MEDIUM queries: the estimate and its 95 % bounds, valid at every "
            "look (NaN = none).",
            ["bound"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self._degradation = {bound: degradation.labels(bound) for bound in ("point", "low", "high")}
        verdict = Gauge(
            f"{PREFIX}_quality_verdict",
            "1 for the A/B verdict in force, 0 for the others.",
            ["verdict"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self._verdict = {name: verdict.labels(name) for name in VERDICTS}
        self._rollout_step = Gauge(
            f"{PREFIX}_rollout_step",
            "The rollout controller's step index (-1 = ratio 0; NaN = controller off).",
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self._rollout_paused = Gauge(
            f"{PREFIX}_rollout_paused",
            "1 while the rollout controller is paused.",
            registry=registry,
            multiprocess_mode="mostrecent",
        )

    def observe(self, outcome: Outcome, *, overhead_s: float | None, classify_s: float | None) -> None:
        """Count one finished proxied request."""
        tier = outcome.tier
        self._requests[tier, outcome.complexity, status_class(outcome.status)].inc()
        self._latency[tier].observe(max(0.0, outcome.latency_ms) / 1000)
        if outcome.ttfb_ms is not None:
            self._ttfb[tier].observe(max(0.0, outcome.ttfb_ms) / 1000)
        if overhead_s is not None:
            self._overhead.observe(overhead_s)
        if classify_s is not None:
            self._classify.observe(classify_s)
        if outcome.upstream_error:
            self._errors[tier].inc()
        if outcome.fallback:
            self._fallbacks[tier].inc()
        if outcome.disconnected:
            self._disconnects[tier].inc()
        if outcome.classify_failed:
            self._classify_failures[tier].inc()
        if outcome.prompt_tokens:
            self._prompt_tokens[tier].inc(outcome.prompt_tokens)
        if outcome.completion_tokens:
            self._completion_tokens[tier].inc(outcome.completion_tokens)
        if outcome.cascade is not None:
            self._cascade.observe(outcome.cascade, _SLOTS[outcome.complexity])

    def rejected(self, status: int) -> None:
        """Count a request the proxy refused before routing (its own 4xx)."""
        child = self._rejected_by_status.get(status)
        if child is None:
            child = self._rejected_by_status[status] = self._rejected.labels(str(status))
        child.inc()

    @property
    def shared_inflight(self) -> Gauge | None:
        """With several workers, the gauge the request path moves itself (a scrape sees only its own worker)."""
        return self._inflight if self.multiprocess_workers else None

    def set_inflight(self, requests: int) -> None:
        """Set at scrape time from the app's own in-flight count (the request path keeps just that one)."""
        if not self.multiprocess_workers:
            self._inflight.set(requests)

    def set_runtime(self, *, ab_test_ratio: float, routing_enabled: bool, cascade: bool = False) -> None:
        self._ab_test_ratio.set(ab_test_ratio)
        self._routing_enabled.set(1 if routing_enabled else 0)
        self._cascade.mode.set(1 if cascade else 0)

    def set_counter_store(self, *, failures: int, flush_lag_s: float) -> None:
        """Pulled from the counter store at scrape time: its failure total (since start) and flush lag."""
        if failures > self._redis_failures_seen:
            self._redis_errors.inc(failures - self._redis_failures_seen)
            self._redis_failures_seen = failures
        self._flush_lag.set(flush_lag_s)

    def feedback(self, tier: str, complexity: str, kind: str) -> None:
        child = self._feedback.get((tier, complexity, kind))
        if child is not None:
            child.inc()

    def feedback_rejected(self, reason: str) -> None:
        self._feedback_rejected[reason].inc()

    def set_quality(
        self,
        *,
        means: dict[str, float | None],
        counts: dict[str, int],
        degradation: tuple[float, float, float] | None,
        verdict: str,
    ) -> None:
        """Pulled from the shared totals at scrape time."""
        for tier, gauge in self._quality_mean.items():
            value = means.get(tier)
            gauge.set(math.nan if value is None else value)
            self._quality_count[tier].set(counts.get(tier, 0))
        for bound, value in zip(("point", "low", "high"), degradation or (math.nan,) * 3, strict=True):
            self._degradation[bound].set(value)
        for name, gauge in self._verdict.items():
            gauge.set(1 if name == verdict else 0)

    def set_rollout(self, *, step: int | None, paused: bool) -> None:
        self._rollout_step.set(math.nan if step is None else step)
        self._rollout_paused.set(1 if paused else 0)

    def render(self) -> tuple[bytes, str]:
        """The body and content type of ``GET /metrics`` (Prometheus text format 0.0.4)."""
        if not self.multiprocess_workers:
            return generate_latest(self.registry), CONTENT_TYPE
        registry = CollectorRegistry()
        # Every worker's values, from the files in PROMETHEUS_MULTIPROC_DIR.
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE
