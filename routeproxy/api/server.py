"""How uvicorn serves the proxy: its options, and the HTTP protocol that keeps slow and hostile clients from
holding connections.

uvicorn's httptools protocol has no deadline for the request head and no cap on its size: a client that sends
one header byte every few seconds (slowloris), or a few megabytes of headers, keeps its connection and its
memory for as long as it likes. ``GuardedHttpToolsProtocol`` adds both where uvicorn already has the hooks:
a timer armed when a connection opens and when a request begins (``connection_made``, ``on_message_begin``)
and cancelled once the head is in (``on_headers_complete``), and byte and line counts in ``on_url`` and
``on_header``. Refusals are answered in OpenAI's envelope (408, 431) and the connection is closed.

After an early answer (a 413 while the client is still sending its body) the rest of the body is read and
dropped, as nginx's lingering close does, so the client gets to read the answer instead of a reset; but only
until the body deadline, then the connection is closed.

The body's own deadline is kept by the body reader (``admission.read_body``); the concurrency slot is taken
only once the body is in (``chat.py``), so slow bodies never hold slots.
"""

from __future__ import annotations

import asyncio
import http
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from routeproxy.api.app import ProxyApp
from routeproxy.errors import HeadTooLarge, RequestTimeout, RouteproxyError
from routeproxy.settings import ServerConfig, Settings


def raw_error_response(error: RouteproxyError) -> bytes:
    """A whole HTTP/1.1 response carrying the error's envelope, for answers written below the ASGI app."""
    body = error.body()
    head = (
        f"HTTP/1.1 {error.status_code} {http.HTTPStatus(error.status_code).phrase}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and size limits on the request head, and a bounded drain
    of a body that is still arriving after the response was sent. The limits are the served app's settings
    (a class, not an instance, is what uvicorn takes, and it must pickle for ``--workers N``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        app = self.app
        while not isinstance(app, ProxyApp):  # uvicorn's own middlewares keep the app they wrap in .app
            app = app.app
        self.limits: ServerConfig = app.settings.server
        self._head_timer: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._head_lines = 0
        self._refusal: RouteproxyError | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that never sends a byte is a slow head too

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._drain_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._drain_timer = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = self._head_lines = 0
        if self._head_timer is None:
            self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        self._count(len(url), lines=0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value), lines=1)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._drain_timer is not None:  # the rest of the body came after all: the connection may be reused
            self._drain_timer.cancel()
            self._drain_timer = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            # Answered before the whole body came (413): keep reading and dropping it, for a bounded time.
            self._drain_timer = self.loop.call_later(self.limits.body_timeout, self._close)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request the parser refused; ours when the refusal was a limit of ours."""
        if self._refusal is None:
            super().send_400_response(msg)
            return
        self._answer_and_close(self._refusal)

    def _count(self, size: int, *, lines: int) -> None:
        self._head_bytes += size
        self._head_lines += lines
        limits = self.limits
        if self._head_bytes > limits.max_header_bytes:
            self._refusal = HeadTooLarge(
                f"the request's target and headers are over {limits.max_header_bytes} bytes",
                code="request_header_too_large",
            )
        elif self._head_lines > limits.max_headers:
            self._refusal = HeadTooLarge(
                f"the request has more than {limits.max_headers} header lines", code="too_many_headers"
            )
        else:
            return
        # httptools stops parsing and uvicorn answers through send_400_response, which answers our refusal.
        raise self._refusal

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A pipelined head is stalling behind a response still being sent: close once that one is done.
            cycle.keep_alive = False
            return
        self._answer_and_close(
            RequestTimeout(
                f"the request head did not arrive within {self.limits.header_timeout:g} s", code="header_timeout"
            )
        )

    def _answer_and_close(self, error: RouteproxyError) -> None:
        if not self.transport.is_closing():
            self.transport.write(raw_error_response(error))
            self.transport.close()

    def _close(self) -> None:
        self._drain_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What ``routeproxy serve`` passes to uvicorn (host and port included); the tests' proxies use the same
    protocol (``tests/conftest.py``)."""
    return {
        "host": settings.server.host,
        "port": settings.server.port,
        "loop": "uvloop",
        "http": GuardedHttpToolsProtocol,
        "access_log": False,  # one structured line per request comes from the app itself
        "log_config": None,  # uvicorn's records go through our handler and renderer (logs.configure_logging)
        "server_header": False,
        # The client address must be the real peer, never a header's.
        "proxy_headers": False,
        "log_level": settings.logging.level,
        # On SIGTERM uvicorn stops accepting at once and gives in-flight requests this long to finish.
        "timeout_graceful_shutdown": settings.server.drain_seconds,
    }
