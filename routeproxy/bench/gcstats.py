"""The proxy's garbage collections under load: ``python -m routeproxy.bench.gcstats``.

Starts the static upstream and the proxy as ``routeproxy bench`` does (``procs.proxy_env``: routing and counters
on, log level info), the proxy with a ``gc.callbacks`` timer installed before it starts; sends warm-up requests,
zeroes the timer (SIGUSR1), sends the measured non-streaming requests at c=32, asks the proxy for its figures
(SIGUSR2, written as JSON to a file) and prints the collections per generation, the time spent in them and that
time's share of the proxy's CPU over the same requests (from ``/proc``). ``--default-gc`` skips ``heap.py``'s
settling, to see CPython's default collector. Loopback only; bounded by the request count.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

from routeproxy.bench.callgrind import CHAT_BODY, FAST_HEADERS, load_exactly, wait_answering
from routeproxy.bench.loadgen import build_request
from routeproxy.bench.procs import bound_port, proxy_env

# Run as `python -c PROBE serve --port 0`: the timer, the two signals, then routeproxy's own command line.
_PROBE = """
import gc, json, os, signal, sys, time
counts, spent, started = [0, 0, 0], [0.0], [0.0]
def timed(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        spent[0] += time.perf_counter() - started[0]
        counts[info["generation"]] += 1
def zero(signum, frame):
    counts[:] = [0, 0, 0]
    spent[0] = 0.0
def report(signum, frame):
    with open(os.environ["GCSTATS_OUT"], "w") as out:
        json.dump({"collections": counts, "seconds": spent[0]}, out)
gc.callbacks.append(timed)
signal.signal(signal.SIGUSR1, zero)
signal.signal(signal.SIGUSR2, report)
if os.environ.get("GCSTATS_DEFAULT_GC"):
    import routeproxy.api.heap
    routeproxy.api.heap.settle_heap = lambda: None
from routeproxy.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m routeproxy.bench.gcstats", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000, help="non-streaming requests measured")
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--default-gc", action="store_true", help="leave CPython's collector as it is (no heap.py)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="gcstats-")
    out = Path(work) / "gc.json"
    upstream_log, proxy_log = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # noqa: SIM115  (closed below)
    # Both on --port 0: each server names the port it bound (a port picked here could be taken meanwhile).
    upstream = subprocess.Popen(
        [sys.executable, "-m", "routeproxy.bench.loadgen", "--port", "0"], stdout=upstream_log, stderr=upstream_log
    )
    upstream_port = bound_port(upstream_log, upstream, 30)
    url = f"http://127.0.0.1:{upstream_port}/v1"
    env = proxy_env({"small": url, "large": url}, None, GCSTATS_OUT=str(out))
    if args.default_gc:
        env["GCSTATS_DEFAULT_GC"] = "1"
    proxy = subprocess.Popen(
        [sys.executable, "-c", _PROBE, "serve", "--port", "0"],
        env=env,
        cwd=work,  # not a checkout: the routeproxy this Python has installed
        stdout=proxy_log,
        stderr=proxy_log,
    )
    try:
        proxy_port = bound_port(proxy_log, proxy, 60)
        wait_answering(f"http://127.0.0.1:{upstream_port}/", upstream, 30)
        wait_answering(f"http://127.0.0.1:{proxy_port}/healthz", proxy, 60)
        request = build_request("127.0.0.1", proxy_port, "/v1/chat/completions", orjson.dumps(CHAT_BODY), FAST_HEADERS)
        load_exactly(proxy_port, request, args.warmup, args.concurrency)
        proxy.send_signal(signal.SIGUSR1)
        load_exactly(proxy_port, request, 1, 1)  # the signal is handled once the proxy runs Python again
        cpu_before = _cpu_seconds(proxy.pid)
        load_exactly(proxy_port, request, args.requests, args.concurrency)
        cpu = _cpu_seconds(proxy.pid) - cpu_before
        proxy.send_signal(signal.SIGUSR2)
        load_exactly(proxy_port, request, 1, 1)
        figures = json.loads(out.read_text())
    finally:
        proxy.send_signal(signal.SIGINT)
        upstream.terminate()
        proxy.wait(60)
        upstream.wait(10)
        upstream_log.close()
        proxy_log.close()
    per_thousand = [count * 1000 / args.requests for count in figures["collections"]]
    if args.json:
        summary = {**figures, "requests": args.requests, "proxy_cpu_seconds": cpu, "default_gc": args.default_gc}
        print(json.dumps(summary))
        return
    print(
        f"{'CPython default collector' if args.default_gc else 'heap.py settled'}: {args.requests} requests at "
        f"c={args.concurrency}; collections per 1,000 requests (generations 0 / 1 / 2): "
        + " / ".join(f"{value:.1f}" for value in per_thousand)
        + f"; {figures['seconds'] * 1000:.0f} ms in the collector, {100 * figures['seconds'] / cpu:.1f} % of the "
        f"proxy's {cpu:.2f} s of CPU"
    )


if __name__ == "__main__":
    main()
