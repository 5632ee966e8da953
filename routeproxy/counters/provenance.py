"""Where a period's headline figures come from, said next to them: the baseline the latency improvement is measured
against, requests answered by routeproxy's simulator (sped up or not) rather than a model, and requests decided while
routing was off. A figure from a demo, or from a period that mixes routing off and on, must not pass for a
measurement of routing between real models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from routeproxy.settings import Tier


class Counts(Protocol):
    """What this reads of a period's totals (``stats.Snapshot`` is one; stats imports this module, not the reverse)."""

    def get(self, metric: str, *scope: str) -> int: ...


def provenance(snapshot: Counts, labels: Mapping[Tier, str], baseline_source: str, baseline_ms: int) -> dict[str, Any]:
    """The ``provenance`` block of the stats JSON, with ``caveats``: one sentence for each reason to read the
    headline figures with care (none when they are a measurement of routing between real upstreams)."""
    total = sum(snapshot.get("requests", labels[tier]) for tier in Tier)
    simulated = sum(snapshot.get("simulated", labels[tier]) for tier in Tier)
    speed_sum = sum(snapshot.get("simulator_speed_x100_sum", labels[tier]) for tier in Tier)
    speed = round(speed_sum / simulated / 100, 2) if simulated else None
    routing_off = sum(snapshot.get("routing_off", labels[tier]) for tier in Tier)
    caveats: list[str] = []
    if simulated:
        pace = f", {speed:g} times faster than its default pace (2.5 s / 4.5 s answers)" if speed and speed != 1 else ""
        caveats.append(
            f"{simulated} of {total} requests were answered by routeproxy's simulator, not a model{pace}: the "
            "latencies and the improvement are the simulator's pacing"
        )
    if routing_off and routing_off == total:
        caveats.append(
            "routing was off for every request of this period: all went to the large tier, so the improvement "
            "measures nothing"
        )
    elif routing_off:
        caveats.append(
            f"routing was off for {routing_off} of {total} requests of this period: the averages mix unrouted and "
            "routed traffic (reset the counters when switching routing on)"
        )
    if baseline_source == "configured":
        caveats.append(
            f"the baseline is the configured {baseline_ms} ms (counters.baseline_latency_ms), not a measurement"
        )
    elif baseline_source == "none" and total:
        caveats.append(
            "no request went to the large tier in this period, so there is no measured baseline and no improvement "
            "(counters.baseline_latency_ms sets one)"
        )
    return {
        "baseline": baseline_source,
        "simulated_requests": simulated,
        "simulator_speed": speed,
        "routing_off_requests": routing_off,
        "caveats": caveats,
    }
