"""Several real proxy processes sharing one real Redis: one A/B view, exact totals, runtime control."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest
from support import http
from support.processes import Served, serve
from support.redis_server import RedisServer
from support.upstreams import ProxyFactory
from support.wait import eventually
from test_counters import SEED_KEYS

from routeproxy.settings import Tier
from routeproxy.sim.threadserver import ThreadedServer

PROMPTS = [
    "Compare Ross 308 vs Cobb 500 at 21 and 28 days",  # complex
    "Write a haiku about rain",  # simple
    "How should a farm plan its feeding schedule?",  # medium
    "What is the capital of France?",  # simple
    "How can a small team improve its weekly planning?",  # medium
    "Is Python better than Go for web servers?",  # complex
]


def start_replicas(count: int, redis_url: str, served: list[Served], **env: str) -> list[Served]:
    replicas = [
        serve(
            "--simulate",
            "--speed",
            "1000",
            env={"REDIS_URL": redis_url, "ENABLE_MODEL_ROUTING": "true", "ROUTEPROXY_REDIS_NAMESPACE": "rp", **env},
        )
        for _ in range(count)
    ]
    served.extend(replicas)
    return replicas


def send(url: str, prompt: str, client: httpx.Client) -> httpx.Response:
    return client.post(
        f"{url}/v1/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": prompt}]}
    )


def stats(url: str) -> dict[str, Any]:
    result: dict[str, Any] = http.get(f"{url}/v1/model-routing/stats", timeout=10).json()
    return result


def settled_stats(replicas: list[Served], total: int) -> list[dict[str, Any]]:
    """Each replica's stats once every replica has flushed (they flush every 0.5 s), or as they stand after the
    last try (so the caller's assertion shows them)."""
    reports: list[dict[str, Any]] = []

    def settled() -> bool:
        reports[:] = [stats(replica.url) for replica in replicas]
        return all(report["total_requests"] == total and not report["stale"] for report in reports)

    with contextlib.suppress(AssertionError):
        eventually(settled, tries=50, interval=0.1)
    return reports


def test_three_replicas_report_the_same_exact_totals(redis_server: RedisServer, served: list[Served]) -> None:
    replicas = start_replicas(3, redis_server.url, served)
    sent: Counter[tuple[str, str]] = Counter()
    with http.client(timeout=10) as client:
        for index in range(60):
            response = send(replicas[index % 3].url, PROMPTS[index % len(PROMPTS)], client)
            assert response.status_code == 200
            sent[response.headers["x-routeproxy-tier"], response.headers["x-routeproxy-complexity"]] += 1
    by_tier = Counter({"3b": 0, "8b": 0})
    by_complexity: Counter[str] = Counter()
    for (tier, complexity), count in sent.items():
        by_tier[tier] += count
        by_complexity[complexity] += count
    assert set(by_complexity) == {"simple", "medium", "complex"}

    reports = settled_stats(replicas, 60)
    for report in reports:
        assert report["stale"] is False
        assert report["store"] == "redis"
        assert report["total_requests"] == 60
        assert report["model_distribution"]["3b"]["count"] == by_tier["3b"]
        assert report["model_distribution"]["8b"]["count"] == by_tier["8b"]
        for complexity, count in by_complexity.items():
            assert report["complexity_distribution"][complexity]["count"] == count
        assert len(report["replicas"]) == 3
    assert reports[0]["model_distribution"] == reports[1]["model_distribution"] == reports[2]["model_distribution"]
    assert list(reports[0])[: len(SEED_KEYS)] == SEED_KEYS

    # redis-cli reads the same numbers a person would: the documented hash, field by field.
    period = redis_server.cli("GET", "{rp}:period").strip() or "0"
    lines = redis_server.cli("HGETALL", f"{{rp}}:stats:{period}").split()
    fields = dict(zip(lines[::2], lines[1::2], strict=True))
    assert int(fields["requests:3b"]) == by_tier["3b"]
    assert int(fields["requests:8b"]) == by_tier["8b"]


def test_a_ratio_change_through_one_replica_reaches_the_others(redis_server: RedisServer, served: list[Served]) -> None:
    first, second = start_replicas(2, redis_server.url, served)
    medium = "How should a farm plan its feeding schedule?"
    with http.client(timeout=10) as client:
        assert send(second.url, medium, client).headers["x-routeproxy-complexity"] == "medium"
        changed = client.put(f"{first.url}/v1/model-routing/config", json={"ab_test_ratio": 1.0})
        assert changed.status_code == 200
        assert changed.json()["ab_test_ratio"] == 1.0
        eventually(
            lambda: client.get(f"{second.url}/v1/model-routing/config").json()["ab_test_ratio"] == 1.0,
            what="the second replica applying the new ratio",
        )
        # Every MEDIUM query now goes to the small tier on the other replica.
        assert send(second.url, medium, client).headers["x-routeproxy-tier"] == "3b"
        assert stats(second.url)["ab_test_ratio"] == 1.0

        # The value lives in Redis: a replica started afterwards applies it from the start.
        (third,) = start_replicas(1, redis_server.url, served)
        assert client.get(f"{third.url}/v1/model-routing/config").json()["ab_test_ratio"] == 1.0

        bad = client.put(f"{first.url}/v1/model-routing/config", json={"ab_test_ratio": 2})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "ab_test_ratio"


def test_reset_starts_a_fresh_period_for_every_replica(redis_server: RedisServer, served: list[Served]) -> None:
    first, second = start_replicas(2, redis_server.url, served)
    with http.client(timeout=10) as client:
        for index in range(6):
            send((first, second)[index % 2].url, PROMPTS[index], client)
        assert [report["total_requests"] for report in settled_stats([first, second], 6)] == [6, 6]
        assert client.post(f"{first.url}/v1/model-routing/reset").status_code == 200
        # At once, on the replica that was not asked: every request that ends after the reset answered is
        # counted in the new period (the second replica learns of it at a flush, before it starts).
        for prompt in PROMPTS[:4]:
            send(second.url, prompt, client)
        reports = settled_stats([first, second], 4)
        assert [report["total_requests"] for report in reports] == [4, 4]
        assert reports[0]["period"] == reports[1]["period"] == 1


def test_two_replicas_count_every_request_once_across_a_redis_that_restarts_empty(
    redis_server: RedisServer, served: list[Served]
) -> None:
    """400 requests over two replicas; Redis without persistence is killed while they run and comes back empty.
    Both replicas are alive and hold what they counted: the stats show all 400, none twice, in the same period."""
    replicas = start_replicas(2, redis_server.url, served)
    done: list[int] = []

    def one(index: int) -> int:
        with http.client(timeout=10) as client:
            status = send(replicas[index % 2].url, PROMPTS[index % len(PROMPTS)], client).status_code
        done.append(index)
        return status

    with ThreadPoolExecutor(max_workers=4) as pool:
        answered = pool.map(one, range(400))
        eventually(lambda: len(done) >= 100, tries=400, what="a quarter of the requests answered")
        redis_server.stop(kill=True)  # mid-traffic: requests keep coming while Redis is gone
        eventually(lambda: len(done) >= 200, tries=400, what="half of the requests answered")
        redis_server.start()  # same port, no data
        statuses = list(answered)
    assert set(statuses) == {200}
    reports = settled_stats(replicas, 400)
    assert [(report["total_requests"], report["period"], report["stale"]) for report in reports] == [
        (400, 0, False)
    ] * 2


def test_redis_paused_mid_load_fails_or_stalls_no_request_and_totals_stay_exact(
    redis_server: RedisServer, served: list[Served]
) -> None:
    # Redis timeouts far past the client's (the URL's options win over the proxy's 0.5 s): a request that waited
    # on the paused Redis would still be waiting when the client gives up, so the 80 requests sent while Redis is
    # stopped can only all answer if none of them waits on it. No clock is read.
    patient = f"{redis_server.url}?socket_timeout=60&socket_connect_timeout=60"
    replicas = start_replicas(2, patient, served)

    def one(index: int) -> int:
        with http.client(timeout=10) as client:
            return send(replicas[index % 2].url, PROMPTS[index % len(PROMPTS)], client).status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        first = list(pool.map(one, range(40)))
        redis_server.pause()
        try:
            during = list(pool.map(one, range(40, 120)))
            assert redis_server.paused  # all 80 answered while Redis was stopped
        finally:
            redis_server.resume()
        after = list(pool.map(one, range(120, 140)))
    assert set(first + during + after) == {200}
    # The tallies kept while Redis was stopped reach it once it is back: nothing lost, nothing counted twice.
    assert [report["total_requests"] for report in settled_stats(replicas, 140)] == [140, 140]


@pytest.mark.parametrize(
    ("client_host", "allowed"),
    [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("10.1.2.3", False), ("192.168.0.7", False), ("", False)],
)
def test_admin_endpoints_without_a_token_answer_loopback_clients_only(client_host: str, allowed: bool) -> None:
    from routeproxy.wire.auth import is_loopback

    assert is_loopback(client_host) is allowed


def test_stats_command_reads_the_shared_redis(redis_server: RedisServer, served: list[Served]) -> None:
    """The routing state reported is the one the replicas apply (their ENABLE_MODEL_ROUTING and AB_TEST_RATIO),
    not the command's own environment's; with Redis down it fails clearly, and --json stays JSON."""
    (replica,) = start_replicas(1, redis_server.url, served, AB_TEST_RATIO="0.3")
    with http.client(timeout=10) as client:
        for prompt in PROMPTS:
            send(replica.url, prompt, client)
    endpoint = settled_stats([replica], len(PROMPTS))[0]
    environ = {"ROUTEPROXY_REDIS_NAMESPACE": "rp", "PATH": os.environ["PATH"]}
    as_json = subprocess.run(
        [sys.executable, "-m", "routeproxy", "stats", "--redis-url", redis_server.url, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        check=True,
    )
    from_cli = orjson.loads(as_json.stdout)
    assert from_cli["total_requests"] == endpoint["total_requests"] == len(PROMPTS)
    assert from_cli["model_distribution"] == endpoint["model_distribution"]
    assert from_cli["store"] == "redis"
    assert (from_cli["routing_enabled"], from_cli["ab_test_ratio"]) == (True, 0.3)
    assert (endpoint["routing_enabled"], endpoint["ab_test_ratio"]) == (True, 0.3)
    table = subprocess.run(
        [sys.executable, "-m", "routeproxy", "stats", "--redis-url", redis_server.url],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        check=True,
    ).stdout
    assert "3b" in table and "8b" in table and str(len(PROMPTS)) in table
    assert "routing enabled, ab_test_ratio 0.3" in table

    redis_server.stop()
    down = subprocess.run(
        [sys.executable, "-m", "routeproxy", "stats", "--redis-url", redis_server.url, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
    )
    assert down.returncode == 1
    assert down.stdout == ""
    assert f"cannot read {redis_server.url}: Redis did not answer" in down.stderr


def test_a_proxy_counts_into_redis_cluster(
    cluster_redis_server: RedisServer, simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(
        {tier: f"{server.url}/v1" for tier, server in simulators.items()},
        **{"counters.redis_url": cluster_redis_server.url, "routing.enabled": True},
    )
    with http.client(timeout=10) as client:
        for prompt in PROMPTS:
            assert send(proxy.url, prompt, client).status_code == 200
    report = stats(proxy.url)
    assert report["store"] == "redis" and report["stale"] is False
    assert report["total_requests"] == len(PROMPTS)


def requests_total(metrics_text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith("routeproxy_requests_total{")
    )


def test_several_workers_give_one_view(redis_server: RedisServer, served: list[Served]) -> None:
    """serve --workers 2: whichever worker a connection reaches, stats, reset, runtime config and /metrics agree."""
    proxy = serve(
        "--simulate",
        "--speed",
        "1000",
        "--workers",
        "2",
        env={"REDIS_URL": redis_server.url, "ENABLE_MODEL_ROUTING": "true", "ROUTEPROXY_REDIS_NAMESPACE": "rp"},
    )
    served.append(proxy)

    def views(expect: Any, tries: int = 80) -> dict[str, Any]:
        """Each worker's view, one fresh connection at a time, until both workers have shown ``expect``."""
        seen: dict[str, Any] = {}
        for _ in range(tries):
            with http.client(base_url=proxy.url, timeout=10) as client:  # a new connection: any worker
                replica = client.get("/readyz").json()["checks"]["replica"]
                report = client.get("/v1/model-routing/stats").json()
                view = (
                    report["total_requests"],
                    report["period"],
                    client.get("/v1/model-routing/config").json()["ab_test_ratio"],
                    requests_total(client.get("/metrics").text),
                )
            seen[replica] = view
            if len(seen) == 2 and all(value == expect for value in seen.values()):
                break
        return seen

    with http.client(timeout=10) as client:
        for index in range(12):
            with http.client(timeout=10) as fresh:
                assert send(proxy.url, PROMPTS[index % len(PROMPTS)], fresh).status_code == 200
        seen = views((12, 0, 0.5, 12.0))
        assert list(seen.values()) == [(12, 0, 0.5, 12.0)] * 2, seen
        assert client.put(f"{proxy.url}/v1/model-routing/config", json={"ab_test_ratio": 0.9}).status_code == 200
        assert client.post(f"{proxy.url}/v1/model-routing/reset").status_code == 200
        seen = views((0, 1, 0.9, 12.0))
        assert list(seen.values()) == [(0, 1, 0.9, 12.0)] * 2, seen
