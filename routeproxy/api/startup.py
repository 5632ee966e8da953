"""What ``serve`` checks and says before it listens, shared with ``check-config`` so that the two agree: the
start-up checks (``check-config`` fails exactly when ``serve`` would) and the start-up summary (routing and the
rollout controller, the mode and rule sets, each tier's model, kind and URL, the counter store, the listen address;
never a key or a password)."""

from __future__ import annotations

from typing import Any

from routeproxy import __version__
from routeproxy.errors import ConfigError
from routeproxy.settings import RoutingMode, Settings
from routeproxy.settings.redaction import redacted_url


def check_startable(settings: Settings, *, simulate: bool) -> None:
    """Raise ConfigError for whatever would stop ``serve`` at start with these settings."""
    from routeproxy.api.app import create_app  # builds the router: the rule set is loaded and checked

    if settings.server.workers > 1 and settings.counters.redis_url is None:
        raise ConfigError(
            f"--workers {settings.server.workers} needs a shared Redis: without it each worker keeps its own "
            "counters, runtime config and metrics, and answers differently. Set ROUTEPROXY_REDIS_URL "
            "(counters.redis_url, --redis-url) so the workers share one view, or run one worker per process behind a "
            "load balancer"
        )
    if not simulate:
        for tier, config in settings.tiers.items():
            if config.api_key_env and config.api_key is None:
                raise ConfigError(
                    f"tiers.{tier}.api_key names the environment variable {config.api_key_env}, which is not set "
                    f"(export it, or run with --simulate for the built-in simulated upstreams)"
                )
    create_app(settings)


def refuse_warnings(settings: Settings) -> None:
    """ConfigError listing what ``serve`` starts with but warns about (``Settings.notes``, the strict ones)."""
    problems = [note.message for note in settings.notes if note.strict]
    if len(problems) == 1:
        raise ConfigError(f"{problems[0]} (serve would start, with this warning)")
    if problems:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise ConfigError(f"{len(problems)} problems (serve would start, with a warning for each):\n{listed}")


def summary(settings: Settings, *, simulate: bool) -> dict[str, Any]:
    """The start-up summary as JSON-ready fields (the ``startup`` log event)."""
    redis_url = settings.counters.redis_url
    routing = settings.routing
    return {
        "version": __version__,
        "listen": f"http://{settings.server.host}:{settings.server.port}",
        "workers": settings.server.workers,
        "routing_enabled": routing.enabled,
        "ab_test_ratio": routing.ab_test_ratio,
        "mode": routing.mode.value,
        "rules": routing.rules,
        "cascade_rules": settings.cascade.rules if routing.mode is RoutingMode.CASCADE else None,
        "rollout": _rollout(settings),
        "upstreams": "simulated" if simulate else "configured",
        "tiers": {
            config.label: {
                "model": config.model,
                "kind": config.kind.value,
                "url": redacted_url(config.base_url),
                "api_key": "set" if config.api_key else "none",
            }
            for config in settings.tiers.values()
        },
        "passthrough_tier": settings.tiers[routing.passthrough_tier].label,
        "counters": f"redis {redacted_url(redis_url)}" if redis_url else "in-memory (this process only)",
        "cors_origins": list(settings.server.cors_origins) or None,
        "dashboard": f"http://{settings.server.host}:{settings.server.port}/dashboard"
        if settings.server.dashboard
        else None,
        "config": settings.source,
    }


def _rollout(settings: Settings) -> dict[str, Any]:
    """Whether the rollout controller sets ab_test_ratio, and to what first: the schedule's first step, unless a
    rollout state kept in Redis from an earlier run says which step it is at."""
    rollout = settings.routing.rollout
    if not rollout.enabled:
        return {"controller": "off"}
    return {
        "controller": "on",
        "schedule": list(rollout.schedule),
        "first_ratio": rollout.schedule[0],
        "resumes_stored_step": settings.counters.redis_url is not None,
    }


def summary_lines(fields: dict[str, Any]) -> list[str]:
    """The summary for people: one line per part."""
    rollout = fields["rollout"]
    if not fields["routing_enabled"]:
        routing = "routing off (every auto request goes to the large tier)"
    elif rollout["controller"] == "on":
        stored = " (or the step stored in Redis, when there is one)" if rollout["resumes_stored_step"] else ""
        steps = ", ".join(str(step) for step in rollout["schedule"])
        routing = (
            f"routing on; the rollout controller sets ab_test_ratio: {rollout['first_ratio']} first{stored}, "
            f"then along {steps} (the configured {fields['ab_test_ratio']} is not used while it drives)"
        )
    else:
        routing = f"routing on, ab_test_ratio {fields['ab_test_ratio']}"
    cascade = f", answer check {fields['cascade_rules']}" if fields["cascade_rules"] else ""
    upstreams = "simulated upstreams" if fields["upstreams"] == "simulated" else "the configured upstreams"
    lines = [
        f"routeproxy {fields['version']} on {fields['listen']} ({fields['workers']} worker(s)), "
        f"with {upstreams}, config {fields['config']}",
        f"  {routing}",
        f"  mode {fields['mode']}, rules {fields['rules']}{cascade}",
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
