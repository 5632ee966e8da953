"""Upstreams and settings for proxy tests: the simulator's fast profile, settings pointed at local upstreams, and
an upstream that answers with scripted chunks."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any

from starlette.types import Receive, Scope, Send

from routeproxy.settings import Settings, Tier, load_settings
from routeproxy.sim.profile import SimProfile
from routeproxy.sim.threadserver import ThreadedServer
from routeproxy.sim.wire import Dialect

SMALL_MODEL = "meta-llama/Llama-3.2-3B-Instruct"
LARGE_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
MODELS = {Tier.SMALL: SMALL_MODEL, Tier.LARGE: LARGE_MODEL}
LABELS = {Tier.SMALL: "3b", Tier.LARGE: "8b"}  # the tiers' default labels (tiers.<tier>.label)


def fast_profile(tier: Tier, dialect: Dialect = Dialect.VLLM, **changes: Any) -> SimProfile:
    """A simulator that answers at once: 8 tokens, no pacing."""
    options: dict[str, Any] = {"ttft_s": 0.0, "tokens_per_s": 1e9, "answer_tokens": 8, "speed": 1.0}
    options.update(changes)
    return SimProfile(model=MODELS[tier], dialect=dialect, **options)


def settings_for(upstreams: dict[Tier, str], environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from the shipped defaults, with each tier pointed at a local upstream (a base URL with /v1)."""
    values: dict[str, Any] = {}
    for tier, url in upstreams.items():
        values[f"tiers.{tier}.base_url"] = url
        values[f"tiers.{tier}.kind"] = "vllm"
        values[f"tiers.{tier}.api_key"] = None
    values["logging.format"] = "json"
    values.update(overrides)
    return load_settings(environ=environ or {}, overrides=values)


ProxyFactory = Callable[..., ThreadedServer]


class ScriptedUpstream:
    """An upstream that answers every POST with exactly the given chunks, each after its delay (seconds)."""

    def __init__(
        self,
        chunks: Sequence[tuple[float, bytes]],
        *,
        status: int = 200,
        content_type: bytes = b"text/event-stream",
        headers: Sequence[tuple[bytes, bytes]] = (),
        gates: Sequence[threading.Event] = (),
    ) -> None:
        """``gates[i]``, when given, must be set (by the test, once its client has chunk i) before chunk i + 1 is
        sent: an upstream that cannot go on until the client has what it sent so far."""
        self.chunks = chunks
        self.gates = gates
        self.status = status
        self.content_type = content_type
        self.headers = list(headers)
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        body = await read_request_body(receive)
        self.requests.append({"path": scope["path"], "headers": dict(scope["headers"]), "body": body})
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [(b"content-type", self.content_type), *self.headers],
            }
        )
        for index, (delay, chunk) in enumerate(self.chunks):
            if delay:
                await asyncio.sleep(delay)
            if 0 < index <= len(self.gates) and not await asyncio.to_thread(self.gates[index - 1].wait, 5.0):
                return  # the client never got the previous chunk: end without finishing the body
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def serve_lifespan(receive: Receive, send: Send) -> None:
    """Answer the ASGI lifespan protocol of a test upstream that has nothing to start or stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_request_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body
