"""The in-memory counter store: this process's counts only (no ``REDIS_URL``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from routeproxy.counters.stats import Outcome, Snapshot, outcome_fields
from routeproxy.counters.store import CounterStore, now_utc
from routeproxy.settings import Tier
from routeproxy.settings.runtime import RuntimeConfig, check_runtime, merge_runtime


class MemoryCounterStore(CounterStore):
    """Counters of this process only (REDIS_URL unset)."""

    store_name = "memory"

    def __init__(
        self, labels: Mapping[Tier, str], *, replica_id: str | None = None, flush_interval: float = 0.5
    ) -> None:
        super().__init__(labels, replica_id=replica_id, flush_interval=flush_interval)
        self._counts: dict[str, int] = {}
        self._period = 0
        self._since = now_utc()

    def record(self, outcome: Outcome) -> None:
        for name, increment in outcome_fields(outcome, self.labels):
            self._counts[name] = self._counts.get(name, 0) + increment

    @property
    def period(self) -> int:
        return self._period

    def add_fields(self, fields: Iterable[tuple[str, int]], period: int) -> None:
        if period != self._period:
            return
        for name, increment in fields:
            self._counts[name] = self._counts.get(name, 0) + increment

    async def start(self) -> None:
        """Nothing to start: outcomes are added to the totals as they are recorded."""

    async def close(self) -> None:
        """Nothing to flush."""

    async def flush(self) -> bool:
        return True

    async def snapshot(self) -> Snapshot:
        return Snapshot(
            counts=dict(self._counts),
            period=self._period,
            since=self._since,
            replicas=(self.replica_id,) if self._counts else (),
            store=self.store_name,
        )

    async def reset(self) -> None:
        self._counts = {}
        self._period += 1
        self._since = now_utc()

    async def set_runtime(self, change: RuntimeConfig) -> RuntimeConfig:
        check_runtime(change)
        self._runtime = merge_runtime(self._runtime, change)
        return self._runtime
