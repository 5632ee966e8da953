"""How a simulated answer goes out and how its end is counted: the stats behind ``GET /_sim/stats``, the ticket
that one answer holds while it is sent, the paced stream of a planned answer, and waiting on the client.

In the stats an answer in progress, streamed or not, is an "open stream"; it ends as completed (the whole body was
sent, an in-stream error event included) or disconnected (the client went away first). A stream dropped by
``x-sim-die-after`` ends as neither.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import AsyncGenerator, Iterator

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from routeproxy.sim.wire import Json

# (offset from the request in seconds, event bytes) in order; None means drop the connection there.
Plan = Iterator[tuple[float, bytes | None]]

_LOG_SIZE = 100
_MIN_SLEEP_S = 0.0005  # below this, pacing runs ahead on the schedule instead of arming a timer


class Outcome(enum.Enum):
    COMPLETED = "completed"
    DISCONNECTED = "disconnected"
    DROPPED = "dropped"


class Drop(Exception):
    """Raised inside a stream to end it without its final chunk (x-sim-die-after)."""


class SimStats:
    def __init__(self) -> None:
        self.log: deque[Json] = deque(maxlen=_LOG_SIZE)
        self.requests = 0
        self.open = 0
        self.completed = 0
        self.disconnected = 0
        self.running_ids: set[str] = set()

    def as_json(self) -> Json:
        return {
            "open_streams": self.open,
            "completed_streams": self.completed,
            "disconnected_streams": self.disconnected,
            "requests": self.requests,
        }


class Ticket:
    """One answer in progress. ``close`` is idempotent: whichever of the generator and the response ends first
    records the outcome."""

    __slots__ = ("answer_id", "closed", "stats")

    def __init__(self, stats: SimStats, answer_id: str) -> None:
        self.stats, self.answer_id, self.closed = stats, answer_id, False
        stats.open += 1
        if answer_id:
            stats.running_ids.add(answer_id)

    def close(self, outcome: Outcome) -> None:
        if self.closed:
            return
        self.closed = True
        self.stats.open -= 1
        self.stats.running_ids.discard(self.answer_id)
        if outcome is Outcome.COMPLETED:
            self.stats.completed += 1
        elif outcome is Outcome.DISCONNECTED:
            self.stats.disconnected += 1


class SimStream(StreamingResponse):
    """Starlette's StreamingResponse (which cancels the body on http.disconnect under ASGI spec < 2.4), plus
    deterministic close-out: the ticket is always closed, and a Drop ends the app without completing the
    response, so uvicorn closes the connection mid-body."""

    def __init__(self, events: AsyncGenerator[bytes, None], ticket: Ticket, headers: dict[str, str]) -> None:
        super().__init__(events, headers=headers)
        self.events, self.ticket = events, ticket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except Drop:
            return
        finally:
            await self.events.aclose()
            self.ticket.close(Outcome.DISCONNECTED)


async def paced(plan: Plan, ticket: Ticket, keepalive_s: float | None) -> AsyncGenerator[bytes, None]:
    """The plan's events, each at its offset, with a ":\\n\\n" comment after every ``keepalive_s`` idle seconds."""
    loop = asyncio.get_running_loop()
    start = last = loop.time()
    outcome = Outcome.DISCONNECTED
    try:
        for offset, data in plan:
            due = start + offset
            while keepalive_s is not None and due - last > keepalive_s:
                last += keepalive_s
                await asyncio.sleep(max(0.0, last - loop.time()))
                yield b":\n\n"
            delay = due - loop.time()
            if delay > _MIN_SLEEP_S:
                await asyncio.sleep(delay)
            if data is None:
                outcome = Outcome.DROPPED
                raise Drop
            yield data
            last = loop.time()
        outcome = Outcome.COMPLETED
    finally:
        ticket.close(outcome)


async def truncated(head: bytes, ticket: Ticket) -> AsyncGenerator[bytes, None]:
    """A body cut short: ``head``, then the connection drops."""
    yield head
    ticket.close(Outcome.DROPPED)
    raise Drop


async def until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def sleep_unless_disconnect(receive: Receive, seconds: float) -> bool:
    """Sleep; False if the client went away first (the request body must already have been read)."""
    if seconds <= 0:
        return True
    with anyio.move_on_after(seconds):
        await until_disconnect(receive)
        return False
    return True
