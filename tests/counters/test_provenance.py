"""Honest headline numbers: the latency baseline is measured from the large tier unless one is configured, and the
stats say when their figures come from simulated or sped-up upstreams or from a period with routing off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from support import http
from support.processes import Served, serve
from support.upstreams import LABELS

from routeproxy.counters.memory import MemoryCounterStore
from routeproxy.counters.stats import Outcome, render_stats
from routeproxy.routing.classify import Complexity
from routeproxy.settings import Tier

ROOT = Path(__file__).resolve().parents[2]


async def stats_for(outcomes: list[Outcome], baseline: float | None = None) -> dict[str, Any]:
    store = MemoryCounterStore(LABELS)
    for item in outcomes:
        store.record(item)
    return render_stats(
        await store.snapshot(),
        ab_test_ratio=0.5,
        routing_enabled=True,
        baseline_latency_ms=baseline,
        relative_cost={Tier.SMALL: 0.375, Tier.LARGE: 1.0},
        labels=LABELS,
    )


def answered(tier: Tier, latency_ms: float, **extra: Any) -> Outcome:
    return Outcome(tier, Complexity.MEDIUM, 200, latency_ms, None, False, **extra)


async def test_with_routing_off_the_improvement_is_zero_and_said_to_measure_nothing() -> None:
    stats = await stats_for([answered(Tier.LARGE, latency, routing_off=True) for latency in (900.0, 1100.0)])
    assert stats["baseline_latency_ms"] == 1000  # the large tier's own average, not a fixed 4500
    assert stats["latency_improvement_pct"] == 0.0
    assert stats["provenance"]["routing_off_requests"] == 2
    assert stats["provenance"]["caveats"] == [
        "routing was off for every request of this period: all went to the large tier, so the improvement "
        "measures nothing"
    ]


async def test_simulated_and_sped_up_answers_are_said_with_their_speed() -> None:
    outcomes = [
        answered(Tier.SMALL, 250.0, simulator_speed=10.0),
        answered(Tier.LARGE, 450.0, simulator_speed=10.0),
        answered(Tier.LARGE, 450.0, simulator_speed=10.0, routing_off=True),
    ]
    stats = await stats_for(outcomes)
    provenance = stats["provenance"]
    assert (provenance["simulated_requests"], provenance["simulator_speed"]) == (3, 10.0)
    assert provenance["baseline"] == "large_tier"
    assert provenance["caveats"] == [
        "3 of 3 requests were answered by routeproxy's simulator, not a model, 10 times faster than its default "
        "pace (2.5 s / 4.5 s answers): the latencies and the improvement are the simulator's pacing",
        "routing was off for 1 of 3 requests of this period: the averages mix unrouted and routed traffic (reset the "
        "counters when switching routing on)",
    ]


async def test_a_configured_baseline_is_said_to_be_one_and_real_figures_carry_no_caveat() -> None:
    real = [answered(Tier.SMALL, 2500.0), answered(Tier.LARGE, 4500.0)]
    assert (await stats_for(real))["provenance"]["caveats"] == []
    configured = await stats_for(real, baseline=4500.0)
    assert configured["provenance"]["baseline"] == "configured"
    assert configured["provenance"]["caveats"] == [
        "the baseline is the configured 4500 ms (counters.baseline_latency_ms), not a measurement"
    ]
    only_small = await stats_for([answered(Tier.SMALL, 2500.0)])
    assert only_small["baseline_latency_ms"] == 0 and only_small["latency_improvement_pct"] == 0.0
    assert "no measured baseline" in only_small["provenance"]["caveats"][0]


def test_serve_simulate_sped_up_with_routing_off_says_so_in_stats_and_the_stats_command(served: list[Served]) -> None:
    proxy = serve("--simulate", "--speed", "10")
    served.append(proxy)
    for prompt in ("hi", "Compare apples and pears in a table", "How should a farm plan its feeding?"):
        body = {"model": "auto", "messages": [{"role": "user", "content": prompt}]}
        assert http.post(f"{proxy.url}/v1/chat/completions", json=body, timeout=30).status_code == 200
    stats = http.get(f"{proxy.url}/v1/model-routing/stats", timeout=10).json()
    assert stats["latency_improvement_pct"] == 0.0  # was 21 % against the fixed 4,500 ms, 91 % at --speed 10
    assert stats["baseline_latency_ms"] == stats["model_distribution"]["8b"]["avg_latency_ms"]
    provenance = stats["provenance"]
    assert provenance["simulated_requests"] == provenance["routing_off_requests"] == 3
    assert provenance["simulator_speed"] == 10.0
    assert len(provenance["caveats"]) == 2
    environ = {key: value for key, value in os.environ.items() if "REDIS_URL" not in key}
    table = subprocess.run(
        [sys.executable, "-m", "routeproxy", "stats", "--proxy", proxy.url],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert table.returncode == 0, table.stderr
    notes = [line for line in table.stdout.splitlines() if line.startswith("note: ")]
    assert notes == [f"note: {caveat}" for caveat in provenance["caveats"]]
