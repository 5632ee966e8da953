from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from support.devdata import dev_data

from routeproxy.evaluate.metrics import apgr, cpt, oracle_quality, pgr_curve, random_apgr_band
from routeproxy.evaluate.routing import (
    Example,
    bench_classifier,
    evaluate,
    format_report,
    load_examples,
    report_as_dict,
)
from routeproxy.routing.classify import Classifier, load_rules

# Four prompts: the large model helps on a and d (gain 1), not on b and c. W = 0.25, S = 0.75.
WEAK = [0.0, 0.0, 1.0, 0.0]
STRONG = [1.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("scores", "expected_curve", "expected_apgr"),
    [
        ([0.9, 0.1, 0.1, 0.9], [(0.0, 0.0), (0.5, 1.0), (1.0, 1.0)], 0.75),  # perfect, with ties
        ([0.5, 0.5, 0.5, 0.5], [(0.0, 0.0), (1.0, 1.0)], 0.5),  # all tied: a straight line, like random
        ([0.1, 0.9, 0.9, 0.1], [(0.0, 0.0), (0.5, 0.0), (1.0, 1.0)], 0.25),  # exactly wrong
        ([4.0, 3.0, 2.0, 1.0], [(0.0, 0.0), (0.25, 0.5), (0.5, 0.5), (0.75, 0.5), (1.0, 1.0)], 0.5),
    ],
)
def test_pgr_curve_and_apgr_by_hand(
    scores: list[float], expected_curve: list[tuple[float, float]], expected_apgr: float
) -> None:
    curve = pgr_curve(scores, WEAK, STRONG)
    assert len(curve) == len(expected_curve)
    for point, expected in zip(curve, expected_curve, strict=True):
        assert point == pytest.approx(expected)
    assert apgr(curve) == pytest.approx(expected_apgr)


@pytest.mark.parametrize(
    ("curve", "target", "expected"),
    [
        ([(0.0, 0.0), (0.5, 1.0), (1.0, 1.0)], 0.5, 0.25),
        ([(0.0, 0.0), (0.5, 1.0), (1.0, 1.0)], 0.8, 0.4),
        ([(0.0, 0.0), (1.0, 1.0)], 0.5, 0.5),  # random routing: CPT(50%) = 50%
        ([(0.0, 0.0), (0.5, 0.0), (1.0, 1.0)], 0.8, 0.9),
    ],
)
def test_cpt_by_hand(curve: list[tuple[float, float]], target: float, expected: float) -> None:
    assert cpt(curve, target) == pytest.approx(expected)


@pytest.mark.parametrize(("share", "expected"), [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (1.0, 0.75), (0.125, 0.375)])
def test_oracle_takes_the_largest_gains_first(share: float, expected: float) -> None:
    assert oracle_quality(WEAK, STRONG, share) == pytest.approx(expected)


def test_random_scores_give_apgr_near_one_half() -> None:
    rng = random.Random(1)
    weak = [float(rng.random() < 0.6) for _ in range(4000)]
    strong = [max(w, float(rng.random() < 0.5)) for w in weak]
    low, high = random_apgr_band(weak, strong, 200, random.Random(2))
    assert low < 0.5 < high
    assert high - low < 0.1
    scores = [rng.random() for _ in weak]
    assert apgr(pgr_curve(scores, weak, strong)) == pytest.approx(0.5, abs=0.05)


def rules_file(tmp_path: Path) -> Classifier:
    path = tmp_path / "rules.yaml"
    path.write_text("bias: -3\nkeywords: {hard: {terms: [hard], weight: 6}}\n", encoding="utf-8")
    return Classifier(load_rules(str(path)))


def test_a_perfect_router_reaches_the_oracle(tmp_path: Path) -> None:
    examples = [
        Example(str(i), "toy", "a hard one" if s > w else "an easy one", w, s)
        for i, (w, s) in enumerate(zip(WEAK, STRONG, strict=True))
    ]
    report = evaluate(rules_file(tmp_path), examples, random_draws=20)
    toy = report.subsets[0]
    assert (toy.n, toy.share_large) == (4, 0.5)
    assert toy.quality == pytest.approx(toy.oracle_quality) == pytest.approx(0.75)
    assert (toy.all_weak, toy.all_strong, toy.random_quality) == pytest.approx((0.25, 0.75, 0.5))
    assert toy.pgr == pytest.approx(1.0)
    assert toy.apgr == pytest.approx(0.75)
    assert toy.cpt50 == pytest.approx(0.25)
    assert report.overall.n == 4


def test_a_router_that_cannot_tell_prompts_apart_scores_one_half(tmp_path: Path) -> None:
    examples = [Example(str(i), "toy", "same words", w, s) for i, (w, s) in enumerate(zip(WEAK, STRONG, strict=True))]
    report = evaluate(rules_file(tmp_path), examples, random_draws=20)
    assert report.overall.apgr == pytest.approx(0.5)
    assert report.overall.cpt50 == pytest.approx(0.5)


def test_no_gap_is_reported_as_missing_not_an_error(tmp_path: Path) -> None:
    examples = [Example("1", "flat", "hard", 0.5, 0.5), Example("2", "flat", "easy", 0.5, 0.5)]
    report = evaluate(rules_file(tmp_path), examples, random_draws=10)
    assert math.isnan(report.overall.apgr)
    assert report_as_dict(report)["overall"]["apgr"] is None
    assert "n/a" in format_report(report)


def test_load_examples_reads_the_normalised_scores(tmp_path: Path) -> None:
    path = tmp_path / "dev.jsonl"
    row = {"id": "x-1", "subset": "gsm8k", "prompt": "2+2?", "weak_norm": 0.0, "strong_norm": 1.0, "weak_score": 7}
    path.write_text(json.dumps(row) + "\n\n", encoding="utf-8")
    assert load_examples(path) == [Example("x-1", "gsm8k", "2+2?", 0.0, 1.0)]


def test_report_renders_as_table_and_dict(tmp_path: Path) -> None:
    examples = [Example(str(i), "toy", "hard" if i % 2 else "easy", 0.0, float(i % 3 == 0)) for i in range(30)]
    report = evaluate(rules_file(tmp_path), examples, random_draws=30)
    table = format_report(report)
    assert "toy" in table and "overall" in table and "APGR" in table
    as_dict = report_as_dict(report)
    assert set(as_dict["subsets"]) == {"toy"}
    json.dumps(as_dict)


def test_bench_reports_each_message_size() -> None:
    table = bench_classifier(Classifier(load_rules("general")))
    for label in ("typical 30 words", "1 KB", "100 KB", "1 MB"):
        assert label in table


def test_shipped_general_rules_beat_the_random_band_on_dev_data() -> None:
    report = evaluate(Classifier(load_rules("general")), load_examples(dev_data("routing-dev.jsonl")), random_draws=200)
    for item in (*report.subsets, report.overall):
        assert item.apgr > item.random_apgr_high, format_report(report)
    assert {item.subset for item in report.subsets} == {"gsm8k", "mmlu", "mt_bench"}
