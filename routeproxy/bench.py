"""``routeproxy bench``: the proxy against a fast local upstream, direct versus through the proxy.

The proxy under test is its own process (``python -m routeproxy serve``, routing on, counters on), pinned to
core 0 when the machine has two cores or more; the upstreams and this process, which drives the load
(``routeproxy.loadgen``, or ``wrk`` for plain throughput when it is on PATH), share the other cores. The proxy's
CPU time and peak RSS are read from /proc before and after each run. Every run is bounded by a request count
and a duration, and only loopback addresses are ever targeted.

Upstreams: the Starlette simulator (``python -m routeproxy simulate``) for the latency, paced and scenario
workloads; for throughput, stream and memory a static raw-asyncio upstream (``python -m routeproxy.loadgen``),
because the simulator cannot keep up with a proxy aiming at thousands of requests per second. ``--upstream URL``
replaces both (but not the scenario's two simulated tiers).
"""

from __future__ import annotations

import itertools
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from routeproxy.loadgen import LoadResult, build_request, check_loopback, percentile, run_async, run_load

WORKLOADS = ("latency", "throughput", "stream", "paced", "memory", "classifier", "scenario")
DEFAULT_WORKLOADS = ("latency", "throughput", "stream", "paced", "memory", "classifier")
SMALL_MODEL_ENV = "MODEL_3B_NAME"

# A short factual question: SIMPLE under the default rules, so with routing on it goes to the small tier,
# whose model id the single upstream serves.
_PROMPT = "What is the capital of France?"
_FAST = {"x-sim-tokens": "17", "x-sim-ttft-ms": "0", "x-sim-token-ms": "0"}


@dataclass(frozen=True, slots=True)
class BenchOptions:
    workloads: tuple[str, ...] = DEFAULT_WORKLOADS
    requests: int | None = None  # overrides each workload's own cap
    duration: float | None = None  # seconds per run; overrides each workload's own cap
    concurrency: tuple[int, ...] = ()
    workers: int = 1
    redis_url: str | None = None
    upstream: str | None = None
    speed: float = 10.0  # scenario: the seed's latencies divided by this
    rules: str = "general"  # classifier workload's rule set
    small_model: str = "meta-llama/Llama-3.2-3B-Instruct"
    large_model: str = "meta-llama/Llama-3.1-8B-Instruct"


@dataclass(slots=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def render(self) -> str:
        cells = [tuple(_cell(value) for value in row) for row in [self.columns, *self.rows]]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = [self.title, "-" * len(self.title)]
        for number, row in enumerate(cells):
            lines.append(
                "  ".join(
                    c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
                )
            )
            if number == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join([*lines, *(f"  {note}" for note in self.notes)])


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3f}" if abs(value) < 1 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def parse_upstream(url: str) -> tuple[str, int, str]:
    """(host, port, base path ending in /v1) of a loopback upstream URL; ValueError for any other host."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"--upstream must be an http:// URL on 127.0.0.1, not {url!r}")
    host = check_loopback(parts.hostname)
    path = parts.path.rstrip("/")
    return host, parts.port or 80, path if path.endswith("/v1") else f"{path}/v1"


# ---- processes and /proc ----------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(slots=True)
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Any

    @property
    def pid(self) -> int:
        return self.process.pid

    def tree(self) -> list[int]:
        """This process and its descendants (uvicorn's worker processes)."""
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    todo.extend(int(child) for child in task.read_text().split())
                except OSError:
                    continue
        return found

    def cpu_s(self) -> float:
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.tree():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks

    def memory_kb(self, field_name: str = "VmRSS") -> int:
        total = 0
        for pid in self.tree():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            match = re.search(rf"^{field_name}:\s+(\d+) kB", status, re.MULTILINE)
            total += int(match.group(1)) if match else 0
        return total

    def reset_peak(self) -> None:
        for pid in self.tree():
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            except OSError:
                continue

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        text: str = self.log.read().decode(errors="replace")
        return text[-2000:]


class Cores:
    """The proxy gets core 0 (``workers`` cores with --workers, always leaving one); everything else the rest."""

    def __init__(self, workers: int, available: Sequence[int] | None = None) -> None:
        self.all = sorted(os.sched_getaffinity(0) if available is None else available)
        self.pinned = len(self.all) >= 2
        self.rest = set(self.all) - self.proxy(workers) if self.pinned else set(self.all)

    def proxy(self, workers: int = 1) -> set[int]:
        if not self.pinned:
            return set(self.all)
        return set(self.all[: min(max(workers, 1), len(self.all) - 1)])

    def describe(self, workers: int = 1) -> str:
        """Where the proxy with this many workers runs, and where the rest runs."""
        if not self.pinned:
            return f"one core: proxy, upstream and load generator share it (cores {self.all})"
        proxy = self.proxy(workers)
        return f"proxy on cores {sorted(proxy)}; upstream and load generator on {sorted(set(self.all) - proxy)}"


def spawn(name: str, args: Sequence[str], env: dict[str, str], cpus: set[int], ready_path: str) -> Proc:
    port = _free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115  (closed by Proc.stop)
    command = [sys.executable, "-m", *args, "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    os.sched_setaffinity(process.pid, cpus)  # before it starts any worker process, which inherits it
    proc = Proc(name, process, port, log)
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited at start-up: {proc.output()}")
        try:
            if ready_path == "tcp":
                with httpx.Client(trust_env=False) as client:
                    client.post(f"http://127.0.0.1:{port}/", content=b"{}", timeout=1)
            else:
                httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=1, trust_env=False).raise_for_status()
            return proc
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                proc.stop()
                raise RuntimeError(f"{name} did not answer within 30 s: {proc.output()}") from None
            time.sleep(0.05)


def proxy_env(upstreams: dict[str, str], redis_url: str | None, **extra: str) -> dict[str, str]:
    """The proxy's environment: both tiers at local upstreams (base URLs with /v1), routing on, counters on."""
    env = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
    env.update(
        MODEL_3B_BASE_URL=upstreams["small"],
        MODEL_8B_BASE_URL=upstreams["large"],
        MODEL_3B_KIND="vllm",
        MODEL_8B_KIND="vllm",
        MODEL_3B_API_KEY="",
        MODEL_8B_API_KEY="",
        ENABLE_MODEL_ROUTING="true",
        ROUTEPROXY_LOG_LEVEL="warning",
        **extra,
    )
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


# ---- one measured run ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    label: str
    host: str
    port: int
    path: str  # the chat completions path
    model: str
    proxy: Proc | None = None

    def request(self, body: dict[str, Any], headers: dict[str, str]) -> bytes:
        return build_request(self.host, self.port, self.path, orjson.dumps({**body, "model": self.model}), headers)


def _ms(values: Sequence[float], q: float) -> float:
    return percentile(values, q) * 1000


def summarise(result: LoadResult, proxy: Proc | None, cpu_s: float, peak_kb: int) -> dict[str, Any]:
    samples = result.samples
    gaps = [b - a for sample in samples for a, b in itertools.pairwise(sample.chunk_s)]
    answered = len(samples)
    return {
        "sent": result.sent,
        "answered": answered,
        "ok": result.ok,
        "failures": result.failures,
        "first_failure": result.first_failure,
        "elapsed_s": round(result.elapsed_s, 3),
        "rate": round(result.rate, 1),
        "p50_ms": _ms([s.total_s for s in samples], 50),
        "p99_ms": _ms([s.total_s for s in samples], 99),
        "ttfb_p50_ms": _ms([s.ttfb_s for s in samples], 50),
        "ttfb_p99_ms": _ms([s.ttfb_s for s in samples], 99),
        "gap_p50_ms": _ms(gaps, 50),
        "gap_p99_ms": _ms(gaps, 99),
        "chunks_per_answer": sum(len(s.chunk_s) for s in samples) / answered if answered else math.nan,
        "proxy_cpu_ms_per_request": cpu_s * 1000 / answered if proxy and answered else None,
        "proxy_peak_rss_mb": round(peak_kb / 1024, 1) if proxy else None,
    }


def measure(
    target: Target,
    request: bytes | Sequence[bytes],
    *,
    concurrency: int,
    requests: int,
    duration: float,
    warmup: int | None = None,
) -> dict[str, Any]:
    """Warm up, then one bounded run; the proxy's CPU time and peak RSS over the measured part only."""
    warm = min(requests, 200) if warmup is None else warmup
    if warm:
        run_async(
            run_load(
                target.host,
                target.port,
                request,
                concurrency=concurrency,
                max_requests=warm,
                max_duration=min(duration, 5),
            )
        )
    proxy = target.proxy
    if proxy:
        proxy.reset_peak()
        cpu_before = proxy.cpu_s()
    result = run_async(
        run_load(
            target.host, target.port, request, concurrency=concurrency, max_requests=requests, max_duration=duration
        )
    )
    cpu = proxy.cpu_s() - cpu_before if proxy else 0.0
    peak = proxy.memory_kb("VmHWM") if proxy else 0
    return {"path": target.label, "concurrency": concurrency, **summarise(result, proxy, cpu, peak)}


def measure_wrk(target: Target, body: bytes, *, concurrency: int, requests: int, duration: float) -> dict[str, Any]:
    """Plain non-streaming throughput with wrk (one thread), stopped after ``requests`` answers or ``duration``."""
    script = (
        'wrk.method = "POST"\nwrk.headers["content-type"] = "application/json"\n'
        f"wrk.body = {_lua_string(body)}\n"
        + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in _FAST.items())
        + f"local n = 0\nfunction response(status, headers, body)\n  n = n + 1\n"
        f"  if n >= {requests} then wrk.thread:stop() end\nend\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script)
        lua.flush()
        proxy = target.proxy
        if proxy:
            proxy.reset_peak()
            cpu_before = proxy.cpu_s()
        url = f"http://{target.host}:{target.port}{target.path}"
        seconds = max(1, math.ceil(duration))
        command = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", lua.name, url]
        output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
        cpu = proxy.cpu_s() - cpu_before if proxy else 0.0
    done = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]

    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\b", output, re.MULTILINE)
        if not match:
            return math.nan
        return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "path": f"{target.label} (wrk)",
        "concurrency": concurrency,
        "sent": done,
        "answered": done,
        "ok": done - (int(errors.group(1)) if errors else 0),
        "failures": 0,
        "rate": rate,
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "proxy_cpu_ms_per_request": cpu * 1000 / done if proxy and done else None,
        "proxy_peak_rss_mb": round(proxy.memory_kb("VmHWM") / 1024, 1) if proxy else None,
    }


def _lua_string(data: bytes) -> str:
    return '"' + data.decode().replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---- the bench session: processes shared by the workloads --------------------------------------------------


class Session:
    def __init__(self, options: BenchOptions, stack: ExitStack) -> None:
        self.options = options
        self.stack = stack
        self.cores = Cores(options.workers)
        self.procs: dict[str, Proc] = {}
        self.external = parse_upstream(options.upstream) if options.upstream else None

    def _keep(self, proc: Proc) -> Proc:
        self.stack.callback(proc.stop)
        return proc

    def upstream(self, kind: str) -> tuple[str, int, str, str]:
        """(host, port, base path, description) of the ``sim`` or ``static`` upstream, started on first use."""
        if self.external:
            host, port, base = self.external
            return host, port, base, f"given upstream {self.options.upstream}"
        if kind not in self.procs:
            if kind == "sim":
                args = ["routeproxy", "simulate", "--tier", "small", "--model", self.options.small_model]
                self.procs[kind] = self._keep(spawn("simulator", args, dict(os.environ), self.cores.rest, "/health"))
            else:
                args = ["routeproxy.loadgen"]
                self.procs[kind] = self._keep(spawn("static upstream", args, dict(os.environ), self.cores.rest, "tcp"))
        description = (
            "simulator (Starlette, python -m routeproxy simulate)"
            if kind == "sim"
            else "static upstream (raw asyncio, python -m routeproxy.loadgen): the simulator is too slow for this"
        )
        return "127.0.0.1", self.procs[kind].port, "/v1", description

    def proxy(self, kind: str, *, workers: int = 1, fresh: bool = False) -> Proc:
        key = f"proxy:{kind}:{workers}"
        if fresh or key not in self.procs:
            host, port, base, _ = self.upstream(kind)
            url = f"http://{host}:{port}{base}"
            env = proxy_env({"small": url, "large": url}, self.options.redis_url)
            cpus = self.cores.proxy(workers)
            args = ["routeproxy", "serve", "--workers", str(workers)]
            proc = self._keep(spawn(f"proxy ({workers} worker(s))", args, env, cpus, "/healthz"))
            if fresh:
                return proc
            self.procs[key] = proc
        return self.procs[key]

    def targets(self, kind: str, *, workers: int = 1) -> tuple[Target, Target, str]:
        host, port, base, description = self.upstream(kind)
        direct = Target("direct", host, port, f"{base}/chat/completions", self.options.small_model)
        proxy = self.proxy(kind, workers=workers)
        label = "proxy" if workers == 1 else f"proxy x{workers} workers"
        through = Target(label, "127.0.0.1", proxy.port, "/v1/chat/completions", "auto", proxy)
        return direct, through, description

    def cap(self, requests: int, duration: float) -> tuple[int, float]:
        return self.options.requests or requests, self.options.duration or duration


def chat_body(*, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": _PROMPT}]}
    if stream:
        body["stream"] = True
    return body


# ---- workloads ----------------------------------------------------------------------------------------------

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
        f"load generator: {'wrk (one thread)' if wrk else 'routeproxy.loadgen (raw asyncio, one process)'}",
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
    from routeproxy.classify import Classifier, load_rules
    from routeproxy.evaluate import bench_classifier

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


# ---- the seed's scenario --------------------------------------------------------------------------------------

# The seed report's "Performance Projections": ratio -> (share to 3B in %, stated average latency in ms).
SEED_PROJECTIONS = {0.3: (45, 3550), 0.5: (60, 3075), 0.8: (72, 2835)}
SEED_SMALL_MS, SEED_LARGE_MS, SEED_BASELINE_MS = 2500, 4500, 4500
_BREEDS = ("Ross 308", "Cobb 500", "Hubbard Flex", "Arbor Acres Plus", "Ross 708")
_METRICS = ("body weight", "FCR", "daily gain", "mortality", "feed intake", "uniformity")
_AGES = (7, 14, 21, 28, 35, 42)
_QUESTIONS = (
    "How can I improve feed conversion in my broiler flock during hot weather?",
    "What lighting program works best for broilers in an open-sided house?",
    "How should I adjust ventilation as my broilers grow through the second week?",
    "What are good practices for managing litter moisture in winter?",
    "How much floor space does each bird need to keep welfare and growth on target?",
    "When should I switch from starter to grower feed, and what changes should I expect?",
    "How do I plan water line flushing between flocks?",
    "What should a brooding checklist include for the first three days?",
)


def scenario_mix(size: int = 200) -> list[tuple[str, dict[str, Any]]]:
    """(kind, chat body) for a query mix shaped like the seed's: 45 % single-metric lookups (with the seed's
    query_type and entities hints), 48 % medium questions, 7 % comparisons, in a fixed shuffled order."""
    import random

    lookups = [
        (
            "lookup",
            {
                "messages": [{"role": "user", "content": f"What is the {metric} of {breed} at {age} days?"}],
                "query_type": "genetics_performance",
                "entities": {"breed": breed, "age_days": age},
            },
        )
        for breed, age, metric in itertools.product(_BREEDS, _AGES, _METRICS)
    ]
    medium = [
        ("medium", {"messages": [{"role": "user", "content": f"{question} The house holds {birds:,} birds."}]})
        for birds in range(8000, 32000, 2000)
        for question in _QUESTIONS
    ]
    pairs = list(itertools.permutations(_BREEDS[:4], 2))
    comparisons = [
        ("comparison", {"messages": [{"role": "user", "content": f"Compare {a} vs {b} {metric} at {age} days."}]})
        for (a, b), metric, age in zip(itertools.cycle(pairs), itertools.cycle(_METRICS), range(7, 50))
    ]
    counts = {"lookup": round(size * 0.45), "comparison": round(size * 0.07)}
    counts["medium"] = size - counts["lookup"] - counts["comparison"]
    mix = lookups[: counts["lookup"]] + medium[: counts["medium"]] + comparisons[: counts["comparison"]]
    random.Random(5).shuffle(mix)
    return mix


def _read_until(client: httpx.Client, url: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """GET ``url`` until ``done`` says yes, for at most 10 s (Redis-backed settings and counters lag by ~1 s)."""
    deadline = time.monotonic() + 10
    while True:
        answer: dict[str, Any] = client.get(url).json()
        if done(answer) or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


def workload_scenario(session: Session) -> Table:
    requests, duration = session.cap(200, 120.0)
    speed = session.options.speed
    urls = {}
    for tier, model in (("small", session.options.small_model), ("large", session.options.large_model)):
        args = ["routeproxy", "simulate", "--tier", tier, "--model", model, "--speed", str(speed)]
        sim = session._keep(spawn(f"simulator {tier}", args, dict(os.environ), session.cores.rest, "/health"))
        urls[tier] = f"http://127.0.0.1:{sim.port}/v1"
    env = proxy_env(urls, session.options.redis_url, ROUTEPROXY_RULES="poultry")
    proxy = session._keep(spawn("proxy (scenario)", ["routeproxy", "serve"], env, session.cores.proxy(), "/healthz"))
    base = f"http://127.0.0.1:{proxy.port}/v1/model-routing"
    mix = scenario_mix(min(requests, 1000))
    target = Target("proxy", "127.0.0.1", proxy.port, "/v1/chat/completions", "auto", proxy)
    sent = [target.request(body, {}) for _, body in mix]
    shares = {kind: sum(k == kind for k, _ in mix) / len(mix) for kind in ("lookup", "medium", "comparison")}
    columns = (
        "ratio",
        "seed 3B %",
        "expected 3B %",
        "3B %",
        "8B %",
        "seed avg ms",
        "seed recomputed",
        "avg ms",
        "3B avg",
        "8B avg",
        "client avg",
        "vs 4,500 ms",
    )
    table = Table(f"scenario: the seed's query mix through the proxy, simulators at speed x{speed:g}", columns)
    runs: list[dict[str, Any]] = []
    with httpx.Client(trust_env=False, timeout=10) as client:
        for ratio, (seed_small, seed_avg) in SEED_PROJECTIONS.items():
            client.put(f"{base}/config", json={"ab_test_ratio": ratio, "enable_model_routing": True}).raise_for_status()
            client.post(f"{base}/reset").raise_for_status()
            _read_until(client, f"{base}/config", lambda answer: answer["ab_test_ratio"] == ratio)  # noqa: B023
            result = run_async(
                run_load("127.0.0.1", proxy.port, sent, concurrency=50, max_requests=len(sent), max_duration=duration)
            )
            answered = len(result.samples)
            stats = _read_until(client, f"{base}/stats", lambda answer: answer["total_requests"] >= answered)  # noqa: B023
            small, large = stats["model_distribution"]["3b"], stats["model_distribution"]["8b"]
            client_avg = sum(x.total_s for x in result.samples) / len(result.samples) * 1000 * speed
            average = stats["average_latency_ms"] * speed
            recomputed = (seed_small * SEED_SMALL_MS + (100 - seed_small) * SEED_LARGE_MS) / 100
            expected = (shares["lookup"] + shares["medium"] * ratio) * 100
            table.rows.append(
                (
                    f"{ratio:g}",
                    seed_small,
                    expected,
                    small["percentage"],
                    large["percentage"],
                    seed_avg,
                    recomputed,
                    average,
                    small["avg_latency_ms"] * speed,
                    large["avg_latency_ms"] * speed,
                    client_avg,
                    f"{(average - SEED_BASELINE_MS) / SEED_BASELINE_MS * 100:+.1f}%",
                )
            )
            runs.append(
                {
                    "ratio": ratio,
                    "sent": result.sent,
                    "answered": len(result.samples),
                    "ok": result.ok,
                    "failures": result.failures,
                    "client_avg_ms": client_avg,
                    "stats": stats,
                }
            )
    complexity = {k: v["count"] for k, v in runs[-1]["stats"]["complexity_distribution"].items() if v["count"]}
    table.notes += [
        f"mix of {len(mix)} queries: "
        + ", ".join(f"{k} {v * 100:.0f}%" for k, v in shares.items())
        + f"; classified {complexity}",
        f"latencies are measured at speed x{speed:g} and multiplied back by {speed:g} (proxy overhead included);"
        " avg/3B/8B from GET /v1/model-routing/stats, client avg from the load generator",
        "expected 3B % = lookups + medium x ratio (the A/B draw hashes each query, so it is near, not exact)",
        "seed recomputed = the seed's own shares at 2,500 / 4,500 ms: its balanced and aggressive averages leave"
        " out the 5 % complex share (60 % x 2,500 + 40 % x 4,500 = 3,300 ms, not 3,075); its conservative one is"
        " 50 ms under its own shares",
        f"the x{speed:g} scaling also multiplies the proxy's own time per request by {speed:g}",
    ]
    failures = sum(run["failures"] + run["answered"] - run["ok"] for run in runs)
    if failures:
        table.notes.append(f"{failures} requests failed")
    table.data = {
        "mix": shares,
        "complexity": complexity,
        "speed": speed,
        "runs": runs,
        "seed": {str(k): {"small_pct": v[0], "avg_ms": v[1]} for k, v in SEED_PROJECTIONS.items()},
    }
    return table


_RUNNERS = {
    "latency": workload_latency,
    "throughput": workload_throughput,
    "stream": workload_stream,
    "paced": workload_paced,
    "memory": workload_memory,
    "classifier": workload_classifier,
    "scenario": workload_scenario,
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
