"""The decision store in Redis (the interface is in decisions.py), shared by every replica. Its keys are in the
README's key table.

Failure policy (the counters' own, see redis_store.py). ``remember`` is synchronous and does no I/O: the
decision joins a local batch that a background task sends every ``flush_interval`` with one Lua call, which also
detects regenerations (the same sticky key and query asked again within the window, on any replica). When Redis
is down, decisions wait in a bounded batch (the oldest go first past ``max_pending``) and feedback waits in a
bounded queue, answered 202; both go out when Redis answers again. Only a full queue refuses feedback (503), so
feedback is never dropped silently.

Exactly once: the feedback script reads the request's previous score from its decision hash and moves the tier's
sums from the old score to the new one in the same atomic step, so a second feedback replaces the first and a
replayed call changes nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from redis.exceptions import RedisError

from routeproxy.counters.redis_store import redis_client
from routeproxy.counters.store import CounterStore
from routeproxy.errors import CounterStoreUnavailable
from routeproxy.quality.decisions import (
    SCORE_SCALE,
    Decision,
    DecisionStore,
    FeedbackResult,
    RequestNotFound,
    not_found,
    score_units,
)
from routeproxy.settings.redaction import redacted_url
from routeproxy.tasks import Repeating

log = structlog.get_logger(__name__)

MAX_PER_CALL = 256  # decisions per Lua call: a long outage's backlog goes out in several short calls
_REDIS_FAILURES = (RedisError, OSError, TimeoutError)


# Stores a batch of decisions with their TTL and counts regenerations: a sticky key seen within the window, by
# another request id, counts one for the tier and complexity of the answer that was asked again. Resending a batch
# is harmless: HSET is idempotent and a request never regenerates itself.
# A regeneration is counted only in a period this Redis dataset knows (its since key exists): a decision recorded
# under a period of a dataset Redis lost (a restart without persistence) counts nowhere, as the counters' period
# rules say (keys.PERIOD_RULES_MARKDOWN).
# KEYS, per decision: its hash, its regeneration key (the hash again when it has none), the stats of its period,
# the start of its period.
# ARGV: ttl seconds, window ms, then per decision: id, tier, complexity, period, stream, status, latency, at, has_key,
# check (the answer check's record, or '' when there is none).
_REMEMBER_LUA = """
local per = 10
for i = 0, (#ARGV - 2) / per - 1 do
  local a = 3 + i * per
  local id, tier, complexity = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local decision, recent, stats, since = KEYS[i * 4 + 1], KEYS[i * 4 + 2], KEYS[i * 4 + 3], KEYS[i * 4 + 4]
  redis.call('HSET', decision, 'tier', tier, 'complexity', complexity, 'period', ARGV[a + 3],
    'stream', ARGV[a + 4], 'status', ARGV[a + 5], 'latency_ms', ARGV[a + 6], 'at', ARGV[a + 7])
  if ARGV[a + 9] ~= '' then redis.call('HSET', decision, 'check', ARGV[a + 9]) end
  redis.call('EXPIRE', decision, ARGV[1])
  if ARGV[a + 8] == '1' then
    local previous = redis.call('GET', recent)
    if previous then
      local first_tier, first_complexity, first_id = string.match(previous, '^([^|]*)|([^|]*)|(.*)$')
      if first_id ~= id and redis.call('EXISTS', since) == 1 then
        redis.call('HINCRBY', stats, 'regenerations:' .. first_tier, 1)
        redis.call('HINCRBY', stats, 'regenerations:' .. first_tier .. ':' .. first_complexity, 1)
      end
    end
    redis.call('SET', recent, tier .. '|' .. complexity .. '|' .. id, 'PX', ARGV[2])
  end
end
return 1
"""

# One feedback: {0} unknown id (counted in KEYS[3] when ARGV[3] is '1'); {-1, period} the decision is in another
# period than the caller assumed (it retries with that one); {1, tier, complexity, period, replaced} counted.
# KEYS: the decision hash, the stats of the period the caller read, the stats of the current period.
_FEEDBACK_LUA = """
local d = redis.call('HMGET', KEYS[1], 'tier', 'complexity', 'period', 'score')
if not d[1] then
  if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[3], 'feedback_unknown', 1) end
  return {0}
end
if d[3] ~= ARGV[1] then return {-1, d[3]} end
local new = tonumber(ARGV[2])
local function fractional(units) if units == 0 or units == 1000 then return 0 end return 1 end
local scopes = {d[1], d[1] .. ':' .. d[2]}
local replaced = 0
for _, scope in ipairs(scopes) do
  if d[4] then
    local old = tonumber(d[4])
    redis.call('HINCRBY', KEYS[2], 'score_milli:' .. scope, new - old)
    redis.call('HINCRBY', KEYS[2], 'score_sq_micro:' .. scope, new * new - old * old)
    redis.call('HINCRBY', KEYS[2], 'feedback_fractional:' .. scope, fractional(new) - fractional(old))
  else
    redis.call('HINCRBY', KEYS[2], 'feedback:' .. scope, 1)
    redis.call('HINCRBY', KEYS[2], 'score_milli:' .. scope, new)
    redis.call('HINCRBY', KEYS[2], 'score_sq_micro:' .. scope, new * new)
    redis.call('HINCRBY', KEYS[2], 'feedback_fractional:' .. scope, fractional(new))
  end
end
if d[4] then
  replaced = 1
  if tonumber(d[4]) ~= new then redis.call('HINCRBY', KEYS[2], 'feedback_replaced', 1) end
end
redis.call('HSET', KEYS[1], 'score', ARGV[2])
return {1, d[1], d[2], d[3], replaced}
"""


@dataclass(frozen=True, slots=True)
class _Queued:
    request_id: str
    units: int


class RedisDecisionStore(DecisionStore):
    """Decisions in Redis hashes with a TTL, shared by every replica. See the module docstring."""

    def __init__(
        self,
        counters: CounterStore,
        url: str,
        namespace: str,
        *,
        ttl_s: float,
        regeneration_window_s: float,
        flush_interval: float = 0.5,
        max_pending: int = 100_000,
        max_queued: int = 10_000,
        not_found_grace_s: float | None = None,
    ) -> None:
        super().__init__(counters, ttl_s=ttl_s, regeneration_window_s=regeneration_window_s)
        self.namespace = namespace
        self.flush_interval = flush_interval
        self.max_queued = max_queued
        # Another replica may still hold the decision in its batch: an unknown id is looked up again for this long.
        self.not_found_grace_s = 2 * flush_interval + 0.5 if not_found_grace_s is None else not_found_grace_s
        self.shown_url = redacted_url(url)  # for log lines: never the password
        self._client = redis_client(url)
        self._remember = self._client.register_script(_REMEMBER_LUA)
        self._feedback = self._client.register_script(_FEEDBACK_LUA)
        self._pending: deque[Decision] = deque(maxlen=max_pending)
        self._inflight: list[Decision] = []  # sent, not acknowledged: resent unchanged
        self._queue: deque[_Queued] = deque()
        self._lock = asyncio.Lock()
        self._loop = Repeating(self.flush, flush_interval, "decisions-flush")
        self._healthy = True
        self.dropped = 0  # decisions pushed out of a full batch during an outage
        self.unknown = 0  # queued feedback whose id turned out unknown

    def key(self, name: str) -> str:
        return f"{{{self.namespace}}}:{name}"

    @property
    def queued(self) -> int:
        return len(self._queue)

    def remember(self, decision: Decision) -> None:
        if len(self._pending) == self._pending.maxlen:
            self.dropped += 1
        self._pending.append(decision)

    async def start(self) -> None:
        self._loop.start()

    async def close(self) -> None:
        await self._loop.stop()
        if not await self.flush():
            log.warning("decisions.lost_on_close", decisions=len(self._pending), feedback=len(self._queue))
        await self._client.aclose()

    async def _send(self, batch: list[Decision]) -> None:
        keys: list[str] = []
        args: list[str | int | float] = [max(1, round(self.ttl_s)), max(1, round(self.regeneration_window_s * 1000))]
        for decision in batch:
            own = self.key(f"decision:{decision.request_id}")
            recent = self.key(f"recent:{decision.regeneration_key}") if decision.regeneration_key else own
            keys += [own, recent, self.key(f"stats:{decision.period}"), self.key(f"since:{decision.period}")]
            args += [
                decision.request_id, decision.tier, decision.complexity, decision.period, int(decision.stream),
                decision.status, round(decision.latency_ms, 3), round(decision.at, 3),
                int(decision.regeneration_key is not None), decision.check or "",
            ]  # fmt: skip
        await self._remember(keys=keys, args=args)

    async def flush(self) -> bool:
        async with self._lock:
            try:
                while self._inflight or self._pending:
                    if not self._inflight:
                        self._inflight = [self._pending.popleft() for _ in range(min(MAX_PER_CALL, len(self._pending)))]
                    await self._send(self._inflight)
                    self._inflight = []
                while self._queue:
                    item = self._queue[0]
                    try:
                        await self._apply(item.request_id, item.units, count_unknown=True)
                    except RequestNotFound:
                        self.unknown += 1
                        log.warning("feedback.unknown_after_outage", request_id=item.request_id)
                    self._queue.popleft()
            except _REDIS_FAILURES as exc:
                if self._healthy:  # once per outage, not once per flush
                    log.warning(
                        "decisions.redis_unavailable",
                        redis=self.shown_url,
                        error=repr(exc),
                        pending=len(self._pending),
                        queued=self.queued,
                    )
                self._healthy = False
                return False
        if not self._healthy:
            log.info("decisions.redis_back", redis=self.shown_url)
        self._healthy = True
        return True

    async def _apply(self, request_id: str, units: int, *, count_unknown: bool = False) -> FeedbackResult:
        own = self.key(f"decision:{request_id}")
        current = self.key(f"stats:{self.counters.period}")
        period = self.counters.period
        for _ in range(3):  # a reset between the two reads moves the period on; a third miss is a bug
            reply = await self._feedback(
                keys=[own, self.key(f"stats:{period}"), current], args=[period, units, int(count_unknown)]
            )
            if int(reply[0]) == 1:
                return FeedbackResult(
                    request_id, units / SCORE_SCALE, tier=str(reply[1]), complexity=str(reply[2]),
                    period=int(reply[3]), replaced=bool(int(reply[4])),
                )  # fmt: skip
            if int(reply[0]) == 0:
                raise not_found(request_id, self.ttl_s)
            period = int(reply[1])
        raise RedisError(f"the period of request {request_id!r} kept changing")

    def _holds(self, request_id: str) -> bool:
        return any(decision.request_id == request_id for decision in self._iter_unsent())

    def _iter_unsent(self) -> Iterable[Decision]:
        yield from self._inflight
        yield from self._pending

    async def feedback(self, request_id: str, score: float) -> FeedbackResult:
        units = score_units(score)
        if self._queue or self._holds(request_id):
            await self.flush()  # keep the order: what waits goes first; this replica's own decision too
        deadline = time.monotonic() + self.not_found_grace_s
        while True:
            try:
                if self._queue:
                    raise RedisError("earlier feedback is still waiting for Redis")
                return await self._apply(request_id, units)
            except RequestNotFound:
                if time.monotonic() >= deadline:
                    raise
            except _REDIS_FAILURES as exc:
                return self._enqueue(request_id, units, score, exc)
            await asyncio.sleep(min(0.1, self.flush_interval / 2))

    def _enqueue(self, request_id: str, units: int, score: float, exc: BaseException) -> FeedbackResult:
        if len(self._queue) >= self.max_queued:
            raise CounterStoreUnavailable(
                f"Redis does not answer and {self.max_queued} feedback events already wait for it; "
                "send this one again later"
            ) from exc
        self._queue.append(_Queued(request_id, units))
        return FeedbackResult(request_id, score, queued=True)
