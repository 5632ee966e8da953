"""The Redis counter store, shared by every replica: its client and the replica's side of the period rules.

What is stored where, and the Lua scripts, are in ``keys.py``; the rules are ``keys.PERIOD_RULES_MARKDOWN``.

Failure policy. Counting is off the request path: ``record`` is synchronous, does no I/O and adds an outcome to
this process's own totals (``totals.PeriodTotals``). A background task writes them to Redis every
``flush_interval`` seconds with one Lua script call (short socket timeouts, no client-side retries). When Redis
is slow or down nothing fails and nothing waits: the totals keep growing locally and go out when Redis answers.

* State, not increments: a write carries this writer's totals as they stand (the fields changed since Redis last
  acknowledged them), with a version; Redis adds each field's difference from what the writer had written to
  the period's sum. So a write whose answer was lost is simply superseded by the next one, a retry counts once,
  and a Redis that lost its data is refilled by the live writers (each writes all its totals again when Redis
  no longer has them).
* Bounded: the totals are maps from field name to integer, bounded by the number of distinct fields (see
  ``field_count()``, a few hundred), not by the number of outcomes or the length of an outage; a replica keeps
  the current period's and, until Redis has them, the previous one's.
* Periods: a period starts at a time on Redis's clock, announced ahead, so every replica switches at the same
  instant without asking Redis per request; what a replica counted since its last flush is filed by its time
  span when it learns of a switch only afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterable, Mapping
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
from routeproxy.counters.totals import NO_PERIOD, Drop, Period, PeriodTotals, WriterTotals
from routeproxy.errors import CounterStoreUnavailable
from routeproxy.settings import Tier
from routeproxy.settings.redaction import redacted_url
from routeproxy.settings.runtime import RuntimeConfig, check_runtime, parse_runtime
from routeproxy.tasks import Repeating

log = structlog.get_logger("routeproxy.counters.store")

REDIS_TIMEOUT_S = 0.5  # a paused Redis stalls one flush for this long, never a request
MAX_WRITES_PER_FLUSH = 4  # so a flush under constant load still ends and the loop refreshes on time

_WRITTEN, _LACKS_EARLIER, _PERIOD_OVER = 1, 2, 3  # the flush script's answers about a write


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
        # One writer per process: a restarted replica with the same replica_id writes its own totals afresh.
        self._writer = f"{self.replica_id}:{uuid.uuid4().hex[:12]}"
        self._about = orjson.dumps(about).decode() if about is not None else ""
        self._version = 0  # of this writer's writes, across periods
        self._own = WriterTotals(self.labels.values())
        self._offset_ms = 0.0  # Redis's clock minus ours, measured at every flush
        self._started = now_utc()
        self.dropped = 0  # requests the period rules dropped (PERIOD_RULES_MARKDOWN), since start
        self._lock = asyncio.Lock()
        self._loop = Repeating(self.flush, flush_interval, f"counters-flush:{self.replica_id}")
        self._healthy = True

    def _now_ms(self) -> int:
        return int(time.time() * 1000 + self._offset_ms)

    def _dropped(self, drops: list[Drop]) -> None:
        for drop in drops:
            self.dropped += drop.requests
            log.warning(
                "counters.dropped",
                period=drop.period,
                requests=drop.requests,
                why="counted across the start of a period this replica learned of too late",
            )

    def record(self, outcome: Outcome) -> None:
        self._add(outcome_fields(outcome, self.labels), None)

    @property
    def period(self) -> int:
        return max(self._own.current.number, 0)

    def add_fields(self, fields: Iterable[tuple[str, int]], period: int) -> None:
        self._add(fields, period)

    def _add(self, fields: Iterable[tuple[str, int]], period: int | None) -> None:
        """Into the totals of the period counting now; ``period`` given: only if that is the one (a period that is
        over has its totals already, and feedback about its requests is dropped)."""
        drops = self._own.add(fields, self._now_ms(), period)
        if drops:
            self._dropped(drops)

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def flush_lag_s(self) -> float:
        return time.monotonic() - self.last_flush

    @property
    def backlog_fields(self) -> int:
        """Fields Redis has not acknowledged yet (bounded by field_count() per period kept)."""
        return self._own.backlog_fields

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
        # Twice, so a write whose answer was lost in the first attempt is confirmed by the second.
        if not await self.flush() and not await self.flush():
            log.warning("counters.lost_on_close", fields=self.backlog_fields)
        await self._client.aclose()

    async def _call(self, totals: PeriodTotals | None, values: dict[str, int], version: int) -> tuple[int, Period, int]:
        """One flush script call: the status of the write (0: none sent), the period Redis says is current, and
        Redis's clock (ms)."""
        current, upcoming = self._own.current, self._own.upcoming
        unknown = self._own.by_period[NO_PERIOD]
        span = (totals.first_ms, totals.last_ms) if totals else (unknown.first_ms, unknown.last_ms)
        args: list[str | int] = [
            self.keys.prefix, self._writer, self.replica_id, self._about, round(LIVE_WINDOW_S * 1000),
            OLD_PERIOD_TTL_S, current.number, current.start_ms, upcoming.number if upcoming else NO_PERIOD,
            upcoming.start_ms if upcoming else 0, *span, totals.period if totals else NO_PERIOD, version,
            totals.version if totals else 0, "1" if totals and totals.full else "0",
        ]  # fmt: skip
        for name, value in values.items():
            args += (name, value)
        sent = time.time() * 1000
        reply = await self._flush_script(keys=[self.keys.period, self.keys.config, self.keys.live], args=args)
        status, period, start_ms, redis_now, config = reply
        self._offset_ms = int(redis_now) - (sent + time.time() * 1000) / 2
        self._runtime = parse_runtime(config)
        return int(status), Period(int(period), int(start_ms)), int(redis_now)

    def _learn(self, period: Period, redis_now: int) -> None:
        self._dropped(self._own.learn(period, redis_now))

    async def _write(self, totals: PeriodTotals) -> None:
        """Write these totals until Redis has them (at most twice: all of them, when it lacked earlier ones)."""
        for _ in range(3):
            values = totals.batch()
            self._version += 1
            version, sent_pending, sent_ms = self._version, dict(totals.pending), self._now_ms()
            totals.unsure |= values.keys()
            status, period, redis_now = await self._call(totals, values, version)
            if status == _LACKS_EARLIER:
                totals.full = True
            elif status == _WRITTEN:
                totals.acknowledge(version, values, sent_pending, sent_ms)
            self._learn(period, redis_now)
            if status == _WRITTEN:
                return
            if status == _PERIOD_OVER and totals.pending and totals.period != self._own.current.number:
                self._dropped([self._own.drop(totals)])  # counted across the start of a period not counting now

    async def _flush(self) -> bool:
        """Write what Redis does not have; True when Redis answered (whatever was recorded meanwhile still waits)."""
        async with self._lock:
            try:
                written = self._own.to_write()[:MAX_WRITES_PER_FLUSH]
                for totals in written:
                    await self._write(totals)
                if not written:
                    _, period, redis_now = await self._call(None, {}, 0)  # still learn the period and the config
                    self._learn(period, redis_now)
                self._own.forget_done()
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
        return await self._flush() and self._own.all_written

    async def snapshot(self) -> Snapshot:
        if await self._flush():
            self._dropped(self._own.switch_if_due(self._now_ms()))
            period = self._own.current.number
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
        current = self._own.current
        own = self._own.by_period[current.number].counts()
        return Snapshot(
            counts=own,
            period=max(current.number, 0),
            since=datetime.fromtimestamp(current.start_ms / 1000, UTC) if current.start_ms else self._started,
            replicas=(self.replica_id,) if own else (),
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
        self._own.upcoming = Period(int(period), int(start_ms))
        # Past the start on Redis's clock, plus the error of our estimate of it.
        await asyncio.sleep(max(0.0, (int(start_ms) - int(redis_now)) / 1000) + 0.005)
        self._dropped(self._own.switch_if_due(max(self._now_ms(), int(start_ms))))

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
