"""Loopback ports for the tests.

``free_port`` (the benchmark's own helper) is free when it is picked, not later: a server that binds it itself
(redis-server) must check it got it (``support.redis_server``), and routeproxy processes bind port 0 instead
(``support.processes``). ``refused_port`` is a port that refuses connections for as long as the test process runs:
bound and never listening, so no other program can start listening on it meanwhile."""

from __future__ import annotations

import socket

from routeproxy.bench.procs import free_port

__all__ = ["free_port", "refused_port"]

_held: list[socket.socket] = []  # kept open (and so the ports kept) until the test process ends


def refused_port() -> int:
    """A loopback port where every connection is refused (an upstream or a Redis that is down)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _held.append(sock)
    port: int = sock.getsockname()[1]
    return port
