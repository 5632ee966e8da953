"""The rollout through faults, with real routeproxy processes and a real Redis: a replica whose clock runs 8 days
fast cannot shorten a hold, and a Redis restarted empty mid-rollout never lets a replica route more MEDIUM traffic
to 3B than the rollout had reached; the controller writes the state back, says so in the history, and every
replica, one of them restarted, agrees on the step."""

from __future__ import annotations

import itertools
import sys
from typing import Any

import httpx
from support.processes import Served, launch, serve
from support.redis_server import RedisServer
from support.wait import eventually

# Loose thresholds, so a few hundred ratings decide (the maths is tested on its own).
ROLLOUT_ENV = {
    "ENABLE_MODEL_ROUTING": "true",
    "ROUTEPROXY_REDIS_NAMESPACE": "rp-faults",
    "ROUTEPROXY_ROLLOUT": "true",
    "ROUTEPROXY_ROLLOUT_SCHEDULE": "0.4,0.5,0.6",
    "ROUTEPROXY_ROLLOUT_MIN_FEEDBACK": "30",
    "ROUTEPROXY_QUALITY_MIN_FEEDBACK": "10",
    "ROUTEPROXY_QUALITY_REVIEW_AT_PCT": "20",
    "ROUTEPROXY_QUALITY_ROLLBACK_AT_PCT": "40",
}
EIGHT_DAYS_S = 8 * 24 * 3600
# `routeproxy serve` with time.time() running ahead: every reader of the local clock in the process sees it.
SKEWED_SERVE = (
    "import sys, time\n"
    "real, ahead = time.time, float(sys.argv.pop(1))\n"
    "time.time = lambda: real() + ahead\n"
    "from routeproxy.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
_questions = itertools.count()


def serve_skewed(ahead_s: float, env: dict[str, str]) -> Served:
    return launch([sys.executable, "-c", SKEWED_SERVE, str(ahead_s), "serve", "--simulate", "--speed", "1000"], env)


def rollout(url: str) -> dict[str, Any]:
    report: dict[str, Any] = httpx.get(f"{url}/v1/model-routing/stats", timeout=10).json()["rollout"]
    return report


def routing_ratio(url: str) -> float:
    """The ab_test_ratio this replica routes MEDIUM traffic with now."""
    return float(httpx.get(f"{url}/v1/model-routing/config", timeout=10).json()["ab_test_ratio"])


def rate_all_up(replicas: list[Served], count: int) -> None:
    with httpx.Client(timeout=10) as client:
        for index in range(count):
            url = replicas[index % len(replicas)].url
            question = f"How should a farm plan its feeding schedule for flock {next(_questions)}?"
            response = client.post(
                f"{url}/v1/chat/completions",
                json={"model": "auto", "messages": [{"role": "user", "content": question}]},
            )
            assert response.status_code == 200 and response.headers["x-routeproxy-complexity"] == "medium"
            body = {"request_id": response.headers["x-routeproxy-request-id"], "thumbs": "up"}
            assert client.post(f"{url}/v1/model-routing/feedback", json=body).status_code == 200


def test_a_replica_whose_clock_runs_8_days_fast_cannot_shorten_a_hold(
    redis_server: RedisServer, served: list[Served]
) -> None:
    env = {"REDIS_URL": redis_server.url, **ROLLOUT_ENV, "ROUTEPROXY_ROLLOUT_MIN_HOLD_S": "3600"}
    env["ROUTEPROXY_ROLLOUT_INTERVAL_S"] = "0.1"
    honest = serve("--simulate", "--speed", "1000", env=env)
    served.append(honest)
    eventually(lambda: rollout(honest.url)["step_index"] == 0, what="the rollout started")
    rate_all_up([honest], 200)  # 3B as good as 8B: the verdict passes; only the hour's hold keeps the step
    eventually(lambda: rollout(honest.url)["waiting_for"] == "hold_time", tries=400, interval=0.05, what="held")

    fast = serve_skewed(EIGHT_DAYS_S, env)
    served.append(fast)
    eventually(lambda: rollout(fast.url)["waiting_for"] == "hold_time", tries=400, interval=0.05, what="its look")
    # It has looked (its first look, at start, is where its own clock would have stepped): the step stays.
    for _ in range(20):
        report = rollout(fast.url)
        assert report["step_index"] == 0 and len(report["history"]) == 1, report
        assert 0 <= report["held_s"] < 3600, report  # its own clock would say 8 days
    assert rollout(honest.url)["step_index"] == 0


def test_redis_restarted_empty_mid_rollout_routes_no_higher_and_three_replicas_agree(
    redis_server: RedisServer, served: list[Served]
) -> None:
    # Configured at 0.9, above every step: what a replica would fall back to if it forgot the rollout.
    env = {"REDIS_URL": redis_server.url, **ROLLOUT_ENV, "AB_TEST_RATIO": "0.9"}
    env |= {"ROUTEPROXY_ROLLOUT_MIN_HOLD_S": "0.3", "ROUTEPROXY_ROLLOUT_INTERVAL_S": "2"}
    replicas = [serve("--simulate", "--speed", "1000", env=env) for _ in range(3)]
    served.extend(replicas)
    for _ in range(40):  # rate until the rollout reached its last step, 0.6
        if rollout(replicas[0].url)["step_index"] == 2:
            break
        rate_all_up(replicas, 30)
    eventually(lambda: rollout(replicas[0].url)["step_index"] == 2, tries=200, interval=0.05, what="step 2")
    eventually(lambda: all(routing_ratio(replica.url) == 0.6 for replica in replicas), what="0.6 everywhere")
    before = rollout(replicas[0].url)["history"]
    # Each replica has read the state (its stats read it): any of them can write its history back.
    eventually(lambda: all(len(rollout(replica.url)["history"]) == len(before) for replica in replicas))

    restarted = replicas.pop()
    restarted.stop()
    redis_server.restart()  # no persistence: Redis comes back empty

    seen: list[float] = []

    def resumed() -> bool:
        seen.extend(routing_ratio(replica.url) for replica in replicas)
        history = rollout(replicas[0].url)["history"]
        return len(history) > len(before) and history[-1]["why"].startswith("the stored rollout state was lost")

    eventually(resumed, tries=600, interval=0.02, what="the state written back")
    assert seen and max(seen) <= 0.6, seen  # never above the step the rollout had reached
    replicas.append(serve("--simulate", "--speed", "1000", env=env))
    served.append(replicas[-1])
    views = [rollout(replica.url) for replica in replicas]
    history = views[0]["history"]
    assert history[: len(before)] == before  # what happened before the loss is kept
    lost = history[len(before)]
    assert (lost["from_step"], lost["by"]) == (2, "controller") and lost["to_step"] <= 2
    assert len(history) == len(before) + 1  # written once, by one replica
    assert all(view["history"] == history and view["step_index"] == lost["to_step"] for view in views)
    expected = [0.4, 0.5, 0.6][lost["to_step"]]
    eventually(lambda: all(routing_ratio(replica.url) == expected for replica in replicas), what="one ratio")
