"""The response cache measured side by side in one run: a hit's latency against the proxy's own overhead on a miss
and against the upstream direct, hits per second, in memory and in Redis; 100 identical streams sent at once, with
coalescing and with the cache off; the memory store's bound under 100,000 distinct keys."""

from __future__ import annotations

import shutil
import uuid
from typing import Any

import httpx

from routeproxy.bench.loadgen import percentile, run_async, run_load
from routeproxy.bench.procs import Proc, proxy_env, spawn, spawn_redis
from routeproxy.bench.run import _FAST, Target, measure
from routeproxy.bench.session import Session
from routeproxy.bench.table import Table

BURST = 100
DISTINCT_KEYS = 100_000
MEMORY_BOUND = 16 * 1024 * 1024  # the memory store's bound in the distinct-keys run (cache.max_bytes)


def _body(prompt: str, *, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "temperature": 0}
    if stream:
        body["stream"] = True
    return body


def _redis(session: Session) -> str | None:
    """The run's Redis: --redis-url, else a redis-server of its own when one is on PATH (None: no Redis rows)."""
    if session.options.redis_url:
        return session.options.redis_url
    if shutil.which("redis-server") is None:
        return None
    proc = session._keep(spawn_redis(None))  # not pinned: it shares the cores as the upstream does
    return f"redis://127.0.0.1:{proc.port}/0"


def _proxy(session: Session, label: str, upstream: str, redis_url: str | None, **env: str) -> Proc:
    key = f"cache-proxy:{label}"
    if key not in session.procs:
        environment = proxy_env({"small": upstream, "large": upstream}, redis_url, **env)
        proc = spawn(f"proxy ({label})", ["routeproxy", "serve"], environment, session.cores.proxy(), "/healthz")
        session.procs[key] = session._keep(proc)
    return session.procs[key]


def _stats(proc: Proc) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"http://127.0.0.1:{proc.port}/v1/model-routing/stats", timeout=10).json()
    return answer


def _upstream_requests(port: int) -> int:
    return int(httpx.get(f"http://127.0.0.1:{port}/_sim/stats", timeout=10).json()["requests"])


def workload_cache(session: Session) -> Table:
    requests, duration = session.cap(2000, 10.0)
    host, port, base, upstream = session.upstream("sim")
    sim_url = f"http://{host}:{port}{base}"
    redis_url = _redis(session)
    stores = {"memory": None, **({"redis": redis_url} if redis_url else {})}
    cached = {name: _proxy(session, name, sim_url, url, ROUTEPROXY_CACHE="true") for name, url in stores.items()}
    plain = _proxy(session, "off", sim_url, None)
    table = Table(
        "cache: a hit against a miss and direct (concurrency 1), hits at concurrency 32, coalescing",
        ("path", "conc", "requests", "req/s", "p50 ms", "p99 ms", "errors", "proxy CPU ms/req", "peak RSS MB"),
    )
    prompt = "What is the capital of France?"
    direct = Target("direct", host, port, f"{base}/chat/completions", session.options.small_model)
    targets = [direct, Target("proxy, cache off (miss overhead)", "127.0.0.1", plain.port, "/v1/chat/completions",
                              "auto", plain)]  # fmt: skip
    for name, proc in cached.items():
        targets.append(Target(f"proxy, hit ({name})", "127.0.0.1", proc.port, "/v1/chat/completions", "auto", proc))
    runs = []
    for target in targets:
        run = measure(target, target.request(_body(prompt), _FAST), concurrency=1, requests=requests, duration=duration)
        runs.append(run)
    for name, proc in cached.items():
        target = Target(f"proxy, hit ({name})", "127.0.0.1", proc.port, "/v1/chat/completions", "auto", proc)
        runs.append(measure(target, target.request(_body(prompt), _FAST), concurrency=32, requests=requests * 5,
                            duration=duration))  # fmt: skip
    for run in runs:
        errors = int(run["failures"]) + int(run["answered"]) - int(run["ok"])
        table.rows.append((run["path"], run["concurrency"], run["answered"], run["rate"], run["p50_ms"], run["p99_ms"],
                           errors, run["proxy_cpu_ms_per_request"], run["proxy_peak_rss_mb"]))  # fmt: skip
    by_path = {(run["path"], run["concurrency"]): run for run in runs}
    direct_run, miss_run = by_path["direct", 1], by_path[targets[1].label, 1]
    figures: dict[str, Any] = {
        "miss_overhead_p50_ms": miss_run["p50_ms"] - direct_run["p50_ms"],
        "direct_p50_ms": direct_run["p50_ms"],
    }
    for name in cached:
        hit = by_path[f"proxy, hit ({name})", 1]
        figures[f"hit_{name}_p50_ms"] = hit["p50_ms"]
        figures[f"hit_{name}_p99_ms"] = hit["p99_ms"]
        figures[f"hit_{name}_vs_direct_p50"] = hit["p50_ms"] / direct_run["p50_ms"]
        figures[f"hits_per_s_{name}_c32"] = by_path[f"proxy, hit ({name})", 32]["rate"]
    model = session.options.small_model
    burst = {name: _burst(p, port, model) for name, p in {"cache on": cached["memory"], "cache off": plain}.items()}
    count = DISTINCT_KEYS if session.options.requests is None else session.options.requests
    keys, keys_off = _distinct_keys(session, count, cache=True), _distinct_keys(session, count, cache=False)
    table.notes += [
        f"upstream: {upstream}; 17-token answers; hits repeat one prompt at temperature 0 (the first request of each "
        "proxy's warm-up is its one miss)",
        f"a hit (p50): memory {figures.get('hit_memory_p50_ms', float('nan')):.3f} ms"
        + (f", redis {figures['hit_redis_p50_ms']:.3f} ms" if "hit_redis_p50_ms" in figures else ", no redis-server")
        + f"; the proxy's overhead on a miss (p50, cache off minus direct): {figures['miss_overhead_p50_ms']:.3f} ms; "
        f"direct to the upstream: {figures['direct_p50_ms']:.3f} ms",
        *(
            f"{BURST} identical streams at once, {name}: {result['upstream_calls']} upstream call(s), "
            f"{result['distinct_bodies']} distinct bodies among {result['answered']} answers ({result['ok']} ok); "
            f"the proxy counted {result['coalesced']} coalesced, {result['misses']} miss(es)"
            for name, result in burst.items()
        ),
        f"memory store, {keys['keys']:,} distinct keys, bound {MEMORY_BOUND / 2**20:.0f} MiB: holds "
        f"{keys['bytes_now'] / 2**20:.1f} MiB in {keys['entries_now']:,} entries after {keys['evictions']:,} "
        f"evictions; proxy RSS {keys['rss_before_mb']:.1f} -> {keys['rss_after_mb']:.1f} MB, the same traffic with the "
        f"cache off {keys_off['rss_before_mb']:.1f} -> {keys_off['rss_after_mb']:.1f} MB",
    ]
    table.data = {
        "runs": runs,
        "figures": figures,
        "burst": burst,
        "distinct_keys": keys,
        "distinct_keys_off": keys_off,
    }
    return table


def _burst(proc: Proc, sim_port: int, model: str) -> dict[str, Any]:
    """``BURST`` identical streamed requests sent at once (the upstream waits 200 ms before its first token), naming
    the simulated tier's model so none is routed to a tier the single simulator does not serve."""
    target = Target("burst", "127.0.0.1", proc.port, "/v1/chat/completions", model, proc)
    request = target.request(
        _body(f"Burst {uuid.uuid4().hex}: name the planets.", stream=True),
        {"x-sim-tokens": "17", "x-sim-ttft-ms": "200", "x-sim-token-ms": "10"},
    )
    before = _upstream_requests(sim_port)
    counted = _stats(proc)["cache"]
    result = run_async(
        run_load("127.0.0.1", proc.port, request, concurrency=BURST, max_requests=BURST, max_duration=30,
                 keep_body=True)
    )  # fmt: skip
    calls = _upstream_requests(sim_port) - before
    after = _stats(proc)["cache"]
    return {
        "answered": len(result.samples),
        "ok": result.ok,
        "upstream_calls": calls,
        "distinct_bodies": len({sample.body for sample in result.samples}),
        "total_p50_ms": percentile([s.total_s for s in result.samples], 50) * 1000,
        "coalesced": after.get("coalesced", 0) - counted.get("coalesced", 0),
        "misses": after.get("misses", 0) - counted.get("misses", 0),
    }


def _distinct_keys(session: Session, count: int, *, cache: bool) -> dict[str, Any]:
    """``count`` distinct cacheable requests through a proxy whose memory store holds ``MEMORY_BOUND`` bytes (or one
    with the cache off, for the RSS the rest of the proxy grows by: the decisions it remembers for feedback)."""
    host, port, base, _ = session.upstream("static")
    env = {"ROUTEPROXY_CACHE": "true", "ROUTEPROXY_CACHE_MAX_BYTES": str(MEMORY_BOUND)} if cache else {}
    proc = _proxy(
        session, f"distinct keys, cache {'on' if cache else 'off'}", f"http://{host}:{port}{base}", None, **env
    )
    target = Target("keys", "127.0.0.1", proc.port, "/v1/chat/completions", "auto", proc)
    rss_before = proc.memory_kb() / 1024
    sent = [target.request(_body(f"Question number {number}?"), {}) for number in range(count)]
    result = run_async(run_load("127.0.0.1", proc.port, sent, concurrency=32, max_requests=count, max_duration=300))
    found = _stats(proc)["cache"]
    return {
        "keys": count,
        "answered": len(result.samples),
        "ok": result.ok,
        "bytes_now": found.get("bytes_now"),
        "entries_now": found.get("entries_now"),
        "evictions": found.get("evictions"),
        "bound": MEMORY_BOUND,
        "within_bound": found.get("bytes_now", 0) <= MEMORY_BOUND,
        "rss_before_mb": rss_before,
        "rss_after_mb": proc.memory_kb() / 1024,
    }
