"""The test harness's own servers: each test talks to the server it started, never to another program that took
its port. Two suites at once (or other projects' tests) start thousands of servers on loopback; a port picked as
free is only free at that instant."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
import redis
from support import redis_server as redis_module
from support.ports import free_port
from support.processes import Served, serve
from support.redis_server import RedisServer, find_redis_server


def test_a_redis_port_taken_before_redis_binds_it_is_replaced_and_the_server_is_its_own(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first port the fixture picks is one another Redis (which answers PING like ours) listens on."""
    picks = iter([redis_server.port])
    monkeypatch.setattr(redis_module, "free_port", lambda: next(picks, 0) or free_port())
    binary = find_redis_server()
    assert binary is not None
    workdir = tmp_path / "second"
    workdir.mkdir()
    second = RedisServer(binary, workdir, persistent=False)
    assert second.port == redis_server.port
    second.start()
    try:
        assert second.port != redis_server.port
        assert second.process is not None
        info = redis.Redis(port=second.port).info("server")
        assert info["process_id"] == second.process.pid
        second.restart()  # a restart keeps the port it ended on
        assert redis.Redis(port=second.port).info("server")["process_id"] == second.process.pid
    finally:
        second.stop()
    assert redis.Redis(port=redis_server.port).ping()  # the other Redis was left alone


def test_a_served_routeproxy_is_reached_on_the_port_it_bound(served: list[Served]) -> None:
    """The url is the process's own: the replica the stats name after one request is this process."""
    replica = serve("--simulate", "--speed", "1000")
    served.append(replica)
    body = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}
    assert httpx.post(f"{replica.url}/v1/chat/completions", json=body, timeout=10).status_code == 200
    stats = httpx.get(f"{replica.url}/v1/model-routing/stats", timeout=10).json()
    assert stats["replicas"] == [f"{socket.gethostname()}-{replica.process.pid}"]
