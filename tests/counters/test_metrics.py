from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.upstreams import LABELS

from routeproxy.counters.metrics import LATENCY_BUCKETS_S, SERIES, Metrics
from routeproxy.counters.stats import Outcome, status_class
from routeproxy.routing.classify import Complexity
from routeproxy.settings import Tier


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value, parsed back from the text /metrics serves."""
    body, _ = metrics.render()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics)[name, frozenset(labels.items())]


def outcome(tier: Tier = Tier.SMALL, complexity: Complexity | None = Complexity.SIMPLE, **changes: object) -> Outcome:
    fields: dict[str, object] = {"status": 200, "latency_ms": 2500.0, "ttfb_ms": None, "stream": False}
    fields.update(changes)
    return Outcome(tier=tier, complexity=complexity, **fields)  # type: ignore[arg-type]


def test_requests_are_counted_by_tier_complexity_and_status_class() -> None:
    metrics = Metrics(LABELS)
    metrics.observe(outcome(Tier.SMALL, Complexity.SIMPLE), overhead_s=0.0003, classify_s=0.00002)
    metrics.observe(outcome(Tier.SMALL, Complexity.SIMPLE), overhead_s=0.0003, classify_s=0.00002)
    metrics.observe(outcome(Tier.LARGE, Complexity.COMPLEX, status=502), overhead_s=0.0003, classify_s=0.00002)
    metrics.observe(outcome(Tier.LARGE, None), overhead_s=0.0001, classify_s=None)
    metrics.observe(outcome(Tier.SMALL, Complexity.MEDIUM, status=0), overhead_s=None, classify_s=None)

    assert value(metrics, "routeproxy_requests_total", tier="3b", complexity="simple", status="2xx") == 2
    assert value(metrics, "routeproxy_requests_total", tier="8b", complexity="complex", status="5xx") == 1
    assert value(metrics, "routeproxy_requests_total", tier="8b", complexity="pinned", status="2xx") == 1
    assert value(metrics, "routeproxy_requests_total", tier="3b", complexity="medium", status="none") == 1
    assert value(metrics, "routeproxy_requests_total", tier="3b", complexity="complex", status="2xx") == 0
    assert value(metrics, "routeproxy_proxy_overhead_seconds_count") == 4
    assert value(metrics, "routeproxy_classify_seconds_count") == 3


def test_every_label_combination_exists_before_the_first_request() -> None:
    found = samples(Metrics(LABELS))
    requests = [labels for name, labels in found if name == "routeproxy_requests_total"]
    assert len(requests) == 2 * 4 * 6  # tiers x complexity slots x status classes
    tiers = {dict(labels)["tier"] for labels in requests}
    assert tiers == {"3b", "8b"}
    assert {dict(labels)["complexity"] for labels in requests} == {"simple", "medium", "complex", "pinned"}


def test_latency_and_ttfb_land_in_the_right_buckets() -> None:
    metrics = Metrics(LABELS)
    metrics.observe(outcome(Tier.LARGE, latency_ms=4400.0, ttfb_ms=320.0, stream=True), overhead_s=0, classify_s=0)
    metrics.observe(outcome(Tier.LARGE, latency_ms=200_000.0), overhead_s=0, classify_s=0)

    assert value(metrics, "routeproxy_upstream_latency_seconds_bucket", tier="8b", le="4.0") == 0
    assert value(metrics, "routeproxy_upstream_latency_seconds_bucket", tier="8b", le="4.5") == 1
    assert value(metrics, "routeproxy_upstream_latency_seconds_bucket", tier="8b", le="120.0") == 1
    assert value(metrics, "routeproxy_upstream_latency_seconds_bucket", tier="8b", le="+Inf") == 2
    assert value(metrics, "routeproxy_upstream_latency_seconds_sum", tier="8b") == pytest.approx(204.4)
    assert value(metrics, "routeproxy_upstream_latency_seconds_count", tier="3b") == 0
    assert value(metrics, "routeproxy_ttfb_seconds_bucket", tier="8b", le="0.3") == 0
    assert value(metrics, "routeproxy_ttfb_seconds_bucket", tier="8b", le="0.5") == 1
    assert value(metrics, "routeproxy_ttfb_seconds_count", tier="8b") == 1


def test_latency_histogram_tells_a_quick_error_from_a_long_generation() -> None:
    metrics = Metrics(LABELS)
    metrics.observe(outcome(latency_ms=30.0, status=502), overhead_s=None, classify_s=None)  # refused at once
    metrics.observe(outcome(latency_ms=100_000.0), overhead_s=None, classify_s=None)  # 100 s of 8B output
    buckets = {
        float(dict(labels)["le"]): count
        for (name, labels), count in samples(metrics).items()
        if name == "routeproxy_upstream_latency_seconds_bucket" and dict(labels)["tier"] == "3b"
    }
    cumulative = [buckets[bound] for bound in LATENCY_BUCKETS_S]  # the finite bounds, lowest first
    assert cumulative[0] == 1  # the quick error alone in the lowest bucket
    assert cumulative[-1] == 2  # the long generation in a finite bucket, not only in +Inf
    assert cumulative[-2] == 1  # ... and told apart from the bucket below it


def test_errors_fallbacks_disconnects_and_tokens_are_counted_per_tier() -> None:
    metrics = Metrics(LABELS)
    metrics.observe(outcome(Tier.SMALL, upstream_error=True, status=504), overhead_s=None, classify_s=None)
    metrics.observe(outcome(Tier.LARGE, fallback=True), overhead_s=None, classify_s=None)
    metrics.observe(outcome(Tier.LARGE, disconnected=True, status=0), overhead_s=None, classify_s=None)
    metrics.observe(outcome(Tier.LARGE, classify_failed=True), overhead_s=None, classify_s=None)
    metrics.observe(outcome(Tier.SMALL, prompt_tokens=40, completion_tokens=200), overhead_s=None, classify_s=None)

    assert value(metrics, "routeproxy_upstream_errors_total", tier="3b") == 1
    assert value(metrics, "routeproxy_upstream_errors_total", tier="8b") == 0
    assert value(metrics, "routeproxy_fallbacks_total", tier="8b") == 1
    assert value(metrics, "routeproxy_disconnects_total", tier="8b") == 1
    assert value(metrics, "routeproxy_classify_failures_total", tier="8b") == 1
    assert value(metrics, "routeproxy_tokens_total", tier="3b", type="prompt") == 40
    assert value(metrics, "routeproxy_tokens_total", tier="3b", type="completion") == 200


def test_rejections_are_counted_by_status_code() -> None:
    metrics = Metrics(LABELS)
    metrics.rejected(400)
    metrics.rejected(400)
    metrics.rejected(413)

    assert value(metrics, "routeproxy_rejected_total", status="400") == 2
    assert value(metrics, "routeproxy_rejected_total", status="413") == 1


def test_inflight_gauge_is_what_the_app_reports() -> None:
    metrics = Metrics(LABELS)
    metrics.set_inflight(3)
    assert value(metrics, "routeproxy_inflight_requests") == 3
    metrics.set_inflight(0)
    assert value(metrics, "routeproxy_inflight_requests") == 0


def test_runtime_redis_and_flush_gauges() -> None:
    metrics = Metrics(LABELS)
    metrics.set_runtime(ab_test_ratio=0.3, routing_enabled=True)
    metrics.set_counter_store(failures=1, flush_lag_s=0.5)
    metrics.set_counter_store(failures=2, flush_lag_s=1.5)

    assert value(metrics, "routeproxy_ab_test_ratio") == 0.3
    assert value(metrics, "routeproxy_routing_enabled") == 1
    assert value(metrics, "routeproxy_redis_errors_total") == 2
    assert value(metrics, "routeproxy_redis_flush_lag_seconds") == 1.5
    metrics.set_runtime(ab_test_ratio=0.5, routing_enabled=False)
    assert value(metrics, "routeproxy_routing_enabled") == 0


def test_two_instances_keep_separate_series() -> None:
    first, second = Metrics(LABELS), Metrics(LABELS)
    first.set_counter_store(failures=1, flush_lag_s=0.0)

    assert value(first, "routeproxy_redis_errors_total") == 1
    assert value(second, "routeproxy_redis_errors_total") == 0


def test_render_serves_the_prometheus_text_format_with_every_declared_series() -> None:
    metrics = Metrics(LABELS)
    body, content_type = metrics.render()

    assert content_type.startswith("text/plain; version=0.0.4")
    names = {family.name for family in text_string_to_metric_families(body.decode())}
    # The parser reports counters without their _total suffix.
    assert {name.removesuffix("_total") for name in SERIES} <= names


@pytest.mark.parametrize(
    ("status", "expected"), [(0, "none"), (200, "2xx"), (404, "4xx"), (503, "5xx"), (99, "none"), (600, "none")]
)
def test_status_class(status: int, expected: str) -> None:
    assert status_class(status) == expected
