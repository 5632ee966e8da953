"""The model list (``/v1/models``) and explain (``/v1/model-routing/explain``): the decision without an upstream.

A ``RouteproxyError`` raised here is rendered by the app's one handler (``app.py``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from routeproxy.auth import check_client_key
from routeproxy.chat import parse_chat_request, read_request_body
from routeproxy.config import Tier
from routeproxy.resources import resources_of
from routeproxy.route import explain


async def list_models(request: Request) -> Response:
    resources = resources_of(request)
    check_client_key(request, resources.client_key_digests)
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
    check_client_key(request, resources.client_key_digests)
    body, hints = parse_chat_request(await read_request_body(request, resources.settings), request)
    enabled, ratio = resources.routing_now()
    decision = resources.router.route(body, hints, request.headers, enabled=enabled, ab_test_ratio=ratio)
    return JSONResponse(explain(decision, resources.settings, enabled=enabled, ab_test_ratio=ratio))
