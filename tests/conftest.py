"""The fixtures every test folder shares: simulated upstreams, proxies in a thread, real Redis and routeproxy
processes (the helpers behind them live in ``tests/support``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.processes import served  # noqa: F401  (routeproxy processes, stopped after the test)
from support.redis_server import cluster_redis_server, persistent_redis_server, redis_server  # noqa: F401
from support.upstreams import ProxyFactory, ScriptedUpstream, fast_profile, settings_for

from routeproxy.api.app import create_app
from routeproxy.api.server import GuardedHttpToolsProtocol
from routeproxy.settings import Tier
from routeproxy.sim.simulator import create_simulator_app
from routeproxy.sim.threadserver import ThreadedServer


@pytest.fixture
def simulators() -> Iterator[dict[Tier, ThreadedServer]]:
    servers = {tier: ThreadedServer(create_simulator_app(fast_profile(tier))).start() for tier in Tier}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def start_proxy() -> Iterator[ProxyFactory]:
    """start_proxy(upstreams, **setting overrides) -> a running proxy on loopback."""
    started: list[ThreadedServer] = []

    def start(upstreams: dict[Tier, str], **overrides: Any) -> ThreadedServer:
        # The protocol `routeproxy serve` uses, so the limits on request heads and bodies hold here too.
        server = ThreadedServer(create_app(settings_for(upstreams, **overrides)), http=GuardedHttpToolsProtocol).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def proxy(simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory) -> ThreadedServer:
    return start_proxy({tier: f"{server.url}/v1" for tier, server in simulators.items()})


@pytest.fixture
def scripted() -> Iterator[Callable[..., tuple[ScriptedUpstream, ThreadedServer]]]:
    started: list[ThreadedServer] = []

    def start(*args: Any, **kwargs: Any) -> tuple[ScriptedUpstream, ThreadedServer]:
        upstream = ScriptedUpstream(*args, **kwargs)
        server = ThreadedServer(upstream).start()
        started.append(server)
        return upstream, server

    yield start
    for server in started:
        server.stop()
