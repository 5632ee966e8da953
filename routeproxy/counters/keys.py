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
| `{routeproxy}:epoch` | string | a random id of this Redis dataset, made when Redis is found empty |
| `{routeproxy}:since:<p>` | string | when period `<p>` starts counting (ms since 1970 on Redis's clock) |
| `{routeproxy}:stats:<p>` | hash | the counters of period `<p>` (fields below) |
| `{routeproxy}:replicas:<p>` | set | ids of the replicas that flushed counts in period `<p>` |
| `{routeproxy}:seq` | hash | `<replica id>:<process token>` -> last applied flush number |
| `{routeproxy}:config` | hash | shared runtime settings `ab_test_ratio`, `enable_model_routing`, `routing_mode` |
| `{routeproxy}:live` | sorted set | replica ids, scored by their last flush (ms on Redis's clock) |
| `{routeproxy}:replica:<id>` | string | that replica's own routing settings (JSON), expiring unless it flushes |
| `{routeproxy}:decision:<id>` | hash | one request's routing decision, for feedback (fields below) |
| `{routeproxy}:recent:<key>` | string | `<tier>\\|<complexity>\\|<request id>` of the last answer to `<key>` |
| `{routeproxy}:rollout` | hash | the rollout controller's `state` (JSON) and `version` (compare-and-set) |

In `{routeproxy}:config`, `enable_model_routing` is `true` or `false`, `routing_mode` is `classify` or
`cascade`; a missing field means each
replica's own setting. Keys of a period that a reset left behind expire after 7 days. `<id>` is the
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
- A period starts at a time on Redis's clock (`since:<p>`). A reset announces the next period to start one
  second ahead (two flush intervals) and answers once it has started; every replica learns of it at its next
  flush and switches at that instant, using its estimate of Redis's clock (taken at every flush), so a
  request that ends after the reset answered is counted in the new period on every replica, and one that
  ended before it in the old one.
- Every batch of counts carries the period and the Redis dataset (`epoch`) it was recorded under and the
  times of its first and last outcome. The flush script files it under its own period when that is current,
  or when the batch ended before the next period started; under the current period when the batch began
  after the current period started (a replica that learned late, or one that counted before Redis first
  answered); otherwise nowhere: it is dropped and the replica logs `counters.dropped`. Counts are never
  filed under a period they were not recorded in.
- A Redis found empty (no `epoch`: restarted without persistence, or flushed) gets a new epoch. If a replica
  knew an earlier period, a new period numbered above every period it knew is announced as after a reset, so
  the period never goes back and a reused number never meets stale keys. Counts recorded under the lost
  dataset (before and during the outage) are dropped, not filed in the new period: it shows exactly the
  requests that ended after it started. A replica that knew a period at least as new as the one the empty
  Redis was given moves it on once more.
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
    def epoch(self) -> str:
        return self.prefix + "epoch"

    @property
    def config(self) -> str:
        return self.prefix + "config"

    @property
    def seq(self) -> str:
        return self.prefix + "seq"

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


# One round trip per flush: settles the epoch and the period (PERIOD_RULES_MARKDOWN), applies one batch at most
# once (the writer's sequence number is checked and stored in the same atomic step), files it by the rules, and
# answers with what the replica needs to know: the epoch, the current period and its start, Redis's clock and the
# runtime config. Every key shares the namespace's hash tag (one cluster slot); those named by period are built
# here from the prefix, since the current period is only known inside the script.
FLUSH_LUA = """
local prefix = ARGV[1]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local announce = tonumber(ARGV[13])
local epoch = redis.call('GET', KEYS[2])
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
local known = tonumber(ARGV[10])
local function start_period(p, at)
  redis.call('SET', KEYS[1], p)
  redis.call('SET', prefix .. 'since:' .. p, at)
  current = p
end
if not epoch then
  epoch = ARGV[12]
  redis.call('SET', KEYS[2], epoch)
  if current < 0 and known >= 0 then
    start_period(known + 1, now + announce)
  elseif current < 0 then
    -- the very first period: it began with the first outcome counted, by a replica that came up before Redis
    local first = tonumber(ARGV[6])
    start_period(0, (tonumber(ARGV[3]) > 0 and ARGV[4] == '' and first < now) and first or now)
  end
elseif ARGV[11] ~= '' and ARGV[11] ~= epoch and known >= current then
  start_period(known + 1, now + announce)
end
local current_start = tonumber(redis.call('GET', prefix .. 'since:' .. current) or '0') or 0
local filed = -2
local seq = tonumber(ARGV[3])
if seq > 0 and seq > tonumber(redis.call('HGET', KEYS[4], ARGV[2]) or '0') then
  redis.call('HSET', KEYS[4], ARGV[2], seq)
  redis.call('EXPIRE', KEYS[4], ARGV[9])
  local period, first, last = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  filed = -1
  if ARGV[4] == epoch and period == current then
    filed = current
  elseif ARGV[4] == epoch and period >= 0 and period < current
      and last < (tonumber(redis.call('GET', prefix .. 'since:' .. (period + 1)) or '0') or 0) then
    filed = period
  elseif first >= current_start then
    filed = current
  end
  if filed >= 0 then
    local stats, replicas = prefix .. 'stats:' .. filed, prefix .. 'replicas:' .. filed
    for i = 16, #ARGV, 2 do
      redis.call('HINCRBY', stats, ARGV[i], ARGV[i + 1])
    end
    redis.call('SADD', replicas, ARGV[8])
    if filed ~= current then
      for _, key in ipairs({stats, replicas}) do
        if redis.call('TTL', key) == -1 then redis.call('EXPIRE', key, ARGV[9]) end
      end
    end
  end
end
if ARGV[14] ~= '' then
  redis.call('ZADD', KEYS[5], now, ARGV[8])
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - 3600000)
  redis.call('SET', prefix .. 'replica:' .. ARGV[8], ARGV[14], 'PX', ARGV[15])
end
return {filed, epoch, current, current_start, now, redis.call('HGETALL', KEYS[3])}
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
  for _, name in ipairs({'stats:', 'replicas:', 'since:'}) do
    redis.call('EXPIRE', prefix .. name .. current, ARGV[3])
  end
  current = current + 1
  start = now + tonumber(ARGV[2])
  redis.call('SET', KEYS[1], current)
  redis.call('SET', prefix .. 'since:' .. current, start)
end
return {current, start, now}
"""
