"""How uvicorn serves the proxy: its options, and the HTTP protocol that keeps slow and hostile clients from
holding connections.

uvicorn's httptools protocol has no deadline for the request head and no cap on its size: a client that sends
one header byte every few seconds (slowloris), or a few megabytes of headers, keeps its connection and its
memory for as long as it likes. ``GuardedHttpToolsProtocol`` adds both where uvicorn already has the hooks:
a timer armed when a connection opens and when a request begins (``connection_made``, ``on_message_begin``)
and cancelled once the head is in (``on_headers_complete``), and byte and line counts in ``on_url`` and
``on_header``. Refusals are answered in OpenAI's envelope (408, 431) and the connection is closed.

After an early answer (a 413, or any answer given while the client is still sending its body, or a refusal of
its head) the connection is closed the way nginx's lingering close does it: the answer is sent with
``connection: close``, the write side is shut (the client sees the end), and whatever the client still sends is
read and dropped, unparsed, until it closes, or sends nothing for ``LINGER_IDLE_S``, or past
``LINGER_MAX_S`` (the body deadline if shorter) or ``LINGER_BODIES`` times the body limit in bytes. Closing
with unread data makes the kernel send a reset, which destroys the answer in a client that sends its whole
body before reading (urllib, curl); a client reading while it sends has its answer by then anyway.

Idle keep-alive connections are kept ``server.keepalive_timeout`` (uvicorn's own default is 5 s, the same as
the idle expiry of httpx's pool, so a client reusing a connection idle for about 5 s races the close).

The body's own deadline is kept by the body reader (``admission.read_body``); the concurrency slot is taken
only once the body is in (``chat.py``), so slow bodies never hold slots.
"""

from __future__ import annotations

import asyncio
import http
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from routeproxy.api.app import ProxyApp
from routeproxy.api.cycle import ResponseCycle
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


LINGER_IDLE_S = 5.0  # nginx's lingering_timeout
LINGER_MAX_S = 30.0  # nginx's lingering_time
LINGER_BODIES = 4  # bytes dropped at most: this many times server.max_body_bytes


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and size limits on the request head, a lingering close after
    an early answer, and ``ResponseCycle`` for every request. The limits are the served app's settings (a class,
    not an instance, is what uvicorn takes, and it must pickle for ``--workers N``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        app = self.app
        while not isinstance(app, ProxyApp):  # uvicorn's own middlewares keep the app they wrap in .app
            app = app.app
        self.limits: ServerConfig = app.settings.server
        self.timeout_keep_alive = self.limits.keepalive_timeout  # type: ignore[assignment]  # call_later takes a float
        self._head_timer: asyncio.TimerHandle | None = None
        self._linger_timers: list[asyncio.TimerHandle] = []
        self._linger_left = -1  # bytes still to drop; -1 while not lingering
        self._head_bytes = 0
        self._head_lines = 0
        self._refusal: RouteproxyError | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that never sends a byte is a slow head too

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, *self._linger_timers):
            if timer is not None:
                timer.cancel()
        self._head_timer = None
        self._linger_timers = []
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._linger_left < 0:
            super().data_received(data)
            return
        self._linger_left -= len(data)  # dropped, unparsed: nothing after an early answer is served
        if self._linger_left < 0:
            self._close()
            return
        self._linger_timers[1].cancel()
        self._linger_timers[1] = self.loop.call_later(LINGER_IDLE_S, self._close)

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
        cycle = self.cycle
        # uvicorn made this request's cycle just now and its ASGI task has not run yet (an upgrade makes none).
        if cycle is not None and cycle.scope is self.scope and type(cycle) is RequestResponseCycle:
            cycle.__class__ = ResponseCycle

    def on_response_complete(self) -> None:
        cycle = self.cycle
        if isinstance(cycle, ResponseCycle) and cycle.linger and not self.transport.is_closing():
            self.server_state.total_requests += 1
            self._linger()
            return
        super().on_response_complete()

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
            self._linger()

    def _linger(self) -> None:
        """The answer is out: shut the write side and drop what the client still sends, within the bounds."""
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._unset_keepalive_if_required()
        if self.transport.can_write_eof():
            self.transport.write_eof()  # after what is buffered: the client reads the answer, then the end
        self._linger_left = LINGER_BODIES * self.limits.max_body_bytes
        total = min(LINGER_MAX_S, self.limits.body_timeout)
        self._linger_timers = [
            self.loop.call_later(total, self._close),
            self.loop.call_later(LINGER_IDLE_S, self._close),
        ]
        self.flow.resume_reading()  # paused when the unread body filled uvicorn's buffer

    def _close(self) -> None:
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
