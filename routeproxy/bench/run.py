"""One measured run: a target (direct or through the proxy), warm-up, load, and the proxy's CPU time and peak RSS."""

from __future__ import annotations

import itertools
import math
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from routeproxy.bench.loadgen import LoadResult, build_request, percentile, run_async, run_load
from routeproxy.bench.procs import Proc

_FAST = {"x-sim-tokens": "17", "x-sim-ttft-ms": "0", "x-sim-token-ms": "0"}


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


def measure_alternating(
    targets: Sequence[Target], body: dict[str, Any], *, rounds: int, requests: int, duration: float
) -> list[dict[str, Any]]:
    """Each target at concurrency 1, in turn, ``rounds`` times (``requests`` and ``duration`` shared out over the
    rounds), so a machine whose speed drifts during the run (other work, frequency) weighs on each target alike;
    one summary per target over all its rounds."""
    requests_each, duration_each = max(1, requests // rounds), duration / rounds
    merged = {target.label: LoadResult() for target in targets}
    cpu = dict.fromkeys(merged, 0.0)
    for target in targets:  # warm up pools, caches and the proxy's first flush
        run_async(run_load(target.host, target.port, target.request(body, _FAST), concurrency=1, max_requests=200,
                           max_duration=5))  # fmt: skip
    for _ in range(rounds):
        for target in targets:
            before = target.proxy.cpu_s() if target.proxy else 0.0
            result = run_async(
                run_load(target.host, target.port, target.request(body, _FAST), concurrency=1,
                         max_requests=requests_each, max_duration=duration_each)
            )  # fmt: skip
            cpu[target.label] += target.proxy.cpu_s() - before if target.proxy else 0.0
            into = merged[target.label]
            into.samples += result.samples
            into.sent += result.sent
            into.failures += result.failures
            into.elapsed_s += result.elapsed_s
            into.first_failure = into.first_failure or result.first_failure
    peaks = {t.label: t.proxy.memory_kb("VmHWM") if t.proxy else 0 for t in targets}
    return [
        {"path": t.label, "concurrency": 1, **summarise(merged[t.label], t.proxy, cpu[t.label], peaks[t.label])}
        for t in targets
    ]


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
