"""The rollout state in Redis (the interface is in controller.py), shared by every replica, and the clock the
controller reads: Redis's ``TIME``, read with the state in one round trip."""

from __future__ import annotations

import orjson
from redis.exceptions import RedisError

from routeproxy.counters.redis_store import redis_client
from routeproxy.errors import CounterStoreUnavailable
from routeproxy.quality.controller import RolloutStore
from routeproxy.quality.rollout import RolloutState

_REDIS_FAILURES = (RedisError, OSError, TimeoutError)


# Compare-and-set: writes the state only if the stored version is the one the caller read ('' = none stored yet),
# and sets the shared ab_test_ratio in the same atomic step.
_SAVE_LUA = """
local version = redis.call('HGET', KEYS[1], 'version') or ''
if version ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'state', ARGV[3])
redis.call('HSET', KEYS[2], 'ab_test_ratio', ARGV[4])
return 1
"""


# The state and Redis's clock in one call (a script: a cluster client cannot pipeline TIME, which names no key).
_READ_LUA = """
local now = redis.call('TIME')
return {now[1], now[2], redis.call('HGET', KEYS[1], 'state')}
"""


class RedisRolloutStore(RolloutStore):
    """``{<namespace>}:rollout``: a hash of ``state`` (JSON) and ``version``."""

    def __init__(self, url: str, namespace: str) -> None:
        self.key = f"{{{namespace}}}:rollout"
        self.config_key = f"{{{namespace}}}:config"
        self._client = redis_client(url)
        self._save = self._client.register_script(_SAVE_LUA)
        self._read = self._client.register_script(_READ_LUA)

    async def read(self) -> tuple[RolloutState | None, float]:
        try:
            seconds, micros, raw = await self._read(keys=[self.key])
        except _REDIS_FAILURES as exc:
            raise CounterStoreUnavailable(f"cannot read the rollout state: Redis did not answer ({exc})") from exc
        state = None if raw is None else RolloutState.from_json(orjson.loads(raw))
        return state, int(seconds) + int(micros) / 1e6

    async def save(self, state: RolloutState, expected: int | None, ratio: float) -> bool:
        args = ["" if expected is None else str(expected), str(state.version), orjson.dumps(state.to_json()).decode()]
        try:
            return bool(await self._save(keys=[self.key, self.config_key], args=[*args, repr(float(ratio))]))
        except _REDIS_FAILURES as exc:
            raise CounterStoreUnavailable(f"cannot store the rollout state: Redis did not answer ({exc})") from exc

    async def close(self) -> None:
        await self._client.aclose()
