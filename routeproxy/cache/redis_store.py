"""The Redis cache store, shared by every replica: entries with a time to live, under a budget of bytes.

Keys (one hash tag per namespace, so one Redis Cluster slot; the counters' keys have another):

| key | type | holds |
| --- | --- | --- |
| `{<namespace>:cache}:e:<digest>:<variant>` | string | one entry (``entry.encode``), expiring after its ttl |
| `{<namespace>:cache}:lru` | sorted set | entry names scored by their last use (ms on the replica's clock) |
| `{<namespace>:cache}:size` | hash | entry name -> the bytes it is counted for |
| `{<namespace>:cache}:totals` | hash | `bytes`, `entries` (counted now) and `evictions` (since the namespace began) |

The budget (``cache.max_bytes``) is kept by the store script itself, not by Redis's ``maxmemory``: the counters
share this Redis, and Redis's default ``noeviction`` would otherwise let a full cache refuse their writes. Each entry
is counted for its bytes, its name and ``ENTRY_OVERHEAD`` (Redis's own bookkeeping for the three keys that hold it,
measured); storing evicts the least recently used entries until the new one fits. An entry that expired is still
counted until the script meets it (it reaps a few expired names at every store), so the budget errs on the safe side.

Failure policy: short timeouts (``REDIS_TIMEOUT_S``) and no retries; any Redis error becomes ``CacheUnavailable`` and
the request goes without the cache; for ``RETRY_AFTER_S`` after a failure the store does not call Redis at all.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio
from redis.exceptions import RedisError

from routeproxy.cache.store import CacheStore, CacheUnavailable, StoreFigures

# Redis's bytes per entry beyond its value and name, and 1/32 of the value for its allocator's size classes: measured
# 458 bytes for a 32-byte value (counted 467), 20,888 for a 20,000-byte one (counted 21,059) (DESIGN notes).
ENTRY_OVERHEAD = 400
REDIS_TIMEOUT_S = 0.25
RETRY_AFTER_S = 1.0

_PUT_LUA = """
local lru, sizes, totals = KEYS[1], KEYS[2], KEYS[3]
local prefix, name, data = ARGV[1], ARGV[2], ARGV[3]
local ttl_ms, now, budget = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local overhead, max_ttl_ms = tonumber(ARGV[7]), tonumber(ARGV[8])
local size = #data + math.floor(#data / 32) + #name + overhead
if size > budget then return {0, 0} end
local function forget(member)
  local old = redis.call('HGET', sizes, member)
  if old then
    redis.call('HDEL', sizes, member)
    redis.call('HINCRBY', totals, 'bytes', -tonumber(old))
    redis.call('HINCRBY', totals, 'entries', -1)
  end
  redis.call('ZREM', lru, member)
end
forget(name)
for _, member in ipairs(redis.call('ZRANGEBYSCORE', lru, '-inf', now - max_ttl_ms, 'LIMIT', 0, 32)) do
  forget(member)
end
local evicted = 0
while tonumber(redis.call('HGET', totals, 'bytes') or '0') + size > budget do
  local oldest = redis.call('ZRANGE', lru, 0, 0)
  if #oldest == 0 then break end
  evicted = evicted + redis.call('DEL', prefix .. oldest[1])
  forget(oldest[1])
end
redis.call('SET', prefix .. name, data, 'PX', ttl_ms)
redis.call('ZADD', lru, now, name)
redis.call('HSET', sizes, name, size)
redis.call('HINCRBY', totals, 'bytes', size)
redis.call('HINCRBY', totals, 'entries', 1)
if evicted > 0 then redis.call('HINCRBY', totals, 'evictions', evicted) end
return {1, evicted}
"""

_GET_LUA = """
for i = 3, #ARGV do
  local value = redis.call('GET', ARGV[1] .. ARGV[i])
  if value then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[i])
    return {ARGV[i], value}
  end
end
return false
"""

_FAILURES = (RedisError, OSError, TimeoutError)


class RedisCacheStore(CacheStore):
    store_name = "redis"

    def __init__(self, url: str, namespace: str, max_bytes: int, max_ttl_s: float) -> None:
        tag = "{" + namespace + ":cache}"
        self.prefix = f"{tag}:e:"
        self.keys = [f"{tag}:lru", f"{tag}:size", f"{tag}:totals"]
        self.max_bytes = max_bytes
        self.max_ttl_ms = round(max_ttl_s * 1000)
        # Bytes in and out (entries are binary); timeouts short, as a lookup is on the request path.
        self._client: Any = redis.asyncio.from_url(
            url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S, retry_on_timeout=False
        )
        self._put = self._client.register_script(_PUT_LUA)
        self._down_until = 0.0
        self._get = self._client.register_script(_GET_LUA)

    async def get(self, names: Sequence[str]) -> tuple[str, bytes] | None:
        self._check_up()
        try:
            found = await self._get(keys=self.keys[:1], args=[self.prefix, _now_ms(), *names])
        except _FAILURES as exc:
            raise self._down(exc) from exc
        if not found:
            return None
        name, data = found
        return name.decode(), bytes(data)

    async def put(self, name: str, data: bytes, ttl_s: float) -> int:
        self._check_up()
        ttl_ms = max(1, round(ttl_s * 1000))
        args: list[bytes | str | int] = [self.prefix, name, data, ttl_ms, _now_ms(), self.max_bytes, ENTRY_OVERHEAD]
        try:
            _, evicted = await self._put(keys=self.keys, args=[*args, self.max_ttl_ms])
        except _FAILURES as exc:
            raise self._down(exc) from exc
        return int(evicted)

    def _check_up(self) -> None:
        if self._down_until and time.monotonic() < self._down_until:
            raise CacheUnavailable("Redis failed less than a second ago; the cache is off until it is retried")

    def _down(self, exc: BaseException) -> CacheUnavailable:
        """After a failure Redis is left alone for ``RETRY_AFTER_S``: while it is paused or gone, requests do not
        each wait out a timeout."""
        self._down_until = time.monotonic() + RETRY_AFTER_S
        return CacheUnavailable(repr(exc))

    async def figures(self) -> StoreFigures:
        try:
            totals = await self._client.hgetall(self.keys[2])
        except _FAILURES as exc:
            raise CacheUnavailable(repr(exc)) from exc
        return StoreFigures(
            bytes_now=int(totals.get(b"bytes", 0)),
            entries_now=int(totals.get(b"entries", 0)),
            evictions=int(totals.get(b"evictions", 0)),
        )

    async def close(self) -> None:
        await self._client.aclose()


def _now_ms() -> int:
    return int(time.time() * 1000)
