"""The operators' endpoints: routing stats, reset, runtime config, Prometheus metrics, liveness and readiness.

A ``RouteproxyError`` raised here is rendered by the app's one handler (``app.py``)."""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from routeproxy.admission import read_body
from routeproxy.auth import check_admin
from routeproxy.errors import InvalidRequest
from routeproxy.resources import Resources, resources_of
from routeproxy.runtime import RuntimeConfig
from routeproxy.stats import render_stats

log = structlog.get_logger("routeproxy")


async def routing_stats(request: Request) -> Response:
    """The seed's stats JSON, totals across every replica sharing the store."""
    resources = resources_of(request)
    enabled, ratio = resources.routing_now()
    snapshot = await resources.counters.snapshot()
    settings = resources.settings
    stats = render_stats(
        snapshot,
        ab_test_ratio=ratio,
        routing_enabled=enabled,
        baseline_latency_ms=settings.counters.baseline_latency_ms,
        relative_cost={tier: config.relative_cost for tier, config in settings.tiers.items()},
        labels=settings.tier_labels,
    )
    return JSONResponse(stats)


async def routing_reset(request: Request) -> Response:
    resources = resources_of(request)
    check_admin(request, resources.settings.server.admin_token)
    await resources.counters.reset()
    log.info("counters_reset", client=request.client.host if request.client else None)
    return JSONResponse({"reset": True, "store": resources.counters.store_name})


def _runtime_json(resources: Resources, shared: RuntimeConfig) -> dict[str, Any]:
    enabled, ratio = resources.routing_now()
    return {
        "ab_test_ratio": ratio,
        "enable_model_routing": enabled,
        "shared": {"ab_test_ratio": shared.ab_test_ratio, "enable_model_routing": shared.enable_model_routing},
        "configured": {
            "ab_test_ratio": resources.settings.routing.ab_test_ratio,
            "enable_model_routing": resources.settings.routing.enabled,
        },
    }


def _parse_runtime_change(raw: bytes) -> RuntimeConfig:
    try:
        change = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(change, dict) or not change:
        raise InvalidRequest('send a JSON object such as {"ab_test_ratio": 0.3, "enable_model_routing": true}')
    unknown = sorted(set(change) - {"ab_test_ratio", "enable_model_routing"})
    if unknown:
        raise InvalidRequest(f"unknown runtime setting {unknown[0]!r}", param=unknown[0])
    ratio = change.get("ab_test_ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1):
        raise InvalidRequest(f"ab_test_ratio must be a number from 0.0 to 1.0, not {ratio!r}", param="ab_test_ratio")
    enabled = change.get("enable_model_routing")
    if enabled is not None and not isinstance(enabled, bool):
        raise InvalidRequest(
            f"enable_model_routing must be true or false, not {enabled!r}", param="enable_model_routing"
        )
    return RuntimeConfig(ab_test_ratio=None if ratio is None else float(ratio), enable_model_routing=enabled)


async def routing_config(request: Request) -> Response:
    """GET: the routing settings in force. PUT: change them for every replica (stored in the shared store)."""
    resources = resources_of(request)
    if request.method == "GET":
        return JSONResponse(_runtime_json(resources, await resources.counters.runtime()))
    check_admin(request, resources.settings.server.admin_token)
    change = _parse_runtime_change(await read_body(request, 64 * 1024))
    shared = await resources.counters.set_runtime(change)
    log.info(
        "runtime_config_changed",
        ab_test_ratio=shared.ab_test_ratio,
        enable_model_routing=shared.enable_model_routing,
        client=request.client.host if request.client else None,
    )
    return JSONResponse(_runtime_json(resources, shared))


async def prometheus_metrics(request: Request) -> Response:
    """Prometheus text format; this process's numbers (each worker process has its own)."""
    resources = resources_of(request)
    enabled, ratio = resources.routing_now()
    metrics = resources.metrics
    metrics.set_runtime(ab_test_ratio=ratio, routing_enabled=enabled)
    metrics.set_inflight(resources.inflight)
    metrics.set_counter_store(failures=resources.counters.failures, flush_lag_s=resources.counters.flush_lag_s)
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
        "draining": resources.draining,
        "counters": f"{counters.store_name}: {'ok' if counters.healthy else 'unreachable, counting locally'}",
        "inflight": resources.inflight,
    }
    if resources.draining:
        return JSONResponse({"status": "unready", "reasons": ["draining"], "checks": checks}, status_code=503)
    return JSONResponse({"status": "ready", "checks": checks})
