"""A small HTTP/1.1 client for the upstream hop: keep-alive connection pools, httptools parsing, streamed bodies.

Why not a general-purpose client: the proxy sends one kind of request (a POST with a body we serialised) to a
handful of configured origins, and every request pays for whatever the client does besides. httpx's pool scans
all its connections per request; aiohttp's request path carries tracing, cookies, redirects and auth hooks.
This module does only what the hop needs, with the same C parser uvicorn uses (see the README's performance
section for the measurements).

What it does:
- one pool per origin; idle connections are reused newest first and dropped after ``keepalive_expiry`` (below
  vLLM's 5 s server-side keep-alive, so we never reuse a connection the server is closing);
- a reused connection that fails before any byte of the response arrives is retried once on a new connection
  (the server closed it while idle: it never saw the request);
- the response body is handed over as it arrives, with read pausing above ``_HIGH_WATER`` buffered bytes;
- a response is returned to the pool only when it was read to the end and both sides keep the connection alive;
  anything else closes the connection, so an abandoned stream stops the upstream's work.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from typing import cast
from urllib.parse import urlsplit

import httptools

RawHeaders = list[tuple[bytes, bytes]]

_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024


class HTTPError(Exception):
    """The exchange failed below HTTP: no connection, or no complete response."""


class ConnectFailed(HTTPError):
    """The connection could not be made (refused, unreachable, DNS, TLS)."""


class ConnectTimedOut(HTTPError):
    """The connection was not made within the connect timeout."""


class BrokenResponse(HTTPError):
    """The connection closed or sent something unparsable before the response was complete."""


class Connection(asyncio.Protocol):
    """One keep-alive connection; carries one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: RawHeaders = []
        self.headers_ready: asyncio.Future[None] | None = None
        self.received_any = False
        self.complete = False
        self.keep_alive = False
        self.error: HTTPError | None = None
        self.closed = False
        self.last_used = time.monotonic()
        self._body: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._has_length = False

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not registered as asyncio.Transport subclasses, so no isinstance check here.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BrokenResponse(f"the upstream sent a malformed response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_ready is None or self.complete:
            return
        if self.headers_ready.done() and not self._has_length:
            self.on_message_complete()  # a body delimited by the end of the connection
            return
        self._fail(BrokenResponse("the upstream closed the connection before the response was complete"))

    # -- httptools callbacks --

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or (lowered == b"transfer-encoding" and b"chunked" in value.lower()):
            self._has_length = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim response (100 Continue): the real one follows
            self.headers = []
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        if self.headers_ready is not None and not self.headers_ready.done():
            self.headers_ready.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True
        self._wake()

    def on_message_complete(self) -> None:
        if self.status == 0:  # the end of an interim response
            return
        self.complete = True
        self._wake()

    # -- the request side --

    def send(self, request: bytes) -> asyncio.Future[None]:
        """Write a request; the returned future resolves when the response's headers have arrived."""
        assert self.transport is not None
        self.status, self.headers, self.complete, self.error = 0, [], False, None
        self.received_any = self._has_length = False
        self.headers_ready = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.headers_ready

    async def read(self) -> bytes:
        """The body bytes that have arrived since the last read (waiting for some); b"" at the end."""
        while True:
            if self._body:
                chunk = self._body.popleft() if len(self._body) == 1 else b"".join(self._body)
                self._body.clear()
                self._buffered = 0
                if self._paused and self.transport is not None:
                    self.transport.resume_reading()
                    self._paused = False
                return chunk
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.error is None and not self._body

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: HTTPError) -> None:
        self.error = error
        if self.headers_ready is not None and not self.headers_ready.done():
            self.headers_ready.set_exception(error)
            self.headers_ready.exception()  # retrieved here so a dropped future logs nothing
        self._wake()


class Pool:
    """Keep-alive connections to one origin (scheme, host, port)."""

    def __init__(self, base_url: str, *, connect_timeout: float, keepalive_expiry: float) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or ""
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        default_port = 443 if self.tls else 80
        self.host_header = (self.host if self.port == default_port else f"{self.host}:{self.port}").encode("idna")
        self.path_prefix = parts.path.rstrip("/").encode()
        self.connect_timeout = connect_timeout
        self.keepalive_expiry = keepalive_expiry
        self._ssl = ssl.create_default_context() if self.tls else None
        self._idle: list[Connection] = []

    async def request(
        self, path: bytes, headers: RawHeaders, body: bytes, *, prefix: bytes | None = None
    ) -> Connection:
        """POST to ``prefix`` (default: the base URL's path) + ``path`` and wait for the response headers; the
        caller reads the body, then calls ``release``."""
        request = b"".join(
            [
                b"POST ",
                self.path_prefix if prefix is None else prefix,
                path,
                b" HTTP/1.1\r\nhost: ",
                self.host_header,
                b"\r\ncontent-length: ",
                str(len(body)).encode(),
                b"\r\n",
                *[name + b": " + value + b"\r\n" for name, value in headers],
                b"\r\n",
                body,
            ]
        )
        while True:
            connection, reused = await self._acquire()
            try:
                await connection.send(request)
            except BrokenResponse:
                connection.close()
                if reused and not connection.received_any:
                    continue  # a stale keep-alive connection: the server never saw this request
                raise
            except BaseException:
                connection.close()  # cancelled (timeout, client gone): the upstream must stop
                raise
            return connection

    def release(self, connection: Connection) -> None:
        if connection.reusable():
            connection.last_used = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()

    async def _acquire(self) -> tuple[Connection, bool]:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.last_used < self.keepalive_expiry:
                return connection, True
            connection.close()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    Connection, self.host, self.port, ssl=self._ssl, server_hostname=self.host if self.tls else None
                )
        except TimeoutError:
            raise ConnectTimedOut(
                f"no connection to {self.host}:{self.port} within {self.connect_timeout:g} s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return connection, False
