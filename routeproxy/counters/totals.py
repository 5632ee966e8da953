"""One writer's own totals in one period, as the Redis store keeps them between flushes. Pure, no I/O.

A writer (one proxy process) sends Redis its totals as they stand, not increments (``keys.PERIOD_RULES_MARKDOWN``),
so it keeps them: ``acked``, the values Redis acknowledged, and ``pending``, what was recorded since. A write
sends the absolute value of every field that changed since the last acknowledgement (every field when Redis has
lost this writer's totals), and only an acknowledgement moves ``pending`` into ``acked``: a write whose answer
never came is simply superseded by the next one, which carries the same fields again with newer values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(slots=True)
class PeriodTotals:
    period: int  # -1: recorded before this replica knew any period
    acked: dict[str, int] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)
    first_ms: int = 0  # the span of ``pending`` (ms on the replica's estimate of Redis's clock); 0 when empty
    last_ms: int = 0
    version: int = 0  # the version of these totals Redis last acknowledged (0: none yet)
    # Fields of a write whose answer never came: Redis holds either value, so they are written again.
    unsure: set[str] = field(default_factory=set)
    full: bool = False  # Redis lacks this writer's earlier totals: the next write carries every field

    def add(self, fields: Iterable[tuple[str, int]], now_ms: int) -> None:
        pending = self.pending
        if not pending:
            self.first_ms = now_ms
        self.last_ms = now_ms
        for name, increment in fields:
            pending[name] = pending.get(name, 0) + increment

    @property
    def dirty(self) -> bool:
        """Whether Redis may not hold these totals as they stand."""
        return bool(self.pending or self.unsure or self.full)

    def counts(self) -> dict[str, int]:
        """The totals as they stand: acknowledged plus pending."""
        counts = dict(self.acked)
        for name, increment in self.pending.items():
            counts[name] = counts.get(name, 0) + increment
        return counts

    def batch(self) -> dict[str, int]:
        """What the next write sends: field -> absolute value (every field when ``full``)."""
        names = set(self.pending) | self.unsure
        if self.full:
            names |= set(self.acked)
        acked, pending = self.acked, self.pending
        return {name: acked.get(name, 0) + pending.get(name, 0) for name in names}

    def acknowledge(self, version: int, written: dict[str, int], sent_pending: dict[str, int], sent_ms: int) -> None:
        """Redis holds ``written`` (version ``version``); ``sent_pending`` was ``pending`` when the write left at
        ``sent_ms``, and what was recorded since stays pending."""
        self.acked.update(written)
        pending = self.pending
        for name, increment in sent_pending.items():
            left = pending.get(name, 0) - increment
            if left:
                pending[name] = left
            else:
                pending.pop(name, None)
        if not pending:
            self.first_ms = self.last_ms = 0
        else:
            self.first_ms = max(self.first_ms, sent_ms)
        self.version = max(self.version, version)
        self.unsure.clear()
        self.full = False

    def take_pending(self) -> dict[str, int]:
        """Remove and return what was recorded since the last acknowledgement (to file it elsewhere or drop it).
        Fields a write whose answer never came carried are in ``unsure`` already: they are written again."""
        taken = self.pending
        self.pending = {}
        self.first_ms = self.last_ms = 0
        return taken


NO_PERIOD = -1


@dataclass(frozen=True, slots=True)
class Period:
    number: int  # NO_PERIOD until Redis first answered
    start_ms: int  # on Redis's clock


@dataclass(slots=True)
class Drop:
    """Counts the span rule dropped: what was counted across the start of a period learned of too late."""

    period: int | None
    requests: int


class WriterTotals:
    """This writer's totals by period: the one counting now, one announced to start later, and the previous one
    until Redis has it; and how recent counts move when a period switch is learned of late."""

    def __init__(self, labels: Iterable[str]) -> None:
        self.labels = tuple(labels)
        self.current = Period(NO_PERIOD, 0)
        self.upcoming: Period | None = None
        self.by_period: dict[int, PeriodTotals] = {NO_PERIOD: PeriodTotals(NO_PERIOD)}

    def add(self, fields: Iterable[tuple[str, int]], now_ms: int, period: int | None) -> list[Drop]:
        """Into the period counting now; ``period`` given: only if that is the one."""
        drops = self.switch_if_due(now_ms)
        if period is None or period == max(self.current.number, 0):
            self.by_period[self.current.number].add(fields, now_ms)
        return drops

    def switch_if_due(self, now_ms: int) -> list[Drop]:
        upcoming = self.upcoming
        if upcoming is None or now_ms < upcoming.start_ms:
            return []
        self.upcoming = None
        return self.switch(upcoming, late=self.current.number == NO_PERIOD)

    def switch(self, period: Period, *, late: bool) -> list[Drop]:
        """Count in ``period`` from now on. ``late``: it may have started before now, so what was counted since the
        last acknowledgement is filed by its span: the old period if it all came before the start, the new one if
        it all came after, else nowhere (dropped). On time, everything counted so far is the old period's."""
        old = self.by_period[self.current.number]
        new = self.by_period.setdefault(period.number, PeriodTotals(period.number))
        drops = []
        if late and old is not new and old.pending:
            first, last = old.first_ms, old.last_ms
            if first >= period.start_ms:
                new.add(old.take_pending().items(), first)
                new.first_ms, new.last_ms = min(new.first_ms, first), max(new.last_ms, last)
            elif last >= period.start_ms or old.period == NO_PERIOD:
                drops.append(self.drop(old))
        self.current = period
        return drops

    def learn(self, period: Period, redis_now: int) -> list[Drop]:
        """Redis says ``period`` is the newest (it may be announced to start later)."""
        if period == self.current:
            self.upcoming = None
            return []
        drops = self.switch_if_due(redis_now)  # an announced period that is due: on time
        if period == self.current:
            return drops
        if period.start_ms > redis_now:
            self.upcoming = period  # announced: every replica switches at its start
            return drops
        self.upcoming = None
        return [*drops, *self.switch(period, late=True)]

    def drop(self, totals: PeriodTotals) -> Drop:
        taken = totals.take_pending()
        requests = sum(taken.get(f"requests:{label}", 0) for label in self.labels)
        return Drop(totals.period if totals.period != NO_PERIOD else None, requests)

    def to_write(self) -> list[PeriodTotals]:
        """Totals Redis may not hold as they stand, oldest period first (never those of no period)."""
        return [self.by_period[n] for n in sorted(self.by_period) if n != NO_PERIOD and self.by_period[n].dirty]

    def forget_done(self) -> None:
        """Drop the totals of periods that are over once Redis has them."""
        keep = (self.current.number, NO_PERIOD)
        for number in [n for n, totals in self.by_period.items() if n not in keep and not totals.dirty]:
            del self.by_period[number]

    @property
    def all_written(self) -> bool:
        return not any(totals.dirty for totals in self.by_period.values())

    @property
    def backlog_fields(self) -> int:
        return sum(len(totals.pending) + len(totals.unsure) for totals in self.by_period.values())
