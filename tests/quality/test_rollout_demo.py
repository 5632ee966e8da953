"""The rollout demonstration, bounded: a clearly worse 3B is rolled back to ratio 0 within a few hundred requests."""

from __future__ import annotations

from routeproxy.bench.rollout import Case, run_case


def test_demo_rolls_a_clearly_worse_small_tier_back_to_zero() -> None:
    lines: list[str] = []
    result = run_case(Case("worse", 0.60, 0.95), max_requests=1500, out=lines.append)
    assert result.final["step_index"] == -1 and result.final["paused"] is True
    assert [(entry["from_ratio"], entry["to_ratio"]) for entry in result.history] == [(0.0, 0.1), (0.1, 0.0)]
    assert result.history[-1]["why"].startswith("rollback: ")
    assert result.requests < 1500
    assert any("ratio 0.1 -> 0.0  rollback" in line for line in lines)
