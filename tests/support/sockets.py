"""Raw TCP clients for the tests that speak HTTP/1.x byte by byte (slow, early, HTTP/1.0 or hostile clients)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


@contextlib.contextmanager
def raw(port: int, timeout: float) -> Iterator[socket.socket]:
    """A connection to 127.0.0.1:``port`` whose reads and writes wait at most ``timeout`` seconds."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(timeout)
        yield sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; a reset or a timeout raises (the answer did not arrive whole)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def read_what_comes(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; a reset or a timeout ends it with what came."""
    received = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            received += chunk
    return received
