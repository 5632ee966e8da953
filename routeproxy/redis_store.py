"""The Redis counter store, shared by every replica: its key layout, its Lua scripts and its client.

This is the only module that knows Redis key and field names (see ``KEY_LAYOUT_MARKDOWN``).

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
* Reset: a period number lives in Redis; counts live under the period. Every outcome is counted in the
  period its replica knew when it recorded it, so outcomes from before a reset never reach the new
  period. A replica learns of a reset at its next flush, so the new period may miss up to one flush
  interval of another replica's outcomes (they land in the old period instead).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.typing import EncodableT

from routeproxy.config import Tier
from routeproxy.counters import CounterStore, now_utc
from routeproxy.errors import CounterStoreUnavailable
from routeproxy.runtime import RuntimeConfig, check_runtime, parse_runtime
from routeproxy.stats import BUCKETS_MS, Outcome, Snapshot, outcome_fields
from routeproxy.tasks import Repeating

log = structlog.get_logger("routeproxy.counters")

REDIS_TIMEOUT_S = 0.5  # a paused Redis stalls one flush for this long, never a request
OLD_PERIOD_TTL_S = 7 * 24 * 3600  # keys of a period that was reset away are kept this long
MAX_BATCHES_PER_FLUSH = 4  # so a flush under constant load still ends and the loop refreshes on time

KEY_LAYOUT_MARKDOWN = (
    """\
All keys of one namespace (`counters.namespace`, default `routeproxy`) share the hash tag
`{<namespace>}`, so they live in one Redis Cluster slot. `<p>` is the A/B period number, `<tier>` is
the tier's label (`tiers.small.label`, `tiers.large.label`: `3b`, `8b` by default), `<complexity>` is
`simple`, `medium`, `complex` or `pinned` (the request named a tier's model id).

| key | type | holds |
| --- | --- | --- |
| `{routeproxy}:period` | string | the current A/B period (missing = 0); a reset increments it |
| `{routeproxy}:stats:<p>` | hash | the counters of period `<p>` (fields below) |
| `{routeproxy}:since:<p>` | string | when period `<p>` started (ISO-8601, UTC) |
| `{routeproxy}:replicas:<p>` | set | ids of the replicas that flushed counts in period `<p>` |
| `{routeproxy}:seq:<p>` | hash | `<replica id>:<process token>` -> last applied flush number |
| `{routeproxy}:config` | hash | shared runtime settings `ab_test_ratio`, `enable_model_routing` |
| `{routeproxy}:decision:<id>` | hash | one request's routing decision, for feedback (fields below) |
| `{routeproxy}:recent:<key>` | string | `<tier>\\|<complexity>\\|<request id>` of the last answer to `<key>` |
| `{routeproxy}:rollout` | hash | the rollout controller's `state` (JSON) and `version` (compare-and-set) |

In `{routeproxy}:config`, `enable_model_routing` is `true` or `false`; a missing field means each
replica's own setting. Keys of a period that a reset left behind expire after 7 days. `<id>` is the
`x-request-id` routeproxy returned; a decision expires after `quality.decision_ttl_s`. `<key>` is a blake2b
hex of the A/B sticky key and the query; it expires after `quality.regeneration_window_s`. The rollout state
holds step, paused, step_since, feedback_at_step, period and history; the controller writes it and
`ab_test_ratio` in one atomic step.

Fields of `{routeproxy}:decision:<request id>`: `tier`, `complexity`, `period` (the A/B period it is counted in),
`stream` (`1`/`0`), `status` (HTTP status sent, `0` if the client left first), `latency_ms`, `at` (epoch
seconds), and `score` (the last feedback, in thousandths) once feedback arrived.

Fields of `{routeproxy}:stats:<p>` are integers, absent until first incremented. `[:<complexity>]`
means the field exists per tier and also per tier and complexity.

| field | counts |
| --- | --- |
| `requests:<tier>[:<complexity>]` | finished requests |
| `latency_ms_sum:<tier>[:<complexity>]` | sum of latencies (start to last byte), whole ms |
| `latency_ms_bucket:<tier>[:<complexity>]:le_<ms>` | requests with latency in (previous bound, `<ms>`] |
| `errors:<tier>[:<complexity>]` | upstream failures (refused, timeout, 5xx, broken stream) |
| `fallbacks:<tier>[:<complexity>]` | requests retried on the other tier (under the tier that answered) |
| `streams:<tier>` | streamed requests |
| `ttfb_ms_sum:<tier>`, `ttfb_ms_count:<tier>` | time to the first upstream body byte of streams |
| `ttfb_ms_bucket:<tier>:le_<ms>` | streams with that time to first byte |
| `status:<tier>:<class>` | status class sent: `2xx` ... `5xx`, `none` if the client left first |
| `disconnects:<tier>[:<complexity>]` | clients that went away before the end |
| `classify_failures:<tier>` | requests whose classification failed |
| `usage_reports:<tier>` | requests whose upstream reported token usage |
| `prompt_tokens:<tier>`, `completion_tokens:<tier>` | the tokens they reported |
| `feedback:<tier>[:<complexity>]` | requests with feedback (a second feedback for one request replaces the first) |
| `score_milli:<tier>[:<complexity>]` | sum of their scores, in thousandths (thumbs up = 1000, down = 0) |
| `score_sq_micro:<tier>[:<complexity>]` | sum of the squared scores, in millionths (for the variance) |
| `feedback_fractional:<tier>[:<complexity>]` | feedback with a score other than 0 or 1 (switches to Welch) |
| `regenerations:<tier>[:<complexity>]` | answers asked again (same sticky key and query) within the window |
| `feedback_replaced` | feedback that replaced an earlier score for the same request |
| `feedback_unknown` | feedback queued while Redis was down whose request id turned out unknown |

Bucket bounds in ms: """
    + ", ".join(map(str, BUCKETS_MS))
    + """; `le_inf` holds the rest.
Read them with `redis-cli GET '{routeproxy}:period'`, then `redis-cli HGETALL '{routeproxy}:stats:0'`.
"""
)


@dataclass(slots=True)
class _Batch:
    seq: int
    period: int
    deltas: dict[str, int]


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """Key names of one namespace; the braces make them one hash tag (one Redis Cluster slot)."""

    namespace: str

    @property
    def period(self) -> str:
        return f"{{{self.namespace}}}:period"

    @property
    def config(self) -> str:
        return f"{{{self.namespace}}}:config"

    def stats(self, period: int) -> str:
        return f"{{{self.namespace}}}:stats:{period}"

    def since(self, period: int) -> str:
        return f"{{{self.namespace}}}:since:{period}"

    def replicas(self, period: int) -> str:
        return f"{{{self.namespace}}}:replicas:{period}"

    def seq(self, period: int) -> str:
        return f"{{{self.namespace}}}:seq:{period}"

    def of_period(self, period: int) -> list[str]:
        return [self.stats(period), self.seq(period), self.replicas(period), self.since(period)]


# Applies one batch at most once (the writer's sequence number is checked and stored in the same atomic
# step) and always answers with the current period and the runtime config, so one round trip also serves
# as the replica's refresh. seq 0 = refresh only.
_FLUSH_LUA = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local applied = 0
local seq = tonumber(ARGV[2])
if seq > 0 then
  local last = tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0')
  if seq > last then
    redis.call('HSET', KEYS[4], ARGV[1], seq)
    for i = 7, #ARGV, 2 do
      redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
    end
    redis.call('SADD', KEYS[5], ARGV[4])
    redis.call('SET', KEYS[6], ARGV[5], 'NX')
    if tonumber(ARGV[3]) ~= current then
      for i = 3, 6 do
        if redis.call('TTL', KEYS[i]) == -1 then redis.call('EXPIRE', KEYS[i], ARGV[6]) end
      end
    end
    applied = 1
  end
end
return {applied, current, redis.call('HGETALL', KEYS[2])}
"""

# Starts period ARGV[1] + 1 unless another replica already moved the period on; old keys expire.
_RESET_LUA = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then return current end
redis.call('SET', KEYS[1], current + 1)
redis.call('SET', KEYS[2], ARGV[2])
for i = 3, 6 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return current + 1
"""

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
    ) -> None:
        super().__init__(labels, replica_id=replica_id, flush_interval=flush_interval)
        self.keys = RedisKeys(namespace)
        self._client = redis_client(url)
        self._flush_script = self._client.register_script(_FLUSH_LUA)
        self._reset_script = self._client.register_script(_RESET_LUA)
        # One id per process: a restarted replica with the same replica_id starts its sequence afresh.
        self._writer = f"{self.replica_id}:{uuid.uuid4().hex[:12]}"
        self._seq = 0
        self._period: int | None = None  # None until Redis first answered
        self._pending: dict[int | None, dict[str, int]] = {}
        self._inflight: _Batch | None = None  # sent at least once, not acknowledged: resent unchanged
        self._local: dict[str, int] = {}  # this replica's outcomes in its known period (the stale view)
        self._local_since = now_utc()
        self._lock = asyncio.Lock()
        self._loop = Repeating(self.flush, flush_interval, f"counters-flush:{self.replica_id}")
        self._healthy = True

    def record(self, outcome: Outcome) -> None:
        pending = self._pending.setdefault(self._period, {})
        for name, increment in outcome_fields(outcome, self.labels):
            pending[name] = pending.get(name, 0) + increment
            self._local[name] = self._local.get(name, 0) + increment

    @property
    def period(self) -> int:
        return self._period or 0

    def add_fields(self, fields: Iterable[tuple[str, int]], period: int) -> None:
        if self._period is not None and period < self._period:
            return
        pending = self._pending.setdefault(period, {})
        for name, increment in fields:
            pending[name] = pending.get(name, 0) + increment
            if period == self._period:
                self._local[name] = self._local.get(name, 0) + increment

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def flush_lag_s(self) -> float:
        return time.monotonic() - self.last_flush

    @property
    def backlog_fields(self) -> int:
        """Fields not yet acknowledged by Redis (bounded by field_count() per period, plus one batch)."""
        inflight = len(self._inflight.deltas) if self._inflight else 0
        return inflight + sum(len(deltas) for deltas in self._pending.values())

    async def start(self) -> None:
        if self._loop.running:
            return
        await self.flush()  # learn the period and the runtime config now, if Redis answers
        self._loop.start()

    async def close(self) -> None:
        await self._loop.stop()
        # Twice, so a batch whose reply was lost in the first attempt is confirmed by the second.
        if not await self.flush() and not await self.flush():
            log.warning("counters.lost_on_close", fields=self.backlog_fields)
        await self._client.aclose()

    def _seal(self) -> _Batch | None:
        assert self._period is not None
        early = self._pending.pop(None, None)
        if early:  # recorded before Redis first answered: counted in the first period we learn
            into = self._pending.setdefault(self._period, {})
            for name, increment in early.items():
                into[name] = into.get(name, 0) + increment
        periods = sorted(p for p, deltas in self._pending.items() if p is not None and deltas)
        if not periods:
            return None
        self._seq += 1
        return _Batch(self._seq, periods[0], self._pending.pop(periods[0]))

    async def _call(self, batch: _Batch | None) -> None:
        period = batch.period if batch else (self._period or 0)
        keys = [self.keys.period, self.keys.config, *self.keys.of_period(period)]
        args: list[str | int] = [
            self._writer, batch.seq if batch else 0, period, self.replica_id, now_utc().isoformat(),
            OLD_PERIOD_TTL_S,
        ]  # fmt: skip
        if batch:
            for name, increment in batch.deltas.items():
                args += (name, increment)
        _applied, current, config = await self._flush_script(keys=keys, args=args)
        self._learn(int(current))
        self._runtime = parse_runtime(config)

    def _learn(self, period: int) -> None:
        if self._period is not None and period != self._period:
            self._local = {}
            self._local_since = now_utc()
        self._period = period

    async def flush(self) -> bool:
        async with self._lock:
            try:
                if self._period is None:
                    await self._call(None)
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
                    log.warning("counters.redis_unavailable", error=repr(exc), backlog=self.backlog_fields)
                self._healthy = False
                self.failures += 1
                return False
        if not self._healthy:
            log.info("counters.redis_back")
        self._healthy = True
        self.last_flush = time.monotonic()
        return self._inflight is None and not any(self._pending.values())

    async def snapshot(self) -> Snapshot:
        if await self.flush() and self._period is not None:
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
                    since=datetime.fromisoformat(since) if since else None,
                    replicas=tuple(sorted(replicas)),
                    store=self.store_name,
                )
        return Snapshot(
            counts=dict(self._local),
            period=self._period or 0,
            since=self._local_since,
            replicas=(self.replica_id,) if self._local else (),
            store=self.store_name,
            stale=True,
        )

    async def reset(self) -> None:
        await self.flush()  # outcomes recorded so far belong to the period that is ending
        try:
            old = int(await self._client.get(self.keys.period) or 0)
            keys = [self.keys.period, self.keys.since(old + 1), *self.keys.of_period(old)]
            new = await self._reset_script(keys=keys, args=[old, now_utc().isoformat(), OLD_PERIOD_TTL_S])
        except _REDIS_FAILURES as exc:
            raise CounterStoreUnavailable(f"cannot reset the counters: Redis did not answer ({exc})") from exc
        self._learn(int(new))

    async def set_runtime(self, change: RuntimeConfig) -> RuntimeConfig:
        check_runtime(change)
        values: dict[EncodableT, EncodableT] = {}
        if change.ab_test_ratio is not None:
            values["ab_test_ratio"] = repr(float(change.ab_test_ratio))
        if change.enable_model_routing is not None:
            values["enable_model_routing"] = "true" if change.enable_model_routing else "false"
        try:
            if values:
                await self._client.hset(self.keys.config, mapping=values)
            raw = {str(name): str(value) for name, value in (await self._client.hgetall(self.keys.config)).items()}
        except _REDIS_FAILURES as exc:
            raise CounterStoreUnavailable(f"cannot store the runtime config: Redis did not answer ({exc})") from exc
        self._runtime = parse_runtime(raw)
        return self._runtime
