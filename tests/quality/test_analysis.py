"""The A/B analysis block built from counter totals: what the stats JSON and `routeproxy stats` show."""

from __future__ import annotations

import pytest

from routeproxy.counters.stats import Snapshot
from routeproxy.quality.analysis import analyse, format_ab_lines, render_ab
from routeproxy.quality.decisions import feedback_fields, regeneration_fields, score_units
from routeproxy.quality.intervals import Tally, Thresholds, degradation_sequence, difference_sequence
from routeproxy.quality.verdict import METHOD, Verdict
from routeproxy.settings import Tier

THRESHOLDS = Thresholds()
LABELS = {Tier.SMALL: "3b", Tier.LARGE: "8b"}


def totals(*groups: list[tuple[str, int]]) -> Snapshot:
    counts: dict[str, int] = {}
    for fields in groups:
        for name, increment in fields:
            counts[name] = counts.get(name, 0) + increment
    return Snapshot(counts=counts, period=3, since=None, replicas=("a",), store="memory")


def thumbs(tier: str, complexity: str, up: int, down: int) -> list[tuple[str, int]]:
    fields: list[tuple[str, int]] = []
    for score in [1.0] * up + [0.0] * down:
        fields += feedback_fields(tier, complexity, None, score_units(score))
    return fields


def requests(tier: str, complexity: str, count: int, latency_ms: int, errors: int = 0) -> list[tuple[str, int]]:
    return [
        (f"requests:{tier}:{complexity}", count),
        (f"latency_ms_sum:{tier}:{complexity}", count * latency_ms),
        (f"latency_ms_bucket:{tier}:{complexity}:le_{latency_ms}", count),
        (f"errors:{tier}:{complexity}", errors),
    ]


def test_medium_feedback_is_compared_and_other_complexities_stand_beside_it() -> None:
    snapshot = totals(
        thumbs("3b", "medium", 104, 26),
        thumbs("8b", "medium", 271, 30),
        thumbs("3b", "simple", 500, 0),  # must not leak into the A/B comparison
        requests("3b", "medium", 400, 2500, errors=4),
        requests("8b", "medium", 900, 4500),
    )
    block = render_ab(snapshot, analyse(snapshot, THRESHOLDS, LABELS, uses_implicit=False), THRESHOLDS, queued=2)
    small, large = block["tiers"]["3b"], block["tiers"]["8b"]
    assert (small["feedback_count"], small["thumbs_up"], small["mean_score"]) == (130, 104, 0.8)
    assert (large["feedback_count"], large["thumbs_up"]) == (301, 271)
    assert (small["requests"], small["error_rate_pct"], small["avg_latency_ms"]) == (400, 1.0, 2500)
    assert small["p95_latency_ms"] == pytest.approx(2500, abs=250)
    small_tally, large_tally = Tally(130, 104, 104), Tally(301, 271, 271)
    difference = difference_sequence(small_tally, large_tally, THRESHOLDS)
    degradation = degradation_sequence(small_tally, large_tally, THRESHOLDS)
    assert block["difference"]["absolute_interval"] == [round(difference.low, 4), round(difference.high, 4)]
    assert block["difference"]["degradation_interval_pct"] == [
        round(degradation.low * 100, 2),
        round(degradation.high * 100, 2),
    ]
    assert block["method"] == METHOD
    assert block["verdict"] == "insufficient_data" and "straddles 5.0% and 10.0%" in block["reason"]
    assert block["other_complexities"]["simple"]["3b"]["feedback_count"] == 500
    assert block["feedback"] == {"received": 931, "replaced": 0, "unknown_ids": 0, "queued": 2}
    lines = "\n".join(format_ab_lines(block))
    assert "verdict: INSUFFICIENT_DATA" in lines and "simple (not in the A/B): 3b 500 feedback" in lines


def test_replacing_feedback_moves_the_sums_and_counts_once() -> None:
    first = feedback_fields("3b", "medium", None, 0)
    second = feedback_fields("3b", "medium", 0, 1000)
    snapshot = totals(first, second)
    assert snapshot.get("feedback", "3b", "medium") == 1
    assert snapshot.get("score_milli", "3b", "medium") == 1000
    assert snapshot.get("feedback_replaced") == 1
    assert snapshot.get("feedback_fractional", "3b", "medium") == 0
    fractional = totals(first, feedback_fields("3b", "medium", 0, 700))
    assert fractional.get("feedback_fractional", "3b", "medium") == 1
    assert fractional.get("score_sq_micro", "3b", "medium") == 490_000


def test_fractional_scores_measure_their_dispersion() -> None:
    fields: list[tuple[str, int]] = []
    for index in range(400):
        fields += feedback_fields("3b", "medium", None, score_units(0.6 + 0.01 * (index % 5)))
        fields += feedback_fields("8b", "medium", None, score_units(0.9 + 0.01 * (index % 5)))
    snapshot = totals(fields)
    block = render_ab(snapshot, analyse(snapshot, THRESHOLDS, LABELS, uses_implicit=False), THRESHOLDS, queued=0)
    assert block["method"] == METHOD and block["tiers"]["3b"]["thumbs_up"] is None
    assert block["difference"]["df"] is None  # a confidence sequence has no degrees of freedom
    assert block["verdict"] == "rollback"


def test_implicit_signals_decide_only_when_the_operator_lets_them() -> None:
    snapshot = totals(
        thumbs("3b", "medium", 2850, 150),
        thumbs("8b", "medium", 2850, 150),
        requests("3b", "medium", 3000, 2500, errors=900),  # 3B fails a third of its requests
        requests("8b", "medium", 3000, 4500),
        regeneration_fields("3b", "medium"),
    )
    alone = analyse(snapshot, THRESHOLDS, LABELS, uses_implicit=False)
    both = analyse(snapshot, THRESHOLDS, LABELS, uses_implicit=True)
    assert alone.verdict is Verdict.PASS
    assert alone.implicit.verdict is Verdict.ROLLBACK
    assert both.verdict is Verdict.ROLLBACK and "implicit signals: rollback" in both.reason
    block = render_ab(snapshot, both, THRESHOLDS, queued=0)
    assert block["verdict_uses"] == "feedback+implicit" and block["feedback_verdict"] == "pass"
    assert block["tiers"]["3b"]["implicit"] == {
        "upstream_errors": 900,
        "disconnects": 0,
        "regenerations": 1,
        "bad_rate_pct": 30.0,
    }


def test_an_empty_period_has_the_whole_shape_and_no_numbers() -> None:
    snapshot = totals()
    block = render_ab(snapshot, analyse(snapshot, THRESHOLDS, LABELS, uses_implicit=False), THRESHOLDS, queued=0)
    assert block["verdict"] == "insufficient_data"
    assert block["difference"] == {
        "absolute": None,
        "absolute_interval": None,
        "degradation_pct": None,
        "degradation_interval_pct": None,
        "df": None,
    }
    assert block["tiers"]["3b"]["mean_score"] is None and block["tiers"]["3b"]["score_interval"] is None
    assert set(block["other_complexities"]) == {"simple", "complex", "pinned"}
