"""The rollout controller against a real Redis: three replicas timed by Redis's clock; one acts per step."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
import redis
from support.redis_server import RedisServer

from routeproxy.counters.open import open_store
from routeproxy.counters.redis_store import RedisCounterStore
from routeproxy.quality.analysis import analyse
from routeproxy.quality.controller import Action, RolloutController
from routeproxy.quality.decisions import feedback_fields
from routeproxy.quality.intervals import Thresholds
from routeproxy.quality.redis_rollout import RedisRolloutStore
from routeproxy.quality.rollout import OFF, RolloutPolicy
from routeproxy.settings import CounterConfig, Tier

NAMESPACE = "rp-rollout"
POLICY = RolloutPolicy(min_hold_s=600.0, min_feedback=100)
THRESHOLDS = Thresholds(min_feedback=30)
LABELS = {Tier.SMALL: "3b", Tier.LARGE: "8b"}


Replica = tuple[RedisCounterStore, RolloutController]
Factory = Callable[[str], Awaitable[Replica]]


@pytest.fixture
async def replica(redis_server: RedisServer) -> AsyncIterator[Factory]:
    opened: list[Replica] = []

    async def factory(name: str) -> Replica:
        counters = open_store(
            CounterConfig(redis_server.url, NAMESPACE, 4500.0), LABELS, replica_id=name, flush_interval=3600
        )
        assert isinstance(counters, RedisCounterStore)
        await counters.start()
        controller = RolloutController(
            POLICY,
            RedisRolloutStore(redis_server.url, NAMESPACE),
            counters,
            lambda snapshot: analyse(snapshot, THRESHOLDS, LABELS, uses_implicit=False),
            enabled=True,
            interval_s=3600.0,
        )
        await controller.refresh()  # not start(): its loop would look at once; the tests call tick() themselves
        opened.append((counters, controller))
        return counters, controller

    yield factory
    for counters, controller in opened:
        await controller.close()
        await counters.close()


async def give_feedback(counters: RedisCounterStore, tier: str, up: int, down: int) -> None:
    for score in [1000] * up + [0] * down:
        counters.add_fields(feedback_fields(tier, "medium", None, score), counters.period)
    assert await counters.flush()


def age_step(redis_server: RedisServer, seconds: float) -> None:
    """Move the stored step's start ``seconds`` back: the hold has run that much longer (the controller's clock is
    Redis's, which a test cannot move)."""
    client = redis.Redis.from_url(redis_server.url)
    state = orjson.loads(client.hget(f"{{{NAMESPACE}}}:rollout", "state") or b"{}")
    state["step_since"] -= seconds
    client.hset(f"{{{NAMESPACE}}}:rollout", "state", orjson.dumps(state))


async def tick_all(replicas: list[Replica]) -> list[int]:
    """All replicas look at the same moment (their reads and writes interleave); returns which wrote a change."""
    entries = await asyncio.gather(*(controller.tick() for _, controller in replicas))
    return [index for index, entry in enumerate(entries) if entry is not None]


async def test_three_replicas_ramp_and_roll_back_with_one_actor_per_step(
    replica: Factory, redis_server: RedisServer
) -> None:
    replicas = [await replica(name) for name in ("r1", "r2", "r3")]
    counters = replicas[0][0]
    assert len(await tick_all(replicas)) == 1  # the first look starts the rollout at step 0, once
    assert redis_server.cli("HGET", f"{{{NAMESPACE}}}:config", "ab_test_ratio").strip() == "0.1"

    await give_feedback(counters, "3b", 1900, 100)  # 95 % vs 95 % on 2000 each: -2.3 % .. 2.3 %: pass
    await give_feedback(counters, "8b", 1900, 100)
    assert await tick_all(replicas) == []  # held: the hold time has not passed
    assert {controller.describe()["waiting_for"] for _, controller in replicas} == {"hold_time"}
    age_step(redis_server, 600)
    actors = await tick_all(replicas)
    assert len(actors) == 1
    assert [controller.describe()["step_index"] for _, controller in replicas] == [1, 1, 1]
    assert await tick_all(replicas) == []  # the new step waits for feedback of its own
    assert {controller.describe()["waiting_for"] for _, controller in replicas} == {"feedback"}

    # A new period with 3B far worse: rollback at once, before the hold time, by one replica.
    await counters.reset()
    for other, _ in replicas[1:]:
        assert await other.flush()
    await give_feedback(counters, "3b", 60, 40)
    await give_feedback(counters, "8b", 95, 5)
    actors = await tick_all(replicas)
    assert len(actors) == 1
    states = [controller.describe() for _, controller in replicas]
    assert {state["step_index"] for state in states} == {0}
    history = states[0]["history"]
    assert [(entry["from_ratio"], entry["to_ratio"]) for entry in history] == [(0.0, 0.1), (0.1, 0.3), (0.3, 0.1)]
    assert history[1]["why"].startswith("pass: ") and history[2]["why"].startswith("rollback: ")
    assert history[2]["figures"]["feedback"] == {"3b": 100, "8b": 100}
    assert all(state["history"] == history for state in states)
    for other, _ in replicas:
        assert await other.flush()
        assert other.current_runtime.ab_test_ratio == 0.1
    assert sum(controller.acted for _, controller in replicas) == len(history)


async def test_restart_keeps_the_step_and_the_history(replica: Factory) -> None:
    counters, controller = await replica("before")
    await controller.tick()
    await controller.operate(Action(step=2, why="operator test"))
    await controller.operate(Action(paused=True))
    _, restarted = await replica("after")  # a new process: new connections, state read from Redis
    described = restarted.describe()
    assert (described["step_index"], described["ratio"], described["paused"]) == (2, 0.5, True)
    assert [entry["why"] for entry in described["history"]] == [
        "rollout enabled: starting at the first step",
        "operator test",
        "paused by the operator",
    ]
    assert await restarted.tick() is None  # paused: no move
    resumed = await restarted.operate(Action(paused=False))
    assert not resumed.paused and resumed.step == 2
    await restarted.operate(Action(step=OFF))
    assert await counters.flush() and counters.current_runtime.ab_test_ratio == 0.0


async def test_a_change_one_replica_missed_survives_an_emptied_redis(
    replica: Factory, redis_server: RedisServer
) -> None:
    """r1 misses the operator's rollback (version 3) that r2 made; Redis is emptied; r1 writes back the step it knew
    as version 3 too. r2, which knew the rollback, finds another change under its version and writes its own
    history back, one version higher: the rollback stands."""
    (_, first), (second_counters, second) = await replica("r1"), await replica("r2")
    await first.tick()  # version 1: the rollout starts
    await first.operate(Action(step=3, why="operator raises it"))  # version 2
    await second.tick()  # r2 reads version 2
    await second.operate(Action(step=0, why="operator rolls back"))  # version 3; r1 does not look
    redis.Redis.from_url(redis_server.url).flushall()

    await first.tick()  # writes back what it knew: step 3, as version 3
    assert first.describe()["step_index"] == 3 and first.describe()["version"] == 3
    assert await second.tick() is not None  # another version 3 than its own: its history goes back, version 4
    assert await first.tick() is None  # r1 loads version 4
    states = [controller.describe() for controller in (first, second)]
    assert [(state["step_index"], state["version"]) for state in states] == [(0, 4), (0, 4)]
    whys = [entry["why"] for entry in states[1]["history"]]
    assert whys[-2] == "operator rolls back" and whys[-1].startswith("the stored rollout state was lost")
    assert "operator raises it" in whys and states[0]["history"] == states[1]["history"]
    assert await second_counters.flush() and second_counters.current_runtime.ab_test_ratio == 0.1
    # Read back unchanged, a replica's own state is never taken for another change.
    assert await first.tick() is None and await second.tick() is None
