"""What operators rely on: /metrics agreeing with the stats endpoint, and the sidecar layout for real."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from support import http
from support.processes import ROOT, Served, serve
from support.upstreams import ProxyFactory

from routeproxy.settings import Tier
from routeproxy.sim.threadserver import ThreadedServer


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = http.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and all(dict(sample_labels).get(key) == wanted for key, wanted in labels.items())
    )


def test_metrics_after_traffic_match_the_stats_endpoint(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(
        {tier: f"{server.url}/v1" for tier, server in simulators.items()},
        **{"routing.enabled": True, "routing.ab_test_ratio": 0.5},
    )
    prompts = [
        "Write a haiku about rain",
        "Compare Python vs Go for web servers",
        "How should a farm plan its feeding schedule?",
        "How can a small team improve its weekly planning?",
    ]
    with http.client(base_url=proxy.url, timeout=10) as client:
        for index in range(24):
            body: dict[str, Any] = {"model": "auto", "messages": [{"role": "user", "content": prompts[index % 4]}]}
            if index % 3 == 0:
                body["stream"] = True
            headers = {"x-sim-status": "503"} if index % 8 == 7 else {}
            client.post("/v1/chat/completions", json=body, headers=headers)
        client.post("/v1/chat/completions", content=b"{broken", headers={"content-type": "application/json"})
        stats = client.get("/v1/model-routing/stats").json()
    samples = scrape(proxy.url)

    assert stats["total_requests"] == 24
    for label in ("3b", "8b"):
        assert total(samples, "routeproxy_requests_total", tier=label) == stats["model_distribution"][label]["count"]
        assert total(samples, "routeproxy_upstream_errors_total", tier=label) == stats["upstream_errors"][label]
        assert total(samples, "routeproxy_fallbacks_total", tier=label) == stats["fallbacks"][label]
        assert (
            total(samples, "routeproxy_upstream_latency_seconds_count", tier=label)
            == stats["model_distribution"][label]["count"]
        )
    for complexity in ("simple", "medium", "complex"):
        assert (
            total(samples, "routeproxy_requests_total", complexity=complexity)
            == stats["complexity_distribution"][complexity]["count"]
        )
    assert total(samples, "routeproxy_requests_total", status="5xx") > 0
    assert total(samples, "routeproxy_rejected_total", status="400") == 1
    assert total(samples, "routeproxy_proxy_overhead_seconds_count") == 24
    assert total(samples, "routeproxy_classify_seconds_count") == 24
    assert total(samples, "routeproxy_ttfb_seconds_count") == sum(stats["streams"].values())
    assert total(samples, "routeproxy_inflight_requests") == 0
    assert total(samples, "routeproxy_ab_test_ratio") == 0.5
    assert total(samples, "routeproxy_routing_enabled") == 1
    assert total(samples, "routeproxy_redis_flush_lag_seconds") == 0  # in-memory: nothing to lag


APP = textwrap.dedent(
    """
    # The application container of the sidecar layout: it knows nothing of routeproxy but OPENAI_BASE_URL.
    from openai import OpenAI

    client = OpenAI()  # OPENAI_BASE_URL and OPENAI_API_KEY from the environment, as in the pod spec
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Compare Ross 308 vs Cobb 500 at 21 days"}]
    )
    reply = raw.parse()
    stream = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Write a haiku about rain"}], stream=True
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    print(raw.headers["x-routeproxy-tier"], reply.model, bool(reply.choices[0].message.content), bool(streamed))
    """
)


def test_sidecar_layout_app_and_proxy_as_two_processes(served: list[Served]) -> None:
    sidecar = serve(
        "--simulate",
        "--speed",
        "200",
        env={"ENABLE_MODEL_ROUTING": "true", "ROUTEPROXY_API_KEYS": "pod-local-key-1234"},
    )
    served.append(sidecar)
    assert http.get(f"{sidecar.url}/readyz").json()["status"] == "ready"
    environ = {
        **os.environ,
        "OPENAI_BASE_URL": f"{sidecar.url}/v1",
        "OPENAI_API_KEY": "pod-local-key-1234",
    }
    app = subprocess.run([sys.executable, "-c", APP], env=environ, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert app.returncode == 0, app.stderr
    assert app.stdout.split() == ["8b", "meta-llama/Llama-3.1-8B-Instruct", "True", "True"]
    stats = http.get(f"{sidecar.url}/v1/model-routing/stats").json()
    assert stats["total_requests"] == 2
