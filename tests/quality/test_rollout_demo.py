"""The rollout demonstration, bounded: a clearly worse 3B is rolled back to ratio 0 within a few hundred requests;
with --proxy it drives a proxy that is already running."""

from __future__ import annotations

import pytest
from support import http
from support.upstreams import ProxyFactory

from routeproxy.bench.rollout import Case, DemoRefused, run_case
from routeproxy.settings import Tier
from routeproxy.sim.threadserver import ThreadedServer

# A proxy whose rollout decides within a few hundred ratings.
QUICK_ROLLOUT = {
    "routing.enabled": True,
    "routing.rollout.enabled": True,
    "routing.rollout.min_hold_s": 0.2,
    "routing.rollout.min_feedback": 100,
    "routing.rollout.interval_s": 0.1,
}


def upstreams(simulators: dict[Tier, ThreadedServer]) -> dict[Tier, str]:
    return {tier: f"{server.url}/v1" for tier, server in simulators.items()}


def test_demo_rolls_a_clearly_worse_small_tier_back_to_zero() -> None:
    lines: list[str] = []
    result = run_case(Case("worse", 0.60, 0.95), max_requests=1500, out=lines.append)
    assert result.final["step_index"] == -1 and result.final["paused"] is True
    assert [(entry["from_ratio"], entry["to_ratio"]) for entry in result.history] == [(0.0, 0.1), (0.1, 0.0)]
    assert result.history[-1]["why"].startswith("rollback: ")
    assert result.requests < 1500
    assert any("ratio 0.1 -> 0.0  rollback" in line for line in lines)


def test_demo_drives_a_running_proxy_with_the_rollout_on(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(upstreams(simulators), **QUICK_ROLLOUT)
    lines: list[str] = []
    result = run_case(Case("worse", 0.60, 0.95), max_requests=1500, out=lines.append, proxy_url=proxy.url)
    assert lines[0].endswith(f"at {proxy.url}, at most 1500 requests")
    # The proxy that was already running moved its own ratio from the feedback the demo sent it: back to 0.
    assert result.history[-1]["why"].startswith("rollback: ")
    assert result.final["step_index"] == -1 and result.requests < 1500
    config = http.get(f"{proxy.url}/v1/model-routing/config").json()
    assert config["ab_test_ratio"] == 0.0 and config["rollout"]["paused"] is True


def test_fresh_runs_the_demo_again_on_the_same_proxy(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(upstreams(simulators), **QUICK_ROLLOUT, **{"server.admin_token": "admin-token-for-the-demo"})
    worse = Case("worse", 0.60, 0.95)
    first = run_case(worse, max_requests=1500, out=lambda line: None, proxy_url=proxy.url)
    assert first.final["step_index"] == -1

    # Again without --fresh: the rollout is over, and the demo says what to do instead of sending 100 requests.
    again: list[str] = []
    unchanged = run_case(worse, max_requests=1500, out=again.append, proxy_url=proxy.url)
    assert unchanged.requests == 0 and "run with --fresh" in again[0]

    # Without the admin token the proxy refuses the reset, and the demo says why.
    with pytest.raises(DemoRefused, match=r"HTTP 40[13].*ROUTEPROXY_ADMIN_TOKEN"):
        run_case(worse, max_requests=1500, out=lambda line: None, proxy_url=proxy.url, fresh=True)

    lines: list[str] = []
    second = run_case(
        worse,
        max_requests=1500,
        out=lines.append,
        proxy_url=proxy.url,
        fresh=True,
        admin_token="admin-token-for-the-demo",
    )
    # A new period: the verdict is taken on this run's feedback alone, and only this run's steps are printed.
    # The operator's step and resume (the fresh start), then the controller's rollback on this run's feedback.
    *started, rolled_back = second.history
    assert [entry["why"] for entry in started] == ["a fresh demonstration run"] * len(started)
    assert (started[0]["from_ratio"], started[0]["to_ratio"]) == (0.0, 0.1)
    assert (rolled_back["from_ratio"], rolled_back["to_ratio"]) == (0.1, 0.0)
    assert rolled_back["why"].startswith("rollback: ")
    assert sum("ratio 0.1 -> 0.0  rollback" in line for line in lines) == 1
    assert second.analysis["tiers"]["8b"]["feedback_count"] <= second.requests
