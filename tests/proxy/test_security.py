"""Client keys, the admin token, header hygiene, and secrets that never leave their place."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest
from support import http
from support.processes import Served, serve
from support.upstreams import ProxyFactory, fast_profile

from routeproxy.settings import Tier
from routeproxy.sim.simulator import create_simulator_app
from routeproxy.sim.threadserver import ThreadedServer

CLIENT_KEY = "client-key-4f9a2c71e0"
OTHER_CLIENT_KEY = "client-key-second-77b1"
ADMIN_TOKEN = "admin-token-90d1e3aa55"
UPSTREAM_KEY = "hf_upstreamsecret8c2e41"
MESSAGES = [{"role": "user", "content": "How should a farm plan its feeding schedule?"}]


@pytest.fixture
def keyed_upstreams() -> Iterator[dict[Tier, ThreadedServer]]:
    """Simulated upstreams that demand the upstream key, as a vLLM started with --api-key does."""
    servers = {
        tier: ThreadedServer(create_simulator_app(fast_profile(tier, api_key=UPSTREAM_KEY))).start() for tier in Tier
    }
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def locked_proxy(keyed_upstreams: dict[Tier, ThreadedServer], start_proxy: ProxyFactory) -> ThreadedServer:
    overrides: dict[str, Any] = {f"tiers.{tier}.api_key": UPSTREAM_KEY for tier in Tier}
    overrides["server.api_keys"] = f"{CLIENT_KEY},{OTHER_CLIENT_KEY}"
    overrides["server.admin_token"] = ADMIN_TOKEN
    return start_proxy({tier: f"{server.url}/v1" for tier, server in keyed_upstreams.items()}, **overrides)


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, "missing_api_key"),
        ("Bearer wrong-key-123456", "invalid_api_key"),
        (f"Basic {CLIENT_KEY}", "missing_api_key"),
    ],
)
def test_client_keys_guard_v1(locked_proxy: ThreadedServer, authorization: str | None, code: str) -> None:
    headers = {"authorization": authorization} if authorization else {}
    for method, path in (
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("POST", "/v1/model-routing/explain"),
    ):
        response = http.request(
            method, f"{locked_proxy.url}{path}", json={"model": "auto", "messages": MESSAGES}, headers=headers
        )
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == code
        assert response.json()["error"]["type"] == "authentication_error"


def test_a_valid_client_key_works_and_never_goes_upstream(
    locked_proxy: ThreadedServer, keyed_upstreams: dict[Tier, ThreadedServer]
) -> None:
    for key in (CLIENT_KEY, OTHER_CLIENT_KEY):
        with openai.OpenAI(base_url=f"{locked_proxy.url}/v1", api_key=key) as client:
            assert client.chat.completions.create(model="auto", messages=MESSAGES).choices
            assert next(model.id for model in client.models.list()) == "auto"
    received = http.get(f"{keyed_upstreams[Tier.LARGE].url}/_sim/requests").json()[-1]["headers"]
    assert received["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_without_a_tier_key_the_client_key_is_still_not_forwarded(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(
        {tier: f"{server.url}/v1" for tier, server in simulators.items()}, **{"server.api_keys": CLIENT_KEY}
    )
    with openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=CLIENT_KEY) as client:
        client.chat.completions.create(model="auto", messages=MESSAGES)
    received = http.get(f"{simulators[Tier.LARGE].url}/_sim/requests").json()[-1]["headers"]
    assert "authorization" not in received


def test_stats_stay_readable_and_admin_needs_the_token(locked_proxy: ThreadedServer) -> None:
    assert http.get(f"{locked_proxy.url}/v1/model-routing/stats").status_code == 200
    assert http.get(f"{locked_proxy.url}/v1/model-routing/config").status_code == 200
    for headers in ({}, {"authorization": f"Bearer {CLIENT_KEY}"}, {"authorization": "Bearer admin-token-wrong"}):
        reset = http.post(f"{locked_proxy.url}/v1/model-routing/reset", headers=headers)
        assert reset.status_code == 401
        change = http.put(f"{locked_proxy.url}/v1/model-routing/config", json={"ab_test_ratio": 0.3}, headers=headers)
        assert change.status_code == 401
        assert change.json()["error"]["code"] == "invalid_admin_token"
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    assert http.post(f"{locked_proxy.url}/v1/model-routing/reset", headers=admin).status_code == 200
    changed = http.put(f"{locked_proxy.url}/v1/model-routing/config", json={"ab_test_ratio": 0.3}, headers=admin)
    assert changed.status_code == 200
    assert changed.json()["ab_test_ratio"] == 0.3


def test_spoofable_headers_are_stripped_and_content_length_recomputed(
    proxy: ThreadedServer, simulators: dict[Tier, ThreadedServer]
) -> None:
    body = orjson.dumps({"model": "auto", "messages": MESSAGES, "query_type": "x" * 50})
    http.post(
        f"{proxy.url}/v1/chat/completions",
        content=body,
        headers={
            "content-type": "application/json",
            "x-forwarded-for": "6.6.6.6",
            "x-forwarded-host": "evil.example",
            "forwarded": "for=6.6.6.6",
            "x-real-ip": "6.6.6.6",
            "host": "evil.example",
        },
    )
    record = http.get(f"{simulators[Tier.LARGE].url}/_sim/requests").json()[-1]
    headers = record["headers"]
    for name in ("x-forwarded-for", "x-forwarded-host", "forwarded", "x-real-ip"):
        assert name not in headers
    assert headers["host"].startswith("127.0.0.1:")
    forwarded = orjson.dumps(record["body"])
    assert int(headers["content-length"]) == len(forwarded) != len(body)


def test_no_secret_appears_in_logs_error_bodies_or_stats(
    keyed_upstreams: dict[Tier, ThreadedServer], served: list[Served]
) -> None:
    """A full run of a real process, every path we can reach, then a grep of everything it said."""
    env = {
        "MODEL_3B_BASE_URL": f"{keyed_upstreams[Tier.SMALL].url}/v1",
        "MODEL_8B_BASE_URL": f"{keyed_upstreams[Tier.LARGE].url}/v1",
        "MODEL_3B_KIND": "vllm",
        "MODEL_8B_KIND": "vllm",
        "MODEL_3B_API_KEY": UPSTREAM_KEY,
        "MODEL_8B_API_KEY": UPSTREAM_KEY,
        "ROUTEPROXY_API_KEYS": f"{CLIENT_KEY},{OTHER_CLIENT_KEY}",
        "ROUTEPROXY_ADMIN_TOKEN": ADMIN_TOKEN,
        "ENABLE_MODEL_ROUTING": "true",
        "ROUTEPROXY_LOG_LEVEL": "debug",
    }
    proxy = serve(env=env)
    served.append(proxy)
    said: list[str] = []
    auth = {"authorization": f"Bearer {CLIENT_KEY}"}
    with http.client(base_url=proxy.url, timeout=10) as client:
        requests: list[tuple[str, str, dict[str, Any], dict[str, str]]] = [
            ("POST", "/v1/chat/completions", {"model": "auto", "messages": MESSAGES}, auth),
            ("POST", "/v1/chat/completions", {"model": "auto", "messages": MESSAGES, "stream": True}, auth),
            ("POST", "/v1/chat/completions", {"model": "auto", "messages": MESSAGES}, {}),
            (
                "POST",
                "/v1/chat/completions",
                {"model": "auto", "messages": MESSAGES},
                {"authorization": "Bearer nope-nope-nope"},
            ),
            ("POST", "/v1/chat/completions", {"model": "gpt-x", "messages": MESSAGES}, auth),
            ("POST", "/v1/chat/completions", {"model": "auto", "messages": MESSAGES}, {**auth, "x-sim-status": "503"}),
            (
                "POST",
                "/v1/chat/completions",
                {"model": "auto", "messages": MESSAGES, "stream": True},
                {**auth, "x-sim-die-after": "2"},
            ),
            (
                "POST",
                "/v1/chat/completions",
                {"model": "auto", "messages": MESSAGES, "stream": True},
                {**auth, "x-sim-error-after": "2"},
            ),
            ("POST", "/v1/model-routing/explain", {"model": "auto", "messages": MESSAGES}, auth),
            ("GET", "/v1/model-routing/stats", {}, {}),
            ("GET", "/v1/model-routing/config", {}, {}),
            ("POST", "/v1/model-routing/reset", {}, {"authorization": "Bearer wrong"}),
            ("PUT", "/v1/model-routing/config", {"ab_test_ratio": 0.2}, {"authorization": f"Bearer {ADMIN_TOKEN}"}),
            ("GET", "/readyz", {}, {}),
        ]
        for method, path, payload, headers in requests:
            response = client.request(method, path, json=payload or None, headers=headers)
            said.append(response.text + str(dict(response.headers)))
    said.append(served.pop().stop())
    everything = "\n".join(said)
    assert '"event":"route"' in everything
    for secret in (UPSTREAM_KEY, CLIENT_KEY, OTHER_CLIENT_KEY, ADMIN_TOKEN):
        assert secret not in everything


def test_without_an_admin_token_reset_and_config_changes_are_refused_even_on_loopback(proxy: ThreadedServer) -> None:
    """A loopback peer is not the operator behind a mesh sidecar (Istio connects from 127.0.0.6)."""
    reset = http.post(f"{proxy.url}/v1/model-routing/reset")
    change = http.put(f"{proxy.url}/v1/model-routing/config", json={"ab_test_ratio": 0.3})
    for refused in (reset, change):
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "admin_token_not_configured"
        assert "ROUTEPROXY_ADMIN_TOKEN" in refused.json()["error"]["message"]
    assert http.get(f"{proxy.url}/v1/model-routing/config").json()["ab_test_ratio"] == 0.5


def test_loopback_admin_without_a_token_is_an_explicit_opt_in(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(
        {tier: f"{server.url}/v1" for tier, server in simulators.items()},
        **{"server.admin_loopback_without_token": True},
    )
    assert http.post(f"{proxy.url}/v1/model-routing/reset").status_code == 200
    assert http.put(f"{proxy.url}/v1/model-routing/config", json={"ab_test_ratio": 0.3}).status_code == 200
