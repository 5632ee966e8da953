"""A scripted OpenAI-compatible upstream for the cascade tests: each chat request gets the answer its test wrote
(chosen by the last user message), streamed as vLLM streams it or whole, as the request asks.

It records every request body, and how each answer ended: completed, or the client went away (a disconnect: the
proxy closed its connection). An answer can stall after some tokens until the test lets it go on (``go``) or the
client leaves; another can break off mid-stream (the connection drops).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, MutableSequence, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from routeproxy.settings import Tier
from routeproxy.sim.threadserver import ThreadedServer
from support.upstreams import read_request_body, serve_lifespan


@dataclass(frozen=True, slots=True)
class Script:
    tokens: Sequence[str]  # content pieces; a stream sends one per event
    finish_reason: str = "stop"
    logprobs: Sequence[float] | None = None  # one per token; sent only when the request asks for logprobs
    stall_after: int | None = None  # stream: after this many tokens wait for ``go`` (or the client to leave)
    break_after: int | None = None  # stream: after this many tokens drop the connection; whole: after half the body
    status: int = 200

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def words(text: str) -> tuple[str, ...]:
    """A text as stream tokens: each word with its leading space."""
    parts = text.split(" ")
    return (parts[0], *(" " + part for part in parts[1:]))


class ChatUpstream:
    def __init__(self, answers: Script | Mapping[str, Script], *, model: str = "scripted") -> None:
        self.answers = answers
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.completed = 0
        self.disconnects = 0
        self.stalled = 0  # answers waiting in a stall right now
        self.go = threading.Event()

    def script_for(self, body: Mapping[str, Any]) -> Script:
        if isinstance(self.answers, Script):
            return self.answers
        return self.answers[body["messages"][-1]["content"]]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        body = orjson.loads(await read_request_body(receive))
        self.requests.append(body)
        script = self.script_for(body)
        if script.status != 200:
            error = orjson.dumps({"error": {"message": "scripted failure", "type": "server_error", "code": None}})
            await _whole(send, script.status, error)
            self.completed += 1
            return
        if body.get("stream"):
            await self._stream(body, script, receive, send)
        else:
            payload = completion(script, self.model, bool(body.get("logprobs")))
            if script.break_after is not None:  # half the body, then the connection drops
                await _whole(send, 200, payload, cut=len(payload) // 2)
                raise ConnectionAbortedError("scripted break")
            await _whole(send, 200, payload)
            self.completed += 1

    async def _stream(self, body: Mapping[str, Any], script: Script, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        with_logprobs = bool(body.get("logprobs"))
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        for index, event in enumerate(stream_events(script, self.model, with_logprobs, usage)):
            tokens_sent = index - 1  # the first event carries the role only
            if script.break_after is not None and tokens_sent == script.break_after:
                raise ConnectionAbortedError("scripted break")  # uvicorn drops the connection mid-body
            stall = script.stall_after is not None and tokens_sent == script.stall_after
            if stall and not await self._stall(receive):
                self.disconnects += 1
                return
            try:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            except OSError:
                self.disconnects += 1
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self.completed += 1

    async def _stall(self, receive: Receive) -> bool:
        """Wait for ``go``; False when the client went away first."""
        self.stalled += 1
        try:
            while not self.go.is_set():
                try:
                    async with asyncio.timeout(0.01):  # poll interval for the test's go signal
                        message = await receive()
                except TimeoutError:
                    continue
                if message["type"] == "http.disconnect":
                    return False
            return True
        finally:
            self.stalled -= 1


async def _whole(send: Send, status: int, payload: bytes, cut: int | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if cut is None:
        await send({"type": "http.response.body", "body": payload, "more_body": False})
    else:
        await send({"type": "http.response.body", "body": payload[:cut], "more_body": True})


def _logprobs(script: Script, tokens: Sequence[str], start: int) -> dict[str, Any]:
    assert script.logprobs is not None
    values = script.logprobs[start : start + len(tokens)]
    return {
        "content": [
            {"token": token, "logprob": value, "bytes": list(token.encode()), "top_logprobs": []}
            for token, value in zip(tokens, values, strict=True)
        ]
    }


def completion(script: Script, model: str, with_logprobs: bool) -> bytes:
    logprobs = _logprobs(script, script.tokens, 0) if with_logprobs and script.logprobs else None
    return orjson.dumps(
        {
            "id": "chatcmpl-scripted",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": script.text},
                    "logprobs": logprobs,
                    "finish_reason": script.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": 11,
                "completion_tokens": len(script.tokens),
                "total_tokens": 11 + len(script.tokens),
            },
        }
    )


def stream_events(script: Script, model: str, with_logprobs: bool, usage: bool) -> list[bytes]:
    """The events of a streamed answer, each ending with a blank line, as vLLM sends them."""

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 1, "model": model}
        return b"data: " + orjson.dumps({**chunk, "choices": choices, **extra}) + b"\n\n"

    events = [
        event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])
    ]
    for position, token in enumerate(script.tokens):
        logprobs = _logprobs(script, [token], position) if with_logprobs and script.logprobs else None
        events.append(event([{"index": 0, "delta": {"content": token}, "logprobs": logprobs, "finish_reason": None}]))
    events.append(event([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": script.finish_reason}]))
    if usage:
        tokens = len(script.tokens)
        events.append(event([], usage={"prompt_tokens": 11, "completion_tokens": tokens, "total_tokens": 11 + tokens}))
    events.append(b"data: [DONE]\n\n")
    return events


def serve_tiers(upstreams: Mapping[Tier, ChatUpstream], started: MutableSequence[ThreadedServer]) -> dict[Tier, str]:
    """Each tier's upstream on a loopback server of its own (appended to ``started``, for the caller to stop); the
    tiers' base URLs."""
    urls = {}
    for tier, upstream in upstreams.items():
        server = ThreadedServer(upstream).start()
        started.append(server)
        urls[tier] = f"{server.url}/v1"
    return urls
