"""One cacheable request as an ASGI callable around the exchange the pipeline built for it.

In order: join an identical request in flight (``flight.py``); else look in the store, and answer a hit from the
entry (converted to the other framing when that is exact, ``convert.py``); else lead: run the exchange, publish what
it sends to its flight, and store the answer when it is complete and successful (``complete.py``) and came from the
tier the route chose (never a fallback's answer, never an escalation that failed).

A store that does not answer turns the cache off for this request only: it is served as if the cache were off.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import structlog
from starlette.types import Message, Receive, Scope, Send

from routeproxy.cache.complete import body_complete, stream_complete
from routeproxy.cache.controls import Controls
from routeproxy.cache.convert import body_to_stream, stream_to_body
from routeproxy.cache.entry import BadEntry, Entry, decode, encode
from routeproxy.cache.flight import MAX_TURNS, Flight, Flights, State
from routeproxy.cache.keys import CacheKey, Variant
from routeproxy.cache.replay import (
    CACHE_HEADER,
    cache_headers,
    chunk_table,
    retyped,
    send_paced,
    send_stream,
    send_whole,
    watching,
)
from routeproxy.cache.store import CacheStore, CacheUnavailable
from routeproxy.tasks import spawn
from routeproxy.wire.relay import Exchange

log = structlog.get_logger("routeproxy.cache")

# Lookup order per framing asked: the same framing first, then those that may convert exactly.
LOOKUP: dict[Variant, tuple[Variant, ...]] = {
    Variant.BODY: (Variant.BODY, Variant.STREAM_USAGE, Variant.STREAM),
    Variant.STREAM: (Variant.STREAM, Variant.BODY),
    Variant.STREAM_USAGE: (Variant.STREAM_USAGE, Variant.BODY),
}


@dataclass(frozen=True, slots=True)
class CachePlan:
    key: CacheKey
    controls: Controls
    chat: bool  # chat completions: may convert between framings
    choices: int
    ttl_s: float
    request_id: str
    rating_id: str | None = None  # the id feedback names, answered in x-routeproxy-request-id


@dataclass(frozen=True, slots=True)
class Served:
    """A request answered without an upstream call of its own."""

    kind: str  # "hit" or "coalesced"
    tier: str  # the Tier value of the tier that produced the answer
    stream: bool
    status: int
    latency_s: float
    disconnected: bool
    saved_s: float  # what the answer took upstream
    prompt_tokens: int | None
    completion_tokens: int | None
    age_s: float | None = None


class CacheEvents(Protocol):
    def served(self, served: Served) -> None:
        """A hit or a follower was answered (its slot is given back here)."""

    def count(self, name: str, increment: int = 1) -> None:
        """A cache counter: lookups, stores, evictions..."""


@dataclass(slots=True)
class CacheContext:
    store: CacheStore
    flights: Flights
    events: CacheEvents
    max_entry_bytes: int


class CachedExchange:
    def __init__(self, exchange: Exchange, plan: CachePlan, context: CacheContext, started: float) -> None:
        self.exchange = exchange
        self.plan = plan
        self.context = context
        self.started = started
        self.status = "miss"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        plan, flights = self.plan, self.context.flights
        name = plan.key.name
        looked = plan.controls.no_cache
        for _ in range(MAX_TURNS):
            flight = None if plan.controls.no_cache else flights.joinable(name)
            if flight is None and not looked:
                looked = True
                if await self._hit(receive, send):
                    return
                flight = flights.joinable(name)  # one may have started while the store answered
            if flight is None:
                break
            if await self._follow(flight, receive, send):
                return
        await self._lead(flights.lead(name, self.context.max_entry_bytes), scope, receive, send)

    # -- a hit --

    async def _hit(self, receive: Receive, send: Send) -> bool:
        plan, context = self.plan, self.context
        names = [plan.key.of(variant) for variant in (LOOKUP[plan.key.variant] if plan.chat else (plan.key.variant,))]
        try:
            found = await context.store.get(names)
        except CacheUnavailable as exc:
            self._unavailable("get", exc)
            return False
        if found is None:
            return False
        name, data = found
        try:
            entry = decode(data)
        except BadEntry:
            return False
        age = entry.age_s()
        if plan.controls.max_age_s is not None and age > plan.controls.max_age_s:
            return False
        body, stream = self._framed(entry, name)
        if body is None:
            return False
        own = cache_headers(plan.request_id, plan.rating_id, "hit", age)
        stored = entry.headers if stream == entry.stream else retyped(entry.headers, stream)
        left = [False]
        try:
            if not stream:
                await send_whole(send, entry.status, [*stored, *own], body)
            elif entry.stream and plan.controls.pace and entry.chunks:
                async with watching(receive) as left:
                    await send_paced(send, entry, [*stored, *own])
            else:
                await send_stream(send, entry.status, [*stored, *own], body)
        finally:
            self._served("hit", entry.tier, stream, entry, age, left[0])
        return True

    def _framed(self, entry: Entry, name: str) -> tuple[bytes | None, bool]:
        """The entry's bytes in the framing this request asked for (None: no exact conversion)."""
        asked = self.plan.key.variant
        if name == self.plan.key.name:
            return entry.body, entry.stream
        if asked is Variant.BODY:
            return stream_to_body(entry.body), False
        return body_to_stream(entry.body, include_usage=asked is Variant.STREAM_USAGE), True

    def _served(self, kind: str, tier: str, stream: bool, entry: Entry, age: float, disconnected: bool) -> None:
        self.context.events.served(
            Served(
                kind=kind,
                tier=tier,
                stream=stream,
                status=200,
                latency_s=time.perf_counter() - self.started,
                disconnected=disconnected,
                saved_s=entry.upstream_s,
                prompt_tokens=entry.prompt_tokens,
                completion_tokens=entry.completion_tokens,
                age_s=age,
            )
        )

    # -- following an identical request in flight --

    async def _follow(self, flight: Flight, receive: Receive, send: Send) -> bool:
        """Answer from the flight; False when it failed before its response started (then try again)."""
        flight.followers += 1
        left = [False]
        try:
            async with watching(receive) as left:
                while flight.state is State.WAITING:
                    await flight.changed()
                if flight.state is State.FAILED:
                    self.context.flights.land(flight)  # the first follower to wake leads the next try
                    return False
                await self._relay_flight(flight, send)
        finally:
            flight.leave()
            if not flight.failed or left[0]:
                self.context.events.served(
                    Served(
                        kind="coalesced",
                        tier=flight.tier or "",
                        stream=self.plan.key.variant is not Variant.BODY,
                        status=flight.status_sent,
                        latency_s=time.perf_counter() - self.started,
                        disconnected=left[0],
                        saved_s=0.0,
                        prompt_tokens=None,
                        completion_tokens=None,
                    )
                )
        return True

    async def _relay_flight(self, flight: Flight, send: Send) -> None:
        """The flight's response from its first byte, then live until it is over."""
        headers = [*flight.headers, *cache_headers(self.plan.request_id, self.plan.rating_id, "coalesced")]
        if self.plan.key.variant is not Variant.BODY and not any(name == b"x-accel-buffering" for name, _ in headers):
            headers.append((b"x-accel-buffering", b"no"))
        await send({"type": "http.response.start", "status": flight.status, "headers": headers})
        sent = 0
        while True:
            if sent < len(flight.chunks):
                pending = b"".join(flight.chunks[sent:])
                sent = len(flight.chunks)
                await send({"type": "http.response.body", "body": pending, "more_body": True})
                continue
            if flight.over:
                break
            await flight.changed()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # -- leading --

    async def _lead(self, flight: Flight | None, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the exchange; publish it to ``flight`` (None: one is under way that this request may not join, or
        it already followed its turns: it goes alone, with a flight nobody else can see)."""
        own = flight if flight is not None else Flight(self.plan.key.name, self.context.max_entry_bytes)
        exchange = self.exchange
        status_header = self.status.encode()
        if self.status == "miss":
            self.context.events.count("cache_misses")

        async def tee_send(message: Message) -> None:
            result = exchange.result
            own.publish(message, None if result.tier is None else result.tier.value)
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (CACHE_HEADER, status_header)]}
            await send(message)  # uvicorn drops what is sent to a client that left

        async def tee_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and own.followers and not own.over:
                exchange.result.disconnected = True  # counted as the client leaving, whatever follows
                await own.until_nobody_listens()  # the exchange goes on for the followers
            return message

        try:
            await exchange(scope, tee_receive, tee_send)
        finally:
            own.end()
            entry = self._entry(own)
            if entry is None:
                self.context.flights.land(own)
            else:
                spawn(self._store(own, entry), name="cache-store")

    def _entry(self, flight: Flight) -> Entry | None:
        """The flight's answer as an entry, when it may be stored."""
        plan, result = self.plan, self.exchange.result
        if (
            self.status != "miss"
            or plan.controls.no_store
            or flight.state is not State.DONE
            or not flight.joinable
            or flight.status != 200
            or result.upstream_error is not None
            or result.fallback_reason is not None
            or flight.tier is None
        ):
            return None
        body = b"".join(flight.chunks)
        stream = plan.key.variant is not Variant.BODY
        if not (stream_complete(body, plan.choices) if stream else body_complete(body)):
            return None
        return Entry(
            status=200,
            headers=flight.headers,
            body=body,
            stream=stream,
            tier=flight.tier,
            created=time.time(),
            upstream_s=result.end_s,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            chunks=chunk_table(flight.arrivals, flight.chunks) if stream else (),
        )

    async def _store(self, flight: Flight, entry: Entry) -> None:
        context = self.context
        try:
            data = encode(entry)
            evicted = await context.store.put(self.plan.key.name, data, self.plan.ttl_s)
        except CacheUnavailable as exc:
            self._unavailable("put", exc)
        else:
            context.events.count("cache_stores")
            context.events.count("cache_stored_bytes", len(data))
            if evicted:
                context.events.count("cache_evictions", evicted)
        finally:
            context.flights.land(flight)

    def _unavailable(self, what: str, exc: CacheUnavailable) -> None:
        self.status = "bypass"
        self.context.events.count("cache_unavailable")
        log.warning("cache.unavailable", operation=what, error=str(exc), request_id=self.plan.request_id)
