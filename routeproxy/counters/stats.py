"""What is counted per outcome, and the stats JSON built from the totals.

``outcome_fields`` turns one finished request into (field, increment) pairs; both counter stores add them
up under the same field names (the hash fields of ``KEY_LAYOUT_MARKDOWN`` in keys.py). ``render_stats``
turns totals into the seed's ``/v1/model-routing/stats`` JSON: its keys first, in its order, then extras.
Latency percentiles come from fixed-bucket histograms, so totals of several replicas add up exactly
(sum the bucket counts, then interpolate inside the bucket that holds the rank).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from routeproxy.counters.provenance import provenance
from routeproxy.routing.classify import Complexity
from routeproxy.settings import Tier
from routeproxy.wire.relay import CascadeOutcome

PINNED = "pinned"  # the complexity slot of requests pinned to a tier by model id
COMPLEXITY_SLOTS: tuple[str, ...] = (*(c.value for c in Complexity), PINNED)
# Upper bounds (ms) of the fixed histogram buckets; the last bucket ("inf") holds everything above.
BUCKETS_MS: tuple[int, ...] = (
    50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 2500, 3000, 3500,
    4000, 4500, 5000, 6000, 7500, 10000, 15000, 20000, 30000, 60000, 120000,
)  # fmt: skip
BUCKET_NAMES: tuple[str, ...] = (*(f"le_{bound}" for bound in BUCKETS_MS), "le_inf")
STATUS_CLASSES: tuple[str, ...] = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")


@dataclass(frozen=True, slots=True)
class Outcome:
    """One finished proxied request."""

    tier: Tier
    complexity: Complexity | None  # None when the request was pinned to a tier by model id
    status: int  # HTTP status the client got (0 if the client disconnected before headers)
    latency_ms: float  # request start -> last byte relayed
    ttfb_ms: float | None  # streams: request start -> first body byte from upstream
    stream: bool
    upstream_error: bool = False  # the upstream failed (refused / timeout / 5xx / broken stream)
    fallback: bool = False  # retried on the other tier
    classify_failed: bool = False
    disconnected: bool = False  # the client went away before the end
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cascade: CascadeOutcome | None = None  # cascade mode: the small answer was checked
    simulator_speed: float | None = None  # answered by routeproxy's simulator, this many times the design's pace
    routing_off: bool = False  # decided while routing was off (the large tier, whatever the prompt)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Counter totals of one A/B period, keyed by the field names of ``KEY_LAYOUT_MARKDOWN``."""

    counts: Mapping[str, int]
    period: int
    since: datetime | None
    replicas: tuple[str, ...]
    store: str
    stale: bool = False  # the shared store could not be read: these are this replica's own numbers

    def get(self, metric: str, *scope: str) -> int:
        return self.counts.get(":".join((metric, *scope)), 0)

    def histogram(self, metric: str, *scope: str) -> list[int]:
        """Per-bucket counts (not cumulative), one per ``BUCKET_NAMES`` entry."""
        return [self.counts.get(":".join((metric, *scope, name)), 0) for name in BUCKET_NAMES]


def _bucket(value_ms: float) -> str:
    return BUCKET_NAMES[bisect.bisect_left(BUCKETS_MS, value_ms)]


def status_class(status: int) -> str:
    """The status class ("2xx" ... "5xx"); "none" when the client left before getting one (status 0)."""
    return f"{status // 100}xx" if 100 <= status <= 599 else "none"


def outcome_fields(outcome: Outcome, labels: Mapping[Tier, str]) -> Iterable[tuple[str, int]]:
    """The (field, increment) pairs one outcome adds; ``labels`` names the tiers (``Settings.tier_labels``)."""
    tier = labels[outcome.tier]
    scopes = (tier, f"{tier}:{outcome.complexity.value if outcome.complexity else PINNED}")
    latency = max(0.0, outcome.latency_ms)
    bucket = _bucket(latency)
    for scope in scopes:
        yield f"requests:{scope}", 1
        yield f"latency_ms_sum:{scope}", round(latency)
        yield f"latency_ms_bucket:{scope}:{bucket}", 1
        if outcome.upstream_error:
            yield f"errors:{scope}", 1
        if outcome.fallback:
            yield f"fallbacks:{scope}", 1
        if outcome.disconnected:
            yield f"disconnects:{scope}", 1
    yield f"status:{tier}:{status_class(outcome.status)}", 1
    if outcome.stream:
        yield f"streams:{tier}", 1
        if outcome.ttfb_ms is not None:
            ttfb = max(0.0, outcome.ttfb_ms)
            yield f"ttfb_ms_sum:{tier}", round(ttfb)
            yield f"ttfb_ms_count:{tier}", 1
            yield f"ttfb_ms_bucket:{tier}:{_bucket(ttfb)}", 1
    if outcome.classify_failed:
        yield f"classify_failures:{tier}", 1
    if outcome.prompt_tokens is not None or outcome.completion_tokens is not None:
        yield f"usage_reports:{tier}", 1
        yield f"prompt_tokens:{tier}", outcome.prompt_tokens or 0
        yield f"completion_tokens:{tier}", outcome.completion_tokens or 0
    if outcome.simulator_speed is not None:
        yield f"simulated:{tier}", 1
        yield f"simulator_speed_x100_sum:{tier}", round(outcome.simulator_speed * 100)
    if outcome.routing_off:
        yield f"routing_off:{tier}", 1
    if outcome.cascade is not None:
        yield from _cascade_fields(outcome.cascade, outcome.complexity.value if outcome.complexity else PINNED)


SIGNALS = ("verifier",)  # the answer check's plug-in signals (routeproxy.cascade.signals)
SIGNAL_OUTCOMES = ("ok", "timeout", "error", "skipped")


def _cascade_fields(cascade: CascadeOutcome, slot: str) -> Iterable[tuple[str, int]]:
    yield f"cascade_checked:{slot}", 1
    if cascade.explored:
        yield "cascade_explored", 1
    for name, outcome, ms in cascade.signals:
        if name in SIGNALS and outcome in SIGNAL_OUTCOMES:
            yield f"signal_calls:{name}:{outcome}", 1
            if outcome != "skipped":
                yield f"signal_ms_sum:{name}", round(max(0.0, ms))
                yield f"signal_ms_bucket:{name}:{_bucket(max(0.0, ms))}", 1
    if cascade.hold_ms is not None:
        hold = max(0.0, cascade.hold_ms)
        yield "cascade_hold_ms_sum", round(hold)
        yield "cascade_hold_ms_count", 1
        yield f"cascade_hold_ms_bucket:{_bucket(hold)}", 1
    if cascade.escalation_failed:
        yield "escalation_failures", 1
    if not cascade.escalated:
        return
    added = max(0.0, cascade.added_ms)
    yield f"escalations:{slot}", 1
    yield "escalated_small_ms_sum", round(max(0.0, cascade.small_ms))
    yield "escalated_small_prompt_tokens", cascade.small_prompt_tokens or 0
    yield "escalated_small_completion_tokens", cascade.small_completion_tokens or 0
    yield "escalation_added_ms_sum", round(added)
    yield f"escalation_added_ms_bucket:{_bucket(added)}", 1


def field_count(tiers: int = len(Tier)) -> int:
    """How many distinct fields exist: the bound on the size of any local delta."""
    per_scope = 5 + len(BUCKET_NAMES)  # requests, latency sum, errors, fallbacks, disconnects + buckets
    per_tier = (1 + len(COMPLEXITY_SLOTS)) * per_scope + len(STATUS_CLASSES) + 3 + len(BUCKET_NAMES) + 4 + 3
    cascade = 2 * len(COMPLEXITY_SLOTS) + 2 + len(BUCKET_NAMES) + 1 + 5 + len(BUCKET_NAMES)
    signals = 1 + len(SIGNALS) * (len(SIGNAL_OUTCOMES) + 1 + len(BUCKET_NAMES))  # explored, then per signal
    return tiers * per_tier + cascade + signals


PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))


def percentile(buckets: Sequence[int], quantile: float) -> float:
    """Interpolated quantile of a histogram laid out as ``BUCKET_NAMES`` (0 when it is empty).

    Exact to within the width of the bucket that holds the rank; the open last bucket answers its lower bound.
    """
    total = sum(buckets)
    if total == 0:
        return 0.0
    rank = quantile * total
    cumulative = 0
    for index, count in enumerate(buckets):
        if count and cumulative + count >= rank:
            lower = BUCKETS_MS[index - 1] if index > 0 else 0
            if index == len(BUCKETS_MS):
                return float(lower)
            return lower + (BUCKETS_MS[index] - lower) * (rank - cumulative) / count
        cumulative += count
    return float(BUCKETS_MS[-1])


def _percentiles(buckets: Sequence[int]) -> dict[str, int]:
    return {name: round(percentile(buckets, quantile)) for name, quantile in PERCENTILES}


def _sum_histograms(histograms: Iterable[Sequence[int]]) -> list[int]:
    return [sum(column) for column in zip(*histograms, strict=True)]


def _pct(part: float, whole: float) -> float:
    return round(part / whole * 100, 1) if whole else 0.0


def _avg(total: float, count: int) -> int:
    return round(total / count) if count else 0


def render_stats(
    snapshot: Snapshot,
    *,
    ab_test_ratio: float,
    routing_enabled: bool,
    baseline_latency_ms: float | None,
    relative_cost: Mapping[Tier, float],
    labels: Mapping[Tier, str],
) -> dict[str, Any]:
    """The seed's stats JSON (same keys, same order), then the extra fields; tiers appear under ``labels``, small
    first.

    ``baseline_latency_ms`` None means "measure it": the average latency of the large tier in the period. Where the
    figures come from (simulated upstreams, routing off, the baseline) is in ``provenance`` with its caveats.
    ``estimated_cost_savings_pct`` compares with sending every request to the large tier; an escalated request
    costs a large request plus a whole small one (conservative: a stream cut at the hold cost less).
    """
    requests = {tier: snapshot.get("requests", labels[tier]) for tier in Tier}
    latency_sums = {tier: snapshot.get("latency_ms_sum", labels[tier]) for tier in Tier}
    total = sum(requests.values())
    average = sum(latency_sums.values()) / total if total else 0.0
    if baseline_latency_ms is None:  # measured: unrounded in the improvement, which is 0.0 when all went large
        exact = latency_sums[Tier.LARGE] / requests[Tier.LARGE] if requests[Tier.LARGE] else 0.0
        baseline_source = "large_tier" if requests[Tier.LARGE] else "none"
    else:
        exact, baseline_source = baseline_latency_ms, "configured"
    baseline = round(exact)
    all_large_cost = total * relative_cost[Tier.LARGE]
    escalations = sum(snapshot.get("escalations", slot) for slot in COMPLEXITY_SLOTS)
    actual_cost = sum(requests[tier] * relative_cost[tier] for tier in Tier) + escalations * relative_cost[Tier.SMALL]
    latency_histograms = {tier: snapshot.histogram("latency_ms_bucket", labels[tier]) for tier in Tier}
    ttfb_histograms = {tier: snapshot.histogram("ttfb_ms_bucket", labels[tier]) for tier in Tier}
    errors = {tier: snapshot.get("errors", labels[tier]) for tier in Tier}
    stats: dict[str, Any] = {
        "total_requests": total,
        "model_distribution": {
            labels[tier]: {
                "count": requests[tier],
                "percentage": _pct(requests[tier], total),
                "avg_latency_ms": _avg(latency_sums[tier], requests[tier]),
            }
            for tier in Tier
        },
        "average_latency_ms": round(average),
        "baseline_latency_ms": baseline,
        "latency_improvement_pct": round((exact - average) / exact * 100, 1) if total and exact else 0.0,
        "estimated_cost_savings_pct": _pct(all_large_cost - actual_cost, all_large_cost),
        "ab_test_ratio": ab_test_ratio,
        "routing_enabled": routing_enabled,
        "complexity_distribution": {
            slot: {
                "count": snapshot.get("requests", labels[Tier.SMALL], slot)
                + snapshot.get("requests", labels[Tier.LARGE], slot),
                "tiers": {labels[tier]: snapshot.get("requests", labels[tier], slot) for tier in Tier},
                "avg_latency_ms": _avg(
                    sum(snapshot.get("latency_ms_sum", labels[tier], slot) for tier in Tier),
                    sum(snapshot.get("requests", labels[tier], slot) for tier in Tier),
                ),
            }
            for slot in COMPLEXITY_SLOTS
        },
        "latency_percentiles_ms": {
            **{labels[tier]: _percentiles(latency_histograms[tier]) for tier in Tier},
            "overall": _percentiles(_sum_histograms(latency_histograms.values())),
        },
        "ttfb_percentiles_ms": {
            **{labels[tier]: _percentiles(ttfb_histograms[tier]) for tier in Tier},
            "overall": _percentiles(_sum_histograms(ttfb_histograms.values())),
        },
        "streams": {labels[tier]: snapshot.get("streams", labels[tier]) for tier in Tier},
        "upstream_errors": {labels[tier]: errors[tier] for tier in Tier},
        "error_rate_pct": {
            **{labels[tier]: _pct(errors[tier], requests[tier]) for tier in Tier},
            "overall": _pct(sum(errors.values()), total),
        },
        "fallbacks": {labels[tier]: snapshot.get("fallbacks", labels[tier]) for tier in Tier},
        "classify_failures": sum(snapshot.get("classify_failures", labels[tier]) for tier in Tier),
        "disconnects": {labels[tier]: snapshot.get("disconnects", labels[tier]) for tier in Tier},
        "status_classes": {
            labels[tier]: {name: snapshot.get("status", labels[tier], name) for name in STATUS_CLASSES} for tier in Tier
        },
        "tokens": {
            labels[tier]: {
                "requests_with_usage": snapshot.get("usage_reports", labels[tier]),
                "prompt": snapshot.get("prompt_tokens", labels[tier]),
                "completion": snapshot.get("completion_tokens", labels[tier]),
            }
            for tier in Tier
        },
        "provenance": provenance(snapshot, labels, baseline_source, baseline),
        "replicas": list(snapshot.replicas),
        "store": snapshot.store,
        "period": snapshot.period,
        "counting_since": snapshot.since.isoformat() if snapshot.since else None,
        "stale": snapshot.stale,
    }
    return stats


def render_cascade(snapshot: Snapshot, routing_mode: str, labels: Mapping[Tier, str]) -> dict[str, Any]:
    """The ``cascade`` block of the stats JSON (see the README's cascade section)."""
    answered_small = snapshot.get("requests", labels[Tier.SMALL])
    total = answered_small + snapshot.get("requests", labels[Tier.LARGE])
    checked = {slot: snapshot.get("cascade_checked", slot) for slot in COMPLEXITY_SLOTS}
    escalated = {slot: snapshot.get("escalations", slot) for slot in COMPLEXITY_SLOTS}
    all_checked, all_escalated = sum(checked.values()), sum(escalated.values())
    small_ms = snapshot.get("escalated_small_ms_sum")
    hold_count = snapshot.get("cascade_hold_ms_count")
    return {
        "routing_mode": routing_mode,
        "checked": all_checked,
        "escalated": all_escalated,
        "escalated_pct": _pct(all_escalated, all_checked),
        "answered_by_small_pct": _pct(answered_small, total),
        "escalation_failures": snapshot.get("escalation_failures"),
        "by_complexity": {
            slot: {
                "checked": checked[slot],
                "escalated": escalated[slot],
                "escalated_pct": _pct(escalated[slot], checked[slot]),
            }
            for slot in COMPLEXITY_SLOTS
        },
        "small_tier_on_escalated": {
            "time_ms_sum": small_ms,
            "avg_time_ms": _avg(small_ms, all_escalated),
            "prompt_tokens": snapshot.get("escalated_small_prompt_tokens"),
            "completion_tokens": snapshot.get("escalated_small_completion_tokens"),
        },
        "added_latency_ms": {
            "avg": _avg(snapshot.get("escalation_added_ms_sum"), all_escalated),
            **_percentiles(snapshot.histogram("escalation_added_ms_bucket")),
        },
        "hold_ms": {
            "avg": _avg(snapshot.get("cascade_hold_ms_sum"), hold_count),
            **_percentiles(snapshot.histogram("cascade_hold_ms_bucket")),
        },
        "explored": snapshot.get("cascade_explored"),
        "signals": {name: _signal(snapshot, name) for name in SIGNALS},
    }


def _signal(snapshot: Snapshot, name: str) -> dict[str, Any]:
    """One plug-in signal's readings: calls by outcome, and the latency of those that were made."""
    calls = {outcome: snapshot.get("signal_calls", name, outcome) for outcome in SIGNAL_OUTCOMES}
    made = calls["ok"] + calls["timeout"] + calls["error"]
    return {
        "calls": calls,
        "latency_ms": {
            "avg": _avg(snapshot.get("signal_ms_sum", name), made),
            **_percentiles(snapshot.histogram("signal_ms_bucket", name)),
        },
    }


def render_ab_cascade(snapshot: Snapshot, labels: Mapping[Tier, str]) -> dict[str, Any]:
    """What the A/B view's MEDIUM comparison is in this period: a random split (``ab_test``), the cascade's
    (``cascade``: the small tier's MEDIUM answers are the ones the check kept, the large tier's the escalated
    ones), or both (``mixed``: the mode changed without a reset)."""
    slot = Complexity.MEDIUM.value
    checked, escalated = snapshot.get("cascade_checked", slot), snapshot.get("escalations", slot)
    answered = sum(snapshot.get("requests", labels[tier], slot) for tier in Tier)
    fell_back = sum(snapshot.get("fallbacks", labels[tier], slot) for tier in Tier)
    comparison = "ab_test" if not checked else "cascade" if checked + fell_back >= answered else "mixed"
    return {
        "comparison": comparison,
        "checked": checked,
        "escalated": escalated,
        "escalated_pct": _pct(escalated, checked),
        "kept_on": labels[Tier.SMALL],
        "escalated_to": labels[Tier.LARGE],
    }


def format_stats_table(stats: Mapping[str, Any]) -> str:
    """The stats JSON as a short plain-text report, for ``routeproxy stats``."""
    distribution = stats["model_distribution"]
    percentiles = stats.get("latency_percentiles_ms", {})
    errors = stats.get("upstream_errors", {})
    fallbacks = stats.get("fallbacks", {})
    rows: list[tuple[str, ...]] = [
        ("tier", "requests", "share %", "avg ms", "p50", "p95", "p99", "errors", "fallbacks")
    ]
    for label, entry in distribution.items():
        tier_percentiles = percentiles.get(label, {})
        rows.append((
            label, str(entry["count"]), f"{entry['percentage']:.1f}", str(entry["avg_latency_ms"]),
            *(str(tier_percentiles.get(name, "-")) for name, _ in PERCENTILES),
            str(errors.get(label, "-")), str(fallbacks.get(label, "-")),
        ))  # fmt: skip
    overall = percentiles.get("overall", {})
    rows.append((
        "all", str(stats["total_requests"]), "100.0" if stats["total_requests"] else "0.0",
        str(stats["average_latency_ms"]), *(str(overall.get(name, "-")) for name, _ in PERCENTILES),
        str(sum(errors.values())) if errors else "-", str(sum(fallbacks.values())) if fallbacks else "-",
    ))  # fmt: skip
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.append("")
    lines.append(
        f"average latency {stats['average_latency_ms']} ms vs baseline {stats['baseline_latency_ms']} ms: "
        f"{stats['latency_improvement_pct']:.1f}% better; "
        f"estimated cost savings {stats['estimated_cost_savings_pct']:.1f}%"
    )
    lines.append(
        f"routing {'enabled' if stats['routing_enabled'] else 'disabled'}, ab_test_ratio {stats['ab_test_ratio']}"
    )
    for slot, entry in stats.get("complexity_distribution", {}).items():
        if entry["count"]:
            tiers = ", ".join(f"{label} {count}" for label, count in entry["tiers"].items())
            lines.append(f"{slot}: {entry['count']} ({tiers}), avg {entry['avg_latency_ms']} ms")
    cascade = stats.get("cascade")
    if cascade and (cascade["routing_mode"] == "cascade" or cascade["checked"]):
        added, hold = cascade["added_latency_ms"], cascade["hold_ms"]
        lines.append(
            f"cascade: {cascade['checked']} checked, {cascade['escalated']} escalated "
            f"({cascade['escalated_pct']:.1f}%), small tier answered {cascade['answered_by_small_pct']:.1f}%; "
            f"added latency p50 {added['p50']} ms p95 {added['p95']} ms; hold p50 {hold['p50']} ms"
        )
    if "store" in stats:
        replicas = stats.get("replicas", [])
        lines.append(
            f"store {stats['store']}, {len(replicas)} replica(s), counting since {stats.get('counting_since')}"
            + (
                " (STALE: the shared store did not answer; these are one replica's numbers)"
                if stats.get("stale")
                else ""
            )
        )
    return "\n".join(lines)
