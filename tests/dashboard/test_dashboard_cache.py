"""The dashboard's cache block in a real headless Chromium: the figures it shows are the stats endpoint's."""

from __future__ import annotations

from support import http
from support.browser import Browser
from support.upstreams import ProxyFactory
from test_dashboard import FIGURES_JS, assert_shown_equals, browser, endpoint, value_at  # noqa: F401  (fixture)

from routeproxy.settings import Tier
from routeproxy.sim.threadserver import ThreadedServer


def test_dashboard_shows_the_caches_figures(
    simulators: dict[Tier, ThreadedServer],
    start_proxy: ProxyFactory,
    browser: Browser,  # noqa: F811
) -> None:
    proxy = start_proxy({tier: f"{server.url}/v1" for tier, server in simulators.items()}, **{"cache.enabled": True})
    for question in ("One?", "Two?", "One?", "One?"):
        payload = {"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": question}]}
        assert http.post(f"{proxy.url}/v1/chat/completions", json=payload).status_code == 200
    stats = endpoint(proxy.url, "stats")
    assert stats["cache"]["hits"] == 2

    browser.open(f"{proxy.url}/dashboard")
    browser.wait_for("document.querySelector('[data-field=\"cache.hits\"]')?.textContent", what="the cache block")
    shown = [(path, text) for path, text in browser.evaluate(FIGURES_JS) if path.startswith("cache.")]
    assert {path for path, _ in shown} >= {
        "cache.hits",
        "cache.hit_rate_pct",
        "cache.bytes_now",
        "cache.by_tier.8b.hits",
    }
    for path, text in shown:
        assert_shown_equals(text, value_at(stats, path), path)
    assert browser.errors() == []
