"""One writer's totals between flushes (pure): what a write carries, what an acknowledgement keeps."""

from __future__ import annotations

from routeproxy.counters.totals import PeriodTotals


def test_a_write_carries_absolute_values_of_what_changed_since_the_acknowledgement() -> None:
    totals = PeriodTotals(0, acked={"requests:3b": 5, "requests:8b": 2}, version=3)
    totals.add([("requests:3b", 1), ("errors:3b", 1)], 1000)
    assert totals.batch() == {"requests:3b": 6, "errors:3b": 1}
    assert totals.counts() == {"requests:3b": 6, "requests:8b": 2, "errors:3b": 1}
    assert (totals.first_ms, totals.last_ms) == (1000, 1000)


def test_every_field_goes_when_redis_lacks_the_earlier_totals() -> None:
    totals = PeriodTotals(0, acked={"requests:3b": 5, "requests:8b": 2}, version=3, full=True)
    totals.add([("requests:3b", 1)], 1000)
    assert totals.batch() == {"requests:3b": 6, "requests:8b": 2}


def test_what_came_during_a_write_stays_pending_after_its_acknowledgement() -> None:
    totals = PeriodTotals(0)
    totals.add([("requests:3b", 2)], 1000)
    written, sent_pending = totals.batch(), dict(totals.pending)
    totals.unsure |= written.keys()
    totals.add([("requests:3b", 1), ("requests:8b", 1)], 1200)  # while the write was on its way
    totals.acknowledge(7, written, sent_pending, sent_ms=1100)
    assert totals.acked == {"requests:3b": 2}
    assert totals.pending == {"requests:3b": 1, "requests:8b": 1}
    assert (totals.version, totals.unsure, totals.first_ms) == (7, set(), 1100)
    assert totals.batch() == {"requests:3b": 3, "requests:8b": 1}


def test_a_write_whose_answer_never_came_is_superseded_with_the_same_fields() -> None:
    totals = PeriodTotals(0, acked={"requests:3b": 4}, version=1)
    totals.add([("requests:3b", 1), ("errors:3b", 1)], 1000)
    totals.unsure |= totals.batch().keys()  # sent; no answer: Redis may or may not have applied it
    taken = totals.take_pending()  # and what it counted goes elsewhere (a period learned late)
    assert taken == {"requests:3b": 1, "errors:3b": 1}
    assert totals.batch() == {"requests:3b": 4, "errors:3b": 0}  # Redis is set back to what it acknowledged
    assert totals.dirty


def test_nothing_to_write_once_acknowledged() -> None:
    totals = PeriodTotals(0)
    totals.add([("requests:3b", 1)], 1000)
    written = totals.batch()
    totals.acknowledge(1, written, dict(totals.pending), sent_ms=1000)
    assert not totals.dirty
    assert totals.batch() == {}
    assert (totals.first_ms, totals.last_ms) == (0, 0)
