"""What the cache never stores (errors, cut streams, a fallback's answer, an escalation's discarded or failed
answer), and coalescing: identical requests in flight answered by one upstream call, a failing or departing
original never failing its followers. Scripted upstreams on loopback, a real proxy."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send
from support import http
from support.chat_upstream import ChatUpstream, Script, serve_tiers, words
from support.ports import refused_port
from support.upstreams import ProxyFactory, read_request_body, serve_lifespan
from support.wait import eventually, eventually_async

from routeproxy.settings import Tier
from routeproxy.sim.threadserver import ThreadedServer
from routeproxy.tasks import spawn

ANSWER = words("Paris is the capital of France, and its largest city by far.")
LARGE = words("The capital of France is Paris, on the Seine, home to about two million people.")
REFUSAL = words("I'm sorry, but I can't help with that request. It is not something I am able to assist with.")
QUESTION = "What is the capital of France?"
NO_FALLBACK = {"routing.fallback_small_to_large": False, "routing.fallback_large_to_small": False}


def body(question: str = QUESTION, **extra: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": question}], "temperature": 0, **extra}


class Setup:
    def __init__(self, proxy: ThreadedServer, small: ChatUpstream, large: ChatUpstream) -> None:
        self.proxy, self.small, self.large = proxy, small, large
        self.url = f"{proxy.url}/v1/chat/completions"

    def post(self, payload: dict[str, Any]) -> httpx.Response:
        return http.post(self.url, json=payload, timeout=30)

    def stream(self, payload: dict[str, Any]) -> tuple[httpx.Response, bytes]:
        with http.client(timeout=30) as client, client.stream("POST", self.url, json=payload) as response:
            return response, b"".join(response.iter_raw())

    def inflight(self) -> int:
        text = http.get(f"{self.proxy.url}/metrics").text
        line = next(line for line in text.splitlines() if line.startswith("routeproxy_inflight_requests "))
        return int(float(line.split()[1]))


@pytest.fixture
def setup(start_proxy: ProxyFactory) -> Iterator[Callable[..., Setup]]:
    servers: list[ThreadedServer] = []

    def start(small: Any = None, large: Any = None, *, small_url: str | None = None, **overrides: Any) -> Setup:
        upstreams = {
            Tier.SMALL: small if isinstance(small, ChatUpstream) else ChatUpstream(small or Script(ANSWER), model="s"),
            Tier.LARGE: large if isinstance(large, ChatUpstream) else ChatUpstream(large or Script(LARGE), model="l"),
        }
        urls = serve_tiers(upstreams, servers)
        if small_url is not None:
            urls[Tier.SMALL] = small_url
        proxy = start_proxy(urls, **{"cache.enabled": True, **overrides})
        return Setup(proxy, upstreams[Tier.SMALL], upstreams[Tier.LARGE])

    yield start
    for server in servers:
        server.stop()


# -- never stored --


def test_an_upstream_error_is_not_stored(setup: Callable[..., Setup]) -> None:
    proxy = setup(large=Script(ANSWER, status=500), **NO_FALLBACK)
    failed = proxy.post(body())
    assert failed.status_code == 500
    proxy.large.answers = Script(ANSWER)
    statuses = [proxy.post(body()).headers["x-routeproxy-cache"] for _ in range(2)]
    assert statuses == ["miss", "hit"]
    assert len(proxy.large.requests) == 2


def test_a_stream_cut_short_is_not_stored(setup: Callable[..., Setup]) -> None:
    proxy = setup(large=Script(ANSWER, break_after=3), **NO_FALLBACK)
    _, cut = proxy.stream(body(stream=True))
    assert b'"error"' in cut
    proxy.large.answers = Script(ANSWER)
    first, whole = proxy.stream(body(stream=True))
    assert first.headers["x-routeproxy-cache"] == "miss"
    assert whole.endswith(b"data: [DONE]\n\n")
    assert len(proxy.large.requests) == 2


def test_an_answer_from_the_fallback_tier_is_not_stored(setup: Callable[..., Setup]) -> None:
    down = f"http://127.0.0.1:{refused_port()}/v1"
    proxy = setup(small_url=down, **{"routing.enabled": True, "routing.fallback_small_to_large": True})
    answers = [proxy.post(body()) for _ in range(2)]
    assert [answer.headers["x-routeproxy-fallback"] for answer in answers] == ["connect_error"] * 2
    assert [answer.headers["x-routeproxy-cache"] for answer in answers] == ["miss", "miss"]
    assert len(proxy.large.requests) == 2


def test_an_escalated_cascade_stores_the_answer_the_client_got_never_the_held_one(
    setup: Callable[..., Setup],
) -> None:
    proxy = setup(Script(REFUSAL), Script(LARGE), **{"routing.enabled": True, "routing.mode": "cascade"})
    question = "Describe the water cycle."
    first = proxy.post(body(question))
    second = proxy.post(body(question))
    assert first.headers["x-routeproxy-escalated"] == "true"
    assert (second.headers["x-routeproxy-cache"], second.headers["x-routeproxy-tier"]) == ("hit", "8b")
    assert second.content == first.content
    assert "".join(LARGE) in second.json()["choices"][0]["message"]["content"]
    assert len(proxy.small.requests) == len(proxy.large.requests) == 1


def test_a_held_answer_sent_because_the_escalation_failed_is_not_stored(setup: Callable[..., Setup]) -> None:
    cascade = {"routing.enabled": True, "routing.mode": "cascade"}
    proxy = setup(Script(REFUSAL), Script(LARGE, status=503), **cascade)
    question = "Describe the water cycle."
    answers = [proxy.post(body(question)) for _ in range(2)]
    assert [answer.headers["x-routeproxy-fallback"] for answer in answers] == ["escalation_status_503"] * 2
    assert [answer.headers["x-routeproxy-cache"] for answer in answers] == ["miss", "miss"]
    assert len(proxy.small.requests) == 2


# -- coalescing --


async def _stream(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> tuple[int, str, bytes]:
    async with client.stream("POST", url, json=payload) as response:
        data = b"".join([chunk async for chunk in response.aiter_raw()])
        return response.status_code, response.headers.get("x-routeproxy-cache", ""), data


async def test_identical_streams_in_flight_reach_the_upstream_once(setup: Callable[..., Setup]) -> None:
    proxy = setup(large=Script(ANSWER, stall_after=2), **NO_FALLBACK)
    payload = body(stream=True)
    async with http.async_client(timeout=30, limits=httpx.Limits(max_connections=50)) as client:
        leader = spawn(_stream(client, proxy.url, payload))
        await eventually_async(lambda: asyncio.to_thread(lambda: proxy.large.stalled == 1), what="leader stalled")
        followers = [spawn(_stream(client, proxy.url, payload)) for _ in range(20)]
        await eventually_async(lambda: asyncio.to_thread(lambda: proxy.inflight() == 21), what="21 requests in")
        proxy.large.go.set()
        results = [await leader, *[await follower for follower in followers]]
    assert {status for status, _, _ in results} == {200}
    assert sorted(cache for _, cache, _ in results) == ["coalesced"] * 20 + ["miss"]
    assert len({data for _, _, data in results}) == 1
    assert results[0][2].endswith(b"data: [DONE]\n\n")
    assert len(proxy.large.requests) == 1


class FailFirst:
    """An upstream whose first answer, once the test releases it, is a 503; every later one is ``then``'s."""

    def __init__(self, then: ChatUpstream) -> None:
        self.then = then
        self.release = threading.Event()
        self.waiting = False
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        self.calls += 1
        if self.calls > 1:
            await self.then(scope, receive, send)
            return
        await read_request_body(receive)
        self.waiting = True
        await asyncio.to_thread(self.release.wait, 10)
        payload = b'{"error": {"message": "overloaded", "type": "server_error"}}'
        await send({"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload, "more_body": False})


async def test_followers_are_not_failed_with_a_failing_original(start_proxy: ProxyFactory) -> None:
    then = ChatUpstream(Script(ANSWER), model="l")
    failing = FailFirst(then)
    servers = [ThreadedServer(app).start() for app in (ChatUpstream(Script(ANSWER), model="s"), failing)]
    try:
        urls = {Tier.SMALL: f"{servers[0].url}/v1", Tier.LARGE: f"{servers[1].url}/v1"}
        proxy = Setup(start_proxy(urls, **{"cache.enabled": True, **NO_FALLBACK}), then, then)
        payload = body(stream=True)
        async with http.async_client(timeout=30) as client:
            leader = spawn(_stream(client, proxy.url, payload))
            await eventually_async(lambda: asyncio.to_thread(lambda: failing.waiting), what="original upstream")
            followers = [spawn(_stream(client, proxy.url, payload)) for _ in range(5)]
            await eventually_async(lambda: asyncio.to_thread(lambda: proxy.inflight() == 6), what="6 requests in")
            failing.release.set()
            first = await leader
            rest = [await follower for follower in followers]
    finally:
        for server in servers:
            server.stop()
    assert first[0] == 503
    assert {status for status, _, _ in rest} == {200}
    assert sorted(cache for _, cache, _ in rest) == ["coalesced"] * 4 + ["miss"]  # one follower led the next try
    assert len({data for _, _, data in rest}) == 1
    assert failing.calls == 2


async def test_followers_get_the_whole_stream_when_the_original_client_leaves(setup: Callable[..., Setup]) -> None:
    proxy = setup(large=Script(ANSWER, stall_after=2), **NO_FALLBACK)
    payload = body(stream=True)
    async with http.async_client(timeout=30) as client, http.async_client(timeout=30) as leaving:
        async with leaving.stream("POST", proxy.url, json=payload) as original:
            chunks = original.aiter_raw()
            assert b"data:" in await anext(chunks)
            followers = [spawn(_stream(client, proxy.url, payload)) for _ in range(3)]
            await eventually_async(lambda: asyncio.to_thread(lambda: proxy.inflight() == 4), what="4 requests in")
        # The original client is gone (its connection closed); the upstream goes on for the followers.
        proxy.large.go.set()
        results = [await follower for follower in followers]
    assert {status for status, _, _ in results} == {200}
    assert [cache for _, cache, _ in results] == ["coalesced"] * 3
    assert len({data for _, _, data in results}) == 1
    assert results[0][2].endswith(b"data: [DONE]\n\n")
    assert (len(proxy.large.requests), proxy.large.disconnects) == (1, 0)
    later, data = proxy.stream(payload)
    assert later.headers["x-routeproxy-cache"] == "hit"  # the answer the followers got was complete: stored
    assert data == results[0][2]


async def test_the_upstream_is_closed_once_every_client_of_a_flight_has_left(setup: Callable[..., Setup]) -> None:
    proxy = setup(large=Script(ANSWER, stall_after=2), **NO_FALLBACK)
    payload = body(stream=True)
    async with (
        http.async_client(timeout=30) as first,
        http.async_client(timeout=30) as second,
        first.stream("POST", proxy.url, json=payload) as original,
    ):
        original_chunks = original.aiter_raw()  # held: a dropped iterator would close the response at once
        await anext(original_chunks)
        async with second.stream("POST", proxy.url, json=payload) as follower:
            assert follower.headers["x-routeproxy-cache"] == "coalesced"
            follower_chunks = follower.aiter_raw()
            await anext(follower_chunks)
            assert proxy.large.disconnects == 0
    eventually(lambda: proxy.large.disconnects == 1, what="the upstream saw the proxy leave")
    eventually(lambda: proxy.inflight() == 0, what="every slot given back")
