"""The response cache through a real proxy in front of the simulator: hits, byte-exact replay, what is never
stored, and the per-request controls."""

from __future__ import annotations

from typing import Any

import pytest
from support import http
from support.clients import streamed_chunks
from support.upstreams import ProxyFactory

from routeproxy.settings import Tier
from routeproxy.sim.threadserver import ThreadedServer

CACHE = {"cache.enabled": True}


def body(question: str = "What is the capital of France?", **extra: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": question}], "temperature": 0, **extra}


def upstream_calls(simulators: dict[Tier, ThreadedServer]) -> int:
    return sum(int(http.get(f"{server.url}/_sim/stats").json()["requests"]) for server in simulators.values())


def upstreams(simulators: dict[Tier, ThreadedServer]) -> dict[Tier, str]:
    return {tier: f"{server.url}/v1" for tier, server in simulators.items()}


def chat(proxy: ThreadedServer, payload: dict[str, Any], **headers: str) -> Any:
    return http.post(f"{proxy.url}/v1/chat/completions", json=payload, headers=headers)


@pytest.fixture
def cached(simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory) -> ThreadedServer:
    return start_proxy(upstreams(simulators), **CACHE)


def test_repeated_request_is_a_hit_with_the_first_answers_bytes(
    cached: ThreadedServer, simulators: dict[Tier, ThreadedServer]
) -> None:
    first = chat(cached, body())
    second = chat(cached, body())
    assert first.status_code == second.status_code == 200
    assert first.headers["x-routeproxy-cache"] == "miss"
    assert second.headers["x-routeproxy-cache"] == "hit"
    assert int(second.headers["age"]) >= 0
    assert second.content == first.content  # the same id, created time and text: the stored bytes
    assert second.headers["x-request-id"] != first.headers["x-request-id"]
    assert upstream_calls(simulators) == 1


def test_streamed_hit_replays_the_upstreams_bytes_exactly(
    cached: ThreadedServer, simulators: dict[Tier, ThreadedServer]
) -> None:
    first_headers, first = streamed_chunks(cached.url, body())
    second_headers, second = streamed_chunks(cached.url, body())
    assert (first_headers["x-routeproxy-cache"], second_headers["x-routeproxy-cache"]) == ("miss", "hit")
    assert b"".join(second) == b"".join(first)
    assert b"".join(first).endswith(b"data: [DONE]\n\n")
    assert upstream_calls(simulators) == 1


def test_key_order_and_whitespace_do_not_matter(cached: ThreadedServer) -> None:
    first = http.post(
        f"{cached.url}/v1/chat/completions",
        content=b'{"model":"auto","temperature":0,"messages":[{"role":"user","content":"Hi there"}]}',
        headers={"content-type": "application/json"},
    )
    second = http.post(
        f"{cached.url}/v1/chat/completions",
        content=b'{ "messages": [ {"content": "Hi there", "role": "user"} ],\n "temperature": 0.0, "model": "auto" }',
        headers={"content-type": "application/json"},
    )
    assert (first.headers["x-routeproxy-cache"], second.headers["x-routeproxy-cache"]) == ("miss", "hit")
    assert second.content == first.content


def test_request_without_determinism_is_not_cached(
    cached: ThreadedServer, simulators: dict[Tier, ThreadedServer]
) -> None:
    payload = {"model": "auto", "messages": [{"role": "user", "content": "Tell me a story"}]}
    answers = [chat(cached, payload) for _ in range(2)]
    assert [answer.headers["x-routeproxy-cache"] for answer in answers] == ["bypass", "bypass"]
    assert upstream_calls(simulators) == 2
    seeded = [chat(cached, {**payload, "seed": 7}) for _ in range(2)]
    assert [answer.headers["x-routeproxy-cache"] for answer in seeded] == ["miss", "hit"]


def test_several_choices_are_cached_only_when_asked(cached: ThreadedServer) -> None:
    payload = body("Name a colour", n=2)
    assert [chat(cached, payload).headers["x-routeproxy-cache"] for _ in range(2)] == ["bypass", "bypass"]
    asked = [chat(cached, payload, **{"x-routeproxy-cache": "on"}).headers["x-routeproxy-cache"] for _ in range(2)]
    assert asked == ["miss", "hit"]


@pytest.mark.parametrize(
    ("first_headers", "second_headers", "second_status"),
    [
        ({}, {"cache-control": "no-cache"}, "miss"),  # a fresh answer, not one from the cache
        ({}, {"x-routeproxy-cache": "no-cache"}, "miss"),
        ({"cache-control": "no-store"}, {}, "miss"),  # the first answer was not stored
        ({"x-routeproxy-cache": "no-store"}, {}, "miss"),
        ({}, {"cache-control": "max-age=0, no-transform"}, "miss"),  # unknown directives are ignored
        ({}, {"cache-control": "max-age=3600"}, "hit"),
        ({}, {"x-routeproxy-cache": "off"}, "bypass"),
        ({"x-routeproxy-cache": "ttl=0"}, {}, "miss"),
        ({"x-routeproxy-cache": "namespace=team-a"}, {}, "miss"),
        ({"x-routeproxy-cache": "namespace=team-a"}, {"x-routeproxy-cache": "namespace=team-a"}, "hit"),
    ],
)
def test_cache_control_variants(
    cached: ThreadedServer, first_headers: dict[str, str], second_headers: dict[str, str], second_status: str
) -> None:
    assert chat(cached, body(), **first_headers).status_code == 200
    assert chat(cached, body(), **second_headers).headers["x-routeproxy-cache"] == second_status


def test_no_cache_refreshes_the_stored_answer(cached: ThreadedServer) -> None:
    first = chat(cached, body())
    fresh = chat(cached, body(), **{"cache-control": "no-cache"})
    third = chat(cached, body())
    assert fresh.content != first.content  # a new upstream answer (its id differs)
    assert third.headers["x-routeproxy-cache"] == "hit"
    assert third.content == fresh.content


def test_body_field_is_read_and_never_reaches_the_upstream(
    cached: ThreadedServer, simulators: dict[Tier, ThreadedServer]
) -> None:
    assert chat(cached, body(cache={"no-store": True})).headers["x-routeproxy-cache"] == "miss"
    assert chat(cached, body()).headers["x-routeproxy-cache"] == "miss"
    recorded = [
        item["body"]
        for server in simulators.values()
        for item in http.get(f"{server.url}/_sim/requests").json()
        if item["body"] is not None
    ]
    assert len(recorded) == 2
    assert all("cache" not in sent for sent in recorded)


@pytest.mark.parametrize(
    ("headers", "payload_extra", "param"),
    [
        ({"x-routeproxy-cache": "forever"}, {}, "x-routeproxy-cache"),
        ({"x-routeproxy-cache": "ttl=soon"}, {}, "x-routeproxy-cache"),
        ({}, {"cache": {"ttl": "300"}}, "cache.ttl"),
        ({}, {"cache": {"no_cache": True}}, "cache.no_cache"),
        ({}, {"cache": "no-cache"}, "cache"),
    ],
)
def test_bad_cache_control_is_a_400_in_openais_envelope(
    cached: ThreadedServer, headers: dict[str, str], payload_extra: dict[str, Any], param: str
) -> None:
    answer = chat(cached, body(**payload_extra), **headers)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_cache_off_by_default_adds_no_header(proxy: ThreadedServer) -> None:
    answer = chat(proxy, body())
    assert answer.status_code == 200
    assert "x-routeproxy-cache" not in answer.headers


def test_a_paced_hit_comes_in_the_upstreams_chunks_and_an_immediate_one_at_once(cached: ThreadedServer) -> None:
    paced_upstream = {"x-sim-token-ms": "5"}
    _, first = streamed_chunks(cached.url, body(), paced_upstream)
    _, at_once = streamed_chunks(cached.url, body())
    headers, paced = streamed_chunks(cached.url, body(), {"x-routeproxy-cache": "pace"})
    assert headers["x-routeproxy-cache"] == "hit"
    assert b"".join(at_once) == b"".join(paced) == b"".join(first)
    assert len(at_once) == 1
    assert len(paced) > 2


def test_text_completions_are_cached_too(cached: ThreadedServer, simulators: dict[Tier, ThreadedServer]) -> None:
    payload = {"model": "auto", "prompt": "Once upon a time", "temperature": 0, "max_tokens": 8}
    answers = [http.post(f"{cached.url}/v1/completions", json=payload) for _ in range(2)]
    assert [answer.status_code for answer in answers] == [200, 200]
    assert [answer.headers["x-routeproxy-cache"] for answer in answers] == ["miss", "hit"]
    assert answers[1].content == answers[0].content
    assert upstream_calls(simulators) == 1
