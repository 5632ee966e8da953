"""``routeproxy bench --scenario rollout``: the rollout controller on simulated traffic with a known truth.

Two simulated tiers (the seed's latencies, sped up) behind a real proxy with the controller on and short holds.
A client asks MEDIUM questions and rates each answer with a thumb drawn from the configured true satisfaction of the
tier that answered (a seeded random draw), through ``POST /v1/model-routing/feedback``. The controller's steps are
printed as they happen, with the figures it decided on. Each case ends when the rollout completes, when it is back
at ratio 0, or after ``max_requests``: bounded in count and time.

With ``proxy_url`` (``--proxy``) the same client drives a proxy that is already running instead, for example
``routeproxy serve --simulate`` with the rollout on, so its dashboard can be watched while the controller moves.
Such a proxy keeps its counters and its rollout state between runs: ``fresh`` (``--fresh``) starts each case from
scratch (a counters reset, then the rollout put back on its first step and resumed, both admin requests); without
it, a rollout that is already over is reported and left alone, and only the steps taken during the run are printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from routeproxy.api.app import create_app
from routeproxy.api.logs import configure_logging
from routeproxy.settings import LogConfig, Tier, load_settings
from routeproxy.sim.profile import seed_profile
from routeproxy.sim.simulator import create_simulator_app
from routeproxy.sim.threadserver import ThreadedServer

SPEED = 500.0  # the seed's 2.5 s / 4.5 s answers take 5 ms / 9 ms
CONCURRENCY = 16
LOOK_EVERY = 100  # requests between two looks at the stats
_QUESTIONS = (
    "How should a farm plan its feeding schedule for flock {n}?",
    "How can a small team improve its weekly planning in sprint {n}?",
    "How should I adjust ventilation for house {n} as the broilers grow?",
    "What are good practices for managing litter moisture in barn {n}?",
)


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    small: float  # true P(thumbs up) of the 3B tier's answers on MEDIUM queries
    large: float


DEFAULT_CASES = (
    Case("3B as good as 8B", 0.95, 0.95),
    Case("3B clearly worse (22 %)", 0.70, 0.90),
    Case("3B 11 % worse, just past the 10 % threshold", 0.80, 0.90),
)


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: Case
    requests: int
    seconds: float
    history: list[dict[str, Any]]
    final: dict[str, Any]  # the rollout block at the end
    analysis: dict[str, Any]  # the ab_analysis block at the end


def _settings(upstreams: dict[Tier, str], *, hold_s: float, min_feedback: int) -> Any:
    values: dict[str, Any] = {f"tiers.{tier}.base_url": url for tier, url in upstreams.items()}
    for tier in Tier:
        values[f"tiers.{tier}.kind"] = "vllm"
        values[f"tiers.{tier}.api_key"] = None
    values.update({
        "routing.enabled": True,
        "routing.rollout.enabled": True,
        "routing.rollout.min_hold_s": hold_s,
        "routing.rollout.min_feedback": min_feedback,
        "routing.rollout.interval_s": 0.2,
        "logging.level": "warning",
    })  # fmt: skip
    return load_settings(environ={}, overrides=values)


class DemoRefused(Exception):
    """The running proxy refused what the demonstration needs (``--fresh``'s admin requests)."""


def start_fresh(url: str, admin_token: str | None) -> None:
    """A new A/B period and the rollout back on its first step, running: what a new demonstration needs."""
    headers = {"authorization": f"Bearer {admin_token}"} if admin_token else {}
    with httpx.Client(base_url=url, timeout=30, headers=headers, trust_env=False) as client:
        reset = client.post("/v1/model-routing/reset")
        _check(reset, "reset the counters")
        step = {"rollout": {"step": 0, "paused": False, "why": "a fresh demonstration run"}}
        _check(client.put("/v1/model-routing/config", json=step), "put the rollout back on its first step")


def _check(response: httpx.Response, what: str) -> None:
    if response.status_code == 200:
        return
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    hint = (
        " (an admin request: set ROUTEPROXY_ADMIN_TOKEN to the proxy's admin token)"
        if response.status_code in (401, 403)
        else ""
    )
    raise DemoRefused(f"the proxy would not {what}: HTTP {response.status_code}: {message}{hint}")


def _entry_key(entry: dict[str, Any]) -> tuple[Any, ...]:
    return entry["at"], entry["from_step"], entry["to_step"], entry["why"]


def _over(rollout: dict[str, Any]) -> bool:
    return bool(rollout["waiting_for"] == "complete" or (rollout["paused"] and rollout["step_index"] == -1))


async def _drive(
    url: str, case: Case, *, max_requests: int, seed: int, report: Callable[[int, float, dict[str, Any]], bool]
) -> int:
    """Ask, rate, and every LOOK_EVERY requests let ``report`` look at the stats; it returns True to stop."""
    rng = random.Random(seed)
    truth = {"3b": case.small, "8b": case.large}  # by x-routeproxy-tier: the tiers' labels (this demo's defaults)
    sent = 0
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one(index: int) -> None:
            question = _QUESTIONS[index % len(_QUESTIONS)].format(n=index)
            body = {"model": "auto", "messages": [{"role": "user", "content": question}]}
            response = await client.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            thumbs = "up" if rng.random() < truth[response.headers["x-routeproxy-tier"]] else "down"
            rating = {"request_id": response.headers["x-request-id"], "thumbs": thumbs}
            (await client.post("/v1/model-routing/feedback", json=rating)).raise_for_status()

        while sent < max_requests:
            batch = range(sent, min(sent + LOOK_EVERY, max_requests))
            for start in range(batch.start, batch.stop, CONCURRENCY):
                await asyncio.gather(*(one(index) for index in range(start, min(start + CONCURRENCY, batch.stop))))
            sent = batch.stop
            stats = (await client.get("/v1/model-routing/stats")).json()
            if report(sent, time.monotonic() - started, stats):
                break
    return sent


@contextlib.contextmanager
def _demo_proxy(*, hold_s: float, min_feedback: int) -> Iterator[str]:
    """Two simulated tiers and a proxy in this process, with the controller on; yields the proxy's URL."""
    simulators = {
        tier: ThreadedServer(create_simulator_app(seed_profile(tier, model, speed=SPEED))).start()
        for tier, model in (
            (Tier.SMALL, "meta-llama/Llama-3.2-3B-Instruct"),
            (Tier.LARGE, "meta-llama/Llama-3.1-8B-Instruct"),
        )
    }
    settings = _settings(
        {tier: f"{server.url}/v1" for tier, server in simulators.items()}, hold_s=hold_s, min_feedback=min_feedback
    )
    proxy = ThreadedServer(create_app(settings)).start()
    try:
        yield proxy.url
    finally:
        proxy.stop()
        for server in simulators.values():
            server.stop()


def run_case(
    case: Case,
    *,
    max_requests: int = 12_000,
    hold_s: float = 1.0,
    min_feedback: int = 200,
    seed: int = 12,
    out: Callable[[str], None] = print,
    proxy_url: str | None = None,
    fresh: bool = False,
    admin_token: str | None = None,
) -> CaseResult:
    earlier: set[tuple[Any, ...]] = set()  # history entries from before this case are not this case's steps
    shown: set[tuple[Any, ...]] = set()
    last: dict[str, Any] = {}
    if proxy_url is not None:
        before = httpx.get(f"{proxy_url}/v1/model-routing/stats", timeout=30, trust_env=False).json()
        earlier = {_entry_key(entry) for entry in before["rollout"]["history"]}
        if fresh:
            start_fresh(proxy_url, admin_token)
        elif _over(before["rollout"]):
            out(
                f"{case.name}: the rollout of the proxy at {proxy_url} is over already (ratio "
                f"{before['rollout']['ratio']}, {before['rollout']['status']}): run with --fresh to reset its counters "
                "and start the rollout again"
            )
            return CaseResult(case, 0, 0.0, [], before["rollout"], before["ab_analysis"])

    def report(sent: int, elapsed: float, stats: dict[str, Any]) -> bool:
        nonlocal last
        last = stats
        rollout = stats["rollout"]
        for entry in rollout["history"]:
            if _entry_key(entry) in earlier or _entry_key(entry) in shown:
                continue
            shown.add(_entry_key(entry))
            figures = entry["figures"]
            counts = figures.get("feedback", {})
            means = figures.get("mean_score", {})
            detail = (
                f" [3b {means.get('3b')} n={counts.get('3b')}, 8b {means.get('8b')} n={counts.get('8b')}]"
                if means
                else ""
            )
            out(
                f"  {elapsed:6.1f} s  {sent:5d} requests  ratio {entry['from_ratio']} -> {entry['to_ratio']}  "
                f"{entry['why']}{detail}"
            )
        return _over(rollout)

    rules = f"hold {hold_s:g} s, {min_feedback} feedback events per step" if proxy_url is None else f"at {proxy_url}"
    out(
        f"{case.name}: true satisfaction on MEDIUM 3b {case.small:.2f}, 8b {case.large:.2f}; "
        f"{rules}, at most {max_requests} requests"
    )
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        url = proxy_url or stack.enter_context(_demo_proxy(hold_s=hold_s, min_feedback=min_feedback))
        sent = asyncio.run(_drive(url, case, max_requests=max_requests, seed=seed, report=report))
    rollout, analysis = last["rollout"], last["ab_analysis"]
    history = [entry for entry in rollout["history"] if _entry_key(entry) not in earlier]
    interval = analysis["difference"]["degradation_interval_pct"]
    out(
        f"  end after {sent} requests, {time.monotonic() - started:.1f} s: ratio {rollout['ratio']}"
        f"{' (paused)' if rollout['paused'] else ''}, {rollout['status']}; verdict {analysis['verdict']}, "
        f"degradation {analysis['difference']['degradation_pct']}% (95% always-valid interval {interval}) "
        f"on {analysis['tiers']['3b']['feedback_count']} + {analysis['tiers']['8b']['feedback_count']} feedback events"
    )
    return CaseResult(case, sent, time.monotonic() - started, history, rollout, analysis)


def run_demo(
    cases: Sequence[Case] = DEFAULT_CASES,
    *,
    max_requests: int = 12_000,
    out: Callable[[str], None] = print,
    proxy_url: str | None = None,
    fresh: bool = False,
    admin_token: str | None = None,
) -> list[CaseResult]:
    configure_logging(LogConfig(format="json", level="warning"))  # the proxy runs in this process: keep it quiet
    results = []
    for case in cases:
        results.append(
            run_case(
                case, max_requests=max_requests, out=out, proxy_url=proxy_url, fresh=fresh, admin_token=admin_token
            )
        )
        out("")
    return results
