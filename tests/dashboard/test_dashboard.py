"""The dashboard in a real headless Chromium, against real proxies on loopback with simulated upstreams: the figures
it shows are the stats endpoint's, its controls change the shared runtime config, it says which replicas report,
and the page raises no JavaScript error."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from support import http
from support.browser import Browser, find_chromium
from support.processes import Served, serve
from support.redis_server import RedisServer
from support.upstreams import ProxyFactory
from support.wait import eventually

from routeproxy.settings import Tier
from routeproxy.sim.threadserver import ThreadedServer

ADMIN_TOKEN = "admin-token-for-the-dashboard-test"
CLIENT_KEY = "client-key-for-the-dashboard-test"
PROMPTS = (
    "Write a haiku about rain",  # simple
    "How should a farm plan its feeding schedule?",  # medium
    "Compare Ross 308 vs Cobb 500 at 21 and 28 days",  # complex
    "What should a brooding checklist include?",  # medium, drawn to 3B at ratio 0.5
)
# Figures the page must show (each compared with the endpoint's value below).
REQUIRED_FIGURES = {
    "total_requests",
    "model_distribution.3b.count",
    "model_distribution.8b.percentage",
    "estimated_cost_savings_pct",
    "complexity_distribution.medium.tiers.3b",
    "complexity_distribution.complex.tiers.8b",
    "latency_percentiles_ms.3b.p95",
    "latency_percentiles_ms.overall.p50",
    "ttfb_percentiles_ms.8b.p50",
    "error_rate_pct.3b",
    "error_rate_pct.overall",
    "fallbacks.3b",
    "upstream_errors.8b",
    "status_classes.8b.5xx",
    "ab_analysis.verdict",
    "ab_analysis.tiers.3b.feedback_count",
    "ab_analysis.tiers.8b.mean_score",
    "ab_analysis.tiers.3b.score_interval.0",
    "ab_analysis.difference.degradation_pct",
    "ab_analysis.difference.degradation_interval_pct.1",
    "ab_analysis.feedback.received",
    "ab_analysis.other_complexities.complex.8b.requests",
}
FIGURES_JS = "[...document.querySelectorAll('[data-field]')].map(e => [e.dataset.field, e.textContent])"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    binary = find_chromium()
    if binary is None:
        pytest.skip(
            "no chromium binary found (PATH: chromium, chromium-browser, google-chrome; or ROUTEPROXY_CHROMIUM): "
            "install Debian's chromium package, as .ci/run does"
        )
    with Browser(binary, tmp_path) as started:
        yield started


def send_traffic(url: str, count: int, key: str | None = None) -> None:
    """Mixed traffic: every complexity, a third streamed, and some upstream 503s (errors; fallbacks on the small tier);
    then a thumb up or down for each answered request (down for one in four), so both tiers of the A/B population
    have feedback."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    with http.client(base_url=url, timeout=10, headers=headers) as client:
        answered = []
        for index in range(count):
            body: dict[str, Any] = {"model": "auto", "messages": [{"role": "user", "content": PROMPTS[index % 4]}]}
            if index % 3 == 0:
                body["stream"] = True
            fail = {"x-sim-status": "503"} if index % 7 == 6 else {}
            response = client.post("/v1/chat/completions", json=body, headers=fail)
            assert response.status_code in (200, 503), response.text
            if response.status_code == 200:
                answered.append(response.headers["x-request-id"])
        for index, request_id in enumerate(answered):
            thumbs = {"request_id": request_id, "thumbs": "down" if index % 4 == 3 else "up"}
            eventually(
                lambda thumbs=thumbs: client.post("/v1/model-routing/feedback", json=thumbs).status_code == 200,
                what=f"feedback for {request_id} accepted",
            )


def endpoint(url: str, path: str, key: str | None = None) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = http.get(f"{url}/v1/model-routing/{path}", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def value_at(data: dict[str, Any], path: str) -> Any:
    value: Any = data
    for key in path.split("."):
        if value is None:
            return None  # the page shows a dash for a figure inside a null (an interval not computable yet)
        value = value[int(key)] if isinstance(value, list) else value[key]
    return value


def assert_shown_equals(shown: str, value: Any, path: str) -> None:
    if value is None:
        assert shown == "\u2013", f"{path}: page shows {shown!r}, endpoint has null"
    elif isinstance(value, bool):
        assert shown == ("yes" if value else "no"), f"{path}: page shows {shown!r}, endpoint has {value}"
    elif isinstance(value, (int, float)):
        assert float(shown) == value, f"{path}: page shows {shown!r}, endpoint has {value}"
    else:
        assert shown == str(value), f"{path}: page shows {shown!r}, endpoint has {value!r}"


def keep_artifact(shot: Path) -> Path:
    """The screenshot stays in pytest's tmp dir; ROUTEPROXY_ARTIFACTS_DIR gets a copy (CI keeps that folder)."""
    target_dir = os.environ.get("ROUTEPROXY_ARTIFACTS_DIR")
    kept = shot
    if target_dir:
        Path(target_dir).mkdir(parents=True, exist_ok=True)
        kept = Path(shutil.copy(shot, Path(target_dir) / shot.name))
    sys.__stdout__.write(f"\ndashboard screenshot: {kept}\n")  # shown even when pytest captures output
    return kept


def test_dashboard_shows_the_stats_and_changes_the_ratio_with_the_admin_token(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory, browser: Browser, tmp_path: Path
) -> None:
    proxy = start_proxy(
        {tier: f"{server.url}/v1" for tier, server in simulators.items()},
        **{
            "routing.enabled": True,
            "routing.ab_test_ratio": 0.5,
            "server.api_keys": [CLIENT_KEY],
            "server.admin_token": ADMIN_TOKEN,
            "quality.min_feedback_per_tier": 5,
        },
    )
    send_traffic(proxy.url, 42, key=CLIENT_KEY)
    stats = endpoint(proxy.url, "stats", CLIENT_KEY)
    assert stats["total_requests"] == 42
    assert stats["ab_analysis"]["difference"]["degradation_pct"] is not None  # both tiers have enough feedback

    browser.open(f"{proxy.url}/dashboard")
    browser.type_into("#client-key", CLIENT_KEY)
    browser.click("#keep-keys")
    total = browser.wait_for(
        "document.querySelector('[data-field=\"total_requests\"]')?.textContent", what="the page's first figures"
    )
    assert total == "42"

    shown = browser.evaluate(FIGURES_JS)
    stats = endpoint(proxy.url, "stats", CLIENT_KEY)
    assert not REQUIRED_FIGURES - {path for path, _ in shown}, "figures missing from the page"
    for path, text in shown:
        assert_shown_equals(text, value_at(stats, path), path)
    # The simulated upstreams are said above the headline figures, as the stats endpoint says them.
    shown_caveats = browser.evaluate("[...document.querySelectorAll('[data-caveat]')].map(e => e.textContent)")
    assert shown_caveats == stats["provenance"]["caveats"]
    assert any("answered by routeproxy's simulator, not a model" in caveat for caveat in shown_caveats)
    assert browser.evaluate("document.getElementById('view').dataset.store") == "memory"
    assert "In-memory counters" in browser.evaluate("document.getElementById('view').textContent")
    assert browser.evaluate("document.querySelector('[data-config=\"ab_test_ratio\"]').textContent") == "0.5"

    browser.type_into("#admin-token", ADMIN_TOKEN)
    browser.click("#keep-keys")
    browser.type_into("#ratio", "0.3")
    browser.click("#apply-routing")
    eventually(lambda: endpoint(proxy.url, "config")["ab_test_ratio"] == 0.3, what="the ratio changed through the page")
    browser.wait_for("document.querySelector('[data-config=\"ab_test_ratio\"]').textContent === '0.3'")
    assert browser.evaluate("document.getElementById('routing-message').textContent") == "applied: ab_test_ratio 0.3"
    # The token is kept in this tab's session storage, and nowhere a URL, a referrer or another tab could see it.
    assert browser.evaluate("sessionStorage.getItem('routeproxy.adminToken')") == ADMIN_TOKEN
    assert browser.evaluate("localStorage.length") == 0
    assert ADMIN_TOKEN not in browser.evaluate("location.href + document.referrer")

    # The latency charts keep their points across refreshes: wait for a second sample.
    browser.wait_for("JSON.parse(sessionStorage.getItem('routeproxy.history')).length >= 2", tries=150)
    assert browser.evaluate("document.querySelectorAll('#chart-latency path.series').length") == 4

    shot = browser.screenshot(tmp_path / "dashboard.png")
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 1280
    keep_artifact(shot)
    assert browser.errors() == []


def test_dashboard_pauses_and_moves_the_rollout_with_the_admin_token(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory, browser: Browser
) -> None:
    proxy = start_proxy(
        {tier: f"{server.url}/v1" for tier, server in simulators.items()},
        **{
            "routing.enabled": True,
            "routing.rollout.enabled": True,
            "routing.rollout.min_hold_s": 3600,
            "server.admin_token": ADMIN_TOKEN,
        },
    )
    send_traffic(proxy.url, 8)
    browser.open(f"{proxy.url}/dashboard")
    browser.wait_for("document.querySelector('.schedule li.current')?.textContent === '0.1'", what="step 0 shown")
    assert browser.evaluate("document.querySelector('[data-field=\"rollout.step_index\"]').textContent") == "0"
    # While the controller sets the ratio, the page does not offer to set it by hand.
    assert browser.evaluate("document.getElementById('ratio').disabled") is True

    browser.type_into("#admin-token", ADMIN_TOKEN)
    browser.type_into("#rollout-why", "looking at the latency first")
    browser.click("#rollout-pause")
    eventually(lambda: endpoint(proxy.url, "config")["rollout"]["paused"], what="the rollout paused through the page")
    browser.wait_for("document.getElementById('ratio').disabled === false", what="the ratio offered once paused")
    assert browser.evaluate("document.getElementById('routing-message').textContent") == "rollout paused"

    browser.choose("#rollout-step", "2")
    browser.click("#rollout-move")
    eventually(
        lambda: endpoint(proxy.url, "config")["rollout"]["step_index"] == 2, what="the step moved through the page"
    )
    assert endpoint(proxy.url, "config")["ab_test_ratio"] == 0.5
    browser.wait_for("document.querySelector('.schedule li.current')?.textContent === '0.5'", what="step 2 shown")
    history = endpoint(proxy.url, "stats")["rollout"]["history"]
    assert [entry["by"] for entry in history[-2:]] == ["operator", "operator"]
    assert history[-2]["why"] == "looking at the latency first"
    rows = browser.evaluate("[...document.querySelectorAll('table.history tbody tr')].map(r => r.cells[3].textContent)")
    assert rows[:2] == ["operator", "operator"] and len(rows) == len(history)
    assert browser.errors() == []


def test_dashboard_shows_escalations_and_switches_the_routing_mode(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory, browser: Browser
) -> None:
    proxy = start_proxy(
        {tier: f"{server.url}/v1" for tier, server in simulators.items()},
        **{"routing.enabled": True, "routing.mode": "cascade", "server.admin_token": ADMIN_TOKEN},
    )
    send_traffic(proxy.url, 24)
    stats = endpoint(proxy.url, "stats")
    assert stats["cascade"]["checked"] > 0

    browser.open(f"{proxy.url}/dashboard")
    browser.wait_for("document.querySelector('[data-field=\"cascade.checked\"]')?.textContent", what="escalations")
    shown = [(path, text) for path, text in browser.evaluate(FIGURES_JS) if path.startswith("cascade.")]
    assert {path for path, _ in shown} >= {"cascade.checked", "cascade.escalated_pct", "cascade.answered_by_small_pct"}
    for path, text in shown:
        assert_shown_equals(text, value_at(stats, path), path)
    assert browser.evaluate("document.querySelector('[data-config=\"routing_mode\"]').textContent") == "cascade"

    browser.type_into("#admin-token", ADMIN_TOKEN)
    browser.choose("#routing-mode", "classify")
    browser.click("#apply-routing")
    eventually(lambda: endpoint(proxy.url, "config")["routing_mode"] == "classify", what="the mode switched")
    browser.wait_for("document.querySelector('[data-config=\"routing_mode\"]').textContent === 'classify'")
    assert browser.errors() == []


def test_dashboard_shows_the_shared_view_and_which_replicas_report(
    redis_server: RedisServer, served: list[Served], browser: Browser
) -> None:
    env = {
        "REDIS_URL": redis_server.url,
        "ENABLE_MODEL_ROUTING": "true",
        "ROUTEPROXY_REDIS_NAMESPACE": "dash",
        # Tier names of the operator's choosing: the page takes them from the stats.
        "MODEL_3B_LABEL": "small-llama",
        "MODEL_8B_LABEL": "large-llama",
    }
    replicas = [serve("--simulate", "--speed", "1000", env=env) for _ in range(2)]
    served.extend(replicas)
    for replica in replicas:
        send_traffic(replica.url, 8)
    stats = eventually(
        lambda: (
            (found := endpoint(replicas[0].url, "stats"))["total_requests"] == 16
            and len(found["replicas"]) == 2
            and found
        ),
        what="both replicas' counts in Redis",
    )

    browser.open(f"{replicas[0].url}/dashboard")
    browser.wait_for("document.querySelectorAll('#view .replica').length === 2", what="two replicas on the page")
    names = browser.evaluate("[...document.querySelectorAll('#view .replica')].map(e => e.textContent)")
    assert sorted(names) == sorted(stats["replicas"])
    assert browser.evaluate("document.getElementById('view').dataset.store") == "redis"
    assert "Shared view from Redis" in browser.evaluate("document.getElementById('view').textContent")
    shown = dict(browser.evaluate(FIGURES_JS))
    assert shown["total_requests"] == "16"
    for label in ("small-llama", "large-llama"):
        assert shown[f"model_distribution.{label}.count"] == str(stats["model_distribution"][label]["count"])
    assert browser.errors() == []
    # routeproxy serve's start-up summary says where the page is.
    logged = [orjson.loads(line) for line in replicas[0].stop().splitlines() if line.startswith("{")]
    startup = next(entry for entry in logged if entry.get("event") == "startup")
    assert startup["dashboard"] == f"{replicas[0].url}/dashboard"


def test_dashboard_files_are_served_with_a_strict_content_policy(proxy: ThreadedServer) -> None:
    page = http.get(f"{proxy.url}/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy
    # Everything the page loads is its own: no CDN, nothing from another origin.
    assert "http://" not in page.text and "https://" not in page.text
    for name, media_type in (
        ("app.js", "text/javascript"),
        ("charts.js", "text/javascript"),
        ("style.css", "text/css"),
    ):
        asset = http.get(f"{proxy.url}/dashboard/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media_type)
        assert f"dashboard/{name}" in page.text
        text = asset.text.replace('"http://www.w3.org/2000/svg"', "")  # the SVG namespace is a name, not a fetch
        assert "http://" not in text and "https://" not in text
    missing = http.get(f"{proxy.url}/dashboard/nothing.js")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


def test_dashboard_switched_off_is_not_served(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(
        {tier: f"{server.url}/v1" for tier, server in simulators.items()}, **{"server.dashboard": False}
    )
    for path in ("/dashboard", "/dashboard/app.js"):
        response = http.get(f"{proxy.url}{path}")
        assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"
    assert http.get(f"{proxy.url}/v1/model-routing/stats").status_code == 200
