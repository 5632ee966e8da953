"""The Redis counter store, shared by every replica: its client and the replica's side of the period rules.

What is stored where, and the Lua scripts, are in ``keys.py``.

Failure policy. Counting is off the request path: ``record`` is synchronous, does no I/O and adds an
outcome to a local delta. A background task flushes the delta every ``flush_interval`` seconds with one
Lua script call (short socket timeouts, no client-side retries). When Redis is slow or down nothing
fails and nothing waits: the delta keeps accumulating locally and goes out when Redis answers again.

* Bounded backlog: a delta is a map from field name to integer, so its size is bounded by the number of
  distinct fields (see ``field_count()``, a few hundred), not by the number of outcomes or the length of
  an outage. At most one batch is in flight, plus one delta per A/B period seen during an outage.
* Idempotent flushes: each batch carries this process's writer id and a sequence number. The script
  applies it only if the sequence is above the last one stored for that writer, and stores it in the
  same atomic step. A batch whose reply was lost is retried unchanged with the same number until it is
  acknowledged, so it is applied exactly once while Redis keeps its data.
* Periods (the rules: ``keys.PERIOD_RULES_MARKDOWN``, also in the README): a period starts at a time
  on Redis's clock, announced ahead, so every replica switches at the same instant without asking Redis per
  request; every batch carries the period and the Redis dataset (epoch) it was recorded under, and the time
  span of its outcomes; the flush script files it in the period whose span holds it, or drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import redis.asyncio
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.typing import EncodableT

from routeproxy.counters.keys import (
    ANNOUNCE_S,
    FLUSH_LUA,
    LIVE_WINDOW_S,
    OLD_PERIOD_TTL_S,
    RESET_LUA,
    RedisKeys,
)
from routeproxy.counters.stats import Outcome, Snapshot, outcome_fields
from routeproxy.counters.store import CounterStore, now_utc
from routeproxy.errors import CounterStoreUnavailable
from routeproxy.settings import Tier
from routeproxy.settings.redaction import redacted_url
from routeproxy.settings.runtime import RuntimeConfig, check_runtime, parse_runtime
from routeproxy.tasks import Repeating

log = structlog.get_logger("routeproxy.counters.store")

REDIS_TIMEOUT_S = 0.5  # a paused Redis stalls one flush for this long, never a request
MAX_BATCHES_PER_FLUSH = 4  # so a flush under constant load still ends and the loop refreshes on time


_NO_PERIOD = -1


@dataclass(slots=True)
class _Delta:
    """Counts recorded under one (epoch, period), and when (ms on this replica's estimate of Redis's clock)."""

    first_ms: int
    last_ms: int
    counts: dict[str, int]


@dataclass(slots=True)
class _Batch:
    seq: int
    epoch: str
    period: int
    delta: _Delta


@dataclass(frozen=True, slots=True)
class _Upcoming:
    epoch: str
    period: int
    start_ms: int


_REDIS_FAILURES = (RedisError, OSError, TimeoutError)


def redis_client(url: str) -> redis.asyncio.Redis | redis.asyncio.RedisCluster:
    """Short timeouts: the flush loop retries, with the same sequence number, rather than the client.

    ``?cluster=true`` on the URL selects a Redis Cluster client."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    cluster = any(name == "cluster" and value.lower() in {"1", "true", "yes"} for name, value in query)
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": REDIS_TIMEOUT_S,
        "socket_connect_timeout": REDIS_TIMEOUT_S,
        # One immediate retry on a broken connection (Redis restarted); none on a timeout (Redis paused).
        # Every script here is safe to send twice.
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    }
    if cluster:
        kept = urlencode([(name, value) for name, value in query if name != "cluster"])
        return redis.asyncio.RedisCluster.from_url(urlunsplit(parts._replace(query=kept)), **options)
    return redis.asyncio.from_url(url, **options)


def _since(value: str | None) -> datetime | None:
    """A period's start as stored: ms on Redis's clock (an ISO-8601 string before periods had start times)."""
    if not value:
        return None
    if value.lstrip("-").isdigit():
        return datetime.fromtimestamp(int(value) / 1000, UTC)
    return datetime.fromisoformat(value)


class RedisCounterStore(CounterStore):
    """Counters shared through Redis. See the module docstring for the failure policy."""

    store_name = "redis"

    def __init__(
        self,
        url: str,
        namespace: str,
        labels: Mapping[Tier, str],
        *,
        replica_id: str | None = None,
        flush_interval: float = 0.5,
        about: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(labels, replica_id=replica_id, flush_interval=flush_interval)
        self.keys = RedisKeys(namespace)
        self.shown_url = redacted_url(url)  # for log lines: never the password
        self._client = redis_client(url)
        self._flush_script = self._client.register_script(FLUSH_LUA)
        self._reset_script = self._client.register_script(RESET_LUA)
        # One id per process: a restarted replica with the same replica_id starts its sequence afresh.
        self._writer = f"{self.replica_id}:{uuid.uuid4().hex[:12]}"
        self._about = orjson.dumps(about).decode() if about is not None else ""
        self._seq = 0
        self._epoch = ""  # the Redis dataset this replica counts into; "" until Redis first answered
        self._period = _NO_PERIOD
        self._upcoming: _Upcoming | None = None  # a period announced to start later
        self._offset_ms = 0.0  # Redis's clock minus ours, measured at every flush
        self._pending: dict[tuple[str, int], _Delta] = {}
        self._inflight: _Batch | None = None  # sent at least once, not acknowledged: resent unchanged
        self._local: dict[str, int] = {}  # this replica's outcomes in its current period (the stale view)
        self._local_since = now_utc()
        self.dropped = 0  # counts the rules dropped (see PERIOD_RULES_MARKDOWN), since start
        self._lock = asyncio.Lock()
        self._loop = Repeating(self.flush, flush_interval, f"counters-flush:{self.replica_id}")
        self._healthy = True

    def _now_ms(self) -> int:
        return int(time.time() * 1000 + self._offset_ms)

    def _switch_if_due(self, now_ms: int) -> None:
        upcoming = self._upcoming
        if upcoming is not None and now_ms >= upcoming.start_ms:
            self._upcoming = None
            self._epoch, self._period = upcoming.epoch, upcoming.period
            self._local = {}
            self._local_since = datetime.fromtimestamp(upcoming.start_ms / 1000, UTC)

    def record(self, outcome: Outcome) -> None:
        self._add(outcome_fields(outcome, self.labels), None)

    @property
    def period(self) -> int:
        return max(self._period, 0)

    def add_fields(self, fields: Iterable[tuple[str, int]], period: int) -> None:
        self._add(fields, period)

    def _add(self, fields: Iterable[tuple[str, int]], period: int | None) -> None:
        """Into the delta of the period counting now; ``period`` given: only if that is the one (a period that is
        over has its totals already, and feedback about its requests is dropped)."""
        now = self._now_ms()
        self._switch_if_due(now)
        if period is not None and period != max(self._period, 0):
            return
        slot = (self._epoch, self._period)
        delta = self._pending.get(slot)
        if delta is None:
            delta = self._pending[slot] = _Delta(now, now, {})
        delta.last_ms = now
        counts, local = delta.counts, self._local
        for name, increment in fields:
            counts[name] = counts.get(name, 0) + increment
            local[name] = local.get(name, 0) + increment

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def flush_lag_s(self) -> float:
        return time.monotonic() - self.last_flush

    @property
    def backlog_fields(self) -> int:
        """Fields not yet acknowledged by Redis (bounded by field_count() per period, plus one batch)."""
        inflight = len(self._inflight.delta.counts) if self._inflight else 0
        return inflight + sum(len(delta.counts) for delta in self._pending.values())

    async def start(self) -> None:
        if self._loop.running:
            return
        await self.flush()  # learn the period and the runtime config now, if Redis answers
        self._loop.start()

    async def aclose(self) -> None:
        """Close the client without a flush (a store used only to read)."""
        await self._client.aclose()

    async def close(self) -> None:
        await self._loop.stop()
        # Twice, so a batch whose reply was lost in the first attempt is confirmed by the second.
        if not await self.flush() and not await self.flush():
            log.warning("counters.lost_on_close", fields=self.backlog_fields)
        await self._client.aclose()

    def _seal(self) -> _Batch | None:
        """The oldest pending delta as the next batch (never the current one while older ones wait)."""
        slots = [slot for slot, delta in self._pending.items() if delta.counts]
        if not slots:
            self._pending.clear()
            return None
        slot = min(slots, key=lambda key: self._pending[key].first_ms)
        self._seq += 1
        return _Batch(self._seq, slot[0], slot[1], self._pending.pop(slot))

    async def _call(self, batch: _Batch | None) -> None:
        upcoming = self._upcoming
        # The newest period and dataset this replica has heard of (an announced period counts).
        known, known_epoch = (upcoming.period, upcoming.epoch) if upcoming else (self._period, self._epoch)
        args: list[str | int] = [
            self.keys.prefix, self._writer, batch.seq if batch else 0, batch.epoch if batch else "",
            batch.period if batch else _NO_PERIOD, batch.delta.first_ms if batch else 0,
            batch.delta.last_ms if batch else 0, self.replica_id, OLD_PERIOD_TTL_S, known, known_epoch,
            uuid.uuid4().hex, round(ANNOUNCE_S * 1000), self._about, round(LIVE_WINDOW_S * 1000),
        ]  # fmt: skip
        if batch:
            for name, increment in batch.delta.counts.items():
                args += (name, increment)
        keys = [self.keys.period, self.keys.epoch, self.keys.config, self.keys.seq, self.keys.live]
        sent = time.time() * 1000
        filed, epoch, current, start_ms, redis_now, config = await self._flush_script(keys=keys, args=args)
        self._offset_ms = int(redis_now) - (sent + time.time() * 1000) / 2
        if batch is not None and int(filed) == -1:
            requests = sum(batch.delta.counts.get(f"requests:{label}", 0) for label in self.labels.values())
            self.dropped += requests
            log.warning(
                "counters.dropped",
                period=batch.period,
                epoch=batch.epoch or None,
                requests=requests,
                why="recorded outside the span of any period this Redis knows (reset missed, or Redis lost its data)",
            )
        self._learn(str(epoch), int(current), int(start_ms), int(redis_now))
        self._runtime = parse_runtime(config)

    def _learn(self, epoch: str, period: int, start_ms: int, redis_now: int) -> None:
        if (epoch, period) == (self._epoch, self._period):
            self._upcoming = None
            return
        self._upcoming = _Upcoming(epoch, period, start_ms)
        if self._epoch == "" and self._period == _NO_PERIOD and start_ms > redis_now:
            return  # a fresh replica counts under no period until the announced one starts
        self._switch_if_due(redis_now)

    async def _flush(self) -> bool:
        """Push what is pending; True when Redis answered (whatever was recorded meanwhile still waits)."""
        async with self._lock:
            try:
                sent = False
                for _ in range(MAX_BATCHES_PER_FLUSH):
                    if self._inflight is None:
                        self._inflight = self._seal()
                        if self._inflight is None:
                            break
                    await self._call(self._inflight)
                    self._inflight = None
                    sent = True
                if not sent:
                    await self._call(None)  # nothing to send: still refresh the period and runtime config
            except _REDIS_FAILURES as exc:
                if self._healthy:
                    log.warning(
                        "counters.redis_unavailable", redis=self.shown_url, error=repr(exc), backlog=self.backlog_fields
                    )
                self._healthy = False
                self.failures += 1
                if self.on_flush is not None:
                    self.on_flush()
                return False
        if not self._healthy:
            log.info("counters.redis_back", redis=self.shown_url)
        self._healthy = True
        self.last_flush = time.monotonic()
        if self.on_flush is not None:
            self.on_flush()
        return True

    async def flush(self) -> bool:
        return await self._flush() and self._inflight is None and not any(d.counts for d in self._pending.values())

    async def snapshot(self) -> Snapshot:
        if await self._flush():
            self._switch_if_due(self._now_ms())
            period = self._period
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.hgetall(self.keys.stats(period))
                    pipe.smembers(self.keys.replicas(period))
                    pipe.get(self.keys.since(period))
                    counts, replicas, since = await pipe.execute()
            except _REDIS_FAILURES as exc:
                log.warning("counters.snapshot_failed", error=repr(exc))
            else:
                return Snapshot(
                    counts={name: int(value) for name, value in counts.items()},
                    period=period,
                    since=_since(since),
                    replicas=tuple(sorted(replicas)),
                    store=self.store_name,
                )
        return Snapshot(
            counts=dict(self._local),
            period=max(self._period, 0),
            since=self._local_since,
            replicas=(self.replica_id,) if self._local else (),
            store=self.store_name,
            stale=True,
        )

    async def reset(self) -> None:
        """Announce the next period and answer once it has started (about ``ANNOUNCE_S``): by then every replica
        that flushed in the meantime switches at the same instant (PERIOD_RULES_MARKDOWN)."""
        await self._flush()
        try:
            period, start_ms, redis_now = await self._reset_script(
                keys=[self.keys.period], args=[self.keys.prefix, round(ANNOUNCE_S * 1000), OLD_PERIOD_TTL_S]
            )
        except _REDIS_FAILURES as exc:
            raise CounterStoreUnavailable(f"cannot reset the counters: Redis did not answer ({exc})") from exc
        self._upcoming = _Upcoming(self._epoch, int(period), int(start_ms))
        # Past the start on Redis's clock, plus the error of our estimate of it.
        await asyncio.sleep(max(0.0, (int(start_ms) - int(redis_now)) / 1000) + 0.005)
        self._switch_if_due(max(self._now_ms(), int(start_ms)))

    async def runtime(self) -> RuntimeConfig:
        """The shared runtime config as Redis holds it now (the last known copy if Redis does not answer)."""
        with contextlib.suppress(*_REDIS_FAILURES):
            raw = await self._client.hgetall(self.keys.config)
            self._runtime = parse_runtime({str(name): str(value) for name, value in raw.items()})
        return self._runtime

    async def set_runtime(self, change: RuntimeConfig) -> RuntimeConfig:
        check_runtime(change)
        values: dict[EncodableT, EncodableT] = {}
        if change.ab_test_ratio is not None:
            values["ab_test_ratio"] = repr(float(change.ab_test_ratio))
        if change.enable_model_routing is not None:
            values["enable_model_routing"] = "true" if change.enable_model_routing else "false"
        if change.routing_mode is not None:
            values["routing_mode"] = change.routing_mode.value
        try:
            if values:
                await self._client.hset(self.keys.config, mapping=values)
            raw = {str(name): str(value) for name, value in (await self._client.hgetall(self.keys.config)).items()}
        except _REDIS_FAILURES as exc:
            raise CounterStoreUnavailable(f"cannot store the runtime config: Redis did not answer ({exc})") from exc
        self._runtime = parse_runtime(raw)
        return self._runtime

    async def inspect(self) -> tuple[Snapshot, RuntimeConfig, dict[str, dict[str, Any]]]:
        """Read-only, for ``routeproxy stats``: the current period's totals, the shared runtime config, and what
        each replica that flushed lately says about itself (its own routing settings), by replica id.

        Raises CounterStoreUnavailable when Redis does not answer."""
        try:
            seconds, micros = await self._client.time()
            now_ms = int(seconds) * 1000 + int(micros) // 1000
            period = int(await self._client.get(self.keys.period) or 0)
            since = await self._client.get(self.keys.since(period))
            if since and since.isdigit() and int(since) > now_ms and period > 0:
                period -= 1  # a reset is announced and has not started yet: the old period is still counting
                since = await self._client.get(self.keys.since(period))
            counts = await self._client.hgetall(self.keys.stats(period))
            replicas = await self._client.smembers(self.keys.replicas(period))
            config = await self._client.hgetall(self.keys.config)
            live = await self._client.zrangebyscore(self.keys.live, now_ms - LIVE_WINDOW_S * 1000, "+inf")
            about = [await self._client.get(self.keys.replica(str(replica))) for replica in live]
        except _REDIS_FAILURES as exc:
            raise CounterStoreUnavailable(f"Redis did not answer ({exc!r})") from exc
        snapshot = Snapshot(
            counts={str(name): int(value) for name, value in counts.items()},
            period=period,
            since=_since(None if since is None else str(since)),
            replicas=tuple(sorted(map(str, replicas))),
            store=self.store_name,
        )
        runtime = parse_runtime({str(name): str(value) for name, value in config.items()})
        return snapshot, runtime, {str(r): orjson.loads(v) for r, v in zip(live, about, strict=True) if v}
