"""The operators' endpoints: routing stats, reset, runtime config, Prometheus metrics, liveness and readiness.

A ``RouteproxyError`` raised here is rendered by the app's one handler (``app.py``)."""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from routeproxy.api.cached import cache_stats
from routeproxy.api.resources import Resources, resources_of
from routeproxy.counters.stats import Snapshot, render_ab_cascade, render_cascade, render_stats
from routeproxy.errors import Conflict, InvalidRequest, preview
from routeproxy.quality.analysis import Analysis, analyse, render_ab, thresholds_of
from routeproxy.quality.controller import Action, RolloutController, evidence_of
from routeproxy.settings import RoutingMode, Settings
from routeproxy.settings.runtime import RuntimeConfig
from routeproxy.wire.admission import read_body
from routeproxy.wire.auth import check_admin

log = structlog.get_logger("routeproxy")


def _analyse(settings: Settings, snapshot: Snapshot) -> Analysis:
    quality = settings.quality
    return analyse(snapshot, thresholds_of(quality), settings.tier_labels, uses_implicit=quality.verdict_uses_implicit)


def stats_json(
    settings: Settings,
    snapshot: Snapshot,
    *,
    enabled: bool,
    ratio: float,
    rollout: RolloutController,
    queued: int,
    routing_mode: RoutingMode,
) -> dict[str, Any]:
    """The seed's stats JSON, then the A/B analysis, the rollout and the cascade (the endpoint's and
    ``routeproxy stats``')."""
    stats = render_stats(
        snapshot,
        ab_test_ratio=ratio,
        routing_enabled=enabled,
        baseline_latency_ms=settings.counters.baseline_latency_ms,
        relative_cost={tier: config.relative_cost for tier, config in settings.tiers.items()},
        labels=settings.tier_labels,
    )
    analysis = _analyse(settings, snapshot)
    stats["ab_analysis"] = render_ab(snapshot, analysis, thresholds_of(settings.quality), queued=queued)
    stats["ab_analysis"]["cascade"] = render_ab_cascade(snapshot, settings.tier_labels)
    stats["rollout"] = rollout.describe(evidence_of(analysis, snapshot.period))
    stats["cascade"] = render_cascade(snapshot, routing_mode.value, settings.tier_labels)
    return stats


async def routing_stats(request: Request) -> Response:
    """Totals across every replica sharing the store."""
    resources = resources_of(request)
    snapshot = await resources.counters.snapshot()
    await resources.rollout.refresh()
    enabled, ratio = resources.routing_now()
    stats = stats_json(
        resources.settings,
        snapshot,
        enabled=enabled,
        ratio=ratio,
        rollout=resources.rollout,
        queued=resources.decisions.queued,
        routing_mode=resources.mode_now(),
    )
    stats["cache"] = await cache_stats(resources, snapshot)
    return JSONResponse(stats)


async def routing_reset(request: Request) -> Response:
    resources = resources_of(request)
    check_admin(request, resources.settings.server)
    await resources.counters.reset()
    log.info("counters_reset", client=request.client.host if request.client else None)
    return JSONResponse({"reset": True, "store": resources.counters.store_name})


def _runtime_json(resources: Resources, shared: RuntimeConfig) -> dict[str, Any]:
    enabled, ratio = resources.routing_now()
    state = resources.rollout.state
    return {
        "ab_test_ratio": ratio,
        "enable_model_routing": enabled,
        "routing_mode": resources.mode_now().value,
        "shared": {
            "ab_test_ratio": shared.ab_test_ratio,
            "enable_model_routing": shared.enable_model_routing,
            "routing_mode": None if shared.routing_mode is None else shared.routing_mode.value,
        },
        "configured": {
            "ab_test_ratio": resources.settings.routing.ab_test_ratio,
            "enable_model_routing": resources.settings.routing.enabled,
            "routing_mode": resources.settings.routing.mode.value,
        },
        "rollout": {
            "enabled": resources.rollout.enabled,
            "paused": bool(state and state.paused),
            "step_index": state.step if resources.rollout.enabled and state else None,
            "ratio": resources.rollout.policy.ratio(state.step) if resources.rollout.enabled and state else None,
        },
    }


def _parse_rollout_action(change: Any, steps: int) -> Action | None:
    if change is None:
        return None
    if not isinstance(change, dict) or not change:
        raise InvalidRequest('rollout must be an object such as {"paused": true} or {"step": 1}', param="rollout")
    unknown = sorted(set(change) - {"paused", "step", "why"})
    if unknown:
        raise InvalidRequest(f"unknown rollout setting {preview(unknown[0])!r}", param=f"rollout.{preview(unknown[0])}")
    paused, step, why = change.get("paused"), change.get("step"), change.get("why")
    if paused is not None and not isinstance(paused, bool):
        raise InvalidRequest(f"rollout.paused must be true or false, not {preview(paused)}", param="rollout.paused")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or not -1 <= step < steps):
        raise InvalidRequest(
            f"rollout.step must be a whole number from -1 (ratio 0) to {steps - 1}, not {preview(step)}",
            param="rollout.step",
        )
    if why is not None and (not isinstance(why, str) or len(why) > 500):
        raise InvalidRequest("rollout.why must be a string of at most 500 characters", param="rollout.why")
    if paused is None and step is None:
        raise InvalidRequest('rollout needs "paused" or "step"', param="rollout")
    return Action(paused=paused, step=step, why=why)


def _parse_runtime_change(raw: bytes, steps: int) -> tuple[RuntimeConfig, Action | None]:
    try:
        change = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(change, dict) or not change:
        raise InvalidRequest('send a JSON object such as {"ab_test_ratio": 0.3, "enable_model_routing": true}')
    unknown = sorted(set(change) - {"ab_test_ratio", "enable_model_routing", "routing_mode", "rollout"})
    if unknown:
        raise InvalidRequest(f"unknown runtime setting {preview(unknown[0])!r}", param=preview(unknown[0]))
    ratio = change.get("ab_test_ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1):
        raise InvalidRequest(
            f"ab_test_ratio must be a number from 0.0 to 1.0, not {preview(ratio)}", param="ab_test_ratio"
        )
    enabled = change.get("enable_model_routing")
    if enabled is not None and not isinstance(enabled, bool):
        raise InvalidRequest(
            f"enable_model_routing must be true or false, not {preview(enabled)}", param="enable_model_routing"
        )
    mode = change.get("routing_mode")
    if mode is not None and mode not in tuple(RoutingMode):
        allowed = " or ".join(member.value for member in RoutingMode)
        raise InvalidRequest(f"routing_mode must be {allowed}, not {mode!r}", param="routing_mode")
    runtime = RuntimeConfig(
        ab_test_ratio=None if ratio is None else float(ratio),
        enable_model_routing=enabled,
        routing_mode=None if mode is None else RoutingMode(mode),
    )
    return runtime, _parse_rollout_action(change.get("rollout"), steps)


async def routing_config(request: Request) -> Response:
    """GET: the routing settings in force. PUT: change them for every replica (stored in the shared store)."""
    resources = resources_of(request)
    if request.method == "GET":
        return JSONResponse(_runtime_json(resources, await resources.counters.runtime()))
    check_admin(request, resources.settings.server)
    rollout = resources.rollout
    change, action = _parse_runtime_change(
        await read_body(request, 64 * 1024, resources.settings.server.body_timeout), len(rollout.policy.schedule)
    )
    if action is not None and not rollout.enabled:
        raise InvalidRequest("the rollout controller is off (routing.rollout.enabled)", param="rollout")
    await rollout.refresh()
    if change.ab_test_ratio is not None and rollout.driving and not (action and action.paused):
        raise Conflict(
            "the rollout controller sets ab_test_ratio: pause it first "
            '({"rollout": {"paused": true}}) or move it with {"rollout": {"step": N}}',
            param="ab_test_ratio",
            code="rollout_active",
        )
    if action is not None:
        await rollout.operate(action)
    shared = await resources.counters.set_runtime(change)
    log.info(
        "runtime_config_changed",
        ab_test_ratio=shared.ab_test_ratio,
        enable_model_routing=shared.enable_model_routing,
        routing_mode=shared.routing_mode,
        client=request.client.host if request.client else None,
    )
    return JSONResponse(_runtime_json(resources, shared))


async def prometheus_metrics(request: Request) -> Response:
    """Prometheus text format; this process's numbers (each worker process has its own)."""
    resources = resources_of(request)
    enabled, ratio = resources.routing_now()
    metrics = resources.metrics
    metrics.set_runtime(
        ab_test_ratio=ratio, routing_enabled=enabled, cascade=resources.mode_now() is RoutingMode.CASCADE
    )
    metrics.set_inflight(resources.inflight)
    await cache_stats(resources, None)  # the cache's gauges
    metrics.set_counter_store(failures=resources.counters.failures, flush_lag_s=resources.counters.flush_lag_s)
    snapshot = await resources.counters.snapshot()
    analysis = _analyse(resources.settings, snapshot)
    comparison = analysis.feedback
    interval = comparison.degradation_interval
    metrics.set_quality(
        means={analysis.small: comparison.small.mean, analysis.large: comparison.large.mean},
        counts={analysis.small: comparison.small.count, analysis.large: comparison.large.count},
        degradation=None
        if comparison.degradation is None or interval is None
        else (comparison.degradation, interval.low, interval.high),
        verdict=analysis.verdict.value,
    )
    state = resources.rollout.state
    metrics.set_rollout(
        step=state.step if resources.rollout.enabled and state else None, paused=bool(state and state.paused)
    )
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


async def healthz(request: Request) -> Response:
    """Liveness only: the process answers."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Readiness: unready while draining. A shared store that does not answer is reported, not fatal:
    requests are still served and counted locally until it is back."""
    resources = resources_of(request)
    counters = resources.counters
    checks = {
        "replica": counters.replica_id,
        "draining": resources.draining,
        "counters": f"{counters.store_name}: {'ok' if counters.healthy else 'unreachable, counting locally'}",
        "inflight": resources.inflight,
    }
    if resources.draining:
        return JSONResponse({"status": "unready", "reasons": ["draining"], "checks": checks}, status_code=503)
    return JSONResponse({"status": "ready", "checks": checks})
