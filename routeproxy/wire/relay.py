"""The exchange with the upstream, as an ASGI callable: send the request, relay the answer, note the outcome.

Streams are relayed as the upstream sends them: each upstream chunk is passed on at once, unparsed and
unchanged. One exception keeps clients safe: bytes after the last complete SSE event (``\\n\\n``) are held until
the event completes. A client cannot act on half an event anyway, and if the upstream then breaks, the client
gets one well-formed ``data: {"error": …}`` event instead of half a JSON line (which the OpenAI SDK would choke
on). vLLM and TGI write whole events per chunk, so in practice nothing is held.

While the exchange runs, a watcher listens for the client's ``http.disconnect``; when it comes, the upstream
request is cancelled and its connection closed, so vLLM stops generating.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

import orjson
from starlette.types import Message, Receive, Scope, Send

from routeproxy.errors import RouteproxyError, UpstreamBusy, UpstreamError, UpstreamUnavailable
from routeproxy.settings import Tier
from routeproxy.wire.sse import EVENT_ENDS, Usage, body_answer, last_event_end, stream_answer_id, stream_usage
from routeproxy.wire.upstream import RawHeaders, UpstreamPool, UpstreamResponse

# Statuses that say the upstream did not start on the request, so the other tier may answer it instead.
FALLBACK_STATUSES = frozenset({502, 503, 504})

# (tier, fallback reason or None) -> (request body for that tier, extra response headers for the client)
Prepare: TypeAlias = Callable[[Tier, str | None], tuple[bytes, RawHeaders]]


@dataclass(frozen=True, slots=True)
class CascadeOutcome:
    """What the cascade did with one request whose small answer was checked."""

    escalated: bool  # the client got the large tier's answer
    score: float = 0.0  # the check's score and reasons (for the log line; not counted)
    reasons: tuple[str, ...] = ()
    escalation_failed: bool = False  # the check escalated, the large tier failed, the client got the small answer
    hold_ms: float | None = None  # streams: how long the client's first byte waited for the check
    small_ms: float = 0.0  # escalated: small request start -> escalation decision
    added_ms: float = 0.0  # escalated: request start -> the large tier asked (what asking 3B first added)
    small_prompt_tokens: int | None = None  # escalated: the small tier's tokens (usage, else content tokens seen)
    small_completion_tokens: int | None = None
    explored: bool = False  # the check would have escalated; kept on the small tier (cascade.explore_share)
    rules: str = ""  # the check rule set's name
    activations: Mapping[str, float] = field(default_factory=dict)  # every signal that fired -> its activation
    signals: tuple[tuple[str, str, float], ...] = ()  # plug-in signal readings: (name, outcome, ms)


@dataclass(slots=True)
class RelayResult:
    """What happened, for counters and the request's log line."""

    tier: Tier | None = None  # the tier that answered (or failed last)
    fallback_reason: str | None = None
    status: int = 0
    stream: bool = False
    ttfb_s: float | None = None  # request start -> first body byte from upstream
    end_s: float = 0.0
    upstream_error: str | None = None
    disconnected: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cascade: CascadeOutcome | None = None  # cascade mode, the small answer was checked: what the check did
    upstream_id: str | None = None  # the answer's own id (chatcmpl-..., resp_...), for the log line
    # Answered by routeproxy's simulator (its x-simulator header): how much faster than the design's latencies.
    simulator_speed: float | None = None


def error_response_messages(error: RouteproxyError, headers: RawHeaders) -> tuple[Message, Message]:
    body = error.body()
    headers = [*headers, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if isinstance(error, UpstreamBusy):
        headers.append((b"retry-after", str(error.retry_after_s).encode()))
    start: Message = {"type": "http.response.start", "status": error.status_code, "headers": headers}
    return start, {"type": "http.response.body", "body": body, "more_body": False}


class Exchange:
    """One request's trip upstream: the chosen tier, then at most one fallback tier."""

    def __init__(
        self,
        pool: UpstreamPool,
        tier: Tier,
        fallback: Tier | None,
        prepare: Prepare,
        client_headers: RawHeaders,
        started: float,
        on_finish: Callable[[RelayResult], None],
        *,
        path: str = "/chat/completions",
        from_root: bool = False,
    ) -> None:
        self.pool = pool
        self.path = path
        self.from_root = from_root
        self.tier = tier
        self.fallback = fallback
        self.prepare = prepare
        self.client_headers = client_headers
        self.extra_headers: RawHeaders = []
        self.started = started
        self.on_finish = on_finish
        self.result = RelayResult()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        result = self.result
        sent_last = False

        async def send_tracked(message: Message) -> None:
            nonlocal sent_last
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                sent_last = True
            await send(message)

        handler = asyncio.current_task()
        assert handler is not None

        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                # Once the response is complete uvicorn answers receive() with http.disconnect at once:
                # only a disconnect before the last byte is the client going away.
                if message["type"] == "http.disconnect":
                    if not sent_last:
                        result.disconnected = True
                        handler.cancel()
                    return

        # A plain task, not a task group: this runs once per request, and anyio's group cost ~4 % of CPU.
        watcher = asyncio.get_running_loop().create_task(watch_disconnect())
        try:
            await self._exchange(send_tracked)
        except OSError:
            # The client's socket went away under a send (uvicorn raises ClientDisconnected).
            result.disconnected = True
        except asyncio.CancelledError:
            if not result.disconnected or handler.uncancel() > 0:
                raise  # not (only) our own cancellation: let it through
        finally:
            watcher.cancel()
            result.end_s = time.perf_counter() - self.started
            self.on_finish(result)

    async def _open(self) -> UpstreamResponse:
        """Send to the chosen tier; on a failure before the upstream started, once to the fallback tier."""
        result = self.result
        tier, reason = self.tier, None
        while True:
            body, self.extra_headers = self.prepare(tier, reason)
            result.tier = tier
            may_fall_back = self.fallback is not None and tier is not self.fallback
            try:
                upstream = await self.pool.send(
                    tier, body, self.client_headers, path=self.path, from_root=self.from_root
                )
            except UpstreamError as exc:
                if not (may_fall_back and exc.retryable):
                    raise
                reason = exc.reason
            else:
                if not (may_fall_back and upstream.status in FALLBACK_STATUSES):
                    return upstream
                await upstream.aclose()
                reason = f"status_{upstream.status}"
            assert self.fallback is not None
            tier, result.fallback_reason = self.fallback, reason

    async def _exchange(self, send: Send) -> None:
        try:
            upstream = await self._open()
        except UpstreamError as exc:
            await self._send_error(exc, send)
            return
        await self._relay_then_close(upstream, send)

    async def _relay_then_close(self, upstream: UpstreamResponse, send: Send) -> None:
        try:
            await self._relay(upstream, send)
        finally:
            await upstream.aclose()

    async def _send_error(self, exc: UpstreamError, send: Send) -> None:
        """The upstream failed before anything was sent: the client gets our error envelope."""
        self.result.upstream_error = exc.message
        self.result.status = exc.status_code
        for message in error_response_messages(exc, self.extra_headers):
            await send(message)

    async def _relay(self, upstream: UpstreamResponse, send: Send) -> None:
        self.result.status = upstream.status
        if upstream.event_stream:
            self.result.stream = True
            await self._relay_stream(upstream, send)
        else:
            await self._relay_whole(upstream, send)

    async def _relay_whole(self, upstream: UpstreamResponse, send: Send) -> None:
        try:
            body = await upstream.read()
        except UpstreamError as exc:
            await self._send_error(exc, send)
            return
        await self._send_whole(upstream, body, send)

    async def _send_whole(self, upstream: UpstreamResponse, body: bytes, send: Send) -> None:
        result = self.result
        result.ttfb_s = time.perf_counter() - self.started
        _note_simulator(result, upstream.headers)
        if upstream.status >= 500:
            result.upstream_error = f"upstream answered {upstream.status}"
        elif upstream.status == 200:
            usage, result.upstream_id = body_answer(body)
            _note_usage(result, usage)
        await send(
            {
                "type": "http.response.start",
                "status": upstream.status,
                "headers": [
                    *upstream.headers,
                    *self.extra_headers,
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _relay_stream(
        self,
        upstream: UpstreamResponse,
        send: Send,
        sent_first: bytes = b"",
        chunks: AsyncIterator[bytes] | None = None,
        rewrite: Callable[[bytes], bytes] | None = None,
    ) -> None:
        """Relay the stream; the cascade passes the events it held (``sent_first``, already rewritten), the rest of
        the body (``chunks``) and, when it asked for logprobs the client did not, the rewrite that removes them."""
        result = self.result
        _note_simulator(result, upstream.headers)
        headers = [*upstream.headers, *self.extra_headers]
        if not any(name == b"x-accel-buffering" for name, _ in upstream.headers):
            headers.append((b"x-accel-buffering", b"no"))  # nginx in front of us must not buffer the stream either
        await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
        held = b""
        last_usage = b""
        looked_for_id = bool(sent_first)
        max_held = upstream.config.max_event_bytes
        if sent_first:
            result.upstream_id = stream_answer_id(sent_first)
            if b'"usage"' in sent_first:
                last_usage = sent_first
            await send({"type": "http.response.body", "body": sent_first, "more_body": True})
        try:
            async for chunk in upstream.chunks() if chunks is None else chunks:
                if result.ttfb_s is None:
                    result.ttfb_s = time.perf_counter() - self.started
                if held:
                    chunk = held + chunk
                    held = b""
                if not chunk.endswith(EVENT_ENDS):
                    cut = last_event_end(chunk)
                    chunk, held = chunk[:cut], chunk[cut:]
                if chunk:
                    if not looked_for_id:
                        looked_for_id = True
                        result.upstream_id = result.upstream_id or stream_answer_id(chunk)
                    if rewrite is not None:
                        chunk = rewrite(chunk)
                    if b'"usage"' in chunk:
                        last_usage = chunk
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if len(held) > max_held:
                    raise event_too_large(upstream)
        except UpstreamError as exc:
            # Bytes were relayed already, so the status cannot change: end with one error event the SDKs raise.
            result.upstream_error = exc.message
            event = b"data: " + orjson.dumps(exc.envelope()) + b"\n\n"
            await send({"type": "http.response.body", "body": event, "more_body": False})
            return
        if held:
            # The upstream ended cleanly mid-event: pass its bytes on as they were.
            await send({"type": "http.response.body", "body": held, "more_body": True})
        if last_usage:
            _note_usage(result, stream_usage(last_usage))
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def event_too_large(upstream: UpstreamResponse) -> UpstreamUnavailable:
    """An upstream SSE event past the tier's bound: the relay (and the cascade's hold) stop reading it."""
    limit = upstream.config.max_event_bytes
    return UpstreamUnavailable(
        f"the {upstream.tier} upstream sent an SSE event larger than tiers.{upstream.tier}.max_event_bytes "
        f"({limit} bytes)",
        reason="event_too_large",
    )


def _note_simulator(result: RelayResult, headers: RawHeaders) -> None:
    """routeproxy's simulator labels every answer (``x-simulator``) and says its speed (``x-simulator-speed``)."""
    for name, value in headers:
        if name == b"x-simulator-speed":
            try:
                result.simulator_speed = float(value)
            except ValueError:
                result.simulator_speed = 1.0
            return
        if name == b"x-simulator":
            result.simulator_speed = result.simulator_speed or 1.0


def _note_usage(result: RelayResult, usage: Usage | None) -> None:
    if usage is not None:
        result.prompt_tokens, result.completion_tokens = usage
