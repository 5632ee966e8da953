"""Leave-one-pair-out evaluation of the answer check (evaluate.refit; eval --cascade --leave-one-pair-out)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support.devdata import dev_data

from routeproxy.cascade.check import load_check_rules
from routeproxy.cli import main
from routeproxy.evaluate.cascade import read_rows
from routeproxy.evaluate.refit import leave_one_pair_out

REFUSAL = "I can't help with that. "


def words(count: int) -> str:
    return " ".join(f"w{index}" for index in range(count)) + "."


def pair_rows(pair: str, gains: bool = True) -> list[dict[str, Any]]:
    """A refusal of about 200 words that the large model fixes (gain 1), a 150-word answer it improves (gain 0.5)
    and a good 203-word one (gain 0). Length alone escalates the 150-word answer, then the 203-word one, then the
    refusal: APGR 7/18. Refusal first, then length: PGR 2/3, 1, 1 at c = 1/3, 2/3, 1, APGR 13/18."""
    answers = [(REFUSAL + words(200), 0.0, 1.0), (words(150), 0.5, 1.0), ("Here it is: " + words(200), 1.0, 1.0)]
    return [
        {
            "id": f"{pair}-{index}",
            "pair": pair,
            "messages": [{"role": "user", "content": "Explain photosynthesis."}],
            "small_answer": answer,
            "small_norm": small,
            "large_norm": large if gains else small,
        }
        for index, (answer, small, large) in enumerate(answers)
    ]


def test_each_pair_is_scored_with_weights_fitted_on_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = pair_rows("a->A") + pair_rows("b->B") + pair_rows("c->C") + pair_rows("same->same", gains=False)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["eval", "--cascade", str(path), "--leave-one-pair-out", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["left_out"] == ["same->same"]  # no gap: APGR is undefined
    assert [pair["pair"] for pair in report["pairs"]] == ["a->A", "b->B", "c->C"]
    for pair in report["pairs"]:
        assert pair["scales"]["refusal"] > 0  # learnt from the other two pairs, starting from 0
        assert pair["held_whole"] == pytest.approx(13 / 18)
        assert pair["rules_whole"] == pytest.approx(13 / 18)
        assert pair["length_apgr"] == pytest.approx(7 / 18)
    assert main(["eval", "--cascade", str(path), "--leave-one-pair-out"]) == 0
    table = capsys.readouterr().out
    # at the hold all three are still going: the refusal first, the other two tie (PGR 2/3, then 1 at c = 1)
    assert "mean | | 0.389 | 0.722 / 0.667 | 0.722 / 0.667 |" in table


def test_signals_not_named_in_fit_keep_the_rule_sets_weights(tmp_path: Path) -> None:
    rows = list(read_rows([json.dumps(row) for row in pair_rows("a->A") + pair_rows("b->B")], "rows", labelled=True))
    report = leave_one_pair_out(rows, load_check_rules("general"), hold_tokens=128, fit=("hedging",))
    for pair in report.pairs:
        assert "refusal" not in pair.scales  # not fitted: its shipped weight orders the refusal first
        assert pair.held_whole == pytest.approx(13 / 18)
    fitted_from_zero = leave_one_pair_out(rows, load_check_rules("general"), hold_tokens=128)
    assert all(pair.scales["refusal"] > 0 for pair in fitted_from_zero.pairs)


def test_timing_prints_the_checks_median_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps(pair_rows("a->A")[0] | {"small_answer": words(600)}) + "\n")
    assert main(["eval", "--cascade", str(path), "--timing"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("check_answer on 1 answers cut to 2000 characters")
    assert " us, p99 " in out


def test_the_shipped_check_beats_answer_length_on_pairs_it_was_not_fitted_on() -> None:
    path = dev_data("cascade-dev.jsonl")
    with path.open(encoding="utf-8") as lines:
        rows = list(read_rows(lines, str(path), labelled=True))
    report = leave_one_pair_out(rows, load_check_rules("general"), hold_tokens=128)
    assert len(report.pairs) == 5
    assert [name for name in report.left_out if "claude" in name] == list(report.left_out)
    mean = sum(pair.held_whole for pair in report.pairs) / 5
    assert mean >= 0.58
    assert sum(pair.held_prefix for pair in report.pairs) / 5 >= 0.58
    assert mean > sum(pair.length_apgr for pair in report.pairs) / 5 + 0.03
