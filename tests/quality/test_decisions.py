"""Decision memory without Redis: feedback for the right tier and period, replaced not doubled, expiry, bounds."""

from __future__ import annotations

import pytest

from routeproxy.counters.memory import MemoryCounterStore
from routeproxy.quality.decisions import Decision, MemoryDecisionStore, RequestNotFound, regeneration_key
from routeproxy.settings import Tier

LABELS = {Tier.SMALL: "3b", Tier.LARGE: "8b"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def decision(request_id: str, tier: str = "3b", *, at: float = 1000.0, key: str | None = None) -> Decision:
    return Decision(request_id, tier, "medium", 0, False, 200, 12.5, at, key)


def store(clock: Clock, counters: MemoryCounterStore, **changes: float) -> MemoryDecisionStore:
    options = {"ttl_s": 60.0, "regeneration_window_s": 10.0, "max_entries": 3, **changes}
    return MemoryDecisionStore(
        counters,
        ttl_s=options["ttl_s"],
        regeneration_window_s=options["regeneration_window_s"],
        max_entries=int(options["max_entries"]),
        clock=clock,
    )


async def test_feedback_counts_once_and_a_second_one_replaces_the_first() -> None:
    counters, clock = MemoryCounterStore(LABELS), Clock()
    decisions = store(clock, counters)
    decisions.remember(decision("a"))
    first = await decisions.feedback("a", 0.0)
    second = await decisions.feedback("a", 1.0)
    assert (first.tier, first.complexity, first.replaced, second.replaced) == ("3b", "medium", False, True)
    snapshot = await counters.snapshot()
    assert snapshot.get("feedback", "3b", "medium") == 1
    assert snapshot.get("score_milli", "3b", "medium") == 1000
    assert snapshot.get("feedback_replaced") == 1


async def test_unknown_expired_and_evicted_ids_are_not_found() -> None:
    counters, clock = MemoryCounterStore(LABELS), Clock()
    decisions = store(clock, counters)
    with pytest.raises(RequestNotFound) as unknown:
        await decisions.feedback("nobody", 1.0)
    assert unknown.value.status_code == 404 and unknown.value.code == "request_not_found"
    decisions.remember(decision("old"))
    clock.now += 61
    with pytest.raises(RequestNotFound):
        await decisions.feedback("old", 1.0)
    for name in ("b", "c", "d", "e"):
        decisions.remember(decision(name, at=clock.now))
    with pytest.raises(RequestNotFound):
        await decisions.feedback("b", 1.0)  # the map holds 3: the oldest went
    assert (await decisions.feedback("e", 1.0)).tier == "3b"


async def test_feedback_after_a_reset_does_not_reach_the_new_period() -> None:
    counters, clock = MemoryCounterStore(LABELS), Clock()
    decisions = store(clock, counters)
    decisions.remember(decision("before"))
    await counters.reset()
    result = await decisions.feedback("before", 1.0)
    assert result.period == 0
    assert (await counters.snapshot()).get("feedback", "3b") == 0


async def test_asking_again_within_the_window_counts_a_regeneration_on_the_first_tier() -> None:
    counters, clock = MemoryCounterStore(LABELS), Clock()
    decisions = store(clock, counters, max_entries=100)
    key = regeneration_key("How should a farm plan its feeding?", "How should a farm plan its feeding?")
    assert key == regeneration_key("how  should a farm plan its FEEDING?", "How should a farm plan its feeding?")
    decisions.remember(decision("first", "8b", at=1000.0, key=key))
    decisions.remember(decision("again", "3b", at=1005.0, key=key))
    decisions.remember(decision("later", "3b", at=1030.0, key=key))  # outside the 10 s window of "again"
    snapshot = await counters.snapshot()
    assert snapshot.get("regenerations", "8b", "medium") == 1
    assert snapshot.get("regenerations", "3b") == 0
