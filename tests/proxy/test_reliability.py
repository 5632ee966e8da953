"""Upstream faults, overload, bad input and shutdown: real servers on loopback, real failures."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import http
from support.clients import streamed_chunks
from support.ports import refused_port
from support.processes import Served, serve
from support.redis_server import RedisServer
from support.upstreams import ProxyFactory
from support.wait import eventually, eventually_async

from routeproxy.errors import InvalidRequest
from routeproxy.routing.classify import Classifier, load_rules
from routeproxy.settings import Tier
from routeproxy.sim.threadserver import ThreadedServer
from routeproxy.tasks import Repeating, spawn
from routeproxy.wire.parse import parse_chat_body, pop_hints

SIMPLE = [{"role": "user", "content": "Write a haiku about rain"}]  # SIMPLE: routed to the small tier


def dead_url() -> str:
    return f"http://127.0.0.1:{refused_port()}/v1"


@contextlib.contextmanager
def unaccepting_listener() -> Iterator[str]:
    """A port whose accept queue is full, so a new connection attempt hangs until it times out."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):  # fill the accept queue; later SYNs are dropped by the kernel
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)

    def queue_full() -> bool:  # the first filler connected: the one-slot queue is taken
        try:
            fillers[0].getpeername()
        except OSError:
            return False
        return True

    eventually(queue_full)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        for filler in fillers:
            filler.close()
        server.close()


def routed(url: str, messages: list[dict[str, str]] = SIMPLE, **kwargs: Any) -> httpx.Response:
    return http.post(f"{url}/v1/chat/completions", json={"model": "auto", "messages": messages}, timeout=10, **kwargs)


def test_small_tier_refusing_falls_back_to_large(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(
        {Tier.SMALL: dead_url(), Tier.LARGE: f"{simulators[Tier.LARGE].url}/v1"}, **{"routing.enabled": True}
    )
    response = routed(proxy.url)
    assert response.status_code == 200
    assert response.headers["x-routeproxy-tier"] == "8b"
    assert response.headers["x-routeproxy-fallback"] == "connect_error"
    assert response.json()["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    stats = http.get(f"{proxy.url}/v1/model-routing/stats").json()
    assert stats["fallbacks"]["8b"] == 1


def test_small_tier_answering_503_falls_back_before_any_byte_is_relayed(
    scripted: Any, simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    failing, server = scripted([(0.0, b'{"error": "overloaded"}')], status=503, content_type=b"application/json")
    proxy = start_proxy(
        {Tier.SMALL: f"{server.url}/v1", Tier.LARGE: f"{simulators[Tier.LARGE].url}/v1"}, **{"routing.enabled": True}
    )
    with openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="x", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=SIMPLE, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
    assert text
    assert raw.headers["x-routeproxy-fallback"] == "status_503"
    assert raw.headers["x-routeproxy-tier"] == "8b"
    assert len(failing.requests) == 1
    # Each attempt carried its own request id; the client's stays the client's.
    first_id = failing.requests[0]["headers"][b"x-request-id"]
    second_id = http.get(f"{simulators[Tier.LARGE].url}/_sim/requests").json()[-1]["headers"]["x-request-id"]
    assert first_id.decode() != second_id


def test_connect_timeout_falls_back(simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory) -> None:
    with unaccepting_listener() as stuck:
        proxy = start_proxy(
            {Tier.SMALL: stuck, Tier.LARGE: f"{simulators[Tier.LARGE].url}/v1"},
            **{"routing.enabled": True, "tiers.small.connect_timeout": 0.2},
        )
        response = routed(proxy.url)
    assert response.status_code == 200
    assert response.headers["x-routeproxy-fallback"] == "connect_timeout"


def test_without_fallback_the_client_gets_502_or_504(start_proxy: ProxyFactory) -> None:
    with unaccepting_listener() as stuck:
        proxy = start_proxy(
            {Tier.SMALL: dead_url(), Tier.LARGE: stuck},
            **{"tiers.large.connect_timeout": 0.2, "routing.fallback_large_to_small": False},
        )
        timed_out = routed(proxy.url)  # routing disabled: large tier, no fallback from large by default
    assert timed_out.status_code == 504
    assert timed_out.json()["error"]["code"] == "connect_timeout"
    proxy = start_proxy({Tier.SMALL: dead_url(), Tier.LARGE: dead_url()}, **{"routing.enabled": True})
    refused = routed(proxy.url)  # small refused, fallback to large refused too: one fallback only
    assert refused.status_code == 502
    assert refused.json()["error"]["type"] == "upstream_error"
    assert refused.headers["x-routeproxy-fallback"] == "connect_error"


def test_large_to_small_fallback_when_configured(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(
        {Tier.SMALL: f"{simulators[Tier.SMALL].url}/v1", Tier.LARGE: dead_url()},
        **{"routing.fallback_large_to_small": True},
    )
    response = routed(proxy.url)
    assert response.status_code == 200
    assert response.headers["x-routeproxy-tier"] == "3b"


def test_a_pinned_request_is_not_switched_to_the_other_model(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy({Tier.SMALL: dead_url(), Tier.LARGE: f"{simulators[Tier.LARGE].url}/v1"})
    response = http.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": "meta-llama/Llama-3.2-3B-Instruct", "messages": SIMPLE},
    )
    assert response.status_code == 502
    assert "x-routeproxy-fallback" not in response.headers


def test_idle_gap_over_the_limit_ends_the_stream_with_one_error_event(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(
        {tier: f"{server.url}/v1" for tier, server in simulators.items()}, **{"tiers.large.idle_timeout": 0.3}
    )
    _, chunks = streamed_chunks(
        proxy.url, {"model": "auto", "messages": SIMPLE}, headers={"x-sim-token-ms": "2000", "x-sim-tokens": "3"}
    )
    raw = b"".join(chunks)
    events = [event for event in raw.split(b"\n\n") if event]
    last = orjson.loads(events[-1].removeprefix(b"data: "))
    assert last["error"]["code"] == "idle_timeout"
    assert all(event.startswith(b"data: {") for event in events)  # only JSON events, nothing half-written
    assert sum(b'"error"' in event for event in events) == 1


def test_over_the_concurrency_limit_gets_429_with_retry_after(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(
        {tier: f"{server.url}/v1" for tier, server in simulators.items()}, **{"server.max_concurrent_requests": 2}
    )

    async def scenario() -> None:
        async with http.async_client(timeout=10) as client:
            slow = {"x-sim-tokens": "20", "x-sim-token-ms": "50"}
            body = {"model": "auto", "messages": SIMPLE, "stream": True}
            url = f"{proxy.url}/v1/chat/completions"
            async with (
                client.stream("POST", url, json=body, headers=slow) as first,
                client.stream("POST", url, json=body, headers=slow) as second,
            ):
                assert first.status_code == second.status_code == 200
                refused = await client.post(url, json=body)
                assert refused.status_code == 429
                assert refused.headers["retry-after"] == "1"
                assert refused.json()["error"]["type"] == "rate_limit_error"
                await first.aread()
                await second.aread()
            assert (await client.post(url, json=body)).status_code == 200  # slots are given back

    asyncio.run(scenario())
    with openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="x") as client:
        assert client.chat.completions.create(model="auto", messages=SIMPLE).choices


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"[" * 5000 + b"]" * 5000, 400, "not valid JSON"),
        (orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": "x"}] * 100_001}), 400, "at most"),
        (
            orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": [{"type": "hologram"}]}]}),
            400,
            "not a known content part type",
        ),
        (orjson.dumps({"model": "auto", "messages": [{"role": 7, "content": "x"}]}), 400, "role"),
        (b'"just a string"', 400, "JSON object"),
        (b"", 400, "empty"),
    ],
)
def test_bad_input_gets_a_named_4xx_and_the_proxy_keeps_serving(
    proxy: ThreadedServer, body: bytes, status: int, fragment: str
) -> None:
    response = http.post(
        f"{proxy.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"}, timeout=30
    )
    assert response.status_code == status
    assert fragment in response.json()["error"]["message"]
    assert routed(proxy.url).status_code == 200


def test_body_over_the_limit_is_413(simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory) -> None:
    proxy = start_proxy(
        {tier: f"{server.url}/v1" for tier, server in simulators.items()}, **{"server.max_body_bytes": 2048}
    )
    big = {"model": "auto", "messages": [{"role": "user", "content": "x" * 4000}]}
    declared = http.post(f"{proxy.url}/v1/chat/completions", json=big)
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds on the bytes actually sent
        payload = orjson.dumps(big)
        for start in range(0, len(payload), 512):
            yield payload[start : start + 512]

    streamed = http.post(
        f"{proxy.url}/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413
    assert routed(proxy.url).status_code == 200


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant"]) | JSON},
    optional={
        "content": JSON
        | st.text()
        | st.lists(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["text", "image_url", "odd"]) | JSON}, optional={"text": JSON | st.text()}
            )
        )
    },
)
REQUEST = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["auto", "meta-llama/Llama-3.2-3B-Instruct"]) | JSON,
        "messages": st.lists(MESSAGE, max_size=5) | JSON,
        "query_type": st.sampled_from(["comparative", "genetics_performance"]) | JSON,
        "entities": st.dictionaries(st.sampled_from(["breed", "age_days", "x"]), JSON) | JSON,
        "tools": JSON,
        "response_format": JSON,
    },
)
CLASSIFIER = Classifier(load_rules("poultry"))


@settings(max_examples=400, deadline=None)
@given(document=REQUEST | JSON)
def test_random_json_never_crashes_the_parser_or_the_classifier(document: Any) -> None:
    try:
        body = parse_chat_body(orjson.dumps(document))
    except InvalidRequest:
        return
    hints = pop_hints(body, {})
    result = CLASSIFIER.classify(body, query_type=hints.query_type, entities=hints.entities)
    assert 0.0 <= result.score <= 1.0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=REQUEST | JSON)
def test_random_json_through_the_live_proxy_is_never_a_5xx(proxy: ThreadedServer, document: Any) -> None:
    response = http.post(
        f"{proxy.url}/v1/chat/completions",
        content=orjson.dumps(document),
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code < 500
    if response.status_code >= 400:
        assert set(response.json()["error"]) >= {"message", "type"}


def test_sigterm_during_50_open_streams_lets_all_finish_then_exits_0(
    redis_server: RedisServer, served: list[Served]
) -> None:
    proxy = serve(
        "--simulate", "--speed", "1000", env={"REDIS_URL": redis_server.url, "ROUTEPROXY_REDIS_NAMESPACE": "drain"}
    )
    served.append(proxy)
    pid = proxy.process.pid
    body = {"model": "auto", "messages": SIMPLE, "stream": True}
    slow = {"x-sim-tokens": "30", "x-sim-token-ms": "50"}  # each stream lasts about 1.5 s

    async def scenario() -> list[bytes]:
        limits = httpx.Limits(max_connections=60)
        async with http.async_client(timeout=20, limits=limits) as client:
            started = asyncio.Event()
            opened = 0

            async def one() -> bytes:
                nonlocal opened
                async with client.stream("POST", f"{proxy.url}/v1/chat/completions", json=body, headers=slow) as r:
                    chunks = r.aiter_raw()
                    first = await chunks.__anext__()
                    opened += 1
                    if opened == 50:
                        started.set()
                    rest = [chunk async for chunk in chunks]
                    return first + b"".join(rest)

            tasks = [spawn(one()) for _ in range(50)]
            await asyncio.wait_for(started.wait(), 10)
            os.kill(pid, signal.SIGTERM)

            async def refused() -> bool:  # uvicorn closes its listening socket, then waits for open streams
                async with http.async_client() as probe:
                    try:
                        await probe.get(f"{proxy.url}/healthz")
                    # Refused, or taken from the backlog as the socket closed and then closed unanswered.
                    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
                        return True
                return False

            await eventually_async(refused, what="new connections refused after SIGTERM")
            assert not any(task.done() for task in tasks)  # ... while every open stream is still running
            return await asyncio.gather(*tasks)

    bodies = asyncio.run(scenario())
    assert len(bodies) == 50
    assert all(raw.endswith(b"data: [DONE]\n\n") for raw in bodies)
    assert proxy.process.wait(timeout=20) == 0
    logs = served.pop().stop()
    assert '"event":"draining"' in logs
    # The counters were flushed on the way out: Redis holds all 50.
    fields = redis_server.cli("HGET", "{drain}:stats:0", "requests:8b").strip()
    assert fields == "50"


# serve --simulate with uvicorn's Server.run standing in for a proxy that has served and drained: which of the
# simulators' threads are still alive when serve returns, i.e. when the interpreter would start to finalise.
_SIMULATE_AND_RETURN = """
import sys, threading, uvicorn
simulators_run = uvicorn.Server.run  # the simulators' servers run; the proxy's (given its socket) does not
def run(server, sockets=None):
    if sockets is None:
        return simulators_run(server)
    server.started = True
uvicorn.Server.run = run
from routeproxy.cli import main
code = main(["serve", "--simulate", "--port", "0"])
print(sorted(t.name for t in threading.enumerate() if t.name.startswith("simulator")))
sys.exit(code)
"""


def test_serve_simulate_stops_its_simulators_before_it_exits() -> None:
    # A daemon thread still running its event loop while the interpreter finalised crashed the process: 8 of 40
    # `serve --simulate` processes ended in SIGSEGV (-11) instead of 0 after SIGTERM on 2 loaded cores.
    done = subprocess.run(
        [sys.executable, "-c", _SIMULATE_AND_RETURN],
        env={**os.environ, "ROUTEPROXY_LOG_LEVEL": "warning"},
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().strip().splitlines()[-1] == "[]"


def test_readyz_reports_draining_and_the_counter_store(proxy: ThreadedServer) -> None:
    ready = http.get(f"{proxy.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["counters"] == "memory: ok"
    resources = proxy.server.lifespan.state["resources"]
    resources.draining = True
    unready = http.get(f"{proxy.url}/readyz")
    assert unready.status_code == 503
    assert unready.json()["reasons"] == ["draining"]
    assert http.get(f"{proxy.url}/healthz").status_code == 200  # liveness is not readiness


def test_serve_exits_cleanly_on_sigint_too(served: list[Served]) -> None:
    proxy = serve("--simulate", "--speed", "1000")
    served.append(proxy)
    proxy.process.send_signal(signal.SIGINT)
    assert proxy.process.wait(timeout=20) == 0
    assert '"event":"draining"' in served.pop().stop()


def test_a_client_leaving_mid_body_holds_no_slot(proxy: ThreadedServer) -> None:
    """The slot is taken once the whole body is in (test_hostile_clients.py has three such clients against a
    limit of two): a client that leaves mid-body never held one, and the proxy keeps serving."""

    def inflight() -> int:
        count: int = http.get(f"{proxy.url}/readyz").json()["checks"]["inflight"]
        return count

    for _ in range(3):
        with socket.create_connection(("127.0.0.1", proxy.port)) as raw:
            raw.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"content-length: 1000\r\n\r\n" + b'{"model": "auto", "mess'
            )
            assert inflight() == 0
        eventually(lambda: inflight() == 0, what="no slot held after the client left")
    assert routed(proxy.url).status_code == 200


async def test_a_repeating_step_that_raises_does_not_end_the_loop() -> None:
    steps: list[int] = []
    enough = asyncio.Event()

    async def step() -> None:
        steps.append(len(steps))
        if len(steps) >= 3:
            enough.set()
        if len(steps) == 1:
            raise RuntimeError("a bug in the first step")

    loop = Repeating(step, 0.001, "test-loop")
    loop.start(at_once=True)
    await asyncio.wait_for(enough.wait(), 10)
    await loop.stop()
    assert steps[:3] == [0, 1, 2] and not loop.running
