"""Routing policy: the seed's examples, the stable A/B hash, the monotone ramp, and tools that agree with the proxy."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from support import http
from support.upstreams import ProxyFactory, settings_for

from routeproxy.routing.classify import Classification, Classifier, Complexity, load_rules
from routeproxy.routing.route import Reason, Router, decide, stable_draw
from routeproxy.settings import Tier
from routeproxy.sim.threadserver import ThreadedServer
from routeproxy.wire.parse import Hints, last_user_text

SEED_SIMPLE = {
    "model": "auto",
    "messages": [{"role": "user", "content": "What is the weight of Ross 308 at 21 days?"}],
    "query_type": "genetics_performance",
    "entities": {"breed": "Ross 308", "age_days": 21},
}
SEED_COMPLEX = {
    "model": "auto",
    "messages": [{"role": "user", "content": "Compare Ross 308 vs Cobb 500 at 21 and 28 days"}],
    "query_type": "comparative",
    "entities": {"breed": "Ross 308, Cobb 500", "age_days": "21, 28"},
}
MEDIUM_PROMPTS = [f"How should a farm with {n} birds plan its feeding schedule?" for n in range(40)]


@pytest.fixture
def routed_proxy(simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory) -> ThreadedServer:
    return start_proxy(
        {tier: f"{server.url}/v1" for tier, server in simulators.items()},
        **{"routing.enabled": True, "routing.rules": "poultry", "routing.ab_test_ratio": 0.5},
    )


def last_body(server: ThreadedServer) -> dict[str, Any]:
    body: dict[str, Any] = http.get(f"{server.url}/_sim/requests").json()[-1]["body"]
    return body


@pytest.mark.parametrize(
    ("request_body", "tier", "complexity"),
    [(SEED_SIMPLE, "3b", "simple"), (SEED_COMPLEX, "8b", "complex")],
)
def test_seed_examples_route_as_the_seed_says(
    routed_proxy: ThreadedServer,
    simulators: dict[Tier, ThreadedServer],
    request_body: dict[str, Any],
    tier: str,
    complexity: str,
) -> None:
    response = http.post(f"{routed_proxy.url}/v1/chat/completions", json=request_body)
    assert response.status_code == 200
    assert response.headers["x-routeproxy-tier"] == tier
    assert response.headers["x-routeproxy-complexity"] == complexity
    upstream_body = last_body(simulators[Tier.SMALL if tier == "3b" else Tier.LARGE])
    # The seed's hint fields are for the proxy only.
    assert "query_type" not in upstream_body
    assert "entities" not in upstream_body
    assert upstream_body["messages"] == request_body["messages"]


def test_comparison_without_hints_goes_to_large_model(routed_proxy: ThreadedServer) -> None:
    for text in ("Compare Ross 308 vs Cobb 500 at multiple ages", "Is Python better than Go for web servers?"):
        response = http.post(
            f"{routed_proxy.url}/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": text}]},
        )
        assert response.headers["x-routeproxy-tier"] == "8b", text
        assert response.headers["x-routeproxy-complexity"] == "complex", text


def test_query_type_header_is_a_hint_and_is_not_forwarded(
    routed_proxy: ThreadedServer, simulators: dict[Tier, ThreadedServer]
) -> None:
    response = http.post(
        f"{routed_proxy.url}/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "Ross 308 and Cobb 500 at day 35"}]},
        headers={"x-routeproxy-query-type": "comparative"},
    )
    assert response.headers["x-routeproxy-complexity"] == "complex"
    assert response.headers["x-routeproxy-reason"].startswith("hint_query_type")
    received = http.get(f"{simulators[Tier.LARGE].url}/_sim/requests").json()[-1]["headers"]
    assert "x-routeproxy-query-type" not in received


def test_medium_queries_split_by_ratio_and_say_why(routed_proxy: ThreadedServer) -> None:
    tiers = []
    with http.client() as client:
        for prompt in MEDIUM_PROMPTS:
            response = client.post(
                f"{routed_proxy.url}/v1/chat/completions",
                json={"model": "auto", "messages": [{"role": "user", "content": prompt}]},
            )
            assert response.headers["x-routeproxy-complexity"] == "medium"
            reason = response.headers["x-routeproxy-reason"]
            draw = stable_draw(prompt)
            expected = f"ab:{draw:.2f}<0.50" if draw < 0.5 else f"ab:{draw:.2f}>=0.50"
            assert reason == expected
            tiers.append(response.headers["x-routeproxy-tier"])
    assert 10 <= tiers.count("3b") <= 30  # about half of 40, by a stable hash


def test_explain_endpoint_agrees_with_the_proxy(routed_proxy: ThreadedServer) -> None:
    bodies = [SEED_SIMPLE, SEED_COMPLEX] + [
        {"model": "auto", "messages": [{"role": "user", "content": prompt}]} for prompt in MEDIUM_PROMPTS[:10]
    ]
    with http.client() as client:
        for body in bodies:
            explained = client.post(f"{routed_proxy.url}/v1/model-routing/explain", json=body).json()
            proxied = client.post(f"{routed_proxy.url}/v1/chat/completions", json=body)
            assert explained["label"] == proxied.headers["x-routeproxy-tier"]
            assert explained["reason"] == proxied.headers["x-routeproxy-reason"]
            assert explained["model"] == proxied.headers["x-routeproxy-model"]
            assert 0.0 <= explained["score"] <= 1.0
            assert isinstance(explained["signals"], list)


def _classify_cli(lines: list[dict[str, Any]], hash_seed: str, *extra: str) -> list[dict[str, Any]]:
    environ = {**os.environ, "PYTHONHASHSEED": hash_seed}
    result = subprocess.run(
        [sys.executable, "-m", "routeproxy", "classify", "--enable-routing", "--rules", "poultry", *extra],
        input=b"".join(orjson.dumps(line) + b"\n" for line in lines),
        capture_output=True,
        env=environ,
        timeout=60,
        check=True,
    )
    return [orjson.loads(line) for line in result.stdout.splitlines()]


def test_same_query_same_tier_in_processes_with_different_hash_seeds(routed_proxy: ThreadedServer) -> None:
    lines = [
        {"id": index, "messages": [{"role": "user", "content": prompt}]} for index, prompt in enumerate(MEDIUM_PROMPTS)
    ]
    first = _classify_cli(lines, "1")
    second = _classify_cli(lines, "4242")
    assert first == second
    assert {line["tier"] for line in first} == {"small", "large"}
    # ... and the CLI agrees with the running proxy (a third process).
    with http.client() as client:
        for line in first[:10]:
            response = client.post(
                f"{routed_proxy.url}/v1/chat/completions",
                json={"model": "auto", "messages": lines[line["id"]]["messages"]},
            )
            assert response.headers["x-routeproxy-tier"] == line["label"]
            assert response.headers["x-routeproxy-reason"] == line["reason"]


def test_classify_cli_reads_hints_and_reports_bad_lines() -> None:
    out = _classify_cli([{"id": "a", **{k: v for k, v in SEED_SIMPLE.items() if k != "model"}}], "0")
    assert out == [
        {
            "id": "a",
            "tier": "small",
            "label": "3b",
            "model": "meta-llama/Llama-3.2-3B-Instruct",
            "complexity": "simple",
            "score": out[0]["score"],
            "reason": out[0]["reason"],
        }
    ]
    result = subprocess.run(
        [sys.executable, "-m", "routeproxy", "classify"],
        input=b'not json\n{"id": 2, "messages": "hi"}\n',
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert b"line 1" in result.stderr and b"line 2" in result.stderr


def _classification(complexity: Complexity) -> Classification:
    return Classification(complexity=complexity, score=0.4, signals=(), query="q")


@pytest.mark.parametrize("prompt", MEDIUM_PROMPTS)
def test_raising_the_ratio_only_moves_medium_queries_from_large_to_small(prompt: str) -> None:
    ratios = [0.0, 0.1, 0.3, 0.5, 0.8, 1.0]
    tiers = [
        decide(_classification(Complexity.MEDIUM), enabled=True, ab_test_ratio=ratio, sticky=prompt).tier
        for ratio in ratios
    ]
    assert tiers[0] is Tier.LARGE and tiers[-1] is Tier.SMALL
    switch = tiers.index(Tier.SMALL)
    assert all(tier is Tier.SMALL for tier in tiers[switch:])  # once small, small at every higher ratio


@pytest.mark.parametrize(
    ("complexity", "enabled", "tier", "reason_prefix"),
    [
        (Complexity.SIMPLE, True, Tier.SMALL, "simple"),
        (Complexity.COMPLEX, True, Tier.LARGE, "complex"),
        (Complexity.SIMPLE, False, Tier.LARGE, "routing_disabled"),
        (Complexity.COMPLEX, False, Tier.LARGE, "routing_disabled"),
        (Complexity.MEDIUM, False, Tier.LARGE, "routing_disabled"),
    ],
)
def test_policy_table(complexity: Complexity, enabled: bool, tier: Tier, reason_prefix: str) -> None:
    decision = decide(_classification(complexity), enabled=enabled, ab_test_ratio=0.5, sticky="q")
    assert decision.tier is tier
    assert decision.why.startswith(reason_prefix)
    assert decision.reason is (Reason.CLASSIFIED if enabled else Reason.ROUTING_DISABLED)
    assert decision.complexity is complexity  # still recorded when routing is off: the baseline's mix


def test_stable_draw_ignores_case_and_spacing_and_spreads_evenly() -> None:
    assert stable_draw("How  to improve FCR?") == stable_draw("how to improve fcr?")
    draws = [stable_draw(f"query number {index}") for index in range(10_000)]
    assert all(0.0 <= draw < 1.0 for draw in draws)
    for low in (0.0, 0.25, 0.5, 0.75):
        share = sum(low <= draw < low + 0.25 for draw in draws) / len(draws)
        assert 0.23 < share < 0.27


class _BrokenClassifier:
    def classify(
        self, body: Mapping[str, Any], *, query_type: str | None = None, entities: Mapping[str, Any] | None = None
    ) -> Classification:
        raise RuntimeError("rule set exploded")


def test_a_failing_classifier_sends_the_request_to_the_large_tier() -> None:
    router = Router(settings_for({}), _BrokenClassifier())
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    decision = router.route(body, Hints(), {}, enabled=True, ab_test_ratio=1.0)
    assert decision.tier is Tier.LARGE
    assert decision.reason is Reason.CLASSIFY_FAILED
    assert decision.why == "classify_failed"
    assert decision.classify_error is not None and "rule set exploded" in decision.classify_error


@pytest.mark.parametrize(
    ("sticky", "body", "headers", "expected_key"),
    [
        ("query", {"user": "u1"}, {}, "the query"),
        ("user", {"user": "u1"}, {}, "user:u1"),
        ("user", {}, {}, "the query"),
        ("header", {}, {"x-routeproxy-session": "s9"}, "header:s9"),
    ],
)
def test_sticky_key_is_configurable(
    sticky: str, body: dict[str, Any], headers: dict[str, str], expected_key: str
) -> None:
    router = Router(settings_for({}, **{"routing.sticky_key": sticky}), Classifier(load_rules("general")))
    text = "Plan a weekly schedule for a small team"
    full = {"model": "auto", "messages": [{"role": "user", "content": text}], **body}
    decision = router.route(full, Hints(), headers, enabled=True, ab_test_ratio=0.5)
    assert decision.complexity is Complexity.MEDIUM
    key = text if expected_key == "the query" else expected_key
    assert decision.ab_draw == stable_draw(key)


@pytest.mark.parametrize(
    ("messages", "text"),
    [
        (
            [
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "last"},
            ],
            "last",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "two"},
                        {"type": "image_url"},
                        {"type": "text", "text": "parts"},
                    ],
                }
            ],
            "two parts",
        ),
        ([{"role": "system", "content": "only a system prompt"}], ""),
        ("not a list", ""),
        ([{"role": "user", "content": None}, "junk"], ""),
    ],
)
def test_last_user_text_is_what_the_answer_check_and_the_simulator_read(messages: object, text: str) -> None:
    assert last_user_text(messages) == text
