"""Pure: the rollout controller as a state machine. The caller supplies the clock (``now``, epoch seconds), the
evidence (the A/B verdict and the feedback count) and stores the state; nothing here does I/O.

Positions: ``step`` indexes ``RolloutPolicy.schedule`` (default the seed's 0.1, 0.3, 0.5, 0.8); ``OFF`` (-1) is
ratio 0, every MEDIUM query on the large tier. Rules, in the order ``evaluate`` applies them:

1. paused (by the operator, or by reaching OFF): nothing changes.
2. fewer than ``min_feedback`` feedback events in the A/B population since the step began: hold.
3. ``rollback``: step back at once (to the previous step, or to OFF when ``rollback_to`` is ``zero``), without
   waiting out the hold time; reaching OFF pauses the controller (at ratio 0 no new small-tier data can arrive).
4. the step has run less than ``min_hold_s``: hold.
5. ``pass``: the next step (the last step stays: the rollout is complete). ``review`` and ``insufficient_data``
   hold, and say so.

The verdict reads the whole A/B period, not only the current step: the split is a stable hash, independent of the
ratio, so every step's feedback measures the same comparison. A reset starts a new period and so a fresh count.
Every change is an ``AuditEntry`` (time, from, to, why, who, the figures behind it) and bumps ``version``, which the
shared store uses for compare-and-set so that exactly one replica makes each change.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from routeproxy.quality.verdict import Verdict

OFF = -1  # the position below the first step: ratio 0
MAX_HISTORY = 100  # audit entries kept (the oldest go first)


class RollbackTo(enum.StrEnum):
    PREVIOUS = "previous"
    ZERO = "zero"


class Waiting(enum.StrEnum):
    """Why ``evaluate`` left the step where it is."""

    PAUSED = "paused"
    FEEDBACK = "feedback"
    HOLD_TIME = "hold_time"
    REVIEW = "review"
    INSUFFICIENT_DATA = "insufficient_data"
    COMPLETE = "complete"


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    schedule: tuple[float, ...] = (0.1, 0.3, 0.5, 0.8)
    min_hold_s: float = 7 * 24 * 3600.0  # the seed's plan moves one step a week
    min_feedback: int = 200  # feedback events in the A/B population since the step began
    rollback_to: RollbackTo = RollbackTo.PREVIOUS

    def __post_init__(self) -> None:
        if not self.schedule:
            raise ValueError("the schedule needs at least one step")
        if any(not 0 < ratio <= 1 for ratio in self.schedule):
            raise ValueError("every step of the schedule must be above 0 and at most 1")
        if list(self.schedule) != sorted(set(self.schedule)):
            raise ValueError("the schedule must rise strictly")

    def ratio(self, step: int) -> float:
        return 0.0 if step == OFF else self.schedule[step]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float  # epoch seconds
    from_step: int
    to_step: int
    from_ratio: float
    to_ratio: float
    why: str
    by: str  # "controller" or "operator"
    figures: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": datetime.fromtimestamp(self.at, UTC).isoformat(),
            "from_step": self.from_step,
            "to_step": self.to_step,
            "from_ratio": self.from_ratio,
            "to_ratio": self.to_ratio,
            "why": self.why,
            "by": self.by,
            "figures": dict(self.figures),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> AuditEntry:
        return cls(
            at=datetime.fromisoformat(raw["at"]).timestamp(),
            from_step=int(raw["from_step"]),
            to_step=int(raw["to_step"]),
            from_ratio=float(raw["from_ratio"]),
            to_ratio=float(raw["to_ratio"]),
            why=str(raw["why"]),
            by=str(raw["by"]),
            figures=dict(raw.get("figures") or {}),
        )


@dataclass(frozen=True, slots=True)
class RolloutState:
    step: int = 0
    paused: bool = False
    step_since: float = 0.0  # epoch seconds when the current step began
    feedback_at_step: int = 0  # the population's feedback count (of period ``period``) when the step began
    period: int = 0
    history: tuple[AuditEntry, ...] = ()
    version: int = 0  # bumped by every change; the shared store's compare-and-set compares it

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "paused": self.paused,
            "step_since": self.step_since,
            "feedback_at_step": self.feedback_at_step,
            "period": self.period,
            "history": [entry.to_json() for entry in self.history],
            "version": self.version,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RolloutState:
        return cls(
            step=int(raw["step"]),
            paused=bool(raw["paused"]),
            step_since=float(raw["step_since"]),
            feedback_at_step=int(raw["feedback_at_step"]),
            period=int(raw["period"]),
            history=tuple(AuditEntry.from_json(entry) for entry in raw.get("history", ())),
            version=int(raw["version"]),
        )


def initial_state(now: float, *, feedback: int = 0, period: int = 0) -> RolloutState:
    return RolloutState(step=0, step_since=now, feedback_at_step=feedback, period=period)


@dataclass(frozen=True, slots=True)
class Evidence:
    verdict: Verdict
    feedback: int  # feedback events in the A/B population (both tiers) in ``period``
    period: int
    figures: Mapping[str, Any] = field(default_factory=dict)  # what the verdict rests on, for the audit entry


@dataclass(frozen=True, slots=True)
class Outcome:
    state: RolloutState
    entry: AuditEntry | None  # None: nothing changed
    waiting: Waiting | None
    detail: str


def feedback_since_step(state: RolloutState, evidence: Evidence) -> int:
    if evidence.period != state.period:  # a reset since the step began: the new period is all new
        return evidence.feedback
    return max(0, evidence.feedback - state.feedback_at_step)


def _move(
    policy: RolloutPolicy,
    state: RolloutState,
    to_step: int,
    *,
    now: float,
    why: str,
    by: str,
    evidence: Evidence | None,
    paused: bool | None = None,
    figures: Mapping[str, Any] | None = None,
) -> Outcome:
    entry = AuditEntry(
        at=now,
        from_step=state.step,
        to_step=to_step,
        from_ratio=policy.ratio(state.step),
        to_ratio=policy.ratio(to_step),
        why=why,
        by=by,
        figures=dict(figures or {}),
    )
    changed = replace(
        state,
        step=to_step,
        paused=state.paused if paused is None else paused,
        history=(*state.history, entry)[-MAX_HISTORY:],
        version=state.version + 1,
    )
    if to_step != state.step:  # a new step: its hold time and feedback count start now
        changed = replace(
            changed,
            step_since=now,
            feedback_at_step=evidence.feedback if evidence else 0,
            period=evidence.period if evidence else state.period,
        )
    return Outcome(changed, entry, None, why)


def _hold(state: RolloutState, waiting: Waiting | None, detail: str) -> Outcome:
    return Outcome(state, None, waiting, detail)


def evaluate(policy: RolloutPolicy, state: RolloutState, evidence: Evidence, now: float) -> Outcome:
    """One look at the evidence: the step it supports, or why the step stays."""
    if state.paused:
        return _hold(state, Waiting.PAUSED, "paused by the operator" if state.step != OFF else "paused at ratio 0")
    fresh = feedback_since_step(state, evidence)
    figures = {**evidence.figures, "verdict": evidence.verdict.value, "feedback_since_step": fresh}
    if fresh < policy.min_feedback:
        return _hold(state, Waiting.FEEDBACK, f"{fresh} of {policy.min_feedback} feedback events since the step began")
    if evidence.verdict is Verdict.ROLLBACK:
        back = OFF if policy.rollback_to is RollbackTo.ZERO else state.step - 1
        why = f"rollback: {figures.get('reason', 'the degradation is above the rollback threshold')}"
        return _move(
            policy, state, back, now=now, why=why, by="controller", evidence=evidence,
            paused=back == OFF, figures=figures,
        )  # fmt: skip
    held = now - state.step_since
    if held < policy.min_hold_s:
        return _hold(state, Waiting.HOLD_TIME, f"held {held:.0f} s of {policy.min_hold_s:.0f} s")
    if evidence.verdict is Verdict.PASS:
        if state.step >= len(policy.schedule) - 1:
            return _hold(state, Waiting.COMPLETE, "the last step of the schedule passed: the rollout is complete")
        why = f"pass: {figures.get('reason', 'the degradation is below the review threshold')}"
        return _move(
            policy, state, state.step + 1, now=now, why=why, by="controller", evidence=evidence, figures=figures
        )
    if evidence.verdict is Verdict.REVIEW:
        return _hold(state, Waiting.REVIEW, "held for review: the degradation is between the thresholds")
    return _hold(state, Waiting.INSUFFICIENT_DATA, "held: the interval does not yet support a verdict")


def pause(policy: RolloutPolicy, state: RolloutState, now: float, why: str = "paused by the operator") -> Outcome:
    if state.paused:
        return _hold(state, Waiting.PAUSED, "already paused")
    return _move(policy, state, state.step, now=now, why=why, by="operator", evidence=None, paused=True)


def resume(
    policy: RolloutPolicy, state: RolloutState, now: float, evidence: Evidence, why: str = "resumed by the operator"
) -> Outcome:
    """Un-pause. At OFF the ramp starts again from the first step (ratio 0 yields no small-tier data)."""
    if not state.paused:
        return _hold(state, None, "not paused")
    to_step = 0 if state.step == OFF else state.step
    return _move(policy, state, to_step, now=now, why=why, by="operator", evidence=evidence, paused=False)


def override(
    policy: RolloutPolicy,
    state: RolloutState,
    step: int,
    now: float,
    evidence: Evidence,
    why: str = "set by the operator",
) -> Outcome:
    """Put the controller on ``step`` (OFF allowed); its hold time and feedback count start again."""
    if not OFF <= step < len(policy.schedule):
        raise ValueError(f"step must be from {OFF} to {len(policy.schedule) - 1}")
    moved = _move(policy, state, step, now=now, why=why, by="operator", evidence=evidence)
    if step == state.step:  # the same step again: still restart its hold
        restarted = replace(moved.state, step_since=now, feedback_at_step=evidence.feedback, period=evidence.period)
        return Outcome(restarted, moved.entry, None, why)
    return moved
