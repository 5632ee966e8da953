"""`routeproxy quality simulate`: the shipped verdict and rollout rules read after every batch of synthetic
feedback. With fixed seeds the figures are the same on every run and machine; 400 runs per line put the bound
(2.5 % = 10 runs) well above what the verdict does (about 1 %), and far below what a fixed-sample interval does."""

from __future__ import annotations

import orjson
import pytest

from routeproxy.cli import main
from routeproxy.evaluate.fixed_horizon import fixed_horizon_verdict
from routeproxy.evaluate.peeking import Options, Scenario, shipped_rule, simulate_scenario
from routeproxy.quality.intervals import Thresholds
from routeproxy.quality.rollout import RolloutPolicy

THRESHOLDS = Thresholds()  # review at 5 %, rollback at 10 %, 30 feedback per tier: the shipped defaults
POLICY = RolloutPolicy()  # 200 feedback per step
OPTIONS = Options(runs=400, seed=1)  # a look every 25 feedback events, up to 20,000


@pytest.mark.parametrize(("kind", "share"), [("thumbs", 0.1), ("thumbs", 0.5), ("scores", 0.1), ("scores", 0.5)])
def test_read_after_every_batch_the_verdict_errs_in_at_most_2_5_percent_of_runs(kind: str, share: float) -> None:
    at_review_line = simulate_scenario(Scenario(kind, share, 0.05), OPTIONS, THRESHOLDS, POLICY, shipped_rule)
    no_degradation = simulate_scenario(Scenario(kind, share, 0.0), OPTIONS, THRESHOLDS, POLICY, shipped_rule)
    assert at_review_line.passed <= 10, at_review_line  # at most 2.5 % pass a 3B that is 5 % worse (it does ~1 %)
    assert no_degradation.rolled_back == 0, no_degradation  # none rolls back a 3B that is as good (goal: 2.5 %)
    assert no_degradation.passed >= 392, no_degradation  # and an as-good 3B does pass: 98 % within 20,000 feedback


def test_a_fixed_sample_interval_read_the_same_way_passes_the_review_line_in_one_run_in_five() -> None:
    """What the verdict did before it read confidence sequences: Newcombe's 95 % interval at every look."""
    runs = Options(runs=200, seed=1)
    baseline = simulate_scenario(Scenario("thumbs", 0.5, 0.05), runs, THRESHOLDS, POLICY, fixed_horizon_verdict)
    shipped = simulate_scenario(Scenario("thumbs", 0.5, 0.05), runs, THRESHOLDS, POLICY, shipped_rule)
    assert baseline.passed >= 30  # 15 % and more (the goal allows 5 of 200)
    assert shipped.passed <= 5


def test_the_command_prints_the_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["quality", "simulate", "--runs", "20", "--kinds", "thumbs", "--shares", "0.5", "--degradations", "0,5"]
    assert main([*arguments, "--baseline"]) == 0
    table = capsys.readouterr().out
    assert "fixed: pass" in table and "median feedback" in table and "goal: at most 2.5 % each" in table
    assert main([*arguments, "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["method"] == "normal_mixture_confidence_sequence" and report["runs"] == 20
    rows = {row["degradation_pct"]: row for row in report["rows"]}
    assert set(rows) == {0.0, 5.0} and rows[0.0]["kind"] == "thumbs" and rows[0.0]["share"] == 0.5
    assert rows[0.0]["pass_pct"] + rows[0.0]["rollback_pct"] + rows[0.0]["undecided_pct"] == pytest.approx(100)
    assert report["goals"]["rollback_at_zero_pct"] == rows[0.0]["rollback_pct"]
    assert report["goals"]["pass_at_review_pct"] == rows[5.0]["pass_pct"]


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        (["--shares", "1.5"], "--shares must be between 0 and 1"),
        (["--kinds", "stars"], "--kinds takes thumbs and scores"),
        (["--runs", "0"], "must be at least 1"),
    ],
)
def test_bad_options_are_refused_with_a_message(
    arguments: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["quality", "simulate", *arguments]) == 2
    assert says in capsys.readouterr().err
