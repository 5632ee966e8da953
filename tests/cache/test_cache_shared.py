"""The cache shared through a real Redis by several proxies, what happens when Redis is gone, isolation between
client keys, stream and whole-body framings answering each other, and how cached answers are counted."""

from __future__ import annotations

from typing import Any

import openai
from support import http
from support.clients import streamed_chunks
from support.redis_server import RedisServer
from support.upstreams import ProxyFactory
from support.wait import eventually

from routeproxy.settings import Tier
from routeproxy.sim.threadserver import ThreadedServer


def body(question: str = "What is the capital of France?", **extra: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": question}], "temperature": 0, **extra}


def urls(simulators: dict[Tier, ThreadedServer]) -> dict[Tier, str]:
    return {tier: f"{server.url}/v1" for tier, server in simulators.items()}


def upstream_calls(simulators: dict[Tier, ThreadedServer]) -> int:
    return sum(int(http.get(f"{server.url}/_sim/stats").json()["requests"]) for server in simulators.values())


def chat(proxy: ThreadedServer, payload: dict[str, Any], **headers: str) -> Any:
    return http.post(f"{proxy.url}/v1/chat/completions", json=payload, headers=headers)


def test_an_answer_stored_by_one_replica_is_a_hit_on_another(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory, redis_server: RedisServer
) -> None:
    shared = {"cache.enabled": True, "counters.redis_url": redis_server.url}
    first, second = (start_proxy(urls(simulators), **shared) for _ in range(2))

    def stored(count: int) -> bool:  # the store is written just after the answer's last byte
        return bool(http.get(f"{first.url}/v1/model-routing/stats").json()["cache"]["stores"] == count)

    miss = chat(first, body())
    eventually(lambda: stored(1), what="the answer stored")
    hit = chat(second, body())
    assert (miss.headers["x-routeproxy-cache"], hit.headers["x-routeproxy-cache"]) == ("miss", "hit")
    assert hit.content == miss.content
    question = body("Name three rivers.")  # not asked yet: a real upstream stream
    first_headers, streamed = streamed_chunks(first.url, question)
    eventually(lambda: stored(2), what="the stream stored")
    headers, replayed = streamed_chunks(second.url, question)
    assert (first_headers["x-routeproxy-cache"], headers["x-routeproxy-cache"]) == ("miss", "hit")
    assert b"".join(replayed) == b"".join(streamed)
    assert upstream_calls(simulators) == 2


def test_requests_are_served_while_redis_is_down_or_paused(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory, redis_server: RedisServer
) -> None:
    proxy = start_proxy(urls(simulators), **{"cache.enabled": True, "counters.redis_url": redis_server.url})
    redis_server.pause()
    try:
        paused = [chat(proxy, body()) for _ in range(3)]
    finally:
        redis_server.resume()
    redis_server.stop()
    down = [chat(proxy, body("Another question?")) for _ in range(3)]
    for answer in paused + down:
        assert answer.status_code == 200
        assert answer.json()["choices"][0]["message"]["content"]
        assert answer.headers["x-routeproxy-cache"] == "bypass"
    assert upstream_calls(simulators) == 6


def test_client_keys_never_share_answers(simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory) -> None:
    proxy = start_proxy(urls(simulators), **{"cache.enabled": True, "server.api_keys": "key-alpha-1,key-bravo-2"})

    def ask(key: str) -> str:
        answer = chat(proxy, body(), authorization=f"Bearer {key}")
        assert answer.status_code == 200
        return str(answer.headers["x-routeproxy-cache"])

    assert [ask("key-alpha-1"), ask("key-bravo-2"), ask("key-alpha-1"), ask("key-bravo-2")] == [
        "miss", "miss", "hit", "hit",
    ]  # fmt: skip
    assert upstream_calls(simulators) == 2


def test_forwarded_credentials_never_share_answers(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    # No client keys and no tier key: the client's own token goes upstream, which decides who may ask.
    proxy = start_proxy(urls(simulators), **{"cache.enabled": True})
    statuses = [
        chat(proxy, body(), authorization=f"Bearer {token}").headers["x-routeproxy-cache"]
        for token in ("hf_one", "hf_two", "hf_one")
    ]
    assert statuses == ["miss", "miss", "hit"]


def test_a_stream_is_answered_from_a_whole_answer_and_the_reverse_when_exact(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(urls(simulators), **{"cache.enabled": True})
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)
    whole = client.chat.completions.with_raw_response.create(**body())
    stored = whole.parse()
    streamed = client.chat.completions.with_raw_response.create(
        **body(), stream=True, stream_options={"include_usage": True}
    )
    assert streamed.headers["x-routeproxy-cache"] == "hit"
    chunks = list(streamed.parse())
    assert {chunk.id for chunk in chunks} == {stored.id}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == stored.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage == stored.usage
    # A stream stored first answers a whole request when it carries usage.
    question = body("Name three rivers.")
    first = client.chat.completions.create(**question, stream=True, stream_options={"include_usage": True})
    pieces = list(first)
    again = client.chat.completions.with_raw_response.create(**question)
    assert again.headers["x-routeproxy-cache"] == "hit"
    answer = again.parse()
    assert answer.choices[0].message.content == "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
    assert answer.usage == pieces[-1].usage and answer.id == pieces[0].id
    assert upstream_calls(simulators) == 2


def test_hits_stay_out_of_the_routing_figures_and_feedback_counts_for_the_answering_tier(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(urls(simulators), **{"cache.enabled": True})
    chat(proxy, body())
    hit = chat(proxy, body())
    assert hit.headers["x-routeproxy-cache"] == "hit"
    stats = http.get(f"{proxy.url}/v1/model-routing/stats").json()
    assert stats["total_requests"] == 1  # the upstream answer only
    cache = stats["cache"]
    assert (cache["lookups"], cache["hits"], cache["misses"], cache["stores"]) == (2, 1, 1, 1)
    assert cache["by_tier"]["8b"]["hits"] == 1
    assert cache["by_tier"]["8b"]["saved_completion_tokens"] > 0
    assert cache["bytes_now"] > 0 and cache["entries_now"] == 1
    rated = http.post(
        f"{proxy.url}/v1/model-routing/feedback", json={"request_id": hit.headers["x-request-id"], "thumbs": "up"}
    )
    assert rated.status_code == 200
    assert rated.json()["tier"] == hit.headers["x-routeproxy-tier"] == "8b"
    metrics = http.get(f"{proxy.url}/metrics").text
    assert 'routeproxy_cache_requests_total{result="hit"} 1.0' in metrics
    assert "routeproxy_cache_entries 1.0" in metrics


def test_a_hit_carries_its_own_rating_id_and_feedback_on_it_rates_the_hit(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(urls(simulators), **{"cache.enabled": True})
    # The same client x-request-id on both: it is echoed for tracing, never the id a rating names.
    first = http.post(f"{proxy.url}/v1/chat/completions", json=body(), headers={"x-request-id": "trace-1"})
    hit = http.post(f"{proxy.url}/v1/chat/completions", json=body(), headers={"x-request-id": "trace-1"})
    assert (first.headers["x-routeproxy-cache"], hit.headers["x-routeproxy-cache"]) == ("miss", "hit")
    assert first.headers["x-request-id"] == hit.headers["x-request-id"] == "trace-1"
    assert hit.headers.get_list("x-routeproxy-request-id") == [hit.headers["x-routeproxy-request-id"]]
    assert hit.headers["x-routeproxy-request-id"] != first.headers["x-routeproxy-request-id"]
    for answer, thumbs in ((first, "up"), (hit, "down")):
        rated = http.post(
            f"{proxy.url}/v1/model-routing/feedback",
            json={"request_id": answer.headers["x-routeproxy-request-id"], "thumbs": thumbs},
        )
        assert rated.status_code == 200, rated.text
        assert rated.json().get("replaced") is not True  # two decisions: neither rating replaces the other
    received = http.get(f"{proxy.url}/v1/model-routing/stats").json()["ab_analysis"]["feedback"]
    assert (received["received"], received["replaced"]) == (2, 0)
