"""The A/B analysis of one period's totals: per-tier quality on MEDIUM queries, the 3B-vs-8B comparison and its
verdict (``ab_analysis`` in the stats JSON, see SPEC), and the lines ``routeproxy stats`` prints for it.

Pure: a ``Snapshot`` in, JSON out. The statistics are intervals.py's; this module only reads the counter fields
(``feedback:<tier>:<complexity>``, ``score_milli:...``, ``regenerations:...``: see the README's key table).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from routeproxy.counters.stats import COMPLEXITY_SLOTS, Snapshot, percentile
from routeproxy.quality.intervals import Interval, Tally, Thresholds
from routeproxy.quality.verdict import Comparison, ImplicitTally, Verdict, compare, estimate, worst
from routeproxy.routing.classify import Complexity
from routeproxy.settings import QualityConfig, Tier

POPULATION = Complexity.MEDIUM.value  # the only complexity the A/B ratio splits
SCORE_SCALE = 1000


def thresholds_of(config: QualityConfig) -> Thresholds:
    return Thresholds(
        review_at=config.review_at_pct / 100,
        rollback_at=config.rollback_at_pct / 100,
        min_feedback=config.min_feedback_per_tier,
    )


def tally(snapshot: Snapshot, tier: str, slot: str) -> Tally:
    count = snapshot.get("feedback", tier, slot)
    return Tally(
        count=count,
        score_sum=snapshot.get("score_milli", tier, slot) / SCORE_SCALE,
        score_sq_sum=snapshot.get("score_sq_micro", tier, slot) / SCORE_SCALE**2,
        fractional=snapshot.get("feedback_fractional", tier, slot),
    )


def implicit(snapshot: Snapshot, tier: str, slot: str) -> ImplicitTally:
    return ImplicitTally(
        requests=snapshot.get("requests", tier, slot),
        upstream_errors=snapshot.get("errors", tier, slot),
        disconnects=snapshot.get("disconnects", tier, slot),
        regenerations=snapshot.get("regenerations", tier, slot),
    )


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _pair(interval: Interval | None, scale: float = 1.0, digits: int = 4) -> list[float] | None:
    if interval is None:
        return None
    return [round(interval.low * scale, digits), round(interval.high * scale, digits)]


def _pct(part: int, whole: int) -> float:
    return round(part / whole * 100, 1) if whole else 0.0


def tier_entry(snapshot: Snapshot, tier: str, slot: str, thresholds: Thresholds) -> dict[str, Any]:
    """One tier on one complexity: feedback, score, errors, latency and implicit signals."""
    feedback = tally(snapshot, tier, slot)
    shown = estimate(feedback, thresholds)
    signals = implicit(snapshot, tier, slot)
    requests = signals.requests
    histogram = snapshot.histogram("latency_ms_bucket", tier, slot)
    bad = signals.requests - signals.as_tally().successes
    return {
        "requests": requests,
        "feedback_count": feedback.count,
        "thumbs_up": shown.thumbs_up,
        "mean_score": _round(shown.mean),
        "score_interval": _pair(shown.interval),
        "error_rate_pct": _pct(signals.upstream_errors, requests),
        "avg_latency_ms": round(snapshot.get("latency_ms_sum", tier, slot) / requests) if requests else 0,
        "p95_latency_ms": round(percentile(histogram, 0.95)),
        "implicit": {
            "upstream_errors": signals.upstream_errors,
            "disconnects": signals.disconnects,
            "regenerations": signals.regenerations,
            "bad_rate_pct": _pct(bad, requests),
        },
    }


@dataclass(frozen=True, slots=True)
class Analysis:
    feedback: Comparison
    implicit: Comparison
    verdict: Verdict
    reason: str
    uses_implicit: bool
    small: str  # the tiers' labels (Settings.tier_labels)
    large: str

    @property
    def feedback_events(self) -> int:
        """Feedback events in the A/B population (both tiers): what a rollout step waits for."""
        return self.feedback.small.count + self.feedback.large.count

    def figures(self) -> dict[str, Any]:
        """What a rollout decision rests on, for its audit entry."""
        comparison = self.feedback
        return {
            "verdict": self.verdict.value,
            "reason": self.reason,
            "method": comparison.method,
            "degradation_pct": _round(None if comparison.degradation is None else comparison.degradation * 100, 2),
            "degradation_interval_pct": _pair(comparison.degradation_interval, 100, 2),
            "feedback": {self.small: comparison.small.count, self.large: comparison.large.count},
            "mean_score": {self.small: _round(comparison.small.mean), self.large: _round(comparison.large.mean)},
            "implicit_verdict": self.implicit.verdict.value,
        }


def analyse(snapshot: Snapshot, thresholds: Thresholds, labels: Mapping[Tier, str], *, uses_implicit: bool) -> Analysis:
    """The comparison of ``labels[SMALL]`` against ``labels[LARGE]`` on MEDIUM queries."""
    small, large = labels[Tier.SMALL], labels[Tier.LARGE]
    feedback = compare(tally(snapshot, small, POPULATION), tally(snapshot, large, POPULATION), thresholds)
    signals = compare(
        implicit(snapshot, small, POPULATION).as_tally(), implicit(snapshot, large, POPULATION).as_tally(), thresholds
    )
    if snapshot.get("cascade_checked", POPULATION):
        # Cascade mode: the large tier's MEDIUM answers are escalations of weak small answers, not a random draw,
        # so the two tiers' scores compare different prompts. No verdict, and so no rollout step, on that.
        reason = (
            "cascade mode in this period: MEDIUM answers on the large tier are escalations of weak small answers, "
            "not a random draw, so the comparison is not an A/B test (reset the counters after switching modes)"
        )
        return Analysis(feedback, signals, Verdict.INSUFFICIENT_DATA, reason, uses_implicit, small, large)
    if not uses_implicit:
        return Analysis(feedback, signals, feedback.verdict, feedback.reason, uses_implicit, small, large)
    verdict = worst((feedback.verdict, signals.verdict))
    reason = (
        f"feedback: {feedback.verdict.value} ({feedback.reason}); "
        f"implicit signals: {signals.verdict.value} ({signals.reason})"
    )
    return Analysis(feedback, signals, verdict, reason, uses_implicit, small, large)


def render_ab(snapshot: Snapshot, analysis: Analysis, thresholds: Thresholds, *, queued: int) -> dict[str, Any]:
    """The ``ab_analysis`` block of the stats JSON."""
    comparison = analysis.feedback
    confidence = thresholds.confidence
    tiers = (analysis.small, analysis.large)
    return {
        "population": POPULATION,
        "period": snapshot.period,
        "method": comparison.method,
        "confidence": confidence,
        "tiers": {tier: tier_entry(snapshot, tier, POPULATION, thresholds) for tier in tiers},
        "difference": {
            "absolute": _round(comparison.difference),
            "absolute_interval": _pair(comparison.difference_interval),
            "degradation_pct": _round(None if comparison.degradation is None else comparison.degradation * 100, 2),
            "degradation_interval_pct": _pair(comparison.degradation_interval, 100, 2),
            "df": _round(comparison.df, 2),
        },
        "verdict": analysis.verdict.value,
        "reason": analysis.reason,
        "feedback_verdict": comparison.verdict.value,
        "implicit_verdict": analysis.implicit.verdict.value,
        "verdict_uses": "feedback+implicit" if analysis.uses_implicit else "feedback",
        "thresholds": {
            "review_at_pct": round(thresholds.review_at * 100, 2),
            "rollback_at_pct": round(thresholds.rollback_at * 100, 2),
            "min_feedback_per_tier": thresholds.min_feedback,
        },
        "other_complexities": {
            slot: {tier: tier_entry(snapshot, tier, slot, thresholds) for tier in tiers}
            for slot in COMPLEXITY_SLOTS
            if slot != POPULATION
        },
        "feedback": {
            "received": sum(snapshot.get("feedback", tier) for tier in tiers),
            "replaced": snapshot.get("feedback_replaced"),
            "unknown_ids": snapshot.get("feedback_unknown"),
            "queued": queued,
        },
    }


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def format_ab_lines(block: Mapping[str, Any]) -> list[str]:
    """The A/B analysis as plain-text lines for ``routeproxy stats``."""
    rows: list[Sequence[str]] = [
        ("A/B (medium)", "requests", "feedback", "mean", "95% interval", "err %", "avg ms", "p95 ms", "regen", "left")
    ]
    for tier, entry in block["tiers"].items():
        interval = entry["score_interval"]
        rows.append((
            tier, str(entry["requests"]), str(entry["feedback_count"]), _cell(entry["mean_score"]),
            "-" if interval is None else f"{interval[0]:.3f}..{interval[1]:.3f}", f"{entry['error_rate_pct']:.1f}",
            str(entry["avg_latency_ms"]), str(entry["p95_latency_ms"]), str(entry["implicit"]["regenerations"]),
            str(entry["implicit"]["disconnects"]),
        ))  # fmt: skip
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    difference = block["difference"]
    if difference["degradation_pct"] is not None:
        low, high = difference["degradation_interval_pct"]
        small, large = block["tiers"]
        lines.append(
            f"{small} vs {large}: degradation {difference['degradation_pct']:.2f}% "
            f"(95% always-valid interval {low:.2f}% .. {high:.2f}%, {block['method']})"
        )
    lines.append(f"verdict: {block['verdict'].upper()}: {block['reason']}")
    for slot, tiers in block["other_complexities"].items():
        shown = [
            f"{tier} {entry['feedback_count']} feedback, mean {_cell(entry['mean_score'])}"
            for tier, entry in tiers.items()
            if entry["feedback_count"]
        ]
        if shown:
            lines.append(f"{slot} (not in the A/B): " + "; ".join(shown))
    return lines


def format_rollout_lines(block: Mapping[str, Any]) -> list[str]:
    """The rollout controller's state and history for ``routeproxy stats``."""
    if not block["enabled"]:
        lines = ["rollout: off"]
    else:
        lines = [
            f"rollout: step {block['step_index']} (ratio {block['ratio']}) of {block['schedule']}"
            + (" PAUSED" if block["paused"] else "")
            + f"; {block['status']}"
        ]
    for entry in block["history"][-10:]:
        lines.append(f"  {entry['at']}  {entry['from_ratio']} -> {entry['to_ratio']}  by {entry['by']}: {entry['why']}")
    return lines
