"""The proxy's own endpoints: chat completions (the hot path), the model list, and explain."""

from __future__ import annotations

import time
from typing import Any

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from routeproxy.config import Tier
from routeproxy.counters import Outcome
from routeproxy.errors import RouteproxyError
from routeproxy.logs import preview
from routeproxy.parse import check_content_type, parse_chat_body, pop_hints
from routeproxy.relay import Exchange, RelayResult
from routeproxy.route import RouteDecision, explain, response_headers
from routeproxy.state import Resources, error_response, read_body, request_id_of, resources_of
from routeproxy.upstream import RawHeaders

log = structlog.get_logger("routeproxy")


async def chat_completions(request: Request) -> Response | Exchange:
    started = time.perf_counter()
    resources = resources_of(request)
    settings = resources.settings
    request_id = request_id_of(request)
    metrics = resources.metrics
    try:
        resources.check_client_key(request)
        resources.admit()
    except RouteproxyError as exc:
        metrics.rejected(exc.status_code)
        log.info("request_rejected", request_id=request_id, status=exc.status_code, error=exc.message)
        return error_response(exc, request_id)
    try:
        check_content_type(request.headers.get("content-type"))
        body = parse_chat_body(await read_body(request, settings.server.max_body_bytes))
        hints = pop_hints(body, request.headers)
        enabled, ratio = resources.routing_now()
        routing_started = time.perf_counter()
        decision = resources.router.route(body, hints, request.headers, enabled=enabled, ab_test_ratio=ratio)
        classify_s = time.perf_counter() - routing_started if decision.classification is not None else None
    except RouteproxyError as exc:
        resources.release()
        metrics.rejected(exc.status_code)
        log.info("request_rejected", request_id=request_id, status=exc.status_code, error=exc.message)
        return error_response(exc, request_id)
    except BaseException:
        resources.release()  # the client left mid-body (ClientDisconnect), or a bug: the slot is given back
        raise
    overhead_header: list[tuple[bytes, bytes]] = []
    overhead_s: list[float] = []

    def prepare(tier: Tier, fallback_reason: str | None) -> tuple[bytes, RawHeaders]:
        """The request body and the client's extra response headers, for the tier about to be tried."""
        config = settings.tiers[tier]
        body["model"] = config.upstream_model
        payload = orjson.dumps(body)
        headers = [
            (name.encode(), value.encode("utf-8", "replace"))
            for name, value in response_headers(decision, tier, config.model).items()
        ]
        headers.append((b"x-request-id", request_id.encode()))
        if fallback_reason is not None:
            headers.append((b"x-routeproxy-fallback", fallback_reason.encode()))
        if not overhead_header:  # time in the proxy before the first upstream request is sent
            overhead_s.append(time.perf_counter() - started)
            overhead_header.append((b"x-routeproxy-overhead-ms", f"{overhead_s[0] * 1000:.3f}".encode()))
        headers.extend(overhead_header)
        return payload, headers

    def finish(result: RelayResult) -> None:
        resources.release()
        tier = result.tier or decision.tier
        outcome = Outcome(
            tier=tier,
            complexity=decision.complexity,
            status=result.status,
            latency_ms=result.end_s * 1000,
            ttfb_ms=None if result.ttfb_s is None or not result.stream else result.ttfb_s * 1000,
            stream=result.stream,
            upstream_error=result.upstream_error is not None,
            fallback=result.fallback_reason is not None,
            classify_failed=decision.classify_error is not None,
            disconnected=result.disconnected,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
        )
        resources.counters.record(outcome)
        metrics.observe(outcome, overhead_s=overhead_s[0] if overhead_s else None, classify_s=classify_s)
        if resources.log_requests or result.upstream_error or decision.classify_error:
            _log_request(resources, decision, result, request_id, body_stream=bool(body.get("stream")))

    # A pinned request named its model: it is not switched to the other one behind the client's back.
    fallback = None if decision.reason == "pinned" else settings.routing.fallback_for(decision.tier)
    return Exchange(
        resources.pool,
        decision.tier,
        fallback,
        prepare,
        request.headers.raw,
        started,
        finish,
    )


def _log_request(
    resources: Resources, decision: RouteDecision, result: RelayResult, request_id: str, *, body_stream: bool
) -> None:
    tier = result.tier or decision.tier
    fields: dict[str, Any] = {
        "request_id": request_id,
        "tier": tier.label,
        "complexity": decision.complexity.name if decision.complexity else None,
        "reason": decision.reason,
        "status": result.status,
        "latency_ms": round(result.end_s * 1000, 2),
        "stream": body_stream,
    }
    if decision.ab_draw is not None:
        fields["ab_draw"] = round(decision.ab_draw, 2)
        fields["ab_ratio"] = decision.ab_ratio
    if result.ttfb_s is not None and result.stream:
        fields["ttfb_ms"] = round(result.ttfb_s * 1000, 2)
    if decision.classification is not None:
        shown = preview(decision.classification.query, resources.settings.routing.log_preview_chars)
        if shown is not None:
            fields["query"] = shown
    if result.disconnected:
        fields["disconnected"] = True
    if result.fallback_reason is not None:
        fields["fallback"] = result.fallback_reason
    if result.upstream_error:
        log.warning("route", upstream_error=result.upstream_error, **fields)
    elif decision.classify_error:
        log.error("route", classify_error=decision.classify_error, **fields)
    else:
        log.info("route", **fields)


async def list_models(request: Request) -> Response:
    resources = resources_of(request)
    try:
        resources.check_client_key(request)
    except RouteproxyError as exc:
        return error_response(exc, request_id_of(request))
    settings = resources.settings
    names = [settings.routing.auto_model, *(settings.tiers[tier].model for tier in Tier)]
    return JSONResponse(
        {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "routeproxy"} for name in names],
        }
    )


async def explain_route(request: Request) -> Response:
    """The decision for a chat request, without calling an upstream."""
    resources = resources_of(request)
    try:
        resources.check_client_key(request)
        check_content_type(request.headers.get("content-type"))
        body = parse_chat_body(await read_body(request, resources.settings.server.max_body_bytes))
        hints = pop_hints(body, request.headers)
        enabled, ratio = resources.routing_now()
        decision = resources.router.route(body, hints, request.headers, enabled=enabled, ab_test_ratio=ratio)
    except RouteproxyError as exc:
        return error_response(exc, request_id_of(request))
    return JSONResponse(explain(decision, resources.settings, enabled=enabled, ab_test_ratio=ratio))
