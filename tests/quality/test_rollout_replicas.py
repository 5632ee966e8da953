"""Three real routeproxy processes, one real Redis, the rollout controller on: one replica acts per step, all
three report the same step and history, a restart keeps both, and the operator can pause, resume and override."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import httpx
import orjson
from support.processes import Served, serve
from support.redis_server import RedisServer
from support.wait import eventually

# Loose thresholds and short holds, so a few hundred requests decide: the maths is tested on its own elsewhere.
ROLLOUT_ENV = {
    "ENABLE_MODEL_ROUTING": "true",
    "ROUTEPROXY_REDIS_NAMESPACE": "rp-rollout",
    "ROUTEPROXY_ROLLOUT": "true",
    "ROUTEPROXY_ROLLOUT_SCHEDULE": "0.4,0.5,0.6",
    "ROUTEPROXY_ROLLOUT_MIN_HOLD_S": "0.3",
    "ROUTEPROXY_ROLLOUT_MIN_FEEDBACK": "30",
    "ROUTEPROXY_ROLLOUT_INTERVAL_S": "0.1",
    "ROUTEPROXY_QUALITY_MIN_FEEDBACK": "10",
    "ROUTEPROXY_QUALITY_REVIEW_AT_PCT": "20",
    "ROUTEPROXY_QUALITY_ROLLBACK_AT_PCT": "40",
}
_ids = itertools.count()


def start(count: int, redis_url: str, served: list[Served]) -> list[Served]:
    replicas = [
        serve("--simulate", "--speed", "1000", env={"REDIS_URL": redis_url, **ROLLOUT_ENV}) for _ in range(count)
    ]
    served.extend(replicas)
    return replicas


def stats(url: str) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(f"{url}/v1/model-routing/stats", timeout=10).json()
    return result


def rate(replicas: list[Served], client: httpx.Client, count: int, up: dict[str, bool]) -> None:
    """``count`` MEDIUM questions round the replicas; each answer rated up or down by its tier, every fifth on
    another replica than the one that served it (which then waits up to a flush interval for the decision)."""
    for index in range(count):
        serving = replicas[index % 3]
        rating = replicas[(index + 1) % 3] if index % 5 == 0 else serving
        question = f"How should a farm plan its feeding schedule for flock {next(_ids)}?"
        response = client.post(
            f"{serving.url}/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": question}]},
        )
        assert response.status_code == 200 and response.headers["x-routeproxy-complexity"] == "medium"
        tier = response.headers["x-routeproxy-tier"]  # the tier's label, as stats and feedback name it
        body = {"request_id": response.headers["x-routeproxy-request-id"], "thumbs": "up" if up[tier] else "down"}
        assert client.post(f"{rating.url}/v1/model-routing/feedback", json=body).status_code == 200


def wait_for(replicas: list[Served], condition: Any) -> dict[str, Any]:
    """The first rollout block of the first replica that satisfies ``condition`` (polled, bounded)."""

    def check() -> dict[str, Any] | None:
        report: dict[str, Any] = stats(replicas[0].url)["rollout"]
        return report if condition(report) else None

    return eventually(check, tries=400, interval=0.05, what="the rollout step")


def rate_until(replicas: list[Served], client: httpx.Client, up: dict[str, bool], condition: Any) -> dict[str, Any]:
    """Rate in rounds of 30 until the first replica's rollout block satisfies ``condition`` (the always-valid
    verdict needs a few hundred ratings even at these loose thresholds)."""
    for _ in range(40):
        report: dict[str, Any] = stats(replicas[0].url)["rollout"]
        if condition(report):
            return report
        rate(replicas, client, 30, up)
    return wait_for(replicas, condition)


def steps_logged(logs: list[str]) -> Counter[tuple[float, float, str]]:
    """(from, to, why) of every rollout_step log line, over all the replicas' logs."""
    seen: Counter[tuple[float, float, str]] = Counter()
    for text in logs:
        for line in text.splitlines():
            if '"rollout_step"' in line:
                event = orjson.loads(line)
                seen[event["from_ratio"], event["to_ratio"], event["why"]] += 1
    return seen


def test_three_replicas_one_actor_per_step_same_view_and_restart_keeps_it(
    redis_server: RedisServer, served: list[Served]
) -> None:
    replicas = start(3, redis_server.url, served)
    with httpx.Client(timeout=10) as client:
        good = {"3b": True, "8b": True}
        rate_until(replicas, client, good, lambda report: report["step_index"] >= 1)
        rate_until(replicas, client, good, lambda report: report["step_index"] == 2)
        # A new A/B period in which 3B answers badly: the controller counts it afresh and steps back.
        assert client.post(f"{replicas[2].url}/v1/model-routing/reset").status_code == 200
        report = rate_until(
            replicas,
            client,
            {"3b": False, "8b": True},
            lambda report: any(e["why"].startswith("rollback") for e in report["history"]),
        )

    def agreed() -> list[dict[str, Any]] | None:
        """Every replica's view, once they agree (a look may land between two of the reads)."""
        views = [stats(replica.url)["rollout"] for replica in replicas]
        same = all(v["history"] == views[0]["history"] and v["step_index"] == views[0]["step_index"] for v in views)
        return views if same else None

    views = eventually(agreed, tries=100, interval=0.05, what="the replicas agreeing")
    history = views[0]["history"]
    ratios = [(entry["from_ratio"], entry["to_ratio"]) for entry in history]
    assert ratios[:3] == [(0.0, 0.4), (0.4, 0.5), (0.5, 0.6)]
    assert all(entry["by"] == "controller" for entry in history)
    assert report["history"][-1]["figures"]["verdict"] == "rollback"
    runtime = [httpx.get(f"{replica.url}/v1/model-routing/config", timeout=10).json() for replica in replicas]
    assert {view["rollout"]["step_index"] for view in runtime} == {views[0]["step_index"]}

    logs = [replica.stop() for replica in replicas]
    logged = steps_logged(logs)
    assert sorted(logged) == sorted((e["from_ratio"], e["to_ratio"], e["why"]) for e in history)
    assert set(logged.values()) == {1}  # each change was made, and logged, by exactly one replica

    restarted = start(1, redis_server.url, served)[0]
    after = stats(restarted.url)["rollout"]
    assert after["history"] == history and after["step_index"] == views[0]["step_index"]


def test_operator_pauses_overrides_and_resumes_through_the_runtime_config(
    redis_server: RedisServer, served: list[Served]
) -> None:
    replica = start(1, redis_server.url, served)[0]
    config = f"{replica.url}/v1/model-routing/config"
    wait_for([replica], lambda report: report["step_index"] == 0)
    refused = httpx.put(config, json={"ab_test_ratio": 0.2}, timeout=10)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "rollout_active"
    bad = httpx.put(config, json={"rollout": {"step": 7}}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rollout.step"
    paused = httpx.put(config, json={"rollout": {"paused": True, "why": "release freeze"}}, timeout=10)
    assert paused.status_code == 200 and paused.json()["rollout"]["paused"] is True
    assert httpx.put(config, json={"ab_test_ratio": 0.2}, timeout=10).json()["ab_test_ratio"] == 0.2
    moved = httpx.put(config, json={"rollout": {"step": 2, "paused": False}}, timeout=10).json()
    assert moved["rollout"] == {"enabled": True, "paused": False, "step_index": 2, "ratio": 0.6}
    assert moved["ab_test_ratio"] == 0.6
    history = stats(replica.url)["rollout"]["history"]
    assert [(entry["why"], entry["by"]) for entry in history[1:]] == [
        ("release freeze", "operator"),
        ("set by the operator", "operator"),
        ("resumed by the operator", "operator"),
    ]
