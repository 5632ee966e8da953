"""Plug-in signals for the answer check: measurements that need I/O (a scoring model the operator runs), each with a
time budget.

A signal reads the request and the answer view the check reads, and returns activations (signal name -> the logit
it adds per unit of weight, routeproxy.cascade.rules); the check weighs them with the rule set's weights like its
own. ``read_signals`` runs every signal at once, each under its deadline: past it, or on any failure, a signal
gives nothing and the rule set's other signals decide alone. Each reading says how it went (``ok``, ``timeout``,
``error``, or ``skipped`` when the signal does not apply to the answer) and how long it took, for the stats.

The check's own signals (structure, prose, logprobs) are pure and run inline (routeproxy.cascade.check): no budget.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from routeproxy.cascade.view import AnswerView
from routeproxy.tasks import spawn

log = structlog.get_logger(__name__)

OUTCOMES = ("ok", "timeout", "error")


class Signal(abc.ABC):
    """A measurement of the small tier's answer that costs a call; ``deadline_s`` bounds it."""

    name: str
    deadline_s: float
    failures: int = 0  # readings that failed (logged: the first, then every hundredth)

    def applies(self, request: Mapping[str, Any], answer: AnswerView) -> bool:
        """Whether this answer is one the signal reads (a structured answer is judged by its structure alone)."""
        return True

    @abc.abstractmethod
    async def measure(self, request: Mapping[str, Any], answer: AnswerView) -> dict[str, float]:
        """Activations for this answer; raise on anything unexpected (the reading counts as an error)."""

    async def close(self) -> None:
        """Release connections at shutdown."""
        return None


@dataclass(frozen=True, slots=True)
class SignalReading:
    name: str
    outcome: str  # ok, timeout, error, skipped
    ms: float = 0.0
    activations: Mapping[str, float] = field(default_factory=dict)


async def read_signals(
    signals: Sequence[Signal], request: Mapping[str, Any], answer: AnswerView
) -> tuple[dict[str, float], tuple[SignalReading, ...]]:
    """Every signal's activations (merged) and how each reading went; never raises for a signal's failure."""
    if not signals:
        return {}, ()
    tasks = [spawn(_read(signal, request, answer), name=f"signal-{signal.name}") for signal in signals]
    try:
        readings = tuple(await asyncio.gather(*tasks))
    finally:
        for task in tasks:  # the client left (the handler was cancelled): no reading outlives the request
            task.cancel()
    merged: dict[str, float] = {}
    for reading in readings:
        merged.update(reading.activations)
    return merged, readings


async def _read(signal: Signal, request: Mapping[str, Any], answer: AnswerView) -> SignalReading:
    if not signal.applies(request, answer):
        return SignalReading(signal.name, "skipped")
    started = time.perf_counter()
    try:
        async with asyncio.timeout(signal.deadline_s):
            activations = await signal.measure(request, answer)
    except TimeoutError:
        return SignalReading(signal.name, "timeout", (time.perf_counter() - started) * 1000)
    except Exception as exc:  # a signal's own failure never fails the request: the rules decide alone
        signal.failures += 1
        if signal.failures % 100 == 1:
            log.warning("cascade.signal_failed", signal=signal.name, error=repr(exc)[:300], failures=signal.failures)
        return SignalReading(signal.name, "error", (time.perf_counter() - started) * 1000)
    return SignalReading(signal.name, "ok", (time.perf_counter() - started) * 1000, activations)
