"""What routeproxy keeps in Redis: the key layout, the period rules and the Lua scripts that apply them.

The only module that knows Redis key and field names; ``redis_store.py`` runs the scripts. The README's key
table and period rules are these strings (a test checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

from routeproxy.counters.stats import BUCKETS_MS

OLD_PERIOD_TTL_S = 7 * 24 * 3600  # keys of a period that was reset away are kept this long
ANNOUNCE_S = 1.0  # how far ahead a new period is announced: two flush intervals of every replica
LIVE_WINDOW_S = 5.0  # a replica that has not flushed for this long is no longer listed as live

KEY_LAYOUT_MARKDOWN = (
    """\
All keys of one namespace (`counters.namespace`, default `routeproxy`) share the hash tag
`{<namespace>}`, so they live in one Redis Cluster slot. `<p>` is the A/B period number, `<tier>` is
the tier's label (`tiers.small.label`, `tiers.large.label`: `3b`, `8b` by default), `<complexity>` is
`simple`, `medium`, `complex` or `pinned` (the request named a tier's model id).

| key | type | holds |
| --- | --- | --- |
| `{routeproxy}:period` | string | the current A/B period; a reset increments it |
| `{routeproxy}:since:<p>` | string | when period `<p>` starts counting (ms since 1970 on Redis's clock) |
| `{routeproxy}:stats:<p>` | hash | the counters of period `<p>` (fields below): the sum of its writers' totals |
| `{routeproxy}:totals:<p>:<writer>` | hash | one writer's own totals in period `<p>` (same fields) |
| `{routeproxy}:writers:<p>` | hash | `<writer>` -> the version of its totals last written |
| `{routeproxy}:replicas:<p>` | set | ids of the replicas that flushed counts in period `<p>` |
| `{routeproxy}:config` | hash | shared runtime settings `ab_test_ratio`, `enable_model_routing`, `routing_mode` |
| `{routeproxy}:live` | sorted set | replica ids, scored by their last flush (ms on Redis's clock) |
| `{routeproxy}:replica:<id>` | string | that replica's own routing settings (JSON), expiring unless it flushes |
| `{routeproxy}:decision:<id>` | hash | one request's routing decision, for feedback (fields below) |
| `{routeproxy}:recent:<key>` | string | `<tier>\\|<complexity>\\|<request id>` of the last answer to `<key>` |
| `{routeproxy}:rollout` | hash | the rollout controller's `state` (JSON) and `version` (compare-and-set) |

In `{routeproxy}:config`, `enable_model_routing` is `true` or `false`, `routing_mode` is `classify` or
`cascade`; a missing field means each
replica's own setting. A `<writer>` is one proxy process: `<replica id>:<process token>` (a restarted replica
is a new writer). Keys of a period that a reset left behind expire after 7 days. `<id>` is the
`x-routeproxy-request-id` routeproxy returned; a decision expires after `quality.decision_ttl_s`. `<key>` is a blake2b
hex of the A/B sticky key and the query; it expires after `quality.regeneration_window_s`. The rollout state
holds step, paused, step_since, feedback_at_step, period and history; the controller writes it and
`ab_test_ratio` in one atomic step.

Fields of `{routeproxy}:decision:<request id>`: `tier`, `complexity`, `period` (the A/B period it is counted in),
`stream` (`1`/`0`), `status` (HTTP status sent, `0` if the client left first), `latency_ms`, `at` (epoch
seconds), `owner` (with client keys: a keyed digest of the key that made the request), `score` (the last feedback,
in thousandths) once feedback arrived, and in cascade mode `check`: what the answer check read (JSON, numbers only:
`rules`, `score`, `escalate` (its verdict), `explored`, `small` (the client got the small tier's answer), and
`activations`, each signal that fired -> its activation), which `routeproxy eval --cascade --feedback` fits the
check's weights on.

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
| `simulated:<tier>` | requests answered by routeproxy's simulator (its `x-simulator` header), not a model |
| `simulator_speed_x100_sum:<tier>` | sum of the simulator's speed-ups over those requests, in hundredths |
| `routing_off:<tier>` | requests decided while routing was off (every `auto` request to the large tier) |
| `feedback:<tier>[:<complexity>]` | requests with feedback (a second feedback for one request replaces the first) |
| `score_milli:<tier>[:<complexity>]` | sum of their scores, in thousandths (thumbs up = 1000, down = 0) |
| `score_sq_micro:<tier>[:<complexity>]` | sum of the squared scores, in millionths (for the variance) |
| `feedback_fractional:<tier>[:<complexity>]` | feedback with a score other than 0 or 1 (its spread is measured) |
| `regenerations:<tier>[:<complexity>]` | answers asked again (same sticky key and query) within the window |
| `feedback_replaced` | feedback that replaced an earlier score for the same request |
| `feedback_unknown` | feedback queued while Redis took no writes whose request id turned out unknown |
| `cascade_checked:<complexity>` | cascade mode: requests whose small answer was checked |
| `escalations:<complexity>` | checked requests re-asked on the large tier |
| `escalation_failures` | escalations whose large tier failed before answering (the small answer was sent) |
| `escalated_small_ms_sum` | escalated requests: small request start to the decision, whole ms |
| `escalated_small_prompt_tokens`, `escalated_small_completion_tokens` | escalated requests: the small tier's tokens |
| `escalation_added_ms_sum`, `escalation_added_ms_bucket:le_<ms>` | escalated: request start to the large tier asked |
| `cascade_hold_ms_sum`, `cascade_hold_ms_count`, `cascade_hold_ms_bucket:le_<ms>` | checked streams: the hold |
| `cascade_explored` | answers the check would escalate, kept on the small tier to be rated (`cascade.explore_share`) |
| `signal_calls:<signal>:<outcome>` | plug-in signal (`verifier`) readings: `ok`, `timeout`, `error`, `skipped` |
| `signal_ms_sum:<signal>`, `signal_ms_bucket:<signal>:le_<ms>` | how long those readings took (skipped ones aside) |

Bucket bounds in ms: """
    + ", ".join(map(str, BUCKETS_MS))
    + """; `le_inf` holds the rest.
Read them with `redis-cli GET '{routeproxy}:period'`, then `redis-cli HGETALL '{routeproxy}:stats:0'`.
"""
)

PERIOD_RULES_MARKDOWN = """\
- Every replica process (a writer) keeps its own totals for the period it counts in and writes them to Redis as
  they stand, not as increments: its `totals:<p>:<writer>` hash, with a version number, and the difference
  from what it had written into `stats:<p>`, in one atomic step. Writing the same totals twice changes nothing,
  and an older version arriving late is ignored, so a flush retried after a timeout or a lost reply is counted
  once. `stats:<p>` is always the sum of the writers' totals (plus the feedback and regeneration counts the
  quality feature adds there).
- A period starts at a time on Redis's clock (`since:<p>`). A reset announces the next period to start one
  second ahead (two flush intervals) and answers once it has started; every replica learns of it at its next
  flush and switches at that instant, using its estimate of Redis's clock (taken at every flush), so a
  request that ends after the reset answered is counted in the new period on every replica, and one that
  ended before it in the old one. A replica that learns of a new period only after it started (it could not
  reach Redis in time) files what it counted since its last flush by time: in the old period when it all
  ended before the new period started, in the new one when it all began after, otherwise nowhere: it is
  dropped and the replica logs `counters.dropped`. Counts are never filed under a period they were not
  recorded in.
- A Redis that lost its data (restarted without persistence, flushed, or failed over to a copy that missed
  writes) is refilled by the replicas: the first flush that finds it knowing an older period than the replica
  (or none) restores the replica's period and its start, so the period never goes back; a writer whose
  totals Redis no longer has (its version is missing or older than the one it last wrote) writes all its
  totals again at once. Within two flush intervals the stats show every request the live replicas counted in
  the period, each once. What Redis alone held is lost: the totals of writers that had exited, crashed or
  restarted before the loss, the periods that had ended, feedback and regeneration counts, and the shared runtime
  config (while it is gone each replica routes no higher than the last ratio it saw, and the rollout controller
  writes its last known step back: see the quality page).
- `stale: true` in the stats means Redis did not answer this snapshot's flush or read; a request arriving
  during a flush does not make the stats stale.
"""


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """Key names of one namespace; the braces make them one hash tag (one Redis Cluster slot)."""

    namespace: str

    @property
    def prefix(self) -> str:
        return f"{{{self.namespace}}}:"

    @property
    def period(self) -> str:
        return self.prefix + "period"

    @property
    def config(self) -> str:
        return self.prefix + "config"

    @property
    def live(self) -> str:
        return self.prefix + "live"

    def replica(self, replica_id: str) -> str:
        return f"{self.prefix}replica:{replica_id}"

    def stats(self, period: int) -> str:
        return f"{self.prefix}stats:{period}"

    def since(self, period: int) -> str:
        return f"{self.prefix}since:{period}"

    def replicas(self, period: int) -> str:
        return f"{self.prefix}replicas:{period}"

    def writers(self, period: int) -> str:
        return f"{self.prefix}writers:{period}"

    def totals(self, period: int, writer: str) -> str:
        return f"{self.prefix}totals:{period}:{writer}"


# One round trip per flush: restores the period a replica knows when Redis knows an older one (or none), writes
# one writer's absolute totals for one period (a field's difference from what this writer had written goes into
# the period's sum in the same atomic step; a version at or below the stored one changes nothing), and answers
# with what the replica needs: whether Redis lacks this writer's earlier totals (then it writes them all at
# once), the current period and its start, Redis's clock and the runtime config. Every key shares the
# namespace's hash tag (one cluster slot); those named by period are built here from the prefix.
# KEYS: period, config, live.
# ARGV: 1 prefix, 2 writer, 3 replica id, 4 about (JSON or ''), 5 live ms, 6 old period ttl s,
#       7 known period (-1 none), 8 its start ms, 9 announced period (-1 none), 10 its start ms,
#       11, 12 the first and last outcome not yet acknowledged (ms; 0 none; the very first period starts at the
#       first), 13 period of the totals (-1: none sent), 14 their version, 15 the version last acknowledged,
#       16 '1' when these are all the writer's totals, then field, value, field, value...
# Answer: {status, period, its start, now, config}; status 0 nothing sent, 1 written (or already), 2 Redis lacks
# this writer's earlier totals (write them all), 3 not written: outcomes in them may be from after the next
# period started (the replica learns of it and files them by time first).
FLUSH_LUA = """
local prefix = ARGV[1]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
local function set_period(p, at)
  redis.call('SET', KEYS[1], p)
  redis.call('SET', prefix .. 'since:' .. p, at)
  current = p
end
local known, announced = tonumber(ARGV[7]), tonumber(ARGV[9])
if known >= 0 and known >= current and (known > current or redis.call('EXISTS', prefix .. 'since:' .. known) == 0) then
  redis.call('SET', prefix .. 'since:' .. known, ARGV[8])
  if known > current then redis.call('SET', KEYS[1], known) current = known end
end
if announced > current then set_period(announced, ARGV[10]) end
if current < 0 then
  local first = tonumber(ARGV[11])
  set_period(0, (first > 0 and first < now) and first or now)
end
local current_start = tonumber(redis.call('GET', prefix .. 'since:' .. current) or '0') or 0
local status = 0
local period = tonumber(ARGV[13])
local next_start = tonumber(redis.call('GET', prefix .. 'since:' .. (period + 1)) or '0') or 0
if period >= 0 and period < current and tonumber(ARGV[12]) > 0 and tonumber(ARGV[12]) >= next_start then
  status = 3
elseif period >= 0 then
  local writers = prefix .. 'writers:' .. period
  local stored = tonumber(redis.call('HGET', writers, ARGV[2]) or '0')
  local version = tonumber(ARGV[14])
  if ARGV[16] ~= '1' and stored < tonumber(ARGV[15]) then
    status = 2
  else
    status = 1
    if version > stored then
      local totals, stats = prefix .. 'totals:' .. period .. ':' .. ARGV[2], prefix .. 'stats:' .. period
      local names = {}
      for i = 17, #ARGV, 2 do names[#names + 1] = ARGV[i] end
      if #names > 0 then
        local old = redis.call('HMGET', totals, unpack(names))
        local changed = {}
        for j, name in ipairs(names) do
          local new, before = tonumber(ARGV[16 + 2 * j]), tonumber(old[j] or '0')
          if new ~= before or not old[j] then  -- a field counted at 0 exists, as HINCRBY by 0 makes it
            redis.call('HINCRBY', stats, name, new - before)
            changed[#changed + 1] = name
            changed[#changed + 1] = new
          end
        end
        if #changed > 0 then redis.call('HSET', totals, unpack(changed)) end
      end
      redis.call('HSET', writers, ARGV[2], version)
      local replicas = prefix .. 'replicas:' .. period
      redis.call('SADD', replicas, ARGV[3])
      if period ~= current then
        for _, key in ipairs({stats, replicas, totals, writers}) do
          if redis.call('TTL', key) == -1 then redis.call('EXPIRE', key, ARGV[6]) end
        end
      end
    end
  end
end
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[3], now, ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 3600000)
  redis.call('SET', prefix .. 'replica:' .. ARGV[3], ARGV[4], 'PX', ARGV[5])
end
return {status, current, current_start, now, redis.call('HGETALL', KEYS[2])}
"""

# Announces period current + 1 to start ``ARGV[2]`` ms from now, unless a period is already announced and not yet
# started (two resets at once make one); the old period's keys expire. Answers the period, its start and the time.
RESET_LUA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local prefix = ARGV[1]
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local start = tonumber(redis.call('GET', prefix .. 'since:' .. current) or '0') or 0
if start <= now then
  for _, name in ipairs({'stats:', 'replicas:', 'since:', 'writers:'}) do
    redis.call('EXPIRE', prefix .. name .. current, ARGV[3])
  end
  for _, writer in ipairs(redis.call('HKEYS', prefix .. 'writers:' .. current)) do
    redis.call('EXPIRE', prefix .. 'totals:' .. current .. ':' .. writer, ARGV[3])
  end
  current = current + 1
  start = now + tonumber(ARGV[2])
  redis.call('SET', KEYS[1], current)
  redis.call('SET', prefix .. 'since:' .. current, start)
end
return {current, start, now}
"""
