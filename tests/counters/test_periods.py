"""The period rules on a real redis-server: a reset reaches every replica before it counts again, a Redis that
comes back empty is refilled by the replicas in the period they knew, and stats are stale only when Redis did
not answer."""

# ruff: noqa: F811  (pytest fixtures imported from redis_server are parameters of the tests below)
from __future__ import annotations

import asyncio

from support.redis_server import RedisServer, redis_server  # noqa: F401
from support.wait import eventually_async
from test_counters import MIXED, StoreFactory, open_redis_store, totals  # noqa: F401

from routeproxy.counters.keys import RedisKeys


async def test_a_reset_reaches_every_replica_before_it_counts_again(
    redis_server: RedisServer, open_redis_store: StoreFactory
) -> None:
    """Replica two flushes on its own schedule (every 0.5 s, as in production) and is never told of the reset;
    what it counts before the reset answered stays in the old period, what it counts after is in the new one."""
    one = await open_redis_store(redis_server.url, "replica-1")
    two = await open_redis_store(redis_server.url, "replica-2", flush_interval=0.5)
    two.record(MIXED[0])
    await one.reset()
    two.record(MIXED[1])  # at once: no flush of replica two in between
    two.record(MIXED[2])
    assert await two.flush()
    new = await one.snapshot()
    assert new.period == 1
    assert new.counts == totals(MIXED[1:3])
    old = redis_server.cli("HGET", RedisKeys("rp-test").stats(0), "requests:3b").strip()
    assert old == "1"


async def test_a_replica_that_missed_the_reset_files_by_time_never_across_it(
    redis_server: RedisServer, open_redis_store: StoreFactory
) -> None:
    """A replica that could not flush during the announce window (its loop is off here): what it recorded
    before the new period started goes to the old period, what it recorded after to the new one."""
    one = await open_redis_store(redis_server.url, "replica-1")
    late = await open_redis_store(redis_server.url, "replica-late")
    late.record(MIXED[0])
    assert await late.flush()
    late.record(MIXED[1])
    await one.reset()
    assert await late.flush()  # a batch recorded entirely before the new period started: the old period
    late.record(MIXED[2])  # the late replica has learned now, so this is the new period's
    assert await late.flush()
    assert (await one.snapshot()).counts == totals(MIXED[2:3])
    assert redis_server.cli("HGET", RedisKeys("rp-test").stats(0), "requests:3b").strip() == "2"


async def test_a_redis_that_restarts_empty_is_refilled_by_the_replicas_in_their_period(
    redis_server: RedisServer, open_redis_store: StoreFactory
) -> None:
    one = await open_redis_store(redis_server.url, "replica-1", flush_interval=0.1)
    two = await open_redis_store(redis_server.url, "replica-2", flush_interval=0.1)
    await one.reset()
    one.record(MIXED[0])
    assert await one.flush()
    assert (await two.snapshot()).period == 1
    redis_server.stop(kill=True)
    for item in MIXED * 20:  # counted while Redis is away
        one.record(item)
        two.record(item)
    redis_server.start()  # same port, no data: the restart of a Redis without persistence
    expected = totals([MIXED[0], *(MIXED * 40)])

    async def refilled() -> bool:
        first, second = await one.snapshot(), await two.snapshot()
        return not first.stale and not second.stale and first.counts == second.counts == expected

    await eventually_async(refilled, tries=100, interval=0.05)
    first = await one.snapshot()
    assert first.period == 1  # the period the replicas knew, with its start: never back to 0, never a new one
    keys = RedisKeys("rp-test")
    assert redis_server.cli("--scan", "--pattern", "{rp-test}:stats:*").split() == [keys.stats(1)]
    # The period's sum is the sum of what each writer holds.
    writers = redis_server.cli("HKEYS", keys.writers(1)).split()
    assert len(writers) == 2
    held = [
        dict(zip(*[iter(redis_server.cli("HGETALL", keys.totals(1, w)).split())] * 2, strict=True)) for w in writers
    ]
    assert {name: sum(int(one_held.get(name, 0)) for one_held in held) for name in expected} == expected


async def test_a_flushed_redis_is_refilled_at_the_next_flush(
    redis_server: RedisServer, open_redis_store: StoreFactory
) -> None:
    store = await open_redis_store(redis_server.url, "replica-1")
    for item in MIXED:
        store.record(item)
    assert await store.flush()
    redis_server.cli("FLUSHALL")
    store.record(MIXED[0])
    assert await store.flush()  # Redis no longer has this writer's totals: it writes them all again, at once
    snapshot = await store.snapshot()
    assert (snapshot.period, snapshot.stale) == (0, False)
    assert snapshot.counts == totals([*MIXED, MIXED[0]])


async def test_a_redis_that_lost_its_last_writes_is_brought_up_to_date(
    redis_server: RedisServer, open_redis_store: StoreFactory
) -> None:
    """A copy that missed the last writes (a failover, or the last second an append-only file loses): the writer's
    version in Redis is older than the one it last had acknowledged, so it writes all its totals again."""
    store = await open_redis_store(redis_server.url, "replica-1")
    keys = RedisKeys("rp-test")
    store.record(MIXED[0])
    assert await store.flush()
    writer = redis_server.cli("HKEYS", keys.writers(0)).split()[0]
    saved = {
        key: redis_server.cli("HGETALL", key).split()
        for key in (keys.stats(0), keys.totals(0, writer), keys.writers(0))
    }
    for item in MIXED[1:]:
        store.record(item)
    assert await store.flush()
    for key, fields in saved.items():  # Redis goes back to what it held after the first write
        redis_server.cli("DEL", key)
        redis_server.cli("HSET", key, *fields)
    store.record(MIXED[0])
    assert await store.flush()
    assert (await store.snapshot()).counts == totals([*MIXED, MIXED[0]])


async def test_stats_are_stale_only_when_redis_does_not_answer(
    redis_server: RedisServer, open_redis_store: StoreFactory
) -> None:
    store = await open_redis_store(redis_server.url, "replica-1")
    recording = True

    async def traffic() -> None:  # a request finishes at every turn of the event loop, during flushes too
        while recording:
            store.record(MIXED[0])
            await asyncio.sleep(0)

    async def snapshots() -> list[bool]:
        nonlocal recording
        try:
            return [(await store.snapshot()).stale for _ in range(20)]
        finally:
            recording = False

    async with asyncio.TaskGroup() as group:
        group.create_task(traffic())
        stale = group.create_task(snapshots())
    assert stale.result() == [False] * 20
    redis_server.pause()
    try:
        assert (await store.snapshot()).stale
    finally:
        redis_server.resume()


async def test_counts_from_before_redis_first_answered_open_the_first_period(
    redis_server: RedisServer, open_redis_store: StoreFactory
) -> None:
    redis_server.stop()
    store = await open_redis_store(redis_server.url, "replica-early")
    store.record(MIXED[0])
    store.record(MIXED[1])
    redis_server.start()
    await eventually_async(store.flush, tries=100, interval=0.05)
    snapshot = await store.snapshot()
    assert (snapshot.period, snapshot.stale) == (0, False)
    assert snapshot.counts == totals(MIXED[:2])
