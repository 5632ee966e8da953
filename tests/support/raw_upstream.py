"""Upstreams that misbehave on purpose: a TCP server on loopback whose connections each run a handler on a thread.

The handler reads requests with ``read_request`` and writes whatever bytes the test wants, down to a reset.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator

Handler = Callable[["RawUpstream", socket.socket], None]


class RawUpstream:
    def __init__(self, handler: Handler, *, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.host = host
        self.tls = tls
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.requests: list[bytes] = []  # every request read, head and body, in arrival order
        self.connections = 0
        self.closed_by_peer = 0  # connections the proxy closed (a read returned nothing)
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.sockets: list[socket.socket] = []
        self.accepting = threading.Thread(target=self._accept, daemon=True)
        self.accepting.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/v1"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            with self.lock:
                self.connections += 1
                self.sockets.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            with conn:
                self.handler(self, conn)

    def read_request(self, conn: socket.socket) -> bytes:
        """One request (head and Content-Length body); b"" when the peer closed first."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                if data == b"":
                    with self.lock:
                        self.closed_by_peer += 1
                return b""
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        request = head + b"\r\n\r\n" + body
        with self.lock:
            self.requests.append(request)
        return request

    def close(self) -> None:
        self.listener.close()
        for conn in self.sockets:  # wake handlers blocked on a keep-alive connection the proxy still holds
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join(5)


def reset(conn: socket.socket) -> None:
    """Close with a TCP reset instead of an orderly FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def wait_for(condition: Callable[[], bool], what: str, tries: int = 500) -> None:
    """Poll until ``condition`` holds (bounded: 500 tries 10 ms apart)."""
    for _ in range(tries):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def raw_upstream(handler: Handler, **options: object) -> Iterator[RawUpstream]:
    upstream = RawUpstream(handler, **options)  # type: ignore[arg-type]
    try:
        yield upstream
    finally:
        upstream.close()


def response(body: bytes, *, content_type: bytes = b"application/json", extra: bytes = b"") -> bytes:
    """A complete keep-alive response with a Content-Length, then ``extra`` bytes in the same write."""
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: "
        + content_type
        + b"\r\ncontent-length: %d\r\n\r\n" % len(body)
        + body
        + extra
    )
