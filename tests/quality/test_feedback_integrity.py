"""Feedback no client can corrupt: the id a rating names is routeproxy's, a client key rates only its own
requests, an unknown id costs two Redis calls, and a Redis that refuses writes queues ratings instead of losing
them. Real routeproxy processes and a real Redis on loopback."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import orjson
import pytest
import redis
from support.processes import Served, serve
from support.redis_server import RedisServer
from support.wait import eventually

SMALL_MODEL, LARGE_MODEL = "meta-llama/Llama-3.2-3B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"
NAMESPACE = "rp-integrity"
ISSUED = re.compile(r"^[0-9a-f]{32}$")


def start(redis_url: str | None, served: list[Served], **env: str) -> Served:
    shared = {"ENABLE_MODEL_ROUTING": "true", "ROUTEPROXY_REDIS_NAMESPACE": NAMESPACE, **env}
    if redis_url is not None:
        shared["REDIS_URL"] = redis_url
    replica = serve("--simulate", "--speed", "1000", env=shared)
    served.append(replica)
    return replica


def chat(url: str, model: str = "auto", key: str | None = None, **headers: str) -> httpx.Response:
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    question = "How should a farm plan its feeding schedule for the winter?"
    response = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": question}]},
        headers=headers,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response


def rate(url: str, request_id: str, thumbs: str, key: str | None = None) -> httpx.Response:
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    body = {"request_id": request_id, "thumbs": thumbs}
    return httpx.post(f"{url}/v1/model-routing/feedback", json=body, headers=headers, timeout=10)


def stats_hash(client: redis.Redis, period: int = 0) -> dict[str, int]:
    raw = client.hgetall(f"{{{NAMESPACE}}}:stats:{period}")
    return {name.decode(): int(value) for name, value in raw.items()}


def test_a_reused_x_request_id_leaves_both_decisions_and_the_sums_intact(
    redis_server: RedisServer, served: list[Served]
) -> None:
    replica = start(redis_server.url, served)
    first = chat(replica.url, SMALL_MODEL, **{"x-request-id": "same-client-id"})
    second = chat(replica.url, LARGE_MODEL, **{"x-request-id": "same-client-id"})
    assert first.headers["x-request-id"] == second.headers["x-request-id"] == "same-client-id"  # echoed for tracing
    ids = [response.headers["x-routeproxy-request-id"] for response in (first, second)]
    assert all(ISSUED.match(issued) for issued in ids) and ids[0] != ids[1]
    assert rate(replica.url, ids[0], "up").json()["tier"] == "3b"
    assert rate(replica.url, ids[1], "down").json()["tier"] == "8b"
    assert rate(replica.url, "same-client-id", "up").status_code == 404  # the client's id never picks a decision

    client = redis.Redis.from_url(redis_server.url)
    decisions = [client.hgetall(f"{{{NAMESPACE}}}:decision:{issued}") for issued in ids]
    assert [(d[b"tier"], d[b"complexity"], d[b"score"]) for d in decisions] == [
        (b"3b", b"pinned", b"1000"),
        (b"8b", b"pinned", b"0"),
    ]
    totals = stats_hash(client)
    assert (totals["feedback:3b:pinned"], totals["score_milli:3b:pinned"]) == (1, 1000)
    assert (totals["feedback:8b:pinned"], totals.get("score_milli:8b:pinned", 0)) == (1, 0)
    assert "feedback_replaced" not in totals
    logged = [orjson.loads(line) for line in replica.stop().splitlines() if '"route"' in line]
    assert [(line["request_id"], line["client_request_id"]) for line in logged] == [
        (ids[0], "same-client-id"),
        (ids[1], "same-client-id"),
    ]


@pytest.mark.parametrize("store", ["redis", "memory"])
def test_a_client_key_rates_only_its_own_requests(store: str, redis_server: RedisServer, served: list[Served]) -> None:
    keys = {"ROUTEPROXY_API_KEYS": "key-of-alice,key-of-bob"}
    replica = start(redis_server.url if store == "redis" else None, served, **keys)
    issued = chat(replica.url, key="key-of-alice").headers["x-routeproxy-request-id"]
    refused = rate(replica.url, issued, "down", key="key-of-bob")
    assert refused.status_code == 403
    assert (
        refused.json()["error"]["code"] == "feedback_key_mismatch" and refused.json()["error"]["param"] == "request_id"
    )
    assert rate(replica.url, issued, "up", key="key-of-alice").status_code == 200
    metrics = httpx.get(f"{replica.url}/metrics", timeout=10).text
    assert 'routeproxy_feedback_rejected_total{reason="other_key"} 1.0' in metrics
    if store == "redis":
        client = redis.Redis.from_url(redis_server.url)
        owner = client.hget(f"{{{NAMESPACE}}}:decision:{issued}", "owner")
        assert owner is not None and len(owner) == 32  # a 128-bit digest
        everything = b"".join(
            b"".join(client.hgetall(key).values()) if client.type(key) == b"hash" else client.dump(key) or b""
            for key in client.keys("*")
        )
        assert b"key-of-alice" not in everything  # the key itself is never stored


def _lookups(client: redis.Redis) -> int:
    """Decision lookups Redis served: INFO counts the commands scripts run, and the feedback script is the only
    one of routeproxy's that runs HMGET (one per call), so the replica's own background flushes do not count."""
    return int(client.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0))


def test_a_forged_id_costs_two_redis_calls(redis_server: RedisServer, served: list[Served]) -> None:
    replica = start(redis_server.url, served)
    client = redis.Redis.from_url(redis_server.url)
    forged = [f"{index:032x}" for index in range(40)]

    async def rate_all() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as http:
            answers = await asyncio.gather(
                *(
                    http.post(f"{replica.url}/v1/model-routing/feedback", json={"request_id": rid, "thumbs": "up"})
                    for rid in forged
                )
            )
        return [answer.status_code for answer in answers]

    before = _lookups(client)
    assert asyncio.run(rate_all()) == [404] * 40
    assert _lookups(client) - before == 2 * 40  # one lookup, one wait, one last lookup: no polling loop


def _totals(url: str) -> tuple[int, int]:
    block: dict[str, Any] = httpx.get(f"{url}/v1/model-routing/stats", timeout=10).json()["ab_analysis"]
    return sum(entry["feedback_count"] for entry in block["tiers"].values()), block["feedback"]["queued"]


@pytest.mark.parametrize("refusal", ["full", "read_only"])
def test_a_redis_that_refuses_writes_queues_feedback_and_loses_none(
    refusal: str, redis_server: RedisServer, served: list[Served]
) -> None:
    replica_a, replica_b = start(redis_server.url, served), start(redis_server.url, served)
    client = redis.Redis.from_url(redis_server.url)
    stored = chat(replica_a.url).headers["x-routeproxy-request-id"]
    eventually(lambda: client.exists(f"{{{NAMESPACE}}}:decision:{stored}"), what="the decision stored")
    if refusal == "full":
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)  # every write that may grow memory is refused: OOM
    else:
        client.execute_command("REPLICAOF", "127.0.0.1", "1")  # a read-only replica of a master that never answers
    try:
        unsaved = chat(replica_a.url).headers["x-routeproxy-request-id"]  # served, but Redis will not take it
        answers = [
            rate(replica_a.url, unsaved, "up"),  # its own replica, the decision still in its batch
            rate(replica_b.url, unsaved, "down"),  # another replica: the lookup's write fails, not "unknown"
            rate(replica_b.url, stored, "up"),  # a stored decision: the counting write fails
        ]
        assert [(answer.status_code, answer.json().get("queued")) for answer in answers] == [(202, True)] * 3
    finally:
        if refusal == "full":
            client.config_set("maxmemory", 0)
        else:
            client.execute_command("REPLICAOF", "NO", "ONE")

    def counted() -> bool:
        return _totals(replica_a.url) == (2, 0) and _totals(replica_b.url) == (2, 0)

    eventually(counted, tries=400, interval=0.05, what="the queued feedback counted")
    assert client.hget(f"{{{NAMESPACE}}}:decision:{stored}", "score") == b"1000"
    assert client.hget(f"{{{NAMESPACE}}}:decision:{unsaved}", "score") in (b"0", b"1000")  # rated twice: one stays
