"""The benchmark's wire-level pieces: a load generator and a static upstream, both raw asyncio HTTP/1.1.

The load generator must cost far less per request than the proxy it measures, so it is not httpx: each
connection sends one pre-built request, reads the status line and headers, then a Content-Length or chunked
body, and notes when each chunk arrived. Every run is bounded by a request count and a duration, and it only
connects to loopback addresses.

The static upstream answers any POST with a fixed chat completion, or (when the body asks for ``"stream":true``)
a fixed 20-event SSE stream, one HTTP chunk per event, optionally ``x-sim-token-ms`` apart. It is there
because the Starlette simulator cannot keep up with the proxy on one core; it is not a model.
Run it with ``python -m routeproxy.bench.loadgen --port P`` (0: the OS picks one; the first line names it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import math
import sys
import time
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import orjson

from routeproxy.evaluate.metrics import quantile
from routeproxy.tasks import spawn

__all__ = [
    "LoadResult",
    "Sample",
    "build_request",
    "check_loopback",
    "percentile",
    "run_async",
    "run_load",
    "serve_static_upstream",
]

_HEAD_LIMIT = 64 * 1024
T = TypeVar("T")


def check_loopback(host: str) -> str:
    """The host as an IP address if it is on loopback; ValueError for anything else."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"the benchmark only targets loopback addresses, not {host!r}") from None
    if not address.is_loopback:
        raise ValueError(f"the benchmark only targets loopback addresses, not {host}")
    return host


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks; NaN when empty."""
    ordered = sorted(values)
    return quantile(ordered, q / 100) if ordered else math.nan


def build_request(host: str, port: int, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> bytes:
    """A complete POST request, built once and sent as is on every iteration."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"host: {host}:{port}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass(slots=True)
class Sample:
    """One answered request; times are seconds since it was sent."""

    started: float  # time.perf_counter() when it was sent
    status: int
    ttfb_s: float  # the first body byte (the headers, for an empty body)
    total_s: float
    chunk_s: list[float]  # arrival of each chunk of a chunked body
    body: bytes


@dataclass(slots=True)
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    sent: int = 0
    failures: int = 0  # connection errors and malformed answers (a non-2xx status is a Sample)
    elapsed_s: float = 0.0
    first_failure: str | None = None

    @property
    def ok(self) -> int:
        return sum(1 for sample in self.samples if 200 <= sample.status < 300)

    @property
    def rate(self) -> float:
        return len(self.samples) / self.elapsed_s if self.elapsed_s else math.nan


class _Closed(Exception):
    """The server closed the connection (after a `connection: close` answer, or before answering)."""


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, keep_body: bool
) -> tuple[Sample, bool]:
    """Send the request and read one answer; (sample, whether the connection can be reused)."""
    clock = time.perf_counter
    start = clock()
    writer.write(request)
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise _Closed from exc
    headers_at = clock() - start
    status_line, _, rest = head.partition(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    length = -1
    chunked = False
    reuse = True
    for line in rest.split(b"\r\n"):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            reuse = b"close" not in value.lower()
    arrivals: list[float] = []
    parts: list[bytes] = []
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers are sent on these paths
                break
            data = await reader.readexactly(size + 2)
            arrivals.append(clock() - start)
            if keep_body:
                parts.append(data[:-2])
    elif length > 0:
        parts.append(await reader.readexactly(length))
    elif length < 0:
        parts.append(await reader.read())
        reuse = False
    end = clock() - start
    ttfb = arrivals[0] if arrivals else headers_at if length <= 0 else end
    return Sample(start, status, ttfb, end, arrivals, b"".join(parts) if keep_body else b""), reuse


async def run_load(
    host: str,
    port: int,
    request: bytes | Sequence[bytes],
    *,
    concurrency: int,
    max_requests: int,
    max_duration: float,
    keep_body: bool = False,
) -> LoadResult:
    """Send ``request`` over ``concurrency`` keep-alive connections until ``max_requests`` have been sent or
    ``max_duration`` seconds have passed (requests in flight then are still awaited, for at most 30 s).
    A sequence of requests is sent in turn, the i-th request sent being ``request[i % len(request)]``."""
    requests = [request] if isinstance(request, bytes) else list(request)
    host = check_loopback(host)
    if concurrency < 1 or max_requests < 0 or max_duration <= 0:
        raise ValueError("run_load needs concurrency >= 1, max_requests >= 0 and max_duration > 0")
    result = LoadResult()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_duration

    async def worker() -> None:
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while result.sent < max_requests and loop.time() < deadline:
                chosen = requests[result.sent % len(requests)]
                result.sent += 1
                try:
                    if connection is None:
                        connection = await asyncio.open_connection(host, port, limit=_HEAD_LIMIT)
                    sample, reuse = await _exchange(*connection, chosen, keep_body)
                except (OSError, _Closed, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                    result.failures += 1
                    result.first_failure = result.first_failure or repr(exc)
                    if connection is not None:
                        connection[1].close()
                    connection = None
                    continue
                result.samples.append(sample)
                if not reuse:
                    connection[1].close()
                    connection = None
        finally:
            if connection is not None:
                connection[1].close()

    started = time.perf_counter()
    async with asyncio.timeout(max_duration + 30):
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - started
    return result


STREAM_EVENTS = 20  # role chunk, 17 tokens, stop chunk, [DONE]: the simulator's shape for x-sim-tokens: 17


def _static_answers() -> tuple[bytes, list[bytes]]:
    base = {"id": "chatcmpl-static", "created": 0, "model": "static"}
    words = [f" word{i}" for i in range(17)]
    completion = {
        **base,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words)}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 17, "total_tokens": 37},
    }
    chunk = {**base, "object": "chat.completion.chunk"}
    deltas: list[tuple[dict[str, str], str | None]] = [({"role": "assistant", "content": ""}, None)]
    deltas += [({"content": word}, None) for word in words]
    deltas.append(({}, "stop"))
    events = [
        b"data: " + orjson.dumps({**chunk, "choices": [{"index": 0, "delta": d, "finish_reason": f}]}) + b"\n\n"
        for d, f in deltas
    ]
    events.append(b"data: [DONE]\n\n")
    assert len(events) == STREAM_EVENTS
    return orjson.dumps(completion), [b"%x\r\n%s\r\n" % (len(event), event) for event in events]


class _StaticUpstream(asyncio.Protocol):
    completion, chunks = _static_answers()
    json_head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(completion)
    stream_head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self.tasks:
            task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            delay_ms = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name == b"content-length":
                    length = int(value)
                elif name == b"x-sim-token-ms":
                    delay_ms = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.answer(b'"stream":true' in body.replace(b" ", b""), delay_ms / 1000)

    def answer(self, stream: bool, delay: float) -> None:
        assert self.transport is not None
        if not stream:
            self.transport.write(self.json_head + self.completion)
        elif delay <= 0:
            self.transport.write(self.stream_head + b"".join(self.chunks) + b"0\r\n\r\n")
        else:
            # Answers on one connection never overlap: the client sends the next request after this one ends.
            task = spawn(self.paced(delay))
            self.tasks.add(task)  # this connection's, cancelled when it is lost
            task.add_done_callback(self.tasks.discard)

    async def paced(self, delay: float) -> None:
        assert self.transport is not None
        self.transport.write(self.stream_head)
        for chunk in self.chunks:
            await asyncio.sleep(delay)
            if self.transport.is_closing():
                return
            self.transport.write(chunk)
        self.transport.write(b"0\r\n\r\n")


async def serve_static_upstream(host: str, port: int) -> asyncio.Server:
    return await asyncio.get_running_loop().create_server(_StaticUpstream, check_loopback(host), port, backlog=4096)


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed (it is, with uvicorn[standard]), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m routeproxy.bench.loadgen", description="the benchmark's static upstream"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)

    async def forever() -> None:
        server = await serve_static_upstream(args.host, args.port)
        port = server.sockets[0].getsockname()[1]  # --port 0: the one the OS picked
        print(f"the benchmark's static upstream on http://{args.host}:{port}", file=sys.stderr, flush=True)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        run_async(forever())


if __name__ == "__main__":
    main()
