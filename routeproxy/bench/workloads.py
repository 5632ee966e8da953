"""``routeproxy bench``: the proxy against a fast local upstream, direct versus through the proxy.

The proxy under test is its own process (``python -m routeproxy serve``, routing on, counters on), pinned to
core 0 when the machine has two cores or more; the upstreams and this process, which drives the load
(``routeproxy.bench.loadgen``, or ``wrk`` for plain throughput when it is on PATH), share the other cores. The proxy's
CPU time and peak RSS are read from /proc before and after each run. Every run is bounded by a request count
and a duration, and only loopback addresses are ever targeted.

Upstreams: the Starlette simulator (``python -m routeproxy simulate``) for the latency, paced and scenario
workloads; for throughput, stream and memory a static raw-asyncio upstream (``python -m routeproxy.bench.loadgen``),
because the simulator cannot keep up with a proxy aiming at thousands of requests per second. ``--upstream URL``
replaces both (but not the scenario's two simulated tiers).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import orjson

from routeproxy.bench.cache import workload_cache
from routeproxy.bench.cascade import workload_cascade
from routeproxy.bench.loadgen import LoadResult, run_async, run_load
from routeproxy.bench.run import _FAST, Target, measure, measure_alternating, measure_wrk
from routeproxy.bench.scenario import workload_scenario
from routeproxy.bench.session import WORKLOADS, BenchOptions, Session, parse_upstream
from routeproxy.bench.table import Table

# A short factual question: SIMPLE under the default rules, so with routing on it goes to the small tier,
# whose model id the single upstream serves.
_PROMPT = "What is the capital of France?"


def chat_body(*, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": _PROMPT}]}
    if stream:
        body["stream"] = True
    return body


_RUN_COLUMNS = ("path", "conc", "requests", "req/s", "p50 ms", "p99 ms", "errors", "proxy CPU ms/req", "peak RSS MB")
_STREAM_COLUMNS = (
    "path",
    "conc",
    "streams",
    "streams/s",
    "TTFB p50",
    "TTFB p99",
    "gap p50",
    "gap p99",
    "total p99",
    "chunks",
    "proxy CPU ms/req",
    "peak RSS MB",
)


def _errors(run: dict[str, Any]) -> int:
    return int(run["failures"]) + int(run["answered"]) - int(run["ok"])


def _run_row(run: dict[str, Any]) -> tuple[Any, ...]:
    return (
        run["path"],
        run["concurrency"],
        run["answered"],
        run["rate"],
        run["p50_ms"],
        run["p99_ms"],
        _errors(run),
        run["proxy_cpu_ms_per_request"],
        run["proxy_peak_rss_mb"],
    )


def _stream_row(run: dict[str, Any]) -> tuple[Any, ...]:
    return (
        run["path"],
        run["concurrency"],
        run["answered"],
        run["rate"],
        run["ttfb_p50_ms"],
        run["ttfb_p99_ms"],
        run["gap_p50_ms"],
        run["gap_p99_ms"],
        run["p99_ms"],
        run["chunks_per_answer"],
        run["proxy_cpu_ms_per_request"],
        run["proxy_peak_rss_mb"],
    )


def _error_notes(runs: Sequence[dict[str, Any]]) -> list[str]:
    return [
        f"{run['path']}: {_errors(run)} errors (first: {run.get('first_failure') or 'non-2xx status'})"
        for run in runs
        if _errors(run)
    ]


def workload_latency(session: Session) -> Table:
    if session.options.redis_url:
        return _latency_side_by_side(session)
    requests, duration = session.cap(2000, 15.0)
    direct, proxy, upstream = session.targets("sim")
    body = chat_body(stream=False)
    runs = [
        measure(target, target.request(body, _FAST), concurrency=1, requests=requests, duration=duration)
        for target in (direct, proxy)
    ]
    added = {q: runs[1][f"{q}_ms"] - runs[0][f"{q}_ms"] for q in ("p50", "p99")}
    table = Table("latency: concurrency 1, non-streaming", _RUN_COLUMNS, [_run_row(run) for run in runs])
    table.rows.append(("added by proxy", "", "", "", added["p50"], added["p99"], "", "", ""))
    table.notes += [
        f"upstream: {upstream}; 17-token answer, no delay",
        "added latency = proxy percentile - direct percentile (targets: p50 <= 0.35 ms, p99 <= 1 ms)",
        *_error_notes(runs),
    ]
    table.data = {"direct": runs[0], "proxy": runs[1], "added_ms": added}
    return table


ROUNDS = 3  # side by side: each target runs this many times, in turn


def _latency_side_by_side(session: Session) -> Table:
    """Direct, through a proxy counting in memory and through one counting into Redis, in alternating rounds:
    what counting into Redis adds to the latency, measured against the same machine at the same time."""
    requests, duration = session.cap(3000, 30.0)
    direct, with_redis, upstream = session.targets("sim")
    memory_proc = session.proxy("sim", memory=True)
    in_memory = Target("proxy, counters in memory", "127.0.0.1", memory_proc.port, with_redis.path, "auto", memory_proc)
    with_redis = Target("proxy, counters in Redis", with_redis.host, with_redis.port, with_redis.path, "auto",
                        with_redis.proxy)  # fmt: skip
    runs = measure_alternating(
        (direct, in_memory, with_redis), chat_body(stream=False), rounds=ROUNDS, requests=requests, duration=duration
    )
    added = {run["path"]: {q: run[f"{q}_ms"] - runs[0][f"{q}_ms"] for q in ("p50", "p99")} for run in runs[1:]}
    memory_added, redis_added = added[in_memory.label], added[with_redis.label]
    ratio = redis_added["p99"] / memory_added["p99"] if memory_added["p99"] > 0 else math.nan
    table = Table("latency: concurrency 1, non-streaming, counters side by side", _RUN_COLUMNS,
                  [_run_row(run) for run in runs])  # fmt: skip
    for label, values in added.items():
        table.rows.append((f"added by {label}", "", "", "", values["p50"], values["p99"], "", "", ""))
    table.notes += [
        f"upstream: {upstream}; 17-token answer, no delay",
        f"{ROUNDS} alternating rounds per path; added = proxy percentile - direct percentile",
        f"added p99 with Redis / added p99 in memory: {ratio:.2f}",
        "Redis: " + ("a private redis-server on the other cores" if session.options.redis_url == "local" else "given"),
        *_error_notes(runs),
    ]
    table.data = {"runs": runs, "added_ms": added, "p99_ratio_redis_to_memory": ratio}
    return table


def workload_throughput(session: Session) -> Table:
    requests, duration = session.cap(100_000, 5.0)
    levels = session.options.concurrency or (32, 128)
    body = chat_body(stream=False)
    wrk = shutil.which("wrk")
    table = Table("throughput: non-streaming", _RUN_COLUMNS)
    runs: list[dict[str, Any]] = []
    worker_counts = sorted({1, session.options.workers})
    for workers in worker_counts:
        direct, proxy, upstream = session.targets("static", workers=workers)
        for level in levels:
            for target in (direct, proxy) if workers == 1 else (proxy,):
                if wrk:
                    payload = orjson.dumps({**body, "model": target.model})
                    run = measure_wrk(target, payload, concurrency=level, requests=requests, duration=duration)
                else:
                    request = target.request(body, _FAST)
                    run = measure(target, request, concurrency=level, requests=requests, duration=duration)
                run["workers"] = workers
                runs.append(run)
                table.rows.append(_run_row(run))
    table.notes += [
        f"upstream: {upstream}",
        f"load generator: {'wrk (one thread)' if wrk else 'routeproxy.bench.loadgen (raw asyncio, one process)'}",
        "target: >= 5,000 requests/s per proxy core",
    ]
    if session.options.workers > 1:
        workers = session.options.workers
        table.notes.append(f"--workers {workers}: {session.cores.describe(workers)}; RSS sums every process")
        if len(session.cores.proxy(workers)) < workers:
            table.notes.append(f"this machine cannot give {workers} workers a core each: scaling is not measured")
    if not session.external:
        sim_direct, _, _ = session.targets("sim")
        reference = measure(
            sim_direct,
            sim_direct.request(body, _FAST),
            concurrency=levels[0],
            requests=requests,
            duration=min(duration, 3.0),
        )
        table.notes.append(
            f"for reference, the simulator answers {reference['rate']:,.0f} requests/s direct at concurrency "
            f"{levels[0]} on the same core as the load generator"
        )
        table.data["simulator_direct"] = reference
    table.notes += _error_notes(runs)
    table.data["runs"] = runs
    return table


def workload_stream(session: Session) -> Table:
    requests, duration = session.cap(50_000, 5.0)
    level = session.options.concurrency[0] if session.options.concurrency else 32
    direct, proxy, upstream = session.targets("static")
    body = chat_body(stream=True)
    runs = [
        measure(target, target.request(body, _FAST), concurrency=level, requests=requests, duration=duration)
        for target in (direct, proxy)
    ]
    table = Table("stream: 20-event streams, no upstream delay", _STREAM_COLUMNS, [_stream_row(r) for r in runs])
    table.notes += [
        f"upstream: {upstream}",
        "times in ms; TTFB = first body chunk; gap = between chunks; chunks = HTTP chunks per stream",
        "target: >= 2,000 streams/s per proxy core",
        *_error_notes(runs),
    ]
    table.data = {"direct": runs[0], "proxy": runs[1]}
    return table


def workload_paced(session: Session) -> Table:
    level = session.options.concurrency[0] if session.options.concurrency else 32
    requests, duration = session.cap(level * 20, 20.0)
    direct, proxy, upstream = session.targets("sim")
    body = chat_body(stream=True)
    headers = {**_FAST, "x-sim-token-ms": "10"}
    runs = [
        measure(
            target, target.request(body, headers), concurrency=level, requests=requests, duration=duration, warmup=level
        )
        for target in (direct, proxy)
    ]
    table = Table(
        f"paced: {level} concurrent streams, upstream 10 ms per chunk", _STREAM_COLUMNS, [_stream_row(r) for r in runs]
    )
    table.notes += [
        f"upstream: {upstream}; 17 tokens at 10 ms, role and [DONE] events as the simulator sends them",
        "the direct row's gaps are the upstream's own; the proxy row's are what the client sees after relaying",
        *_error_notes(runs),
    ]
    table.data = {"direct": runs[0], "proxy": runs[1]}
    return table


def workload_memory(session: Session, streams: int = 1000) -> Table:
    requests, duration = session.cap(streams, 60.0)
    streams = min(streams, requests)
    proc = session.proxy("static", fresh=True)
    upstream = session.upstream("static")[3]
    target = Target("proxy", "127.0.0.1", proc.port, "/v1/chat/completions", "auto", proc)
    idle = proc.memory_kb()
    warm = measure(
        target, target.request(chat_body(stream=False), _FAST), concurrency=8, requests=500, duration=10, warmup=0
    )
    after_warm = proc.memory_kb()
    proc.reset_peak()
    # 20 events 250 ms apart: each stream stays open about 5 s, long enough for all of them to be open at once.
    slow = target.request(chat_body(stream=True), {**_FAST, "x-sim-token-ms": "250"})
    result = run_async(
        run_load("127.0.0.1", proc.port, slow, concurrency=streams, max_requests=streams, max_duration=duration)
    )
    peak = proc.memory_kb("VmHWM")
    time.sleep(0.5)
    after = proc.memory_kb()
    opened = max_overlap(result)
    table = Table(f"memory: proxy RSS idle and with {streams:,} slow streams open", ("state", "RSS MB"))
    table.rows += [
        ("idle, just started", idle / 1024),
        (f"after {warm['answered']} small requests", after_warm / 1024),
        (f"peak with {opened:,} streams open at once", peak / 1024),
        ("after the streams closed", after / 1024),
    ]
    per_stream = (peak - after_warm) / opened if opened else math.nan
    table.notes += [
        f"upstream: {upstream}; each stream 20 events 250 ms apart",
        f"streams answered {len(result.samples)}/{result.sent}, failures {result.failures}"
        + (f" (first: {result.first_failure})" if result.first_failure else ""),
        f"about {per_stream:.1f} KB per open stream",
    ]
    table.data = {
        "idle_mb": idle / 1024,
        "after_warmup_mb": after_warm / 1024,
        "peak_streams_mb": peak / 1024,
        "after_streams_mb": after / 1024,
        "streams_open_at_once": opened,
        "streams_sent": result.sent,
        "streams_answered": len(result.samples),
        "failures": result.failures,
        "kb_per_stream": per_stream,
    }
    return table


def max_overlap(result: LoadResult) -> int:
    """The most answers in progress at once, from their start and end times."""
    edges = sorted([(s.started, 1) for s in result.samples] + [(s.started + s.total_s, -1) for s in result.samples])
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def workload_classifier(session: Session) -> Table:
    from routeproxy.evaluate.routing import bench_classifier
    from routeproxy.routing.classify import Classifier, load_rules

    text = bench_classifier(Classifier(load_rules(session.options.rules)))
    header, *lines = text.splitlines()
    table = Table(
        f"classifier: time to classify one message (rules: {session.options.rules})", ("message", "median us", "p99 us")
    )
    for line in lines:
        label, median, p99 = line.rsplit(None, 2)
        table.rows.append((label.strip(), float(median), float(p99)))
    table.notes.append(header.split("(", 1)[1].rstrip(")") if "(" in header else header)
    table.data = {row[0]: {"median_us": row[1], "p99_us": row[2]} for row in table.rows}
    return table


_RUNNERS = {
    "cache": workload_cache,
    "latency": workload_latency,
    "throughput": workload_throughput,
    "stream": workload_stream,
    "paced": workload_paced,
    "memory": workload_memory,
    "classifier": workload_classifier,
    "scenario": workload_scenario,
    "cascade": workload_cascade,
}


@contextmanager
def _on_cores(cpus: set[int]) -> Iterator[None]:
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Run the chosen workloads; {"machine": ..., "workloads": {name: table}} with Table values."""
    unknown = [name for name in options.workloads if name not in _RUNNERS]
    if unknown:
        raise ValueError(f"unknown workload {unknown[0]!r}; choose from {', '.join(WORKLOADS)}")
    if options.upstream:
        parse_upstream(options.upstream)
    tables: dict[str, Table] = {}
    with ExitStack() as stack:
        session = Session(options, stack)
        stack.enter_context(_on_cores(session.cores.rest))
        for name in dict.fromkeys(options.workloads):
            tables[name] = _RUNNERS[name](session)
        machine = {
            "cores": len(session.cores.all),
            "placement": session.cores.describe(),
            "python": sys.version.split()[0],
            "counters": "redis" if options.redis_url else "in-memory",
        }
    return {"machine": machine, "workloads": tables}


def render_text(report: dict[str, Any]) -> str:
    machine = report["machine"]
    head = (
        f"routeproxy bench: {machine['cores']} cores, {machine['placement']}; Python {machine['python']}; "
        f"routing on, counters {machine['counters']}"
    )
    return "\n\n".join([head, *(table.render() for table in report["workloads"].values())])


def render_json(report: dict[str, Any]) -> str:
    out = {
        "machine": report["machine"],
        "workloads": {name: {"title": t.title, **t.data} for name, t in report["workloads"].items()},
    }
    return orjson.dumps(out, option=orjson.OPT_INDENT_2).decode()
