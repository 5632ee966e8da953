"""create_app(settings) -> the ASGI app: routes, the lifespan that owns the resources, and drain on SIGTERM."""

from __future__ import annotations

import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from routeproxy.api.admin import healthz, prometheus_metrics, readyz, routing_config, routing_reset, routing_stats
from routeproxy.api.chat import PASSTHROUGH, chat_completions, passthrough, text_completions
from routeproxy.api.feedback import post_feedback
from routeproxy.api.heap import settle_heap
from routeproxy.api.logs import configure_logging
from routeproxy.api.models import explain_route, list_models, show_model
from routeproxy.api.resources import Resources
from routeproxy.api.responses import stored_response_routes
from routeproxy.cache.front import open_cache
from routeproxy.cascade.check import load_check_rules
from routeproxy.cascade.verifier import open_signals
from routeproxy.counters.metrics import Metrics
from routeproxy.counters.open import open_store
from routeproxy.dashboard import dashboard_routes
from routeproxy.errors import Forbidden, RouteproxyError, error_envelope, error_response, preview
from routeproxy.quality.open import open_decisions, open_rollout
from routeproxy.routing.classify import Classifier, load_rules
from routeproxy.routing.route import Router
from routeproxy.settings import Settings, load_settings
from routeproxy.wire.admission import request_id_of
from routeproxy.wire.auth import digest
from routeproxy.wire.origin import cross_site_refusal
from routeproxy.wire.upstream import UpstreamPool

log = structlog.get_logger("routeproxy")


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
    message = f"{preview(request.method)} {preview(request.url.path)}: {exc.detail}"
    return JSONResponse(error_envelope(message, error_type), status_code=exc.status_code, headers=exc.headers)


async def _routeproxy_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RouteproxyError)
    return error_response(exc, request_id_of(request))


def _internal_error(path: str) -> Response:
    """A bug: logged with its traceback, answered with a 500 envelope (chat and every other endpoint alike)."""
    log.exception("unexpected_error", path=preview(path))
    return JSONResponse(error_envelope("internal error in routeproxy", "internal_error"), status_code=500)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    return _internal_error(request.url.path)


def create_app(settings: Settings) -> ProxyApp:
    # Built here, not in the lifespan: a bad rule set fails at start with a clear ConfigError.
    router = Router(settings, Classifier(load_rules(settings.routing.rules)))
    # Also here: unreadable TLS files fail at start. A routeproxy client key is ours to check and never goes upstream.
    pool = UpstreamPool(settings.tiers, forward_client_auth=not settings.server.api_keys)
    check_rules = load_check_rules(settings.cascade.rules)
    cascade_signals = open_signals(settings.cascade.verifier)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        client_keys = settings.server.api_keys
        counters = open_store(
            settings.counters,
            settings.tier_labels,
            about={
                "enable_model_routing": settings.routing.enabled,
                "ab_test_ratio": settings.routing.ab_test_ratio,
                "routing_mode": settings.routing.mode.value,
            },
        )
        await counters.start()
        decisions = open_decisions(settings, counters)
        await decisions.start()
        rollout = open_rollout(settings, counters)
        await rollout.start()
        resources = Resources(
            settings=settings,
            router=router,
            pool=pool,
            counters=counters,
            metrics=Metrics(settings.tier_labels, multiprocess_workers=settings.server.workers > 1),
            decisions=decisions,
            rollout=rollout,
            check_rules=check_rules,
            cascade_signals=cascade_signals,
            client_key_digests=frozenset(digest(key) for key in client_keys),
        )
        resources.cache = open_cache(settings, resources.metrics.registry)

        # Each worker's flush reports to the metrics itself: with --workers N a scrape reaches one worker only.
        # The controller remembers the shared ratio each flush brings, should Redis lose it.
        def flushed() -> None:
            resources.metrics.set_counter_store(failures=counters.failures, flush_lag_s=counters.flush_lag_s)
            rollout.observe(counters.current_runtime)

        counters.on_flush = flushed
        restore_signals = _drain_on_signals(resources)
        try:
            yield {"resources": resources}
        finally:
            restore_signals()
            if resources.cache is not None:
                await resources.cache.close()
            await rollout.close()
            await decisions.close()  # decisions and feedback that wait go out before the counters' last flush
            await counters.close()  # the last flush: nothing counted is left behind
            resources.offload.close()
            await pool.aclose()
            for signal in cascade_signals:
                await signal.close()

    routes = [  # chat completions is served by ProxyApp, in front of these
        Route("/v1/completions", text_completions, methods=["POST"]),
        Route("/completions", text_completions, methods=["POST"]),
        *(Route(path, passthrough, methods=["POST"]) for path in PASSTHROUGH),
        *stored_response_routes(),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/models", list_models, methods=["GET"]),
        # :path, as HF model ids hold a slash (meta-llama/Llama-3.2-3B-Instruct).
        Route("/v1/models/{model_id:path}", show_model, methods=["GET"]),
        Route("/models/{model_id:path}", show_model, methods=["GET"]),
        Route("/v1/model-routing/explain", explain_route, methods=["POST"]),
        Route("/v1/model-routing/stats", routing_stats, methods=["GET"]),
        Route("/v1/model-routing/reset", routing_reset, methods=["POST"]),
        Route("/v1/model-routing/config", routing_config, methods=["GET", "PUT"]),
        Route("/v1/model-routing/feedback", post_feedback, methods=["POST"]),
        Route("/metrics", prometheus_metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/health", healthz, methods=["GET"]),  # the probe path of vLLM, TGI and LiteLLM
        Route("/readyz", readyz, methods=["GET"]),
        *(dashboard_routes() if settings.server.dashboard else ()),
    ]
    return ProxyApp(
        settings,
        Starlette(
            routes=routes,
            lifespan=lifespan,
            exception_handlers={
                HTTPException: _http_error,
                RouteproxyError: _routeproxy_error,
                Exception: _unexpected_error,
            },
        ),
    )


# The SDKs append chat/completions to base_url; a base_url without /v1 gives /chat/completions.
_CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
# What a browser client may read of a response (the routing decision and the request id).
EXPOSED_HEADERS = (
    "x-request-id",
    "x-routeproxy-request-id",
    "x-routeproxy-tier",
    "x-routeproxy-model",
    "x-routeproxy-complexity",
    "x-routeproxy-reason",
    "x-routeproxy-fallback",
    "x-routeproxy-overhead-ms",
    "x-routeproxy-cache",
    "age",
)


class ProxyApp:
    """The Starlette app, except that chat/completions goes straight to its handler: its one path.

    Every proxied request pays for whatever stands in front of its handler. Starlette's exception middlewares,
    router and request/response wrappers cost the proxy about 60 us of CPU per request, 16 % of its CPU per
    request (README, Performance: measured with ``routeproxy bench``, this class against a plain Starlette
    route). The chat handler renders its own errors in OpenAI's envelope, so it needs none of them.

    With CORS origins configured, CORS stands in front of both (preflight included), so the chat path answers
    browsers too; without them the only cost is one more call per request.
    """

    def __init__(self, settings: Settings, app: Starlette) -> None:
        self.settings = settings  # the server reads its limits here (server.py)
        self.app = app
        self.handler: ASGIApp = self._dispatch
        if settings.server.cors_origins:
            self.handler = CORSMiddleware(
                self._dispatch,
                allow_origins=settings.server.cors_origins,
                allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],  # DELETE: a stored response
                allow_headers=["*"],  # the SDKs send authorization, content-type and x-stainless-*
                expose_headers=EXPOSED_HEADERS,
                max_age=600,
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and any(n == b"origin" for n, _ in scope["headers"]):
            refusal = cross_site_refusal("POST", Headers(scope=scope), self.settings.server.cors_origins)
            if refusal is not None:
                request_id = request_id_of(Request(scope))
                log.info("request_rejected", request_id=request_id, status=403, error=refusal)
                await error_response(Forbidden(refusal, code="cross_site_request"), request_id)(scope, receive, send)
                return
        if scope["type"] == "http" and scope["path"] in _CHAT_PATHS:
            await _serve_chat(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _serve_chat(scope: Scope, receive: Receive, send: Send) -> None:
    request = Request(scope, receive)
    response: Response | ASGIApp
    if scope["method"] != "POST":
        message = f"{preview(scope['method'])} {preview(scope['path'])}: Method Not Allowed"
        response = JSONResponse(
            error_envelope(message, "invalid_request_error"), status_code=405, headers={"allow": "POST"}
        )
    else:
        try:
            response = await chat_completions(request)
        except ClientDisconnect:
            return  # gone before its request was read: nobody to answer
        except Exception:
            response = _internal_error(scope["path"])
    await response(scope, receive, send)


def app_from_environment() -> ProxyApp:
    """The factory uvicorn's worker processes call (``--workers N``): settings from ROUTEPROXY_CONFIG and env."""
    settings = load_settings()
    configure_logging(settings.logging)
    app = create_app(settings)
    settle_heap()
    return app
