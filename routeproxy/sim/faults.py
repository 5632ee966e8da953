"""The simulator's fault controls: the ``x-sim-*`` request headers (parsed into ``Faults``; listed in
``routeproxy.sim.simulator``'s docstring), and the log filter that keeps its deliberate faults from reading as
errors of a proxy in the same process."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from starlette.datastructures import Headers


class BadFault(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Faults:
    status: int | None = None
    error_after: int | None = None
    die_after: int | None = None
    tokens: int | None = None
    ttft_s: float | None = None
    token_s: float | None = None
    hang: bool = False
    answer: str | None = None
    logprob: float | None = None

    @classmethod
    def from_headers(cls, headers: Headers) -> Faults:
        def number(name: str) -> int | None:
            raw = headers.get(name)
            if raw is None:
                return None
            try:
                value = int(raw)
            except ValueError:
                raise BadFault(f"{name} must be a non-negative integer, not {raw!r}") from None
            if value < 0:
                raise BadFault(f"{name} must be a non-negative integer, not {raw!r}")
            return value

        status = number("x-sim-status")
        if status is not None and not 400 <= status <= 599:
            raise BadFault(f"x-sim-status must be 400-599, not {status}")
        ttft_ms, token_ms = number("x-sim-ttft-ms"), number("x-sim-token-ms")
        logprob = headers.get("x-sim-logprob")
        if logprob is not None:
            try:
                chosen: float | None = float(logprob)
            except ValueError:
                chosen = None
            if chosen is None or not -100.0 <= chosen <= 0.0:
                raise BadFault(f"x-sim-logprob must be a number from -100 to 0, not {logprob!r}")
        return cls(
            answer=headers.get("x-sim-answer"),
            logprob=None if logprob is None else float(logprob),
            status=status,
            error_after=number("x-sim-error-after"),
            die_after=number("x-sim-die-after"),
            tokens=number("x-sim-tokens"),
            ttft_s=None if ttft_ms is None else ttft_ms / 1000,
            token_s=None if token_ms is None else token_ms / 1000,
            hang=headers.get("x-sim-hang", "").strip().lower() in ("1", "true", "yes"),
        )


SIMULATOR_THREAD = "simulator"  # the thread-name prefix of in-process simulators (serve --simulate)
# What uvicorn says when x-sim-die-after drops a response on purpose.
_DROPPED = "ASGI callable returned without completing response."


class DeliberateFaults(logging.Filter):
    """uvicorn's logger is one per process: an in-process simulator's deliberate drop would read as an error of
    the proxy's own server. This turns that one message, from a simulator's thread (or from any thread, in a
    process that is only a simulator), into an info line of the simulator. The in-process simulators' own start-up
    and shutdown lines (info) are dropped: the proxy says once that they run, and they stop with it. Anything else
    stays as it is."""

    def __init__(self, *, any_thread: bool = False) -> None:
        super().__init__()
        self.any_thread = any_thread

    def filter(self, record: logging.LogRecord) -> bool:
        in_process = (record.threadName or "").startswith(SIMULATOR_THREAD)
        if in_process and record.levelno < logging.WARNING:
            return False
        ours = self.any_thread or in_process
        if ours and record.getMessage() == _DROPPED:
            record.name, record.levelno, record.levelname = "routeproxy.simulator", logging.INFO, "INFO"
            record.msg, record.args = "simulated fault: the response was dropped on purpose (x-sim-die-after)", ()
        return True
