"""Decision memory and feedback in a real Redis shared by two replicas: once, replaced, across replicas, outages."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from support.redis_server import RedisServer
from support.wait import eventually

from routeproxy.counters.open import open_store
from routeproxy.counters.redis_store import RedisCounterStore
from routeproxy.quality.decisions import Decision, RequestNotFound, regeneration_key
from routeproxy.quality.redis_decisions import RedisDecisionStore
from routeproxy.settings import CounterConfig, Tier

Replica = tuple[RedisCounterStore, RedisDecisionStore]
ReplicaFactory = Callable[..., Awaitable[Replica]]
NAMESPACE = "rp-quality"
LABELS = {Tier.SMALL: "3b", Tier.LARGE: "8b"}


@pytest.fixture
async def open_replica() -> AsyncIterator[ReplicaFactory]:
    """A counter store and a decision store per replica, flush loops off unless asked (tests flush by hand)."""
    opened: list[Replica] = []

    async def factory(url: str, replica_id: str, *, flush_interval: float = 3600.0, **options: float) -> Replica:
        counters = open_store(
            CounterConfig(url, NAMESPACE, 4500.0), LABELS, replica_id=replica_id, flush_interval=3600.0
        )
        assert isinstance(counters, RedisCounterStore)
        await counters.start()
        decisions = RedisDecisionStore(
            counters,
            url,
            NAMESPACE,
            ttl_s=options.get("ttl_s", 3600.0),
            regeneration_window_s=60.0,
            flush_interval=flush_interval,
            max_queued=int(options.get("max_queued", 100)),
            not_found_grace_s=options.get("grace", 0.0),
        )
        await decisions.start()
        opened.append((counters, decisions))
        return counters, decisions

    yield factory
    for counters, decisions in opened:
        await decisions.close()
        await counters.close()


def decision(request_id: str, tier: str = "3b", key: str | None = None) -> Decision:
    return Decision(request_id, tier, "medium", 0, True, 200, 812.0, time.time(), key)


async def test_feedback_to_another_replica_is_counted_once(
    redis_server: RedisServer, open_replica: ReplicaFactory
) -> None:
    counters_a, decisions_a = await open_replica(redis_server.url, "a")
    counters_b, decisions_b = await open_replica(redis_server.url, "b")
    decisions_a.remember(decision("req-1", "8b"))
    assert await decisions_a.flush()
    first = await decisions_b.feedback("req-1", 0.0)
    again = await decisions_a.feedback("req-1", 1.0)  # replaces, through the other replica
    assert (first.tier, first.replaced, first.queued, again.replaced) == ("8b", False, False, True)
    for snapshot in (await counters_a.snapshot(), await counters_b.snapshot()):
        assert snapshot.get("feedback", "8b", "medium") == 1
        assert snapshot.get("score_milli", "8b", "medium") == 1000
        assert snapshot.get("feedback_replaced") == 1
    stored = redis_server.cli("HGETALL", f"{{{NAMESPACE}}}:decision:req-1").split()
    fields = dict(zip(stored[::2], stored[1::2], strict=True))
    assert fields["tier"] == "8b" and fields["complexity"] == "medium" and fields["score"] == "1000"
    assert fields["stream"] == "1" and fields["status"] == "200" and float(fields["latency_ms"]) == 812.0
    assert 3500 <= int(redis_server.cli("TTL", f"{{{NAMESPACE}}}:decision:req-1").strip()) <= 3600


async def test_an_unflushed_decision_of_another_replica_is_found_within_the_grace(
    redis_server: RedisServer, open_replica: ReplicaFactory
) -> None:
    _, decisions_a = await open_replica(redis_server.url, "a", flush_interval=0.2)
    _, decisions_b = await open_replica(redis_server.url, "b", grace=3.0)
    decisions_a.remember(decision("req-late"))  # A's loop flushes it within 0.2 s; B keeps looking meanwhile
    assert (await decisions_b.feedback("req-late", 1.0)).tier == "3b"


async def test_unknown_and_expired_ids_are_not_found(redis_server: RedisServer, open_replica: ReplicaFactory) -> None:
    _, decisions = await open_replica(redis_server.url, "a", ttl_s=1.0)
    with pytest.raises(RequestNotFound):
        await decisions.feedback("never-served", 1.0)
    decisions.remember(decision("short-lived"))
    assert await decisions.flush()
    redis_server.cli("PEXPIRE", f"{{{NAMESPACE}}}:decision:short-lived", "1")
    eventually(lambda: redis_server.cli("EXISTS", f"{{{NAMESPACE}}}:decision:short-lived").strip() == "0")
    with pytest.raises(RequestNotFound):
        await decisions.feedback("short-lived", 1.0)


async def test_regeneration_on_another_replica_is_counted_once_even_when_resent(
    redis_server: RedisServer, open_replica: ReplicaFactory
) -> None:
    counters_a, decisions_a = await open_replica(redis_server.url, "a")
    _, decisions_b = await open_replica(redis_server.url, "b")
    key = regeneration_key("q", "How should a farm plan its feeding schedule?")
    decisions_a.remember(decision("first", "8b", key))
    assert await decisions_a.flush()
    decisions_b.remember(decision("second", "8b", key))
    batch = list(decisions_b._pending)
    assert await decisions_b.flush()
    await decisions_b._send(batch)  # a batch whose reply was lost goes again: no second regeneration
    snapshot = await counters_a.snapshot()
    assert snapshot.get("regenerations", "8b", "medium") == 1
    assert snapshot.get("regenerations", "8b") == 1


async def test_feedback_waits_while_redis_is_down_and_is_counted_after(
    redis_server: RedisServer, open_replica: ReplicaFactory
) -> None:
    counters, decisions = await open_replica(redis_server.url, "a")
    for index in range(5):
        decisions.remember(decision(f"req-{index}"))
    assert await decisions.flush()
    redis_server.pause()
    try:
        results = [await decisions.feedback(f"req-{index}", 1.0) for index in range(5)]
        decisions.remember(decision("served-during-outage"))
        assert all(result.queued for result in results) and decisions.queued == 5
        assert not await decisions.flush()
    finally:
        redis_server.resume()
    assert await decisions.flush() and decisions.queued == 0
    assert (await decisions.feedback("served-during-outage", 0.0)).tier == "3b"
    snapshot = await counters.snapshot()
    assert snapshot.get("feedback", "3b", "medium") == 6
    assert snapshot.get("score_milli", "3b", "medium") == 5000


async def test_a_full_queue_refuses_feedback_instead_of_dropping_it(
    redis_server: RedisServer, open_replica: ReplicaFactory
) -> None:
    _, decisions = await open_replica(redis_server.url, "a", max_queued=2)
    redis_server.pause()
    try:
        assert (await decisions.feedback("x1", 1.0)).queued
        assert (await decisions.feedback("x2", 1.0)).queued
        with pytest.raises(Exception, match="already wait") as refused:
            await decisions.feedback("x3", 1.0)
        assert getattr(refused.value, "status_code", None) == 503
    finally:
        redis_server.resume()
    assert not await decisions.flush()  # unknown at the first look: another replica's batch may hold them
    assert decisions.queued == 2 and decisions.unknown == 0
    assert await decisions.flush()  # unknown at the second (the grace is 0 here): counted, not lost silently
    assert decisions.unknown == 2 and decisions.queued == 0
