"""Routing counters: the interface every store implements.

The in-memory store is in ``memory.py``, the Redis store (shared by every replica) in ``redis_store.py``, and
``open.py`` picks one for the settings. Failure policy for every store: counting is off
the request path. ``record`` is synchronous, does no I/O and adds an outcome to a local tally; a store that shares
its counts does so from a background task, and a slow or absent shared store never fails or delays a request.
"""

from __future__ import annotations

import abc
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import ClassVar

from routeproxy.counters.stats import Outcome, Snapshot
from routeproxy.settings import Tier
from routeproxy.settings.runtime import RuntimeConfig


def now_utc() -> datetime:
    return datetime.now(UTC)


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class CounterStore(abc.ABC):
    """Routing counters shared by every replica. Fields of ``RuntimeConfig`` left None in
    ``set_runtime`` are left as they were."""

    store_name: ClassVar[str]

    def __init__(
        self, labels: Mapping[Tier, str], *, replica_id: str | None = None, flush_interval: float = 0.5
    ) -> None:
        self.labels = dict(labels)  # each tier's name in the counter fields (Settings.tier_labels)
        self.replica_id = replica_id or default_replica_id()
        self.flush_interval = flush_interval
        self._runtime = RuntimeConfig()
        self.failures = 0  # flushes the shared store did not acknowledge, since start
        self.last_flush = time.monotonic()  # when the local tallies last reached the shared store
        self.on_flush: Callable[[], None] | None = None  # told after every flush attempt (metrics read failures)

    @abc.abstractmethod
    def record(self, outcome: Outcome) -> None:
        """Add one outcome to the local delta: synchronous, no I/O, O(1)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Start the background flush task."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Final flush, then stop."""

    @abc.abstractmethod
    async def flush(self) -> bool:
        """Push the local delta to the shared store now; True when nothing is left unacknowledged."""

    @abc.abstractmethod
    async def snapshot(self) -> Snapshot: ...

    @abc.abstractmethod
    async def reset(self) -> None:
        """Start a fresh A/B period for all replicas."""

    async def runtime(self) -> RuntimeConfig:
        return self._runtime

    @abc.abstractmethod
    async def set_runtime(self, change: RuntimeConfig) -> RuntimeConfig: ...

    @property
    def period(self) -> int:
        """The A/B period this replica knows now (0 until the shared store first answered); no I/O."""
        return 0

    @abc.abstractmethod
    def add_fields(self, fields: Iterable[tuple[str, int]], period: int) -> None:
        """Add counts that are not one request's outcome (feedback, regenerations) to ``period``, the period of the
        request they are about; counts for a period that is over are dropped. Synchronous, no I/O."""

    @property
    def current_runtime(self) -> RuntimeConfig:
        """The last known runtime settings; no I/O (the request path reads this)."""
        return self._runtime

    @property
    def healthy(self) -> bool:
        """False while the shared store does not answer (counts then wait locally)."""
        return True

    @property
    def flush_lag_s(self) -> float:
        """Seconds since the local tallies last reached the shared store (0 when there is none)."""
        return 0.0
