# ruff: noqa: F811  (pytest fixtures imported from redis_server are parameters of the tests below)
from __future__ import annotations

import re
import statistics
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from support.redis_server import RedisServer, persistent_redis_server, redis_server  # noqa: F401
from support.upstreams import LABELS
from support.wait import eventually_async

from routeproxy.counters.keys import KEY_LAYOUT_MARKDOWN, RedisKeys
from routeproxy.counters.memory import MemoryCounterStore
from routeproxy.counters.open import open_store
from routeproxy.counters.redis_store import RedisCounterStore
from routeproxy.counters.stats import BUCKETS_MS, Outcome, Snapshot, format_stats_table, outcome_fields, render_stats
from routeproxy.counters.store import CounterStore
from routeproxy.counters.totals import PeriodTotals
from routeproxy.routing.classify import Complexity
from routeproxy.settings import CounterConfig, Tier
from routeproxy.settings.runtime import RuntimeConfig

COSTS = {Tier.SMALL: 0.375, Tier.LARGE: 1.0}
SEED_KEYS = [
    "total_requests",
    "model_distribution",
    "average_latency_ms",
    "baseline_latency_ms",
    "latency_improvement_pct",
    "estimated_cost_savings_pct",
    "ab_test_ratio",
    "routing_enabled",
]


def outcome(
    tier: Tier = Tier.SMALL,
    complexity: Complexity | None = Complexity.SIMPLE,
    latency_ms: float = 1000.0,
    **extra: Any,
) -> Outcome:
    extra.setdefault("status", 200)
    extra.setdefault("ttfb_ms", None)
    extra.setdefault("stream", False)
    return Outcome(tier=tier, complexity=complexity, latency_ms=latency_ms, **extra)


MIXED = [
    outcome(Tier.SMALL, Complexity.SIMPLE, 2000.0),
    outcome(Tier.SMALL, Complexity.MEDIUM, 2400.0, stream=True, ttfb_ms=300.0, prompt_tokens=10),
    outcome(Tier.SMALL, Complexity.SIMPLE, 2800.0, classify_failed=True),
    outcome(Tier.LARGE, Complexity.COMPLEX, 4400.0, upstream_error=True, status=502, fallback=True),
    outcome(Tier.LARGE, None, 4000.0, status=0, disconnected=True, completion_tokens=7),
]


def totals(outcomes: list[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in outcomes:
        for name, increment in outcome_fields(item, LABELS):
            counts[name] = counts.get(name, 0) + increment
    return counts


def stats_of(snapshot: Snapshot, baseline: float | None = 4500.0) -> dict[str, Any]:
    return render_stats(
        snapshot,
        ab_test_ratio=0.5,
        routing_enabled=True,
        baseline_latency_ms=baseline,
        relative_cost=COSTS,
        labels=LABELS,
    )


StoreFactory = Callable[..., Awaitable[RedisCounterStore]]


@pytest.fixture
async def open_redis_store() -> AsyncIterator[StoreFactory]:
    """Opens started Redis stores (flush loop effectively off unless asked) and closes them all."""
    opened: list[CounterStore] = []

    async def factory(url: str, replica_id: str, flush_interval: float = 3600.0) -> RedisCounterStore:
        store = open_store(
            CounterConfig(url, "rp-test", 4500.0), LABELS, replica_id=replica_id, flush_interval=flush_interval
        )
        assert isinstance(store, RedisCounterStore)
        opened.append(store)
        await store.start()
        return store

    yield factory
    for store in opened:
        await store.close()


# -- memory backend and rendering --


async def test_memory_store_adds_up_outcomes() -> None:
    store = open_store(CounterConfig(None, "routeproxy", 4500.0), LABELS)
    assert isinstance(store, MemoryCounterStore)
    await store.start()
    for item in MIXED:
        store.record(item)
    snapshot = await store.snapshot()
    assert snapshot.counts == totals(MIXED)
    assert snapshot.get("requests", "3b") == 3
    assert snapshot.get("requests", "8b", "pinned") == 1
    assert snapshot.get("errors", "8b") == 1
    assert snapshot.get("status", "8b", "none") == 1
    assert (snapshot.store, snapshot.stale) == ("memory", False)
    await store.reset()
    assert (await store.snapshot()).counts == {}
    await store.close()


async def test_memory_runtime_change_is_kept_and_partial() -> None:
    store = open_store(CounterConfig(None, "routeproxy", None), LABELS)
    assert await store.set_runtime(RuntimeConfig(ab_test_ratio=0.3)) == RuntimeConfig(0.3, None)
    assert await store.set_runtime(RuntimeConfig(enable_model_routing=False)) == RuntimeConfig(0.3, False)
    assert store.current_runtime == await store.runtime() == RuntimeConfig(0.3, False)


async def test_stats_keys_and_order_match_the_seed() -> None:
    stats = stats_of(Snapshot(counts=totals(MIXED), period=0, since=None, replicas=("a",), store="memory"))
    assert list(stats)[: len(SEED_KEYS)] == SEED_KEYS
    assert list(stats["model_distribution"]) == ["3b", "8b"]
    for entry in stats["model_distribution"].values():
        assert list(entry) == ["count", "percentage", "avg_latency_ms"]
        assert isinstance(entry["avg_latency_ms"], int)
    extras = list(stats)[len(SEED_KEYS) :]
    for name in ("complexity_distribution", "latency_percentiles_ms", "ttfb_percentiles_ms", "error_rate_pct"):
        assert name in extras
    assert extras[-4:] == ["store", "period", "counting_since", "stale"]


async def test_stats_numbers_on_a_hand_computed_case() -> None:
    stats = stats_of(Snapshot(counts=totals(MIXED), period=0, since=None, replicas=(), store="memory"))
    # 3b: 2000 + 2400 + 2800 = 7200 over 3; 8b: 4400 + 4000 = 8400 over 2; all: 15600 / 5 = 3120
    assert stats["total_requests"] == 5
    assert stats["model_distribution"] == {
        "3b": {"count": 3, "percentage": 60.0, "avg_latency_ms": 2400},
        "8b": {"count": 2, "percentage": 40.0, "avg_latency_ms": 4200},
    }
    assert stats["average_latency_ms"] == 3120
    assert stats["baseline_latency_ms"] == 4500
    assert stats["latency_improvement_pct"] == 30.7  # (4500 - 3120) / 4500
    assert stats["estimated_cost_savings_pct"] == 37.5  # 1 - (3 * 0.375 + 2) / 5
    assert stats["complexity_distribution"]["simple"] == {
        "count": 2,
        "tiers": {"3b": 2, "8b": 0},
        "avg_latency_ms": 2400,
    }
    assert stats["complexity_distribution"]["pinned"]["tiers"] == {"3b": 0, "8b": 1}
    assert stats["upstream_errors"] == {"3b": 0, "8b": 1}
    assert stats["error_rate_pct"] == {"3b": 0.0, "8b": 50.0, "overall": 20.0}
    assert stats["fallbacks"] == {"3b": 0, "8b": 1}
    assert stats["classify_failures"] == 1
    assert stats["disconnects"] == {"3b": 0, "8b": 1}
    assert stats["tokens"]["3b"] == {"requests_with_usage": 1, "prompt": 10, "completion": 0}
    assert stats["ttfb_percentiles_ms"]["3b"]["p50"] == 300 - 0.5 * 100  # one sample in (200, 300]
    assert stats_of(Snapshot(totals(MIXED), 0, None, (), "memory"), baseline=None)["baseline_latency_ms"] == 4200


async def test_stats_of_nothing_are_zero() -> None:
    stats = stats_of(Snapshot(counts={}, period=0, since=None, replicas=(), store="memory"), baseline=None)
    assert stats["total_requests"] == stats["average_latency_ms"] == stats["baseline_latency_ms"] == 0
    assert stats["latency_improvement_pct"] == stats["estimated_cost_savings_pct"] == 0.0
    assert stats["model_distribution"]["3b"] == {"count": 0, "percentage": 0.0, "avg_latency_ms": 0}
    assert stats["latency_percentiles_ms"]["overall"] == {"p50": 0, "p95": 0, "p99": 0}
    assert "3b" in format_stats_table(stats)


@pytest.mark.parametrize("spread", [(100.0, 900.0), (1800.0, 5200.0), (300.0, 25000.0)])
async def test_percentiles_from_buckets_are_within_one_bucket(spread: tuple[float, float]) -> None:
    low, high = spread
    latencies = [low + (high - low) * ((i * 7919) % 1000) / 999 for i in range(1000)]
    store = MemoryCounterStore(LABELS)
    for latency in latencies:
        store.record(outcome(Tier.LARGE, Complexity.MEDIUM, latency))
    got = stats_of(await store.snapshot())["latency_percentiles_ms"]["8b"]
    exact = statistics.quantiles(latencies, n=100, method="inclusive")
    bounds = (0, *BUCKETS_MS)
    for name, index in (("p50", 49), ("p95", 94), ("p99", 98)):
        upper = next(b for b in bounds if b >= exact[index])
        width = upper - bounds[bounds.index(upper) - 1]
        assert abs(got[name] - exact[index]) <= width, (name, got[name], exact[index])


def test_key_layout_documents_every_field() -> None:
    everything = [
        outcome(stream=True, ttfb_ms=10.0, upstream_error=True, fallback=True, classify_failed=True),
        outcome(disconnected=True, prompt_tokens=1, completion_tokens=1, status=0),
    ]
    for name in totals(everything):
        metric = name.split(":")[0]
        assert f"`{metric}:<tier>" in KEY_LAYOUT_MARKDOWN, metric


# -- Redis backend, against a real redis-server --


async def two_replicas_share_mixed(
    url: str, open_redis_store: StoreFactory
) -> tuple[RedisCounterStore, RedisCounterStore, Snapshot, Snapshot]:
    """Two replicas record half of MIXED each and flush; both snapshots must hold all of it."""
    one = await open_redis_store(url, "replica-1")
    two = await open_redis_store(url, "replica-2")
    for item in MIXED[:2]:
        one.record(item)
    for item in MIXED[2:]:
        two.record(item)
    assert await one.flush() and await two.flush()
    first, second = await one.snapshot(), await two.snapshot()
    assert first.counts == second.counts == totals(MIXED)
    return one, two, first, second


async def test_two_replicas_see_the_same_totals(redis_server: RedisServer, open_redis_store: StoreFactory) -> None:
    _, _, first, second = await two_replicas_share_mixed(redis_server.url, open_redis_store)
    assert first.replicas == second.replicas == ("replica-1", "replica-2")
    assert not first.stale and first.store == "redis" and first.since is not None
    assert stats_of(first) == stats_of(second)


async def test_redis_cli_shows_the_snapshot_numbers(redis_server: RedisServer, open_redis_store: StoreFactory) -> None:
    store = await open_redis_store(redis_server.url, "replica-1")
    for item in MIXED:
        store.record(item)
    snapshot = await store.snapshot()
    lines = redis_server.cli("HGETALL", RedisKeys("rp-test").stats(0)).splitlines()
    assert dict(zip(lines[::2], map(int, lines[1::2]), strict=True)) == snapshot.counts
    assert redis_server.cli("HGET", "{rp-test}:stats:0", "requests:3b").strip() == "3"
    assert redis_server.cli("HGET", "{rp-test}:stats:0", "latency_ms_sum:8b").strip() == "8400"


async def test_keys_of_one_namespace_share_a_hash_tag(
    redis_server: RedisServer, open_redis_store: StoreFactory
) -> None:
    store = await open_redis_store(redis_server.url, "replica-1")
    store.record(MIXED[0])
    await store.set_runtime(RuntimeConfig(ab_test_ratio=0.2))
    await store.reset()
    store.record(MIXED[1])
    await store.flush()
    keys = redis_server.cli("--scan").split()
    assert {"{rp-test}:period", "{rp-test}:config", "{rp-test}:stats:0", "{rp-test}:stats:1"} <= set(keys)
    assert all(re.match(r"^\{rp-test\}:", key) for key in keys), keys


async def test_runtime_change_reaches_the_other_replica(
    redis_server: RedisServer, open_redis_store: StoreFactory
) -> None:
    one = await open_redis_store(redis_server.url, "replica-1", flush_interval=0.2)
    two = await open_redis_store(redis_server.url, "replica-2", flush_interval=0.2)
    assert two.current_runtime == RuntimeConfig()
    changed = await one.set_runtime(RuntimeConfig(ab_test_ratio=0.8, enable_model_routing=True))
    assert changed == RuntimeConfig(0.8, True)

    async def seen() -> bool:
        return two.current_runtime == changed

    await eventually_async(seen)
    assert await two.runtime() == changed


async def test_runtime_change_survives_a_replica_restart(
    redis_server: RedisServer, open_redis_store: StoreFactory
) -> None:
    one = await open_redis_store(redis_server.url, "replica-1")
    await one.set_runtime(RuntimeConfig(enable_model_routing=False))
    await one.close()
    again = await open_redis_store(redis_server.url, "replica-1")
    assert again.current_runtime == RuntimeConfig(None, False)


async def test_reset_through_one_replica_zeroes_both(redis_server: RedisServer, open_redis_store: StoreFactory) -> None:
    one = await open_redis_store(redis_server.url, "replica-1")
    two = await open_redis_store(redis_server.url, "replica-2")
    one.record(MIXED[0])
    two.record(MIXED[1])
    assert await one.flush() and await two.flush()
    await one.reset()
    first, second = await one.snapshot(), await two.snapshot()
    assert first.counts == second.counts == {}
    assert first.period == second.period == 1
    # An outcome recorded by replica 2 before it learned of the reset stays in the old period.
    two_before = await open_redis_store(redis_server.url, "replica-3")
    two_before.record(MIXED[2])
    await one.reset()
    await two_before.flush()
    assert (await one.snapshot()).counts == {}
    assert redis_server.cli("TTL", "{rp-test}:stats:0").strip() != "-1"


def commands_served(server: RedisServer) -> int:
    """Commands Redis has run so far, not counting the INFO calls that ask."""
    lines = server.cli("INFO", "commandstats").splitlines()
    return sum(
        int(line.split("calls=")[1].split(",")[0])
        for line in lines
        if line.startswith("cmdstat_") and not line.startswith("cmdstat_info:")
    )


async def test_record_never_waits_for_a_paused_redis(redis_server: RedisServer, open_redis_store: StoreFactory) -> None:
    store = await open_redis_store(redis_server.url, "replica-1")  # no background flush during the test
    before = commands_served(redis_server)
    redis_server.pause()
    try:
        for _ in range(500):
            for item in MIXED:
                store.record(item)  # any Redis round trip here would block on the stopped server
    finally:
        redis_server.resume()
    assert commands_served(redis_server) == before  # recording sent Redis nothing
    redis_server.pause()
    try:
        stale = await store.snapshot()
        assert stale.stale and stale.get("requests", "3b") == 1500
        assert not await store.flush()
    finally:
        redis_server.resume()
    assert await store.flush()
    assert (await store.snapshot()).counts == totals(MIXED * 500)


async def test_a_lost_flush_reply_is_not_counted_twice(
    redis_server: RedisServer, open_redis_store: StoreFactory
) -> None:
    store = await open_redis_store(redis_server.url, "replica-1")
    store.record(MIXED[0])
    assert await store.flush()
    store.record(MIXED[1])
    redis_server.pause()
    try:
        assert not await store.flush()  # the script was sent; its reply never came
    finally:
        redis_server.resume()

    async def applied_anyway() -> bool:
        return redis_server.cli("HGET", "{rp-test}:stats:0", "requests:3b").strip() == "2"

    await eventually_async(applied_anyway)
    store.record(MIXED[2])
    assert await store.flush()  # writes the totals as they stand: the lost write's fields again, and the new ones
    assert (await store.snapshot()).counts == totals(MIXED[:3])


async def test_an_older_write_arriving_late_changes_nothing(
    redis_server: RedisServer, open_redis_store: StoreFactory
) -> None:
    """A write delayed in the network (its retry went out and was applied first) must not set totals back."""
    store = await open_redis_store(redis_server.url, "replica-1")
    store.record(MIXED[0])
    assert await store.flush()
    stale = PeriodTotals(0, version=0)
    stale.add(outcome_fields(MIXED[0], LABELS), 0)
    stale_values = stale.batch()
    store.record(MIXED[1])
    assert await store.flush()
    status, _, _ = await store._call(stale, stale_values, version=1)  # the first write, once more, late
    assert status == 1  # taken as already applied
    assert (await store.snapshot()).counts == totals(MIXED[:2])


async def test_totals_survive_a_redis_restart_with_persistence(
    persistent_redis_server: RedisServer, open_redis_store: StoreFactory
) -> None:
    server = persistent_redis_server
    one = await open_redis_store(server.url, "replica-1")
    two = await open_redis_store(server.url, "replica-2")
    one.record(MIXED[0])
    two.record(MIXED[1])
    assert await one.flush() and await two.flush()
    one.record(MIXED[2])
    server.pause()
    assert not await one.flush()  # lost reply: applied after resume, unknown to the replica
    server.resume()

    async def applied_anyway() -> bool:
        return server.cli("HGET", "{rp-test}:stats:0", "requests:3b").strip() == "3"

    await eventually_async(applied_anyway)
    server.restart(kill=True)  # SIGKILL: only what the append-only file holds comes back
    two.record(MIXED[3])
    one.record(MIXED[4])

    async def flushed() -> bool:
        return await one.flush() and await two.flush()

    await eventually_async(flushed)
    first, second = await one.snapshot(), await two.snapshot()
    assert first.counts == second.counts == totals(MIXED)


async def test_stale_snapshot_when_redis_is_down(redis_server: RedisServer, open_redis_store: StoreFactory) -> None:
    store = await open_redis_store(redis_server.url, "replica-1")
    store.record(MIXED[0])
    redis_server.stop()
    snapshot = await store.snapshot()
    assert snapshot.stale and snapshot.counts == totals(MIXED[:1])
    assert stats_of(snapshot)["stale"] is True


async def test_redis_cluster_works_with_one_hash_tag(
    cluster_redis_server: RedisServer, open_redis_store: StoreFactory
) -> None:
    """A real cluster-enabled redis-server: multi-key scripts only work when every key is in one slot."""
    one, two, first, _ = await two_replicas_share_mixed(cluster_redis_server.url, open_redis_store)
    assert not first.stale
    await one.set_runtime(RuntimeConfig(ab_test_ratio=0.3))
    await two.flush()
    assert two.current_runtime.ab_test_ratio == 0.3
    await two.reset()
    assert (await one.snapshot()).counts == {}
    slots = {
        cluster_redis_server.cli("CLUSTER", "KEYSLOT", key).strip()
        for key in cluster_redis_server.cli("--scan").split()
    }
    assert len(slots) == 1
