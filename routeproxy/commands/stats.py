"""`routeproxy stats`: the shared routing statistics, read from Redis (or this process's memory store)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from routeproxy.commands import settings_for
from routeproxy.settings import RoutingMode, Settings
from routeproxy.settings.redaction import redacted_url


def cmd_stats(args: argparse.Namespace) -> int:
    """The shared statistics as a table: read from Redis, or from a running proxy when counters are in memory."""
    import asyncio

    import httpx

    from routeproxy.api.logs import configure_logging
    from routeproxy.counters.stats import format_stats_table
    from routeproxy.errors import CounterStoreUnavailable
    from routeproxy.quality.analysis import format_ab_lines, format_rollout_lines

    overrides = {"counters.redis_url": args.redis_url} if args.redis_url else {}
    settings = settings_for(args, overrides)
    configure_logging(settings.logging)  # log lines go to stderr, so --json output stays JSON
    if settings.counters.redis_url:
        try:
            stats = asyncio.run(_stats_from_redis(settings))
        except CounterStoreUnavailable as exc:
            print(f"routeproxy stats: cannot read {redacted_url(settings.counters.redis_url)}: {exc}", file=sys.stderr)
            return 1
    else:
        url = args.proxy.rstrip("/") + "/v1/model-routing/stats"
        try:
            response = httpx.get(url, timeout=10, trust_env=False)
        except httpx.HTTPError as exc:
            print(
                f"routeproxy stats: no ROUTEPROXY_REDIS_URL, and the proxy at {url} did not answer: {exc}",
                file=sys.stderr,
            )
            return 1
        if response.status_code != 200:
            print(f"routeproxy stats: {url} answered {response.status_code}", file=sys.stderr)
            return 1
        stats = response.json()
    if args.json:
        print(orjson.dumps(stats, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_stats_table(stats))
        for caveat in stats.get("provenance", {}).get("caveats", []):
            print(f"note: {caveat}")
        if "ab_analysis" in stats:
            print("\n".join(["", *format_ab_lines(stats["ab_analysis"]), *format_rollout_lines(stats["rollout"])]))
    return 0


def _in_force(name: str, shared: Any, replicas: dict[str, dict[str, Any]], own: Any) -> Any:
    """A routing setting as the serving replicas apply it: the shared runtime value, else the replicas' own."""
    if shared is not None:
        return shared
    values = [about[name] for about in replicas.values() if name in about]
    if not values:
        print(
            f"routeproxy stats: no replica has flushed in the last few seconds; {name} is this machine's setting",
            file=sys.stderr,
        )
        return own
    if len(set(values)) > 1:
        print(f"routeproxy stats: replicas disagree on {name}: {sorted(set(map(str, values)))}", file=sys.stderr)
    return max(set(values), key=values.count)


async def _stats_from_redis(settings: Settings) -> dict[str, Any]:
    from routeproxy.api.admin import stats_json
    from routeproxy.counters.redis_store import RedisCounterStore
    from routeproxy.quality.open import open_rollout

    config = settings.counters
    assert config.redis_url is not None
    store = RedisCounterStore(
        config.redis_url, config.namespace, settings.tier_labels, replica_id="routeproxy-stats-cli"
    )
    rollout = open_rollout(settings, store)
    try:
        snapshot, shared, replicas = await store.inspect()
        await rollout.refresh()
    finally:
        await rollout.close()
        await store.aclose()
    return stats_json(
        settings,
        snapshot,
        enabled=_in_force("enable_model_routing", shared.enable_model_routing, replicas, settings.routing.enabled),
        ratio=_in_force("ab_test_ratio", shared.ab_test_ratio, replicas, settings.routing.ab_test_ratio),
        rollout=rollout,
        queued=0,
        routing_mode=RoutingMode(_in_force("routing_mode", shared.routing_mode, replicas, settings.routing.mode.value)),
    )
