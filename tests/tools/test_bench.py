from __future__ import annotations

import asyncio
import math
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator

import orjson
import pytest
from support.processes import ROOT
from support.upstreams import fast_profile

from routeproxy.bench.loadgen import (
    STREAM_EVENTS,
    build_request,
    check_loopback,
    percentile,
    run_load,
    serve_static_upstream,
)
from routeproxy.bench.procs import spawn
from routeproxy.bench.scenario import scenario_mix
from routeproxy.bench.session import parse_upstream
from routeproxy.cli import main
from routeproxy.settings import Tier
from routeproxy.sim.simulator import create_simulator_app
from routeproxy.sim.threadserver import ThreadedServer

CHAT = "/v1/chat/completions"


def chat(model: str, *, stream: bool) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream})


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([4.0, 1.0, 3.0, 2.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
        ([1.0, 2.0, 3.0, 4.0], 99, 3.97),  # position 2.97: 3 + 0.97 x (4 - 3)
        ([10.0, 20.0, 30.0, 40.0, 50.0], 25, 20.0),
        ([7.0], 99, 7.0),
    ],
)
def test_percentile_interpolates_between_closest_ranks(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(percentile([], 50))


@pytest.fixture
async def static_port() -> AsyncIterator[int]:
    server = await serve_static_upstream("127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_load_generator_counts_static_json_answers_exactly(static_port: int) -> None:
    request = build_request("127.0.0.1", static_port, CHAT, chat("m", stream=False))
    result = await run_load(
        "127.0.0.1", static_port, request, concurrency=4, max_requests=57, max_duration=10, keep_body=True
    )
    assert (result.sent, len(result.samples), result.ok, result.failures) == (57, 57, 57, 0)
    assert all(orjson.loads(sample.body)["object"] == "chat.completion" for sample in result.samples)
    assert all(sample.chunk_s == [] and 0 < sample.ttfb_s <= sample.total_s for sample in result.samples)


async def test_load_generator_records_every_chunk_of_static_streams(static_port: int) -> None:
    request = build_request("127.0.0.1", static_port, CHAT, chat("m", stream=True), {"x-sim-token-ms": "1"})
    result = await run_load("127.0.0.1", static_port, request, concurrency=3, max_requests=9, max_duration=10)
    assert (result.sent, len(result.samples), result.ok) == (9, 9, 9)
    for sample in result.samples:
        assert len(sample.chunk_s) == STREAM_EVENTS
        assert sample.chunk_s == sorted(sample.chunk_s)
        assert sample.ttfb_s == sample.chunk_s[0] and sample.total_s >= sample.chunk_s[-1] >= 0.019


async def test_load_generator_reads_uvicorn_simulator_answers() -> None:
    """Content-Length and chunked bodies as uvicorn frames them; 17 tokens are 20 SSE events, one per chunk."""
    profile = fast_profile(Tier.SMALL)
    server = await asyncio.to_thread(ThreadedServer(create_simulator_app(profile)).start)
    try:
        headers = {"x-sim-tokens": "17"}
        plain = build_request("127.0.0.1", server.port, CHAT, chat(profile.model, stream=False), headers)
        streamed = build_request("127.0.0.1", server.port, CHAT, chat(profile.model, stream=True), headers)
        result = await run_load(
            "127.0.0.1", server.port, [plain, streamed], concurrency=2, max_requests=20, max_duration=10, keep_body=True
        )
    finally:
        await asyncio.to_thread(server.stop)
    assert (result.sent, len(result.samples), result.ok, result.failures) == (20, 20, 20, 0)
    streams = [sample for sample in result.samples if sample.chunk_s]
    answers = [sample for sample in result.samples if not sample.chunk_s]
    assert len(streams) == len(answers) == 10
    assert all(len(sample.chunk_s) == 20 and sample.body.endswith(b"data: [DONE]\n\n") for sample in streams)
    assert all(orjson.loads(sample.body)["usage"]["completion_tokens"] == 17 for sample in answers)


async def test_load_generator_stops_at_its_duration(static_port: int) -> None:
    request = build_request("127.0.0.1", static_port, CHAT, chat("m", stream=True), {"x-sim-token-ms": "20"})
    result = await run_load("127.0.0.1", static_port, request, concurrency=2, max_requests=10_000, max_duration=0.3)
    assert 0 < result.sent < 20 and len(result.samples) == result.sent


@pytest.mark.parametrize("host", ["10.0.0.1", "192.168.1.1", "example.com", "0.0.0.0"])
def test_only_loopback_is_targeted(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        check_loopback(host)


async def test_run_load_refuses_a_remote_host() -> None:
    with pytest.raises(ValueError, match="loopback"):
        await run_load("10.0.0.1", 80, b"", concurrency=1, max_requests=1, max_duration=1)


def test_upstream_url_is_parsed_to_a_v1_base() -> None:
    assert parse_upstream("http://127.0.0.1:8101") == ("127.0.0.1", 8101, "/v1")
    assert parse_upstream("http://localhost:8101/v1/") == ("127.0.0.1", 8101, "/v1")


def test_bench_refuses_an_upstream_off_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--workload", "latency", "--upstream", "http://10.0.0.1:80"]) == 2
    assert "loopback" in capsys.readouterr().err


def test_scenario_mix_is_shaped_like_the_seeds() -> None:
    mix = scenario_mix(200)
    kinds = [kind for kind, _ in mix]
    assert (kinds.count("lookup"), kinds.count("medium"), kinds.count("comparison")) == (90, 96, 14)
    assert len({orjson.dumps(body) for _, body in mix}) == 200
    assert all(body["query_type"] == "genetics_performance" for kind, body in mix if kind == "lookup")


def test_bench_latency_reports_direct_and_proxy_figures() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "routeproxy", "bench", "--workload", "latency", "--requests", "200", "--json"],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode()
    report = orjson.loads(completed.stdout)
    latency = report["workloads"]["latency"]
    for path in ("direct", "proxy"):
        run = latency[path]
        assert (run["sent"], run["answered"], run["ok"], run["failures"]) == (200, 200, 200, 0)
        assert run["p50_ms"] > 0 and run["p99_ms"] >= run["p50_ms"]
    assert latency["proxy"]["proxy_cpu_ms_per_request"] is not None
    assert latency["proxy"]["proxy_peak_rss_mb"] > 0
    assert set(latency["added_ms"]) == {"p50", "p99"}
    assert report["machine"]["counters"] == "in-memory"


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not on PATH")
def test_bench_latency_puts_in_memory_and_redis_counters_side_by_side() -> None:
    command = [sys.executable, "-m", "routeproxy", "bench", "--workload", "latency", "--redis-url", "local"]
    completed = subprocess.run(
        [*command, "--requests", "300", "--json"], capture_output=True, cwd=ROOT, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr.decode()
    latency = orjson.loads(completed.stdout)["workloads"]["latency"]
    paths = [run["path"] for run in latency["runs"]]
    assert paths == ["direct", "proxy, counters in memory", "proxy, counters in Redis"]
    for run in latency["runs"]:
        assert (run["sent"], run["answered"], run["ok"], run["failures"]) == (300, 300, 300, 0)
    assert set(latency["added_ms"]) == set(paths[1:])
    assert latency["p99_ratio_redis_to_memory"] > 0


def _collector_under_load(*flags: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "routeproxy.bench.gcstats", "--requests", "400", "--warmup", "100", "--json", *flags],
        capture_output=True,
        timeout=300,
        check=True,
        cwd=ROOT,
    )
    figures: dict[str, object] = orjson.loads(done.stdout.splitlines()[-1])
    return figures


def test_the_settled_heap_collects_a_tenth_as_often_under_load() -> None:
    """``python -m routeproxy.bench.gcstats``: with CPython's default collector a proxy with 32 requests in flight
    runs a young-generation pass about every tenth request; with heap.py's settling, a handful per thousand."""
    default, settled = _collector_under_load("--default-gc"), _collector_under_load()
    assert default["requests"] == settled["requests"] == 400
    default_young, settled_young = default["collections"][0], settled["collections"][0]  # type: ignore[index]
    assert default_young >= 10  # the probe sees the collections it is there to count
    assert settled_young * 10 <= default_young


def test_a_bench_server_is_measured_on_the_port_it_bound_and_a_failed_start_says_why() -> None:
    cores = sorted(os.sched_getaffinity(0))
    upstream = spawn("static upstream", ["routeproxy.bench.loadgen"], dict(os.environ), set(cores), "tcp")
    try:
        assert upstream.port > 0 and f"127.0.0.1:{upstream.port}".encode() in upstream.logged()
    finally:
        upstream.stop()
    with pytest.raises(RuntimeError) as refused:
        spawn("proxy", ["routeproxy", "serve", "--speed", "10"], dict(os.environ), set(cores), "/healthz")
    assert "exited with 2 before it listened" in str(refused.value)
    assert "--speed applies only with --simulate" in str(refused.value)  # the process's own words
