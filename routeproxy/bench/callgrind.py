"""The proxy's own instructions per request, counted by callgrind: a CPU cost that a shared machine's load cannot move.

``python -m routeproxy.bench.callgrind`` starts the static upstream and the proxy as ``routeproxy bench`` does
(``procs.proxy_env``: both tiers on the static upstream, routing and counters on, log level info), but the proxy
under ``valgrind --tool=callgrind``; it warms the proxy up, zeroes the counts (``callgrind_control -z``), sends
the non-streaming requests, dumps, zeroes, sends the 20-event streams, dumps, and prints the instructions per
request of each (the dumps' ``summary:`` line divided by the answered requests). Two runs of the same code agree to
about 0.1 %. To measure another checkout, run this file with that checkout's Python:
``/other/.venv/bin/python routeproxy/bench/callgrind.py`` (it imports the ``routeproxy`` that Python has installed).
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

import httpx
import orjson

from routeproxy.bench.loadgen import LoadResult, build_request, run_async, run_load
from routeproxy.bench.procs import bound_port, proxy_env

FAST_HEADERS = {"x-sim-tokens": "17", "x-sim-ttft-ms": "0", "x-sim-token-ms": "0"}
CHAT_BODY = {"model": "auto", "messages": [{"role": "user", "content": "What is the capital of France?"}]}


def wait_answering(url: str, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {process.returncode}")
        try:
            httpx.post(url, content=b"{}", timeout=2, trust_env=False)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {seconds:g} s") from None
            time.sleep(0.2)


def load_exactly(port: int, request: bytes, count: int, concurrency: int) -> LoadResult:
    result = run_async(
        run_load("127.0.0.1", port, request, concurrency=concurrency, max_requests=count, max_duration=600)
    )
    if result.ok != count:
        raise RuntimeError(f"{result.ok} of {count} requests answered 2xx (first failure: {result.first_failure})")
    return result


def _dump(pid: int, out_dir: str, label: str) -> int:
    subprocess.run(["callgrind_control", "-d", label, str(pid)], check=True, capture_output=True)
    for _ in range(100):
        for path in glob.glob(os.path.join(out_dir, f"callgrind.out.{pid}.*")):
            with open(path) as dump:
                text = dump.read()
            if f"Trigger: dump {label}\n" in text:
                for line in text.splitlines():
                    if line.startswith("summary:"):
                        os.remove(path)
                        return int(line.split()[1])
        time.sleep(0.1)
    raise RuntimeError(f"no callgrind dump for {label}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m routeproxy.bench.callgrind", description=__doc__)
    parser.add_argument("--requests", type=int, default=1000, help="non-streaming requests counted")
    parser.add_argument("--streams", type=int, default=500, help="20-event streams counted")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    out_dir = tempfile.mkdtemp(prefix="callgrind-")
    upstream_log, proxy_log = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # noqa: SIM115  (closed below)
    # Both on --port 0: each server names the port it bound (a port picked here could be taken meanwhile).
    upstream = subprocess.Popen(
        [sys.executable, "-m", "routeproxy.bench.loadgen", "--port", "0"],
        cwd=out_dir,
        stdout=upstream_log,
        stderr=upstream_log,
    )
    upstream_port = bound_port(upstream_log, upstream, 30)
    url = f"http://127.0.0.1:{upstream_port}/v1"
    env = proxy_env({"small": url, "large": url}, None)
    env["ROUTEPROXY_LOG_LEVEL"] = "info"  # the default, as users run it (older checkouts' benchmark pinned warning)
    valgrind = ["valgrind", "--tool=callgrind", "--dump-instr=no", f"--callgrind-out-file={out_dir}/callgrind.out.%p"]
    serve = [sys.executable, "-m", "routeproxy", "serve", "--port", "0"]
    proxy = subprocess.Popen(
        [*valgrind, *serve], env=env, cwd=out_dir, stderr=proxy_log, stdout=proxy_log
    )  # cwd: not a checkout, so `python -m` imports the routeproxy this Python has installed
    try:
        proxy_port = bound_port(proxy_log, proxy, 300)
        wait_answering(f"http://127.0.0.1:{upstream_port}/", upstream, 30)
        wait_answering(f"http://127.0.0.1:{proxy_port}/healthz", proxy, 300)
        plain = build_request("127.0.0.1", proxy_port, "/v1/chat/completions", orjson.dumps(CHAT_BODY), FAST_HEADERS)
        stream = build_request(
            "127.0.0.1", proxy_port, "/v1/chat/completions", orjson.dumps({**CHAT_BODY, "stream": True}), FAST_HEADERS
        )
        load_exactly(proxy_port, plain, args.warmup, args.concurrency)
        load_exactly(proxy_port, stream, args.warmup, args.concurrency)
        subprocess.run(["callgrind_control", "-z", str(proxy.pid)], check=True, capture_output=True)
        load_exactly(proxy_port, plain, args.requests, args.concurrency)
        per_request = _dump(proxy.pid, out_dir, "plain") / args.requests
        subprocess.run(["callgrind_control", "-z", str(proxy.pid)], check=True, capture_output=True)
        load_exactly(proxy_port, stream, args.streams, args.concurrency)
        per_stream = _dump(proxy.pid, out_dir, "stream") / args.streams
    finally:
        proxy.terminate()
        upstream.terminate()
        proxy.wait(60)
        upstream.wait(10)
        upstream_log.close()
        proxy_log.close()
    print(
        f"instructions per non-streaming request: {per_request / 1000:,.1f} k ({args.requests} at c={args.concurrency})"
    )
    print(f"instructions per 20-event stream: {per_stream / 1000:,.1f} k ({args.streams} at c={args.concurrency})")


if __name__ == "__main__":
    main()
