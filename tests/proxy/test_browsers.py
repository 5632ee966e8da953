"""What a web page in a visitor's browser can make the proxy do: nothing it may not, through a simple cross-site
request or a name re-pointed at 127.0.0.1 (DNS rebinding)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from support import http
from support.upstreams import ProxyFactory

from routeproxy.settings import Tier
from routeproxy.sim.threadserver import ThreadedServer
from routeproxy.wire.origin import is_loopback_host

CHAT = {"model": "auto", "messages": [{"role": "user", "content": "Write a haiku about rain"}]}


def start(simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory, **overrides: Any) -> ThreadedServer:
    return start_proxy({tier: f"{server.url}/v1" for tier, server in simulators.items()}, **overrides)


@pytest.fixture
def development(simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory) -> ThreadedServer:
    """Loopback admin without a token, as `serve --simulate` runs."""
    return start(simulators, start_proxy, **{"server.admin_loopback_without_token": True})


def ratio(proxy: ThreadedServer) -> float:
    value: float = http.get(f"{proxy.url}/v1/model-routing/config").json()["ab_test_ratio"]
    return value


def test_a_page_on_another_site_cannot_reset_the_counters_in_development(development: ThreadedServer) -> None:
    """A form or a fetch with a text/plain body is sent without a preflight: the browser only hides the answer."""
    refused = http.post(
        f"{development.url}/v1/model-routing/reset",
        headers={"origin": "http://evil.example", "content-type": "text/plain"},
        content=b"{}",
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "cross_site_request"
    assert http.get(f"{development.url}/v1/model-routing/stats").json()["period"] == 0


@pytest.mark.parametrize("origin", [None, "http://evil.example:8001"])
def test_a_rebound_name_cannot_change_the_ratio_in_development(development: ThreadedServer, origin: str | None) -> None:
    """DNS rebinding: the page's own name now points at 127.0.0.1, so its requests are same-origin to the browser
    and come from a loopback peer; only the Host header tells."""
    headers = {"host": "evil.example:8001", **({"origin": origin} if origin else {})}
    refused = http.put(f"{development.url}/v1/model-routing/config", json={"ab_test_ratio": 0.9}, headers=headers)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "admin_loopback_only"
    assert "evil.example" in refused.json()["error"]["message"]
    assert ratio(development) == 0.5


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "dashboard.localhost", "127.8.9.1"])
def test_loopback_names_may_change_the_ratio_in_development(development: ThreadedServer, host: str) -> None:
    changed = http.put(
        f"{development.url}/v1/model-routing/config",
        json={"ab_test_ratio": 0.3},
        headers={"host": f"{host}:{development.port}", "origin": f"http://{host}:{development.port}"},
    )
    assert changed.status_code == 200
    assert ratio(development) == 0.3


def test_a_page_from_another_origin_cannot_change_the_ratio_even_past_a_permissive_cors(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    """`*` lets any page read the API; it does not make every page the operator of a development proxy."""
    proxy = start(simulators, start_proxy, **{"server.admin_loopback_without_token": True, "server.cors_origins": "*"})
    refused = http.put(
        f"{proxy.url}/v1/model-routing/config", json={"ab_test_ratio": 0.9}, headers={"origin": "http://evil.example"}
    )
    assert refused.status_code == 403
    assert ratio(proxy) == 0.5


def test_a_listed_cors_origin_may_change_the_ratio_in_development(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start(
        simulators,
        start_proxy,
        **{"server.admin_loopback_without_token": True, "server.cors_origins": "http://tools.example"},
    )
    changed = http.put(
        f"{proxy.url}/v1/model-routing/config", json={"ab_test_ratio": 0.3}, headers={"origin": "http://tools.example"}
    )
    assert changed.status_code == 200
    assert ratio(proxy) == 0.3


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://evil.example"},  # a fetch of a Blob: no content type at all
        {"origin": "http://evil.example", "content-type": "text/plain;charset=UTF-8"},
        {"origin": "null", "content-type": "application/x-www-form-urlencoded"},  # a sandboxed frame's form
    ],
)
def test_a_simple_cross_site_post_reaches_no_upstream(
    proxy: ThreadedServer, simulators: dict[Tier, ThreadedServer], headers: dict[str, str]
) -> None:
    before = http.get(f"{simulators[Tier.LARGE].url}/_sim/stats").json()["requests"]
    refused = http.post(f"{proxy.url}/v1/chat/completions", content=orjson.dumps(CHAT), headers=headers)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "cross_site_request"
    assert http.get(f"{simulators[Tier.LARGE].url}/_sim/stats").json()["requests"] == before
    assert http.get(f"{proxy.url}/v1/model-routing/stats").json()["total_requests"] == 0


def test_a_simple_cross_site_feedback_is_refused(proxy: ThreadedServer) -> None:
    refused = http.post(
        f"{proxy.url}/v1/model-routing/feedback",
        content=b'{"request_id": "abc", "score": 0}',
        headers={"origin": "http://evil.example", "content-type": "text/plain"},
    )
    assert refused.status_code == 403


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "application/json"},  # preflighted: CORS decides, and none is configured
        {"authorization": "Bearer key"},  # preflighted too
        {"sec-fetch-site": "same-origin"},  # the browser says the page is the proxy's own (the dashboard)
        {},  # same host and port in Origin and Host
    ],
)
def test_requests_a_browser_preflights_or_sends_same_origin_pass(
    proxy: ThreadedServer, headers: dict[str, str]
) -> None:
    origin = headers.pop("origin", "http://evil.example" if headers else f"http://127.0.0.1:{proxy.port}")
    answered = http.post(
        f"{proxy.url}/v1/chat/completions", content=orjson.dumps(CHAT), headers={"origin": origin, **headers}
    )
    assert answered.status_code == 200


def test_clients_that_are_not_browsers_are_not_affected(proxy: ThreadedServer) -> None:
    """curl -d sends a form content type, and no Origin."""
    answered = http.post(
        f"{proxy.url}/v1/chat/completions",
        content=b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}]}',
        headers={"content-type": "application/json"},
    )
    assert answered.status_code == 200


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("app.localhost", True),
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost.evil.example", False),
        ("evil.example", False),
        ("10.0.0.1", False),
        ("0.0.0.0", False),
        ("", False),
    ],
)
def test_loopback_host_names(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
