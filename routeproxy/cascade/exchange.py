"""Cascade mode: the small tier answers first, and the answer check decides whether the large tier answers instead.

Non-streamed: the whole small answer is read and checked before anything is sent. Below the threshold it goes to
the client; at or above it the large tier is asked and the client gets its answer.

Streamed: the client gets exactly one upstream's event stream, byte for byte. The small tier's events are held
until the check can decide: ``cascade.hold_tokens`` content tokens, ``cascade.hold_ms``, or the end of the answer,
whichever comes first. Then either the held bytes go out unchanged and the rest is relayed as in classify mode, or
the small tier's connection is closed (its server stops generating) and the large tier's stream is relayed.

The large tier is asked before the small connection is closed: if it fails before answering, the client still gets
the small answer, with ``x-routeproxy-fallback: escalation_<reason>``. Never more than one escalation. A small tier
that fails before answering, or breaks off during the hold, is a fallback, not an escalation. The response headers
go out after the decision, so they always describe it. A client that leaves during the hold cancels the handler
(relay.Exchange's watcher); every upstream request still open is then closed.

The one body rewrite: with ``cascade.request_logprobs`` the small tier is asked for logprobs the client did not ask
for, and they are removed from what the client gets (``strip_logprobs``).

Before the check, the plug-in signals (a verifier, routeproxy.cascade.signals) read the same answer, each under its
deadline: inside the hold for a stream, so their time adds to the first byte's. With ``cascade.explore_share`` a
stable share of the answers the check would escalate are kept on the small tier instead and marked explored
(``x-routeproxy-reason: ...; explored``), so feedback rates the small tier's answers at every score.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import Send

from routeproxy.cascade.check import (
    CHECK_INLINE_CHARS,
    AnswerCheck,
    AnswerView,
    CheckRules,
    StreamAnswer,
    answer_from_body,
    check_answer,
)
from routeproxy.cascade.signals import Signal, SignalReading, read_signals
from routeproxy.errors import UpstreamError
from routeproxy.settings import Tier
from routeproxy.tasks import spawn
from routeproxy.wire.offload import Offload
from routeproxy.wire.relay import CascadeOutcome, Exchange, Prepare, RelayResult, event_too_large
from routeproxy.wire.sse import (
    DONE,
    body_usage,
    event_payloads,
    last_event_end,
    parse_event,
    stream_usage,
    strip_logprobs_body,
    strip_logprobs_events,
)
from routeproxy.wire.upstream import RawHeaders, UpstreamPool, UpstreamResponse


@dataclass(frozen=True, slots=True)
class CascadePlan:
    """What one cascade request needs besides the exchange: the client's body and the check's settings."""

    request: Mapping[str, Any]  # the client's chat body (routing hints removed), as the check reads it
    rules: CheckRules
    hold_tokens: int
    hold_s: float
    strip_logprobs: bool  # the small tier was asked for logprobs the client did not ask for
    signals: tuple[Signal, ...] = ()  # plug-in signals read before the check (routeproxy.cascade.signals)
    explore: bool = False  # this request is in cascade.explore_share: kept on the small tier whatever the check says
    offload: Offload | None = None  # a long answer is checked off the event loop


def decorate(headers: RawHeaders, check: AnswerCheck, *, escalated: bool, explored: bool = False) -> RawHeaders:
    """The response headers with the check's outcome: escalated or not, its reasons after the routing reason
    (then ``; explored`` when it would have escalated but was kept to be rated), its score. ``headers`` already
    say ``x-routeproxy-mode: cascade`` and ``x-routeproxy-escalated: false``."""
    reasons = ",".join(check.reasons) or "none"
    if explored:
        reasons += "; explored"
    out: RawHeaders = []
    for name, value in headers:
        if name == b"x-routeproxy-reason":
            value = value + b"; check: " + reasons.encode()
        elif name == b"x-routeproxy-escalated":
            value = b"true" if escalated else b"false"
        out.append((name, value))
    out.append((b"x-routeproxy-check-score", f"{check.score:.4f}".encode()))
    return out


class _Hold:
    """The small tier's stream until the check can decide.

    ``pull`` runs in a task, so ``hold_ms`` can end the hold without cutting a read in half: a chunk that arrives
    after the release is kept in ``late`` and relayed first.
    """

    def __init__(self, chunks: AsyncIterator[bytes], hold_tokens: int, small: UpstreamResponse) -> None:
        self.chunks = chunks
        self.hold_tokens = hold_tokens
        self.small = small
        self.answer = StreamAnswer()
        self.events = bytearray()  # complete events held
        self.tail = b""  # the start of an event not complete yet
        self.late: list[bytes] = []
        self.released = False
        self.done = False  # the [DONE] event came
        self.exhausted = False  # the body ended
        self.error: str | None = None  # the upstream's in-stream error event
        self.first_byte_at: float | None = None

    @property
    def decided(self) -> bool:
        answer = self.answer
        return (
            self.done or self.exhausted or self.error is not None or answer.ended or answer.tokens >= self.hold_tokens
        )

    def view(self) -> AnswerView:
        """The answer held so far; whole when the stream ended, even without a finish_reason."""
        return self.answer.view(stream_ended=self.done or self.exhausted)

    async def pull(self) -> None:
        while not self.decided:
            try:
                chunk = await anext(self.chunks)
            except StopAsyncIteration:
                self.exhausted = True
                return
            if self.first_byte_at is None:
                self.first_byte_at = time.perf_counter()
            if self.released:
                self.late.append(chunk)
                return
            self._add(chunk)

    def _add(self, chunk: bytes) -> None:
        data = self.tail + chunk
        cut = last_event_end(data)
        complete, self.tail = data[:cut], data[cut:]
        if len(self.tail) > self.small.config.max_event_bytes:  # the relay's bound on one event, held or not
            raise event_too_large(self.small)
        self.events += complete
        for payload in event_payloads(complete):
            if payload == DONE:
                self.done = True
                continue
            event = parse_event(payload)
            if event is None:
                continue
            if "error" in event and "choices" not in event:
                self.error = orjson.dumps(event["error"]).decode()
            self.answer.add(event)

    async def rest(self, reading: asyncio.Task[None]) -> AsyncIterator[bytes]:
        """After the release: the read in flight, the bytes not yet relayed, then the rest of the body."""
        await reading  # raises the upstream's error, if the read in flight failed
        if self.tail:
            yield self.tail
        for chunk in self.late:
            yield chunk
        if not self.exhausted:
            async for chunk in self.chunks:
                yield chunk


class CascadeExchange(Exchange):
    """One cascade request: the small tier first, checked, and at most one escalation to the large tier."""

    def __init__(
        self,
        pool: UpstreamPool,
        fallback: Tier | None,
        prepare: Prepare,
        client_headers: RawHeaders,
        started: float,
        on_finish: Callable[[RelayResult], None],
        plan: CascadePlan,
    ) -> None:
        super().__init__(pool, Tier.SMALL, fallback, prepare, client_headers, started, on_finish)
        self.plan = plan
        self.small_started = 0.0
        self.escalated_at = 0.0
        self.readings: tuple[SignalReading, ...] = ()
        self.explored = False

    async def _exchange(self, send: Send) -> None:
        self.small_started = time.perf_counter()
        try:
            upstream = await self._open()
        except UpstreamError as exc:
            await self._send_error(exc, send)
            return
        if self.result.tier is not Tier.SMALL or upstream.status != 200:
            # The small tier failed before answering and the large one answered (a fallback), or the small tier
            # answered an error of its own: relayed as in classify mode, unchecked.
            await self._relay_then_close(upstream, send)
            return
        self.result.status = upstream.status
        if upstream.event_stream:
            self.result.stream = True
            await self._cascade_stream(upstream, send)
        else:
            await self._cascade_whole(upstream, send)

    async def _cascade_whole(self, small: UpstreamResponse, send: Send) -> None:
        failure: UpstreamError | None = None
        try:
            body = await small.read()
        except UpstreamError as exc:
            failure, body = exc, b""
        finally:
            await small.aclose()  # before the large tier is asked, and when the client leaves
        if failure is not None:
            await self._fall_back(failure.reason, failure, send)
            return
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            document = None
        view = answer_from_body(document) if isinstance(document, dict) else AnswerView("", complete=True)
        check = await self._check(view)
        decided_at = time.perf_counter()
        client_body = strip_logprobs_body(body) if self.plan.strip_logprobs else body
        if check.escalate and not self.explored:
            large = await self._escalate(check)
            if isinstance(large, UpstreamResponse):
                prompt, completion = body_usage(body) or (None, None)
                self._note(check, decided_at, prompt=prompt, completion=completion)
                await self._relay_then_close(large, send)
                return
            self._escalation_failed(check, large)
        else:
            self._note(check, None)
            self.extra_headers = decorate(self.extra_headers, check, escalated=False, explored=self.explored)
        await self._send_whole(small, client_body, send)

    async def _cascade_stream(self, small: UpstreamResponse, send: Send) -> None:
        hold = _Hold(small.chunks(), self.plan.hold_tokens, small)
        reading = spawn(hold.pull(), name="cascade-hold")
        small_open = True
        try:
            await asyncio.wait({reading}, timeout=self.plan.hold_s)
            failure = reading.exception() if reading.done() else None
            if failure is not None:
                if isinstance(failure, UpstreamError):
                    await self._fall_back(failure.reason, failure, send)
                    return
                raise failure
            hold.released = True
            if hold.error is not None:
                if self.fallback is not None:
                    await small.aclose()
                    small_open = False
                    await self._fall_back("stream_error", None, send)
                else:  # the small tier's own error event reaches the client, as in classify mode; nothing to check
                    await self._relay_stream(small, send, bytes(hold.events), hold.rest(reading))
                return
            check = await self._check(hold.view())
            decided_at = time.perf_counter()
            hold_ms = (decided_at - (hold.first_byte_at or decided_at)) * 1000
            if check.escalate and not self.explored:
                large = await self._escalate(check)
                if isinstance(large, UpstreamResponse):
                    await _stop(reading)
                    await small.aclose()  # the small tier's server sees the connection close and stops
                    small_open = False
                    usage = stream_usage(bytes(hold.events))
                    prompt = usage[0] if usage else None
                    self._note(check, decided_at, hold_ms, prompt=prompt, completion=hold.answer.tokens)
                    await self._relay_then_close(large, send)
                    return
                self._escalation_failed(check, large, hold_ms)
            else:
                self._note(check, None, hold_ms)
                self.extra_headers = decorate(self.extra_headers, check, escalated=False, explored=self.explored)
            strip = strip_logprobs_events if self.plan.strip_logprobs else None
            held = bytes(hold.events)
            if held:
                self.result.ttfb_s = time.perf_counter() - self.started
            await self._relay_stream(small, send, strip(held) if strip else held, hold.rest(reading), strip)
        finally:
            await _stop(reading)
            if small_open:
                await small.aclose()

    async def _check(self, view: AnswerView) -> AnswerCheck:
        """The plug-in signals' readings (each under its deadline), then the check on the view and on them."""
        extra, self.readings = await read_signals(self.plan.signals, self.plan.request, view)
        plan = self.plan
        if plan.offload is None:
            check = check_answer(plan.request, view, plan.rules, extra)
        else:
            inline = len(view.text) <= CHECK_INLINE_CHARS
            check = await plan.offload.run(inline, check_answer, plan.request, view, plan.rules, extra)
        self.explored = check.escalate and self.plan.explore
        return check

    def _outcome(self, check: AnswerCheck, **fields: Any) -> CascadeOutcome:
        signals = tuple((reading.name, reading.outcome, reading.ms) for reading in self.readings)
        return CascadeOutcome(
            score=check.score,
            reasons=check.reasons,
            explored=self.explored,
            rules=self.plan.rules.name,
            activations=check.activations,
            signals=signals,
            **fields,
        )

    async def _escalate(self, check: AnswerCheck) -> UpstreamResponse | str:
        """Ask the large tier; its response once it answered 200, else why it failed."""
        body, headers = self.prepare(Tier.LARGE, None)
        self.escalated_at = time.perf_counter()
        try:
            large = await self.pool.send(Tier.LARGE, body, self.client_headers)
        except UpstreamError as exc:
            return exc.reason
        if large.status != 200:
            await large.aclose()
            return f"status_{large.status}"
        self.result.tier = Tier.LARGE
        self.extra_headers = decorate(headers, check, escalated=True)
        return large

    def _escalation_failed(self, check: AnswerCheck, reason: str, hold_ms: float | None = None) -> None:
        """The large tier failed after the check escalated: the client gets the small answer, and is told so."""
        self.result.fallback_reason = f"escalation_{reason}"
        self.extra_headers = [
            *decorate(self.extra_headers, check, escalated=False),
            (b"x-routeproxy-fallback", self.result.fallback_reason.encode()),
        ]
        self.result.cascade = self._outcome(check, escalated=False, escalation_failed=True, hold_ms=hold_ms)

    def _note(
        self,
        check: AnswerCheck,
        decided_at: float | None,
        hold_ms: float | None = None,
        *,
        prompt: int | None = None,
        completion: int | None = None,
    ) -> None:
        """Record what the check did; ``decided_at`` is set when it escalated."""
        if decided_at is None:
            self.result.cascade = self._outcome(check, escalated=False, hold_ms=hold_ms)
            return
        self.result.cascade = self._outcome(
            check,
            escalated=True,
            hold_ms=hold_ms,
            small_ms=(decided_at - self.small_started) * 1000,
            added_ms=(self.escalated_at - self.started) * 1000,
            small_prompt_tokens=prompt,
            small_completion_tokens=completion,
        )

    async def _fall_back(self, reason: str, error: UpstreamError | None, send: Send) -> None:
        """The small tier broke off before anything was sent: the large tier answers when fallback is on (a fallback,
        not an escalation), else the client gets the error."""
        if self.fallback is None:
            assert error is not None  # an in-stream error event is only passed here when fallback is on
            await self._send_error(error, send)
            return
        self.result.fallback_reason = reason
        body, self.extra_headers = self.prepare(Tier.LARGE, reason)
        self.result.tier = Tier.LARGE
        self.result.stream = False
        try:
            large = await self.pool.send(Tier.LARGE, body, self.client_headers)
        except UpstreamError as exc:
            await self._send_error(exc, send)
            return
        await self._relay_then_close(large, send)


async def _stop(reading: asyncio.Task[None]) -> None:
    """End the hold's read task (a read in flight is abandoned) and collect its outcome."""
    if not reading.done():
        reading.cancel()
        await asyncio.wait({reading})
    if not reading.cancelled():
        reading.exception()  # retrieved here, so asyncio does not log it as never retrieved
