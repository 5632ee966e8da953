"""The decision store in Redis (the interface is in decisions.py), shared by every replica. Its keys are in the
key table (docs: statistics).

Failure policy (the counters' own, see redis_store.py). ``remember`` is synchronous and does no I/O: it formats
the decision's script arguments once (a few microseconds) and adds them to a local batch, which a background task
sends every ``flush_interval`` in Lua calls of ``PER_CALL`` decisions; each call also detects regenerations (the
same sticky key and query asked again within the window, on any replica). Short calls keep both the event loop
and Redis free between them. When Redis is down or refuses writes (full with ``noeviction``, a read-only replica),
decisions wait in a bounded batch (the oldest go first past ``max_pending``) and feedback waits in a bounded queue,
answered 202; both go out when Redis takes writes again. Only a full queue refuses feedback (503), so feedback is
never dropped silently.

Finding a decision costs a bounded number of Redis calls. A decision this replica has not sent yet is found in
its own batch (an index by id), sent at once, then rated. Otherwise one lookup; on a miss, one wait of
``not_found_grace_s`` (another replica may hold it in its batch for up to a flush interval) and one last lookup: an
unknown id costs two calls. The lookup script tries a write that changes nothing before it says "unknown", so a
Redis that refuses writes answers with an error, and the rating is queued, never a 404 for a request that exists.
Queued feedback whose id is unknown when it goes out gets the same one wait before it is counted as unknown.

Exactly once: the feedback script reads the request's previous score from its decision hash and moves the tier's
sums from the old score to the new one in the same atomic step, so a second feedback replaces the first and a
replayed call changes nothing. A decision hash is never overwritten: a batch sent twice changes nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
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
    NotYourRequest,
    RequestNotFound,
    not_found,
    not_yours,
    score_units,
)
from routeproxy.settings.redaction import redacted_url
from routeproxy.tasks import Repeating

log = structlog.get_logger(__name__)

PER_CALL = 64  # decisions per Lua call (about 1 ms of Redis time): other clients and the event loop run between
_REDIS_FAILURES = (RedisError, OSError, TimeoutError)


# Stores a batch of decisions with their TTL and counts regenerations: a sticky key seen within the window, by
# another request id, counts one for the tier and complexity of the answer that was asked again. A decision that
# exists already is left alone (a batch sent twice, whose first reply was lost, changes nothing).
# A regeneration is counted only in a period this Redis dataset knows (its since key exists): a decision recorded
# under a period of a dataset Redis lost (a restart without persistence) counts nowhere, as the counters' period
# rules say (counters/keys.py PERIOD_RULES_MARKDOWN).
# One argument per decision, its fields joined by the unit separator (\31): redis-py packs a command's arguments
# one by one, about a microsecond each, on the event loop, so fourteen per decision cost ten times one. The key
# names are built here from the prefix; every one shares the namespace's hash tag (one cluster slot), and KEYS[1]
# (the runtime config key) routes the call there.
# ARGV: prefix, ttl seconds, window ms, then per decision: id, tier, complexity, period, stream, status, latency,
# at, regeneration key ('' = none), owner ('' = none), check (the answer check's record, '' = none).
_REMEMBER_LUA = """
local prefix, ttl, window = ARGV[1], ARGV[2], ARGV[3]
for i = 4, #ARGV do
  local f = {}
  for field in string.gmatch(ARGV[i] .. '\\31', '([^\\31]*)\\31') do f[#f + 1] = field end
  local id, tier, complexity, period = f[1], f[2], f[3], f[4]
  local decision = prefix .. 'decision:' .. id
  if redis.call('EXISTS', decision) == 0 then
    redis.call('HSET', decision, 'tier', tier, 'complexity', complexity, 'period', period,
      'stream', f[5], 'status', f[6], 'latency_ms', f[7], 'at', f[8])
    if f[10] ~= '' then redis.call('HSET', decision, 'owner', f[10]) end
    if f[11] ~= '' then redis.call('HSET', decision, 'check', f[11]) end
    redis.call('EXPIRE', decision, ttl)
    if f[9] ~= '' then
      local recent = prefix .. 'recent:' .. f[9]
      local previous = redis.call('GET', recent)
      if previous then
        local first_tier, first_complexity, first_id = string.match(previous, '^([^|]*)|([^|]*)|(.*)$')
        if first_id ~= id and redis.call('EXISTS', prefix .. 'since:' .. period) == 1 then
          local stats = prefix .. 'stats:' .. period
          redis.call('HINCRBY', stats, 'regenerations:' .. first_tier, 1)
          redis.call('HINCRBY', stats, 'regenerations:' .. first_tier .. ':' .. first_complexity, 1)
        end
      end
      redis.call('SET', recent, tier .. '|' .. complexity .. '|' .. id, 'PX', window)
    end
  end
end
return 1
"""

# One feedback: {0} unknown id (counted in KEYS[3] when ARGV[3] is '1'); {-1, period} the decision is in another
# period than the caller assumed (it retries with that one); {-2} another client key made the request;
# {1, tier, complexity, period, replaced} counted. Before it answers "unknown" it tries a write that changes
# nothing (SET ... XX on the missing key): a Redis that refuses writes (full, read-only) fails the call instead.
# KEYS: the decision hash, the stats of the period the caller read, the stats of the current period.
# ARGV: the period the caller read, the score in thousandths, count unknown ('1'/'0'), the rater's owner digest.
_FEEDBACK_LUA = """
local d = redis.call('HMGET', KEYS[1], 'tier', 'complexity', 'period', 'score', 'owner')
if not d[1] then
  redis.call('SET', KEYS[1], '', 'XX')
  if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[3], 'feedback_unknown', 1) end
  return {0}
end
if d[5] and ARGV[4] ~= '' and d[5] ~= ARGV[4] then return {-2} end
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
class _Entry:
    """One decision, its script argument formatted once, in ``remember``."""

    request_id: str
    record: bytes


@dataclass(slots=True)
class _Queued:
    request_id: str
    units: int
    owner: str | None
    retry_at: float | None = None  # monotonic time of the last look, after a first "unknown"


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
        per_call: int = PER_CALL,
    ) -> None:
        super().__init__(counters, ttl_s=ttl_s, regeneration_window_s=regeneration_window_s)
        self.namespace = namespace
        self.prefix = f"{{{namespace}}}:"
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.max_queued = max_queued
        self.per_call = per_call
        # Another replica holds a decision in its batch for up to a flush interval (plus a slow call).
        self.not_found_grace_s = flush_interval + 0.5 if not_found_grace_s is None else not_found_grace_s
        self.shown_url = redacted_url(url)  # for log lines: never the password
        self._client = redis_client(url)
        self._remember = self._client.register_script(_REMEMBER_LUA)
        self._feedback = self._client.register_script(_FEEDBACK_LUA)
        self._head = (self.prefix, str(max(1, round(ttl_s))), str(max(1, round(regeneration_window_s * 1000))))
        self._route = [self.key("config")]
        self._pending: deque[_Entry] = deque()
        self._inflight: list[_Entry] = []  # sent, not acknowledged: resent unchanged
        self._unsent: dict[str, _Entry] = {}  # pending and in flight, by request id
        self._queue: deque[_Queued] = deque()
        self._queued_ids: dict[str, int] = {}  # how many queued ratings each request id has
        self._lock = asyncio.Lock()
        self._loop = Repeating(self.flush, flush_interval, "decisions-flush")
        self._healthy = True
        self.dropped = 0  # decisions pushed out of a full batch during an outage
        self.unknown = 0  # queued feedback whose id turned out unknown
        self.refused = 0  # queued feedback sent with another client key than the request's

    def key(self, name: str) -> str:
        return self.prefix + name

    @property
    def queued(self) -> int:
        return len(self._queue)

    def remember(self, decision: Decision) -> None:
        request_id = decision.request_id
        record = "\x1f".join((
            request_id, decision.tier, decision.complexity, str(decision.period), "1" if decision.stream else "0",
            str(decision.status), f"{decision.latency_ms:.3f}", f"{decision.at:.3f}", decision.regeneration_key or "",
            decision.owner or "", decision.check or "",
        ))  # fmt: skip
        entry = _Entry(request_id, record.encode())
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            oldest = self._pending.popleft()
            self._unsent.pop(oldest.request_id, None)
        self._pending.append(entry)
        self._unsent[request_id] = entry

    async def start(self) -> None:
        self._loop.start()

    async def close(self) -> None:
        await self._loop.stop()
        if not await self.flush():
            log.warning("decisions.lost_on_close", decisions=len(self._unsent), feedback=len(self._queue))
        await self._client.aclose()

    async def _send(self, batch: list[_Entry]) -> None:
        await self._remember(keys=self._route, args=[*self._head, *(entry.record for entry in batch)])

    async def flush(self) -> bool:
        async with self._lock:
            try:
                while self._inflight or self._pending:
                    if not self._inflight:
                        count = min(self.per_call, len(self._pending))
                        self._inflight = [self._pending.popleft() for _ in range(count)]
                    await self._send(self._inflight)
                    for entry in self._inflight:
                        if self._unsent.get(entry.request_id) is entry:
                            del self._unsent[entry.request_id]
                    self._inflight = []
                await self._drain()
            except _REDIS_FAILURES as exc:
                if self._healthy:  # once per outage, not once per flush
                    log.warning(
                        "decisions.redis_unavailable",
                        redis=self.shown_url,
                        error=repr(exc),
                        pending=len(self._unsent),
                        queued=self.queued,
                    )
                self._healthy = False
                return False
        if not self._healthy:
            log.info("decisions.redis_back", redis=self.shown_url)
        self._healthy = True
        return not self._queue

    async def _drain(self) -> None:
        """Send the queued feedback in order. An id unknown at its first look waits ``not_found_grace_s`` for one
        more (later ratings of the same request wait behind it); unknown again, it is counted and dropped."""
        waiting: deque[_Queued] = deque()
        held: set[str] = set()
        try:
            while self._queue:
                item = self._queue[0]
                now = time.monotonic()
                if item.request_id in held or (item.retry_at is not None and now < item.retry_at):
                    held.add(item.request_id)
                    waiting.append(self._queue.popleft())
                    continue
                try:
                    await self._apply(item.request_id, item.units, item.owner, count_unknown=item.retry_at is not None)
                except RequestNotFound:
                    if item.retry_at is None:
                        item.retry_at = now + self.not_found_grace_s
                        held.add(item.request_id)
                        waiting.append(self._queue.popleft())
                        continue
                    self.unknown += 1
                    log.warning("feedback.unknown_after_outage", request_id=item.request_id)
                except NotYourRequest:
                    self.refused += 1
                    log.warning("feedback.refused_after_outage", request_id=item.request_id, why="another client key")
                self._forget(self._queue.popleft())
        finally:
            self._queue.extendleft(reversed(waiting))  # still first, in their order

    def _forget(self, item: _Queued) -> None:
        left = self._queued_ids[item.request_id] - 1
        if left:
            self._queued_ids[item.request_id] = left
        else:
            del self._queued_ids[item.request_id]

    async def _apply(
        self, request_id: str, units: int, owner: str | None, *, count_unknown: bool = False
    ) -> FeedbackResult:
        own = self.key(f"decision:{request_id}")
        current = self.key(f"stats:{self.counters.period}")
        period = self.counters.period
        for _ in range(3):  # a reset between the two reads moves the period on; a third miss is a bug
            reply = await self._feedback(
                keys=[own, self.key(f"stats:{period}"), current],
                args=[period, units, int(count_unknown), owner or ""],
            )
            status = int(reply[0])
            if status == 1:
                return FeedbackResult(
                    request_id, units / SCORE_SCALE, tier=str(reply[1]), complexity=str(reply[2]),
                    period=int(reply[3]), replaced=bool(int(reply[4])),
                )  # fmt: skip
            if status == 0:
                raise not_found(request_id, self.ttl_s)
            if status == -2:
                raise not_yours(request_id)
            period = int(reply[1])
        raise RedisError(f"the period of request {request_id!r} kept changing")

    async def feedback(self, request_id: str, score: float, owner: str | None = None) -> FeedbackResult:
        units = score_units(score)
        if request_id in self._unsent or request_id in self._queued_ids:
            # This replica's own decision, or an earlier rating of the same request, still waits: send it first,
            # or queue behind it.
            await self.flush()
            if request_id in self._unsent or request_id in self._queued_ids:
                return self._enqueue(request_id, units, score, owner, None)
        try:
            return await self._apply(request_id, units, owner)
        except RequestNotFound:
            pass
        except _REDIS_FAILURES as exc:
            return self._enqueue(request_id, units, score, owner, exc)
        await asyncio.sleep(self.not_found_grace_s)  # the one wait: another replica's batch goes out meanwhile
        try:
            return await self._apply(request_id, units, owner)
        except _REDIS_FAILURES as exc:
            return self._enqueue(request_id, units, score, owner, exc)

    def _enqueue(
        self, request_id: str, units: int, score: float, owner: str | None, exc: BaseException | None
    ) -> FeedbackResult:
        if len(self._queue) >= self.max_queued:
            raise CounterStoreUnavailable(
                f"Redis does not take writes and {self.max_queued} feedback events already wait for it; "
                "send this one again later"
            ) from exc
        self._queue.append(_Queued(request_id, units, owner))
        self._queued_ids[request_id] = self._queued_ids.get(request_id, 0) + 1
        return FeedbackResult(request_id, score, queued=True)
