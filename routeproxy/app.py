"""create_app(settings) -> Starlette. Handlers read as a short pipeline; resources live in the lifespan state."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from routeproxy.classify import Classifier, load_rules
from routeproxy.config import Settings, Tier, load_settings
from routeproxy.counters import CounterStore, Outcome, RuntimeConfig, open_store, render_stats
from routeproxy.errors import (
    Forbidden,
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
    RouteproxyError,
    Unauthorized,
    error_envelope,
)
from routeproxy.logs import configure_logging, preview
from routeproxy.metrics import Metrics
from routeproxy.parse import check_content_type, parse_chat_body, pop_hints
from routeproxy.relay import Exchange, RelayResult
from routeproxy.route import RouteDecision, Router, explain, response_headers
from routeproxy.upstream import RawHeaders, UpstreamPool

log = structlog.get_logger("routeproxy")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


@dataclass(slots=True)
class Resources:
    settings: Settings
    router: Router
    pool: UpstreamPool
    counters: CounterStore
    metrics: Metrics
    client_key_digests: frozenset[bytes] = frozenset()
    inflight: int = 0
    draining: bool = False

    @property
    def log_requests(self) -> bool:
        """Whether the per-request info line is written at all (skip building it when it would be dropped)."""
        return self.settings.logging.level in ("debug", "info")

    def admit(self) -> None:
        """Count a chat request in, or refuse it when the process is at its limit."""
        limit = self.settings.server.max_concurrent_requests
        if self.inflight >= limit:
            raise Overloaded(
                f"routeproxy is serving its limit of {limit} concurrent requests; retry shortly",
                code="too_many_concurrent_requests",
            )
        self.inflight += 1

    def release(self) -> None:
        self.inflight -= 1

    def check_client_key(self, request: Request) -> None:
        """With client keys configured, /v1/* needs one of them as a bearer token (compared by digest)."""
        if not self.client_key_digests:
            return
        token = _bearer(request)
        if token is None:
            raise Unauthorized(
                "this routeproxy needs an api key: send Authorization: Bearer <key>", code="missing_api_key"
            )
        if _digest(token) not in self.client_key_digests:
            raise Unauthorized("the api key is not valid for this routeproxy", code="invalid_api_key")

    def check_admin(self, request: Request) -> None:
        """Reset and runtime changes: the admin token when one is set, else loopback clients only."""
        token = self.settings.server.admin_token
        if token is not None:
            given = _bearer(request)
            if given is None or not hmac.compare_digest(_digest(given), _digest(token)):
                raise Unauthorized(
                    f"{request.url.path} needs the admin token: Authorization: Bearer <token>",
                    code="invalid_admin_token",
                )
            return
        host = request.client.host if request.client else ""
        if not is_loopback(host):
            raise Forbidden(
                f"{request.url.path} answers only clients on this host, not {host or 'unknown'} "
                "(set ROUTEPROXY_ADMIN_TOKEN to allow others)"
            )

    def routing_now(self) -> tuple[bool, float]:
        """(enabled, ab_test_ratio) in force now: the shared runtime config where set, else the settings.

        No I/O: the counter store refreshes its copy of the runtime config in the background.
        """
        runtime = self.counters.current_runtime
        enabled = (
            self.settings.routing.enabled if runtime.enable_model_routing is None else runtime.enable_model_routing
        )
        ratio = self.settings.routing.ab_test_ratio if runtime.ab_test_ratio is None else runtime.ab_test_ratio
        return enabled, ratio


def is_loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1")


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _resources(request: Request) -> Resources:
    # The lifespan state, read from the scope: request.state builds a wrapper object on every access.
    resources: Resources = request.scope["state"]["resources"]
    return resources


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is {declared} bytes; the limit is {limit}", code="payload_too_large")
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise PayloadTooLarge(f"the request body is over the limit of {limit} bytes", code="payload_too_large")
        parts.append(part)
    return b"".join(parts)


def _request_id(request: Request) -> str:
    given = request.headers.get("x-request-id")
    return given if given and _REQUEST_ID.match(given) else os.urandom(16).hex()


async def chat_completions(request: Request) -> Response | Exchange:
    started = time.perf_counter()
    resources = _resources(request)
    settings = resources.settings
    request_id = _request_id(request)
    metrics = resources.metrics
    try:
        resources.check_client_key(request)
        resources.admit()
    except RouteproxyError as exc:
        metrics.rejected(exc.status_code)
        log.info("request_rejected", request_id=request_id, status=exc.status_code, error=exc.message)
        return _error_response(exc, request_id)
    try:
        check_content_type(request.headers.get("content-type"))
        body = parse_chat_body(await _read_body(request, settings.server.max_body_bytes))
        hints = pop_hints(body, request.headers)
        enabled, ratio = resources.routing_now()
        routing_started = time.perf_counter()
        decision = resources.router.route(body, hints, request.headers, enabled=enabled, ab_test_ratio=ratio)
        classify_s = time.perf_counter() - routing_started if decision.classification is not None else None
    except RouteproxyError as exc:
        resources.release()
        metrics.rejected(exc.status_code)
        log.info("request_rejected", request_id=request_id, status=exc.status_code, error=exc.message)
        return _error_response(exc, request_id)
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


def _error_response(exc: RouteproxyError, request_id: str) -> Response:
    headers = {"x-request-id": request_id}
    if isinstance(exc, Overloaded):
        headers["retry-after"] = str(exc.retry_after_s)
    return Response(exc.body(), status_code=exc.status_code, media_type="application/json", headers=headers)


async def list_models(request: Request) -> Response:
    resources = _resources(request)
    try:
        resources.check_client_key(request)
    except RouteproxyError as exc:
        return _error_response(exc, _request_id(request))
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
    resources = _resources(request)
    try:
        resources.check_client_key(request)
        check_content_type(request.headers.get("content-type"))
        body = parse_chat_body(await _read_body(request, resources.settings.server.max_body_bytes))
        hints = pop_hints(body, request.headers)
        enabled, ratio = resources.routing_now()
        decision = resources.router.route(body, hints, request.headers, enabled=enabled, ab_test_ratio=ratio)
    except RouteproxyError as exc:
        return _error_response(exc, _request_id(request))
    return JSONResponse(explain(decision, resources.settings, enabled=enabled, ab_test_ratio=ratio))


async def routing_stats(request: Request) -> Response:
    """The seed's stats JSON, totals across every replica sharing the store."""
    resources = _resources(request)
    enabled, ratio = resources.routing_now()
    snapshot = await resources.counters.snapshot()
    settings = resources.settings
    stats = render_stats(
        snapshot,
        ab_test_ratio=ratio,
        routing_enabled=enabled,
        baseline_latency_ms=settings.counters.baseline_latency_ms,
        relative_cost={tier: config.relative_cost for tier, config in settings.tiers.items()},
    )
    return JSONResponse(stats)


async def routing_reset(request: Request) -> Response:
    resources = _resources(request)
    try:
        resources.check_admin(request)
        await resources.counters.reset()
    except RouteproxyError as exc:
        return _error_response(exc, _request_id(request))
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
    resources = _resources(request)
    if request.method == "GET":
        return JSONResponse(_runtime_json(resources, await resources.counters.runtime()))
    try:
        resources.check_admin(request)
        change = _parse_runtime_change(await _read_body(request, 64 * 1024))
        shared = await resources.counters.set_runtime(change)
    except RouteproxyError as exc:
        return _error_response(exc, _request_id(request))
    log.info(
        "runtime_config_changed",
        ab_test_ratio=shared.ab_test_ratio,
        enable_model_routing=shared.enable_model_routing,
        client=request.client.host if request.client else None,
    )
    return JSONResponse(_runtime_json(resources, shared))


async def prometheus_metrics(request: Request) -> Response:
    """Prometheus text format; this process's numbers (each worker process has its own)."""
    resources = _resources(request)
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
    resources = _resources(request)
    counters = resources.counters
    checks = {
        "draining": resources.draining,
        "counters": f"{counters.store_name}: {'ok' if counters.healthy else 'unreachable, counting locally'}",
        "inflight": resources.inflight,
    }
    if resources.draining:
        return JSONResponse({"status": "unready", "reasons": ["draining"], "checks": checks}, status_code=503)
    return JSONResponse({"status": "ready", "checks": checks})


def _drain_on_signals(resources: Resources) -> Callable[[], None]:
    """Turn unready the moment SIGTERM or SIGINT arrives, then let uvicorn's own handler do the graceful part
    (stop accepting, let in-flight requests finish within the drain period, run the lifespan shutdown).

    uvicorn installs its handlers with signal.signal on the main thread before our lifespan starts; we chain
    onto them. Servers on other threads (tests) have no signal handling to chain onto.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[signal.Signals, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(signum)
        if not callable(handler):
            continue

        def on_signal(received: int, frame: Any, chained: Callable[..., Any] = handler) -> None:
            if not resources.draining:
                resources.draining = True
                log.info("draining", signal=signal.Signals(received).name, inflight=resources.inflight)
            chained(received, frame)

        previous[signum] = handler
        signal.signal(signum, on_signal)

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error_type = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return JSONResponse(error_envelope(message, error_type), status_code=exc.status_code, headers=exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected_error", path=request.url.path)
    return JSONResponse(error_envelope("internal error in routeproxy", "internal_error"), status_code=500)


def create_app(settings: Settings) -> ProxyApp:
    # Built here, not in the lifespan: a bad rule set fails at start with a clear ConfigError.
    router = Router(settings, Classifier(load_rules(settings.routing.rules)))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        client_keys = settings.server.api_keys
        # A routeproxy client key is ours to check and never goes upstream.
        pool = UpstreamPool(settings.tiers, forward_client_auth=not client_keys)
        counters = open_store(settings.counters)
        await counters.start()
        resources = Resources(
            settings=settings,
            router=router,
            pool=pool,
            counters=counters,
            metrics=Metrics(),
            client_key_digests=frozenset(_digest(key) for key in client_keys),
        )
        restore_signals = _drain_on_signals(resources)
        try:
            yield {"resources": resources}
        finally:
            restore_signals()
            await counters.close()  # the last flush: nothing counted is left behind
            await pool.aclose()

    routes = [
        # The SDKs append chat/completions to base_url; a base_url without /v1 gives /chat/completions.
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/models", list_models, methods=["GET"]),
        Route("/v1/model-routing/explain", explain_route, methods=["POST"]),
        Route("/v1/model-routing/stats", routing_stats, methods=["GET"]),
        Route("/v1/model-routing/reset", routing_reset, methods=["POST"]),
        Route("/v1/model-routing/config", routing_config, methods=["GET", "PUT"]),
        Route("/metrics", prometheus_metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    return ProxyApp(
        Starlette(
            routes=routes,
            lifespan=lifespan,
            exception_handlers={HTTPException: _http_error, Exception: _unexpected_error},
        )
    )


_CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})


class ProxyApp:
    """The Starlette app, except that POST chat/completions goes straight to its handler.

    Every proxied request pays for whatever stands in front of its handler; Starlette's exception middlewares,
    router and request/response wrappers cost about a fifth of the proxy's CPU per request (measured with
    py-spy under load). The handler renders its own errors in OpenAI's envelope, so it needs none of them.
    """

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in _CHAT_PATHS and scope["method"] == "POST":
            request = Request(scope, receive)
            try:
                response = await chat_completions(request)
            except ClientDisconnect:
                return  # gone before its request was read: nobody to answer
            except Exception:
                log.exception("unexpected_error", path=scope["path"])
                response = JSONResponse(error_envelope("internal error in routeproxy", "internal_error"), 500)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def app_from_environment() -> ProxyApp:
    """The factory uvicorn's worker processes call (``--workers N``): settings from ROUTEPROXY_CONFIG and env."""
    settings = load_settings()
    configure_logging(settings.logging)
    return create_app(settings)
