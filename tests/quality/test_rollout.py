"""The rollout controller as a state machine, driven by an injected clock."""

from __future__ import annotations

import pytest

from routeproxy.quality.rollout import (
    OFF,
    Evidence,
    RollbackTo,
    RolloutPolicy,
    RolloutState,
    Waiting,
    evaluate,
    initial_state,
    override,
    pause,
    resume,
)
from routeproxy.quality.verdict import Verdict

HOUR = 3600.0
POLICY = RolloutPolicy(min_hold_s=HOUR, min_feedback=100)


def evidence(verdict: Verdict, feedback: int, period: int = 0) -> Evidence:
    return Evidence(verdict, feedback, period, {"degradation": 0.01, "reason": "figures"})


def test_pass_advances_after_the_hold_time_and_the_feedback() -> None:
    state = initial_state(0.0)
    held = evaluate(POLICY, state, evidence(Verdict.PASS, 100), now=HOUR - 1)
    assert (held.state, held.entry, held.waiting) == (state, None, Waiting.HOLD_TIME)
    starved = evaluate(POLICY, state, evidence(Verdict.PASS, 99), now=2 * HOUR)
    assert starved.waiting is Waiting.FEEDBACK and starved.entry is None
    moved = evaluate(POLICY, state, evidence(Verdict.PASS, 100), now=HOUR)
    assert moved.state.step == 1 and POLICY.ratio(moved.state.step) == 0.3
    assert moved.entry is not None
    assert (moved.entry.from_ratio, moved.entry.to_ratio, moved.entry.by) == (0.1, 0.3, "controller")
    assert moved.entry.why.startswith("pass: figures")
    assert moved.entry.figures["feedback_since_step"] == 100 and moved.entry.figures["degradation"] == 0.01
    assert (moved.state.step_since, moved.state.feedback_at_step, moved.state.version) == (HOUR, 100, 1)


def test_each_step_needs_its_own_hold_and_feedback() -> None:
    state = evaluate(POLICY, initial_state(0.0), evidence(Verdict.PASS, 100), now=HOUR).state
    assert evaluate(POLICY, state, evidence(Verdict.PASS, 150), now=3 * HOUR).waiting is Waiting.FEEDBACK
    assert evaluate(POLICY, state, evidence(Verdict.PASS, 200), now=2 * HOUR - 1).waiting is Waiting.HOLD_TIME
    assert evaluate(POLICY, state, evidence(Verdict.PASS, 200), now=2 * HOUR).state.step == 2


def test_full_ramp_ends_complete_at_the_last_step() -> None:
    state = initial_state(0.0)
    ratios = []
    for index in range(1, 6):
        outcome = evaluate(POLICY, state, evidence(Verdict.PASS, 100 * index), now=HOUR * index)
        state = outcome.state
        ratios.append(POLICY.ratio(state.step))
    assert ratios == [0.3, 0.5, 0.8, 0.8, 0.8]
    assert outcome.waiting is Waiting.COMPLETE
    assert [entry.to_ratio for entry in state.history] == [0.3, 0.5, 0.8]


@pytest.mark.parametrize("verdict", [Verdict.REVIEW, Verdict.INSUFFICIENT_DATA])
def test_review_and_insufficient_data_hold_and_say_so(verdict: Verdict) -> None:
    outcome = evaluate(POLICY, initial_state(0.0), evidence(verdict, 500), now=10 * HOUR)
    assert outcome.entry is None and outcome.waiting == verdict.value
    assert "review" in outcome.detail if verdict is Verdict.REVIEW else "does not yet support" in outcome.detail


def test_rollback_steps_back_at_once_without_waiting_out_the_hold() -> None:
    state = RolloutState(step=2, step_since=0.0, feedback_at_step=0)
    outcome = evaluate(POLICY, state, evidence(Verdict.ROLLBACK, 100), now=1.0)
    assert outcome.state.step == 1 and not outcome.state.paused
    assert outcome.entry is not None and outcome.entry.why.startswith("rollback: ")
    assert (outcome.entry.from_ratio, outcome.entry.to_ratio) == (0.5, 0.3)
    # The next step back needs fresh feedback of its own.
    again = evaluate(POLICY, outcome.state, evidence(Verdict.ROLLBACK, 150), now=2.0)
    assert again.waiting is Waiting.FEEDBACK


def test_rollback_from_the_first_step_goes_to_zero_and_pauses() -> None:
    outcome = evaluate(POLICY, initial_state(0.0), evidence(Verdict.ROLLBACK, 100), now=1.0)
    assert (outcome.state.step, outcome.state.paused, POLICY.ratio(OFF)) == (OFF, True, 0.0)
    assert evaluate(POLICY, outcome.state, evidence(Verdict.PASS, 10_000), now=10 * HOUR).waiting is Waiting.PAUSED


def test_rollback_to_zero_is_configurable() -> None:
    policy = RolloutPolicy(min_hold_s=HOUR, min_feedback=100, rollback_to=RollbackTo.ZERO)
    outcome = evaluate(policy, RolloutState(step=3), evidence(Verdict.ROLLBACK, 100), now=1.0)
    assert outcome.state.step == OFF and outcome.state.paused
    assert outcome.entry is not None and (outcome.entry.from_ratio, outcome.entry.to_ratio) == (0.8, 0.0)


def test_operator_pause_resume_and_override_are_audited() -> None:
    state = initial_state(0.0)
    paused = pause(POLICY, state, now=5.0).state
    assert paused.paused and paused.history[-1].by == "operator" and paused.step == 0
    assert evaluate(POLICY, paused, evidence(Verdict.PASS, 1000), now=10 * HOUR).waiting is Waiting.PAUSED
    resumed = resume(POLICY, paused, now=6.0, evidence=evidence(Verdict.PASS, 1000)).state
    assert not resumed.paused and resumed.step == 0
    overridden = override(POLICY, resumed, 2, now=7.0, evidence=evidence(Verdict.PASS, 1000)).state
    assert (overridden.step, overridden.step_since, overridden.feedback_at_step) == (2, 7.0, 1000)
    assert [entry.why for entry in overridden.history] == [
        "paused by the operator",
        "resumed by the operator",
        "set by the operator",
    ]
    assert overridden.version == 3
    with pytest.raises(ValueError, match="step must be"):
        override(POLICY, resumed, 4, now=8.0, evidence=evidence(Verdict.PASS, 1000))


def test_resume_at_zero_starts_the_ramp_again() -> None:
    state = RolloutState(step=OFF, paused=True)
    outcome = resume(POLICY, state, now=1.0, evidence=evidence(Verdict.ROLLBACK, 300))
    assert (outcome.state.step, outcome.state.paused, outcome.state.feedback_at_step) == (0, False, 300)


def test_a_reset_period_counts_its_feedback_afresh() -> None:
    state = RolloutState(step=0, step_since=0.0, feedback_at_step=900, period=0)
    assert evaluate(POLICY, state, evidence(Verdict.PASS, 950, period=0), now=HOUR).waiting is Waiting.FEEDBACK
    assert evaluate(POLICY, state, evidence(Verdict.PASS, 100, period=1), now=HOUR).state.step == 1


def test_state_round_trips_through_json() -> None:
    state = evaluate(POLICY, initial_state(0.0), evidence(Verdict.PASS, 100), now=HOUR).state
    state = pause(POLICY, state, now=HOUR + 1).state
    assert RolloutState.from_json(state.to_json()) == state


@pytest.mark.parametrize("schedule", [(), (0.3, 0.1), (0.1, 0.1), (0.0, 0.5), (0.5, 1.5)])
def test_bad_schedules_are_refused(schedule: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        RolloutPolicy(schedule=schedule)
