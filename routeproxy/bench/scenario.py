"""The seed's scenario: its query mix through the proxy at each of its ratios, against its projections table."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from typing import Any

import httpx

from routeproxy.bench.loadgen import run_async, run_load
from routeproxy.bench.procs import Proc, proxy_env, spawn
from routeproxy.bench.run import Target
from routeproxy.bench.session import Session
from routeproxy.bench.table import Table
from routeproxy.settings import SETTINGS_BY_KEY

# The seed report's "Performance Projections": ratio -> (share to 3B in %, stated average latency in ms).
SEED_PROJECTIONS = {0.3: (45, 3550), 0.5: (60, 3075), 0.8: (72, 2835)}
SEED_SMALL_MS, SEED_LARGE_MS, SEED_BASELINE_MS = 2500, 4500, 4500
# Share of the scenario's prompts the simulated small tier answers with a short refusal (a weak 3B answer). Not a
# measured rate: it gives the cascade's check something to find; the escalated share it yields is reported.
SMALL_WEAK_SHARE = 0.2
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


def read_until(client: httpx.Client, url: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """GET ``url`` until ``done`` says yes, for at most 10 s (Redis-backed settings and counters lag by ~1 s)."""
    deadline = time.monotonic() + 10
    while True:
        answer: dict[str, Any] = client.get(url).json()
        if done(answer) or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)


def scenario_upstreams(session: Session) -> dict[str, str]:
    """Two simulators paced like the seed's tiers (base URLs by tier), started once per bench session. The small
    one answers a share of prompts weakly, so the cascade's check has weak answers to find; classify mode relays
    them like any other answer."""
    speed = session.options.speed
    urls = {}
    for tier, model in (("small", session.options.small_model), ("large", session.options.large_model)):
        if f"scenario-sim-{tier}" not in session.procs:
            args = ["routeproxy", "simulate", "--tier", tier, "--model", model, "--speed", str(speed)]
            if tier == "small":
                args += ["--weak-share", str(SMALL_WEAK_SHARE)]
            sim = spawn(f"simulator {tier}", args, dict(os.environ), session.cores.rest, "/health")
            session.procs[f"scenario-sim-{tier}"] = session._keep(sim)
        urls[tier] = f"http://127.0.0.1:{session.procs[f'scenario-sim-{tier}'].port}/v1"
    return urls


def scenario_proxy(session: Session, **env: str) -> Proc:
    """The scenario's proxy in front of ``scenario_upstreams``, with extra environment ``env``; one per ``env``."""
    key = "scenario-proxy:" + ",".join(f"{name}={value}" for name, value in sorted(env.items()))
    if key not in session.procs:
        # The hold's time bound in the seed's time, like every other delay of the scenario.
        hold_ms = str(max(1, round(int(SETTINGS_BY_KEY["cascade.hold_ms"].default) / session.options.speed)))
        environment = proxy_env(
            scenario_upstreams(session),
            session.redis_url,
            ROUTEPROXY_RULES="poultry",
            ROUTEPROXY_CASCADE_HOLD_MS=hold_ms,
            # The scenario switches ratio and mode and resets between runs, from loopback, without a token.
            ROUTEPROXY_ADMIN_LOOPBACK_WITHOUT_TOKEN="true",
            **env,
        )
        proc = spawn("proxy (scenario)", ["routeproxy", "serve"], environment, session.cores.proxy(), "/healthz")
        session.procs[key] = session._keep(proc)
    return session.procs[key]


def workload_scenario(session: Session) -> Table:
    requests, duration = session.cap(200, 120.0)
    speed = session.options.speed
    proxy = scenario_proxy(session)
    base = f"http://127.0.0.1:{proxy.port}/v1/model-routing"
    mix = scenario_mix(min(requests, 1000))
    target = Target("proxy", "127.0.0.1", proxy.port, "/v1/chat/completions", "auto", proxy)
    sent = [target.request(body, {}) for _, body in mix]
    shares = {kind: sum(k == kind for k, _ in mix) / len(mix) for kind in ("lookup", "medium", "comparison")}
    columns = (
        "ratio",
        "projected 3B %",
        "expected 3B %",
        "3B %",
        "8B %",
        "projected avg ms",
        "projection recomputed",
        "avg ms",
        "3B avg",
        "8B avg",
        "client avg",
        "vs 4,500 ms",
    )
    table = Table(f"scenario: a mixed query load through the proxy, simulators at speed x{speed:g}", columns)
    runs: list[dict[str, Any]] = []
    with httpx.Client(trust_env=False, timeout=10) as client:
        for ratio, (seed_small, seed_avg) in SEED_PROJECTIONS.items():
            change = {"ab_test_ratio": ratio, "enable_model_routing": True, "routing_mode": "classify"}
            client.put(f"{base}/config", json=change).raise_for_status()
            client.post(f"{base}/reset").raise_for_status()
            read_until(client, f"{base}/config", lambda answer: answer == {**answer, **change})  # noqa: B023
            result = run_async(
                run_load("127.0.0.1", proxy.port, sent, concurrency=50, max_requests=len(sent), max_duration=duration)
            )
            answered = len(result.samples)
            stats = read_until(client, f"{base}/stats", lambda answer: answer["total_requests"] >= answered)  # noqa: B023
            small, large = stats["model_distribution"].values()  # small first, whatever the tiers are called
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
        "projection recomputed = the projected shares at 2,500 / 4,500 ms: the projected balanced and aggressive"
        " averages leave out the 5 % complex share (60 % x 2,500 + 40 % x 4,500 = 3,300 ms, not 3,075); its"
        " conservative one is 50 ms under the projected shares",
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
