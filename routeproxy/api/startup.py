"""What ``serve`` checks and says before it listens, shared with ``check-config`` so that the two agree: the
start-up checks (``check-config`` fails exactly when ``serve`` would) and the start-up summary (routing, rule set,
mode, each tier's model, kind and URL, the counter store, the listen address; never a key or a password)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from routeproxy import __version__
from routeproxy.errors import ConfigError
from routeproxy.settings import Settings


def check_startable(settings: Settings, *, simulate: bool) -> None:
    """Raise ConfigError for whatever would stop ``serve`` at start with these settings."""
    from routeproxy.api.app import create_app  # builds the router: the rule set is loaded and checked

    if settings.server.workers > 1 and settings.counters.redis_url is None:
        raise ConfigError(
            f"--workers {settings.server.workers} needs REDIS_URL: without it each worker keeps its own counters, "
            "runtime config and metrics, and answers differently. Set REDIS_URL (counters.redis_url) so the "
            "workers share one view, or run one worker per process behind a load balancer"
        )
    if not simulate:
        for tier, config in settings.tiers.items():
            if config.api_key_env and config.api_key is None:
                raise ConfigError(
                    f"tiers.{tier}.api_key names the environment variable {config.api_key_env}, which is not set "
                    f"(export it, or run with --simulate for the built-in simulated upstreams)"
                )
    create_app(settings)


def redacted(url: str) -> str:
    """The URL with any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def summary(settings: Settings, *, simulate: bool) -> dict[str, Any]:
    """The start-up summary as JSON-ready fields (the ``startup`` log event)."""
    redis_url = settings.counters.redis_url
    return {
        "version": __version__,
        "listen": f"http://{settings.server.host}:{settings.server.port}",
        "workers": settings.server.workers,
        "routing_enabled": settings.routing.enabled,
        "ab_test_ratio": settings.routing.ab_test_ratio,
        "rules": settings.routing.rules,
        "mode": "simulated upstreams" if simulate else "upstreams",
        "tiers": {
            config.label: {
                "model": config.model,
                "kind": config.kind.value,
                "url": config.base_url,
                "api_key": "set" if config.api_key else "none",
            }
            for config in settings.tiers.values()
        },
        "passthrough_tier": settings.tiers[settings.routing.passthrough_tier].label,
        "counters": f"redis {redacted(redis_url)}" if redis_url else "in-memory (this process only)",
        "cors_origins": list(settings.server.cors_origins) or None,
        "dashboard": f"http://{settings.server.host}:{settings.server.port}/dashboard"
        if settings.server.dashboard
        else None,
        "config": settings.source,
    }


def summary_lines(fields: dict[str, Any]) -> list[str]:
    """The summary for people: one line per part."""
    routing = "on" if fields["routing_enabled"] else "off (every auto request goes to the large tier)"
    lines = [
        f"routeproxy {fields['version']} on {fields['listen']} ({fields['workers']} worker(s)), "
        f"with {fields['mode']}, config {fields['config']}",
        f"  routing {routing}, ab_test_ratio {fields['ab_test_ratio']}, rules {fields['rules']}",
    ]
    for label, tier in fields["tiers"].items():
        lines.append(f"  {label}: {tier['model']} via {tier['kind']} at {tier['url']} (api key {tier['api_key']})")
    lines.append(f"  passthrough endpoints go to {fields['passthrough_tier']}")
    lines.append(f"  counters: {fields['counters']}")
    if fields["cors_origins"]:
        lines.append(f"  CORS origins: {', '.join(fields['cors_origins'])}")
    if fields["dashboard"]:
        lines.append(f"  dashboard: {fields['dashboard']}")
    return lines
