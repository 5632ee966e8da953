"""POST /v1/model-routing/feedback end to end: real proxies on loopback, the openai SDK, a real Redis."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from support.redis_server import RedisServer
from support.upstreams import ProxyFactory
from support.wait import eventually

from routeproxy.settings import Tier
from routeproxy.sim.threadserver import ThreadedServer

MEDIUM = "How should a farm plan its feeding schedule?"
SIMPLE = "What is the capital of France?"


def upstreams(simulators: dict[Tier, ThreadedServer]) -> dict[Tier, str]:
    return {tier: f"{server.url}/v1" for tier, server in simulators.items()}


def ask(url: str, prompt: str = MEDIUM, key: str = "anything") -> tuple[str, str]:
    """One chat completion through the openai SDK: (the id to rate, tier label) from the response headers."""
    with openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": prompt}]
        )
    assert raw.http_response.status_code == 200
    tier = raw.headers["x-routeproxy-tier"]  # the tier's label, as stats and feedback name it
    return raw.headers["x-routeproxy-request-id"], tier


def feedback(url: str, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/model-routing/feedback", json=body, headers=headers, timeout=10)


def ab(url: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"{url}/v1/model-routing/stats", timeout=10).json()
    return stats["ab_analysis"]


def test_feedback_is_counted_for_the_tier_that_answered_and_replaced_not_doubled(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(upstreams(simulators), **{"routing.enabled": True})
    request_id, tier = ask(proxy.url)
    first = feedback(proxy.url, {"request_id": request_id, "thumbs": "down"})
    assert first.status_code == 200
    assert first.json() == {
        "request_id": request_id, "tier": tier, "complexity": "medium", "period": 0, "score": 0.0, "replaced": False,
    }  # fmt: skip
    second = feedback(proxy.url, {"request_id": request_id, "score": 0.75})
    assert second.status_code == 200 and second.json()["replaced"] is True
    block = ab(proxy.url)
    assert block["tiers"][tier]["feedback_count"] == 1 and block["tiers"][tier]["mean_score"] == 0.75
    assert block["tiers"][tier]["thumbs_up"] is None  # a fractional score: means, not proportions
    assert block["feedback"]["received"] == 1 and block["feedback"]["replaced"] == 1
    simple_id, simple_tier = ask(proxy.url, SIMPLE)
    assert feedback(proxy.url, {"request_id": simple_id, "thumbs": "up"}).status_code == 200
    block = ab(proxy.url)
    assert block["other_complexities"]["simple"][simple_tier]["feedback_count"] == 1
    assert sum(entry["feedback_count"] for entry in block["tiers"].values()) == 1  # SIMPLE stays out of the A/B
    metrics = httpx.get(f"{proxy.url}/metrics", timeout=10).text
    assert f'routeproxy_feedback_total{{complexity="medium",kind="score",tier="{tier}"}} 1.0' in metrics
    assert f'routeproxy_quality_feedback_events{{tier="{tier}"}} 1.0' in metrics
    assert 'routeproxy_quality_verdict{verdict="insufficient_data"} 1.0' in metrics


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"request_id": "r", "score": 1.5}, "score"),
        ({"request_id": "r", "score": -0.1}, "score"),
        ({"request_id": "r", "score": True}, "score"),
        ({"request_id": "r", "score": "1"}, "score"),
        ({"request_id": "r", "thumbs": "sideways"}, "thumbs"),
        ({"request_id": "r"}, "score"),
        ({"request_id": "r", "score": 1, "thumbs": "up"}, "score"),
        ({"score": 1}, "request_id"),
        ({"request_id": 7, "score": 1}, "request_id"),
        ({"request_id": "has space", "score": 1}, "request_id"),
        ({"request_id": "r", "score": 1, "comment": "nice"}, "comment"),
        ([1, 2], None),
    ],
)
def test_malformed_feedback_is_400_in_openai_envelope(proxy: ThreadedServer, body: Any, param: str | None) -> None:
    response = feedback(proxy.url, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_not_json_and_unknown_ids_get_clear_errors(proxy: ThreadedServer) -> None:
    broken = httpx.post(f"{proxy.url}/v1/model-routing/feedback", content=b"{nope", timeout=10)
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    unknown = feedback(proxy.url, {"request_id": "never-served", "thumbs": "up"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "request_not_found" and unknown.json()["error"]["param"] == "request_id"


def test_feedback_needs_a_client_key_when_keys_are_configured(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(upstreams(simulators), **{"server.api_keys": ["client-key-1"]})
    request_id, _ = ask(proxy.url, key="client-key-1")
    refused = feedback(proxy.url, {"request_id": request_id, "thumbs": "up"})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_api_key"
    accepted = feedback(proxy.url, {"request_id": request_id, "thumbs": "up"}, authorization="Bearer client-key-1")
    assert accepted.status_code == 200


def test_asking_again_counts_a_regeneration(simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory) -> None:
    proxy = start_proxy(upstreams(simulators), **{"routing.enabled": True})
    _, tier = ask(proxy.url)
    ask(proxy.url, MEDIUM.upper())  # the same question, shouted: still the same one
    assert ab(proxy.url)["tiers"][tier]["implicit"]["regenerations"] == 1


def test_feedback_for_a_request_before_a_reset_stays_in_its_period(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(upstreams(simulators), **{"routing.enabled": True, "server.admin_loopback_without_token": True})
    request_id, _ = ask(proxy.url)
    assert httpx.post(f"{proxy.url}/v1/model-routing/reset", timeout=10).status_code == 200
    answer = feedback(proxy.url, {"request_id": request_id, "thumbs": "up"})
    assert answer.status_code == 200 and answer.json()["period"] == 0
    assert ab(proxy.url)["feedback"]["received"] == 0 and ab(proxy.url)["period"] == 1


def test_feedback_to_replica_b_for_replica_a_is_counted_once(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory, redis_server: RedisServer
) -> None:
    shared = {"routing.enabled": True, "counters.redis_url": redis_server.url}
    replica_a = start_proxy(upstreams(simulators), **shared)
    replica_b = start_proxy(upstreams(simulators), **shared)
    request_id, tier = ask(replica_a.url)
    answer = feedback(replica_b.url, {"request_id": request_id, "thumbs": "up"})  # at once: A may not have flushed
    assert answer.status_code == 200 and answer.json()["tier"] == tier
    assert feedback(replica_a.url, {"request_id": request_id, "thumbs": "up"}).json()["replaced"] is True
    for replica in (replica_a, replica_b):
        block = ab(replica.url)
        assert block["tiers"][tier]["feedback_count"] == 1 and block["tiers"][tier]["thumbs_up"] == 1
        assert block["feedback"] == {"received": 1, "replaced": 0, "unknown_ids": 0, "queued": 0}


def test_redis_down_while_feedback_arrives_loses_nothing_and_fails_no_request(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory, persistent_redis_server: RedisServer
) -> None:
    redis_server = persistent_redis_server
    proxy = start_proxy(upstreams(simulators), **{"routing.enabled": True, "counters.redis_url": redis_server.url})
    before = [ask(proxy.url, f"{MEDIUM} Flock {index}.") for index in range(3)]
    eventually(lambda: ab(proxy.url)["tiers"]["3b"]["requests"] + ab(proxy.url)["tiers"]["8b"]["requests"] == 3)
    redis_server.stop()
    try:
        during = [ask(proxy.url, f"{MEDIUM} Barn {index}.") for index in range(3)]  # requests still answered
        answers = [feedback(proxy.url, {"request_id": rid, "thumbs": "up"}) for rid, _ in before + during]
        assert [answer.status_code for answer in answers] == [202] * 6
        assert all(answer.json()["queued"] for answer in answers)
    finally:
        redis_server.start()

    def counted() -> bool:
        block = ab(proxy.url)
        return (
            sum(entry["feedback_count"] for entry in block["tiers"].values()) == 6 and block["feedback"]["queued"] == 0
        )

    eventually(counted, tries=300, interval=0.05)
    block = ab(proxy.url)
    expected: dict[str, int] = {"3b": 0, "8b": 0}
    for _, tier in before + during:
        expected[tier] += 1
    assert {tier: entry["thumbs_up"] for tier, entry in block["tiers"].items()} == expected
