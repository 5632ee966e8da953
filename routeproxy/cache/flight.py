"""Coalescing: identical requests in flight at the same moment share one upstream exchange (in this process).

The first request for a key leads: it runs its own exchange, and every ASGI message it sends its client is also
published to its ``Flight``. Requests that arrive meanwhile follow the flight: they wait for the response to start,
then get every byte from the first one on, live, each at its own client's pace (the flight keeps the bytes until it
ends). Like nginx's ``proxy_cache_lock`` and Varnish's waiting list, but a streamed answer reaches the followers as it
is produced, not once it is complete.

When the leader's response starts with anything but 200 (an error, its own or the upstream's), the followers are not
failed with it: they are released, and the first of them leads the next try. A request follows at most
``MAX_TURNS`` failed flights, then goes upstream on its own: a dead upstream costs each request at most that many
waits. Once a 200 has started, followers share its fate to the end: a stream that breaks breaks for all of them, as
there is no other copy of it to give them.

When the leader's client leaves, the exchange goes on as long as a follower listens (the leader's disconnect is held
back from its exchange until then), so a follower is never cut off by another client leaving.
"""

from __future__ import annotations

import asyncio
import enum
import time

from starlette.types import Message

from routeproxy.cache.entry import shareable_headers

MAX_TURNS = 2


class State(enum.Enum):
    WAITING = "waiting"  # no response yet
    STARTED = "started"  # a 200 started: followers get every byte
    FAILED = "failed"  # ended without a 200 start: followers try again
    DONE = "done"  # the whole response was published
    BROKEN = "broken"  # a 200 started and ended early (the stream broke, or everyone left)


class Flight:
    """One leader's response as it is produced, for the requests that follow it."""

    def __init__(self, name: str, max_bytes: int) -> None:
        self.name = name
        self.max_bytes = max_bytes  # past this, no new follower may join (the bytes from the start may be gone)
        self.state = State.WAITING
        self.status = 0
        self.headers: tuple[tuple[bytes, bytes], ...] = ()
        self.tier: str | None = None
        self.chunks: list[bytes] = []
        self.arrivals: list[float] = []  # perf_counter() of each chunk, for a paced replay of the entry
        self.size = 0
        self.followers = 0
        self.joinable = True
        self._changed = asyncio.Event()

    @property
    def failed(self) -> bool:
        return self.state is State.FAILED

    @property
    def status_sent(self) -> int:
        """The status a follower got (0: none yet)."""
        return 0 if self.state is State.WAITING else self.status

    @property
    def over(self) -> bool:
        return self.state in (State.FAILED, State.DONE, State.BROKEN)

    def publish(self, message: Message, tier: str | None) -> None:
        """One ASGI message the leader sends its client."""
        if message["type"] == "http.response.start":
            self.status = message["status"]
            if self.status == 200:
                self.state, self.tier = State.STARTED, tier
                self.headers = shareable_headers(message.get("headers", []))
            else:
                self.state, self.joinable = State.FAILED, False
        elif self.state is State.STARTED:
            chunk = message.get("body", b"")
            if chunk and self.joinable:
                self.chunks.append(chunk)
                self.arrivals.append(time.perf_counter())
                self.size += len(chunk)
                if self.size > self.max_bytes:
                    self._stop_keeping()
            if not message.get("more_body", False):
                self.state = State.DONE
        self._wake()

    def _stop_keeping(self) -> None:
        """Too large to keep: no one new may join; the bytes go once the followers have them (none yet: now)."""
        self.joinable = False
        if not self.followers:
            self.chunks, self.arrivals = [], []

    def end(self) -> None:
        """The leader's exchange is over: whatever it did not finish, it never will."""
        if self.state is State.WAITING:
            self.state, self.joinable = State.FAILED, False
        elif self.state is State.STARTED:
            self.state = State.BROKEN
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed.clear()  # followers already woken stay woken

    async def changed(self) -> None:
        await self._changed.wait()

    async def until_nobody_listens(self) -> None:
        while self.followers and not self.over:
            await self._changed.wait()

    def leave(self) -> None:
        self.followers -= 1
        self._wake()


class Flights:
    """This process's flights by entry name."""

    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}

    def joinable(self, name: str) -> Flight | None:
        flight = self._flights.get(name)
        return flight if flight is not None and flight.joinable else None

    def lead(self, name: str, max_bytes: int) -> Flight | None:
        """A new flight led by the caller; None when one for ``name`` is already under way."""
        if name in self._flights:
            return None
        flight = self._flights[name] = Flight(name, max_bytes)
        return flight

    def land(self, flight: Flight) -> None:
        """Forget the flight (once its answer is stored, or known not to be)."""
        if self._flights.get(flight.name) is flight:
            del self._flights[flight.name]

    def __len__(self) -> int:
        return len(self._flights)
