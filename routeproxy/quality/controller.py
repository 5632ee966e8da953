"""Runs the rollout state machine (rollout.py) against the shared totals, once for all replicas.

Every replica runs the same loop: read the period's totals, analyse them, evaluate the stored state. A change is
written with compare-and-set on the state's version, in one Lua step that also sets the shared ``ab_test_ratio``:
when several replicas reach the same change, exactly one write succeeds (that replica logs it); the others find
the version moved, reload, and see the new step. The other replicas' request paths pick the ratio up at their next
counter flush (every 0.5 s), through the shared runtime config. The state lives in Redis, so it survives restarts.
Without Redis it lives in this process.

One clock: every time the controller reads or writes (the hold, a step's start, the audit entries, ``held_s``) is
the store's, Redis's ``TIME`` read with the state, so a replica whose own clock is off cannot shorten a hold.

Losing the store. Each replica remembers the last state it read and the last shared ratio its counter flush saw.
When Redis comes back empty (restarted without persistence, flushed), the request path routes at no more than the
last ratio it saw (``fallback_ratio``), and the controller writes the state back at the lower of its last known
step and the step of that ratio, with the hold started again and an audit entry saying so (compare-and-set against
what is stored, so one replica writes it and the others load it). Versions only grow, so a stored state older than
one a replica knew is also a lost one: the replica that knew most writes its history back at its next look. So is
a stored state of the version a replica knew whose last change is another one: written back by a replica that had
missed that change (say an operator's rollback); the replica that saw it writes its own history back, one version
higher. A replica that knows nothing (started while Redis was empty) starts the rollout at its first step.
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from routeproxy.counters.stats import Snapshot
from routeproxy.counters.store import CounterStore
from routeproxy.errors import CounterStoreUnavailable
from routeproxy.quality.analysis import Analysis
from routeproxy.quality.rollout import (
    MAX_HISTORY,
    OFF,
    AuditEntry,
    Evidence,
    Outcome,
    RollbackTo,
    RolloutPolicy,
    RolloutState,
    Waiting,
    evaluate,
    feedback_since_step,
    initial_state,
    override,
    pause,
    resume,
)
from routeproxy.settings import Settings
from routeproxy.settings.runtime import RuntimeConfig
from routeproxy.tasks import Repeating

log = structlog.get_logger("routeproxy")


class RolloutStore(abc.ABC):
    """Where the rollout state lives, and the clock the controller reads. A store that cannot answer raises
    CounterStoreUnavailable."""

    @abc.abstractmethod
    async def read(self) -> tuple[RolloutState | None, float]:
        """The stored state and the store's clock (epoch seconds) at the read."""

    async def load(self) -> RolloutState | None:
        return (await self.read())[0]

    @abc.abstractmethod
    async def save(self, state: RolloutState, expected: int | None, ratio: float) -> bool:
        """Store ``state`` and the shared ratio if the stored version is still ``expected`` (None: nothing
        stored); False when another replica changed it first."""

    async def close(self) -> None:
        """Release connections."""
        return None


class MemoryRolloutStore(RolloutStore):
    """This process's state and clock (no Redis: one process, one clock)."""

    def __init__(self, counters: CounterStore, clock: Callable[[], float] = time.time) -> None:
        self.counters = counters
        self.clock = clock
        self._state: RolloutState | None = None

    async def read(self) -> tuple[RolloutState | None, float]:
        return self._state, self.clock()

    async def save(self, state: RolloutState, expected: int | None, ratio: float) -> bool:
        if (None if self._state is None else self._state.version) != expected:
            return False
        self._state = state
        await self.counters.set_runtime(RuntimeConfig(ab_test_ratio=ratio))
        return True


def _superseded(stored: RolloutState, known: RolloutState) -> bool:
    """Whether ``stored`` is what is left of a lost state this replica knew: an older version, or the same version
    with another last change (every change appends its audit entry: time, step and reason tell two apart)."""
    if stored.version != known.version:
        return stored.version < known.version
    return _last_change(stored) != _last_change(known)


def _last_change(state: RolloutState) -> tuple[str, int, str] | None:
    """The last audit entry as the store keeps it: its time as stored (to the microsecond), so a state this replica
    wrote and the same state read back compare equal."""
    entry = state.history[-1] if state.history else None
    return None if entry is None else (entry.to_json()["at"], entry.to_step, entry.why)


@dataclass(frozen=True, slots=True)
class Action:
    """An operator's change: pause, resume, or a step (OFF = -1 allowed)."""

    paused: bool | None = None
    step: int | None = None
    why: str | None = None


class RolloutController:
    def __init__(
        self,
        policy: RolloutPolicy,
        store: RolloutStore,
        counters: CounterStore,
        analyse: Callable[[Snapshot], Analysis],
        *,
        enabled: bool,
        interval_s: float,
    ) -> None:
        self.policy = policy
        self.store = store
        self.counters = counters
        self.analyse = analyse
        self.enabled = enabled
        self.interval_s = interval_s
        self.state: RolloutState | None = None
        self.known: RolloutState | None = None  # the last state read or written: kept when the store loses it
        self.last_ratio: float | None = None  # the last shared ab_test_ratio this replica's counter flush saw
        self._clock = (time.time(), time.monotonic())  # the store's clock at the last read, and when that was
        self.last: Outcome | None = None
        self.last_evidence: Evidence | None = None
        self.acted = 0  # changes this replica wrote (the others lost the compare-and-set or had nothing to do)
        self._loop = Repeating(self._look, interval_s, "rollout-controller")

    async def start(self) -> None:
        with contextlib.suppress(CounterStoreUnavailable):
            await self._read()
        if self.enabled:
            self._loop.start(at_once=True)

    async def _look(self) -> None:
        try:
            await self.tick()
        except CounterStoreUnavailable as exc:
            log.info("rollout.store_unavailable", error=repr(exc))

    async def close(self) -> None:
        await self._loop.stop()
        await self.store.close()

    async def _read(self) -> RolloutState | None:
        state, now = await self.store.read()
        self._clock = (now, time.monotonic())
        self.state = state
        # Versions only grow: a stored state older than one this replica saw, or of the same version but another
        # last change, is what is left of a lost one (``tick`` writes this replica's history back).
        if state is not None and (self.known is None or not _superseded(state, self.known)):
            self.known = state
        return state

    def now(self) -> float:
        """The store's clock: its last reading plus the time elapsed since on this host's monotonic clock."""
        read_at, monotonic_at = self._clock
        return read_at + (time.monotonic() - monotonic_at)

    def observe(self, runtime: RuntimeConfig) -> None:
        """After every counter flush: the shared runtime config the request path routes with."""
        if runtime.ab_test_ratio is not None:
            self.last_ratio = runtime.ab_test_ratio

    def fallback_ratio(self, configured: float) -> float:
        """What the request path routes at while the shared config holds no ratio. With the rollout on, never more
        than the last ratio this replica saw (Redis may have lost the controller's state), or than the first step
        when it saw none."""
        if not self.enabled:
            return configured
        ceiling = self.policy.ratio(0) if self.last_ratio is None else self.last_ratio
        return min(configured, ceiling)

    def _step_at_most(self, ratio: float) -> int:
        """The highest step whose ratio is not above ``ratio`` (OFF below the first)."""
        return max((step for step, value in enumerate(self.policy.schedule) if value <= ratio + 1e-12), default=OFF)

    def _resumed(self, known: RolloutState, stored: RolloutState | None, now: float, evidence: Evidence) -> Outcome:
        """The state written back after the store lost it: the last known step or lower, the hold started again.
        ``stored``: what the store holds instead (None, or an older state another replica wrote back)."""
        step = known.step if self.last_ratio is None else min(known.step, self._step_at_most(self.last_ratio))
        found = "nothing" if stored is None else f"version {stored.version}"
        why = (
            f"the stored rollout state was lost (Redis restarted empty or was flushed; it held {found}, this replica "
            f"knew version {known.version}): resumed at step {step}, the last step this replica knew"
            f"{' or the ratio it last routed at' if step < known.step else ''}; "
            "the hold and the feedback count start again"
        )
        entry = AuditEntry(
            now, known.step, step, self.policy.ratio(known.step), self.policy.ratio(step), why, "controller",
            {"feedback": evidence.feedback, "last_known_version": known.version},
        )  # fmt: skip
        resumed = replace(
            known, step=step, step_since=now, feedback_at_step=evidence.feedback, period=evidence.period,
            history=(*known.history, entry)[-MAX_HISTORY:], version=known.version + 1,
        )  # fmt: skip
        if stored is not None and stored.version >= resumed.version:
            resumed = replace(resumed, version=stored.version + 1)  # above what is stored, or the others keep it
        # The write is compare-and-set against what is stored: one replica writes it, the others load it; a replica
        # that knew a later version than the one written back replaces it at its next look.
        return Outcome(resumed, entry, None, why)

    async def evidence(self) -> Evidence | None:
        snapshot = await self.counters.snapshot()
        if snapshot.stale:  # the shared totals could not be read: never act on one replica's numbers
            return None
        return evidence_of(self.analyse(snapshot), snapshot.period)

    async def tick(self) -> AuditEntry | None:
        """One look: start the rollout if nothing is stored, else evaluate; returns the change this replica made."""
        evidence = await self.evidence()
        if evidence is None:
            return None
        self.last_evidence = evidence
        state = await self._read()
        known, now = self.known, self.now()
        if known is not None and (state is None or _superseded(state, known)):
            outcome = self._resumed(known, state, now, evidence)
        elif state is None:
            started = initial_state(now, feedback=evidence.feedback, period=evidence.period)
            entry = AuditEntry(
                now, -1, 0, 0.0, self.policy.ratio(0), "rollout enabled: starting at the first step", "controller",
                {"feedback": evidence.feedback},
            )  # fmt: skip
            outcome = Outcome(replace(started, history=(entry,), version=1), entry, None, entry.why)
        else:
            outcome = evaluate(self.policy, state, evidence, now)
        return await self._commit(state, outcome)

    async def _commit(self, before: RolloutState | None, outcome: Outcome) -> AuditEntry | None:
        if outcome.entry is None:
            self.state, self.last = outcome.state, outcome
            return None
        expected = None if before is None else before.version
        if await self.store.save(outcome.state, expected, self.policy.ratio(outcome.state.step)):
            self.state, self.known, self.last = outcome.state, outcome.state, outcome
            self.acted += 1
            entry = outcome.entry
            log.info(
                "rollout_step", from_ratio=entry.from_ratio, to_ratio=entry.to_ratio, from_step=entry.from_step,
                to_step=entry.to_step, by=entry.by, why=entry.why, figures=dict(entry.figures),
            )  # fmt: skip
            return entry
        await self._read()  # another replica moved first
        return None

    async def operate(self, action: Action) -> RolloutState:
        """Apply an operator's change (compare-and-set, retried when a replica moves at the same moment)."""
        for _ in range(5):
            evidence = self.last_evidence or await self.evidence()
            if evidence is None:
                raise CounterStoreUnavailable("the shared store does not answer: the rollout cannot change now")
            stored = await self._read()
            now = self.now()
            state = stored or initial_state(now, feedback=evidence.feedback, period=evidence.period)
            outcome: Outcome | None = None
            if action.step is not None:
                outcome = override(self.policy, state, action.step, now, evidence, action.why or "set by the operator")
                state_after = outcome.state
            else:
                state_after = state
            if action.paused is True:
                outcome = pause(self.policy, state_after, now, action.why or "paused by the operator")
            elif action.paused is False:
                outcome = resume(self.policy, state_after, now, evidence, action.why or "resumed by the operator")
            if outcome is None or outcome.entry is None:
                return state_after
            if await self.store.save(
                outcome.state, None if stored is None else stored.version, self.policy.ratio(outcome.state.step)
            ):
                self.state = self.known = outcome.state
                entry = outcome.entry
                log.info(
                    "rollout_step", from_ratio=entry.from_ratio, to_ratio=entry.to_ratio, by="operator", why=entry.why
                )
                return outcome.state
        raise CounterStoreUnavailable("the rollout state kept changing under this request; try again")

    @property
    def driving(self) -> bool:
        """True while the controller sets the ratio (enabled and not paused)."""
        return self.enabled and not (self.state is not None and self.state.paused)

    async def refresh(self) -> None:
        with contextlib.suppress(CounterStoreUnavailable):
            await self._read()

    def describe(self, evidence: Evidence | None = None) -> dict[str, Any]:
        """The ``rollout`` block of the stats JSON (see SPEC); ``evidence`` defaults to the last look's."""
        state, policy = self.state, self.policy
        active = self.enabled and state is not None
        evidence = evidence or self.last_evidence
        waiting: Waiting | None = None
        status: str | None = None
        if active and state is not None and evidence is not None:
            outcome = evaluate(policy, state, evidence, self.now())
            waiting, status = outcome.waiting, outcome.detail
        return {
            "enabled": self.enabled,
            "paused": bool(state and state.paused),
            "step_index": state.step if active and state else None,
            "ratio": policy.ratio(state.step) if active and state else None,
            "schedule": list(policy.schedule),
            "step_since": datetime.fromtimestamp(state.step_since, UTC).isoformat() if active and state else None,
            "held_s": round(self.now() - state.step_since, 1) if active and state else None,
            "min_hold_s": policy.min_hold_s,
            "feedback_since_step": feedback_since_step(state, evidence) if active and state and evidence else None,
            "min_feedback_per_step": policy.min_feedback,
            "rollback_to": policy.rollback_to.value,
            "waiting_for": None if waiting is None else waiting.value,
            "status": status,
            "version": state.version if state else 0,
            "history": [entry.to_json() for entry in state.history] if state else [],
        }


def evidence_of(analysis: Analysis, period: int) -> Evidence:
    return Evidence(analysis.verdict, analysis.feedback_events, period, analysis.figures())


def policy_of(settings: Settings) -> RolloutPolicy:
    rollout = settings.routing.rollout
    return RolloutPolicy(
        schedule=rollout.schedule,
        min_hold_s=rollout.min_hold_s,
        min_feedback=rollout.min_feedback,
        rollback_to=RollbackTo(rollout.rollback_to),
    )
