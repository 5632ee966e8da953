"""Sending a cached answer: the stored bytes with this request's own headers, at once or at the upstream's pace;
and the watch for a client that leaves while it waits (a follower, a paced replay)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from starlette.types import Receive, Send

from routeproxy.cache.entry import Entry, RawHeaders

CACHE_HEADER = b"x-routeproxy-cache"
MAX_PACE_GAP_S = 30.0  # a paced replay never waits longer than this between two chunks


def with_own(headers: tuple[tuple[bytes, bytes], ...] | RawHeaders, own: RawHeaders) -> RawHeaders:
    return [*headers, *own]


def cache_headers(request_id: str, rating_id: str | None, status: str, age_s: float | None = None) -> RawHeaders:
    """A cached answer's own headers: its request ids (``rating_id``: the one feedback names) and the cache's."""
    headers = [(b"x-request-id", request_id.encode()), (CACHE_HEADER, status.encode())]
    if rating_id is not None:
        headers.append((b"x-routeproxy-request-id", rating_id.encode()))
    if age_s is not None:
        headers.append((b"age", str(int(age_s)).encode()))  # RFC 9111: whole seconds since it was stored
    return headers


def retyped(headers: tuple[tuple[bytes, bytes], ...], stream: bool) -> RawHeaders:
    """The stored headers for the other framing (a converted entry): its content type, no stream-only header."""
    kept = [(name, value) for name, value in headers if name not in (b"content-type", b"x-accel-buffering")]
    kept.append((b"content-type", b"text/event-stream" if stream else b"application/json"))
    return kept


async def send_whole(send: Send, status: int, headers: RawHeaders, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_stream(send: Send, status: int, headers: RawHeaders, body: bytes) -> None:
    if not any(name == b"x-accel-buffering" for name, _ in headers):
        headers = [*headers, (b"x-accel-buffering", b"no")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_paced(send: Send, entry: Entry, headers: RawHeaders) -> None:
    """The stored stream in the upstream's own chunks, each as long after the first as it came."""
    await send({"type": "http.response.start", "status": entry.status, "headers": headers})
    started = time.perf_counter()
    position = 0
    for offset_ms, length in entry.chunks:
        delay = min(offset_ms / 1000 - (time.perf_counter() - started), MAX_PACE_GAP_S)
        if delay > 0:
            await asyncio.sleep(delay)
        await send({"type": "http.response.body", "body": entry.body[position : position + length], "more_body": True})
        position += length
    await send({"type": "http.response.body", "body": entry.body[position:], "more_body": False})


def chunk_table(arrivals: list[float], chunks: list[bytes]) -> tuple[tuple[int, int], ...]:
    """(ms after the first chunk, length) of each chunk, for ``Entry.chunks``."""
    if not arrivals:
        return ()
    first = arrivals[0]
    return tuple((round((at - first) * 1000), len(chunk)) for at, chunk in zip(arrivals, chunks, strict=True))


@contextlib.asynccontextmanager
async def watching(receive: Receive) -> AsyncIterator[list[bool]]:
    """While inside, a client that leaves cancels the current task (the caller catches it); yields a flag list whose
    first item turns True when that happened. The watch ends (its pending receive cancelled) on the way out."""
    handler = asyncio.current_task()
    assert handler is not None
    left = [False]

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                left[0] = True
                handler.cancel()
                return

    # A plain task, as relay.Exchange's watcher: it is always cancelled on the way out, never left behind.
    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        yield left
    except asyncio.CancelledError:
        if not left[0] or handler.uncancel() > 0:
            raise
    finally:
        watcher.cancel()
