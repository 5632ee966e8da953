"""A bounded soak: thousands of mixed requests with client disconnects and a failing share, then the books.

Marked slow (about 15 s here); it runs in the default suite. Bounded in count (1,600 requests) and in time
(the whole run is cancelled after 120 s), against loopback servers only.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from typing import Any

import httpx
import pytest
from support import http
from support.upstreams import ProxyFactory
from support.wait import eventually

from routeproxy.settings import Tier
from routeproxy.sim.threadserver import ThreadedServer

MESSAGES = [{"role": "user", "content": "How should a farm plan its feeding schedule?"}]
KINDS = ("ok", "ok_stream", "upstream_503", "dies_mid_stream", "client_leaves")
WEIGHTS = (35, 25, 15, 10, 15)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def one(client: httpx.AsyncClient, url: str, kind: str) -> str:
    body: dict[str, Any] = {"model": "auto", "messages": MESSAGES}
    headers: dict[str, str] = {}
    if kind == "upstream_503":
        headers["x-sim-status"] = "503"
    if kind in ("ok_stream", "dies_mid_stream", "client_leaves"):
        body["stream"] = True
    if kind == "dies_mid_stream":
        headers["x-sim-die-after"] = "2"
    if kind == "client_leaves":
        # A minute of tokens: only the client's leaving can end this stream. With a shorter one (50 tokens, 1 s) a
        # client on a saturated machine could get its first chunk after the proxy had relayed the whole answer, a
        # stream that correctly counts as complete, not as a disconnect (the soak's old `253 == 254`).
        headers.update({"x-sim-tokens": "3000", "x-sim-token-ms": "20"})
    if not body.get("stream"):
        response = await client.post(url, json=body, headers=headers)
        return f"status_{response.status_code}"
    async with client.stream("POST", url, json=body, headers=headers) as response:
        chunks = response.aiter_raw()
        first = await chunks.__anext__()
        if kind == "client_leaves":
            return "left"  # leaving the block closes the connection mid-stream
        rest = b"".join([chunk async for chunk in chunks])
    return "error_event" if b'"error"' in first + rest else "done"


async def drive(url: str, kinds: list[str], concurrency: int) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    queue = list(kinds)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with http.async_client(timeout=30, limits=limits) as client:

        async def worker() -> None:
            while queue:
                outcomes[await one(client, url, queue.pop())] += 1

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), 120)
    return outcomes


@pytest.mark.slow
def test_soak_loses_nothing_and_leaks_nothing(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(
        {tier: f"{server.url}/v1" for tier, server in simulators.items()},
        **{"server.admin_loopback_without_token": True},
    )
    url = f"{proxy.url}/v1/chat/completions"
    chooser = random.Random(20261125)
    asyncio.run(drive(url, ["ok"] * 200, 16))  # warm up pools and caches before the baselines
    assert http.post(f"{proxy.url}/v1/model-routing/reset").status_code == 200
    fds_before, rss_before = open_fds(), rss_mb()

    kinds = chooser.choices(KINDS, WEIGHTS, k=1600)
    sent = Counter(kinds)
    outcomes = asyncio.run(drive(url, kinds, 32))

    assert outcomes["status_200"] == sent["ok"]
    assert outcomes["status_503"] == sent["upstream_503"]
    assert outcomes["done"] == sent["ok_stream"]
    assert outcomes["error_event"] == sent["dies_mid_stream"]
    assert outcomes["left"] == sent["client_leaves"]

    # Every request is in the books: sent = succeeded + failed + disconnected. A request is counted when the proxy
    # finishes it, which for a client that left is when the relay notices (its next write): poll for the last.
    def booked() -> dict[str, Any] | None:
        stats: dict[str, Any] = http.get(f"{proxy.url}/v1/model-routing/stats").json()
        return stats if stats["total_requests"] >= len(kinds) else None

    stats = eventually(booked, what=f"all {len(kinds)} requests counted")
    large = "8b"  # routing is off in this proxy: everything goes to the large tier
    assert stats["total_requests"] == len(kinds)
    assert stats["disconnects"][large] == sent["client_leaves"]
    assert stats["upstream_errors"][large] == sent["upstream_503"] + sent["dies_mid_stream"]
    assert stats["status_classes"][large]["5xx"] == sent["upstream_503"]
    succeeded = stats["status_classes"][large]["2xx"] - sent["dies_mid_stream"] - sent["client_leaves"]
    assert succeeded == sent["ok"] + sent["ok_stream"]

    # Nothing left open upstream, no file descriptors piling up, memory flat.
    upstream = http.get(f"{simulators[Tier.LARGE].url}/_sim/stats").json()
    assert upstream["open_streams"] == 0
    assert upstream["disconnected_streams"] >= sent["client_leaves"]
    assert open_fds() - fds_before < 40
    assert rss_mb() - rss_before < 40
