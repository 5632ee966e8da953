"""The model list (``/v1/models``) and explain (``/v1/model-routing/explain``): the decision without an upstream.

A ``RouteproxyError`` raised here is rendered by the app's one handler (``app.py``)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from routeproxy.api.chat import PARSE_INLINE_BYTES, admitted, parse_request
from routeproxy.api.resources import Resources, resources_of
from routeproxy.cascade.check import CHECK_INLINE_CHARS, AnswerView, answer_from_body, check_answer
from routeproxy.errors import InvalidRequest, ModelNotFound
from routeproxy.routing.route import explain
from routeproxy.settings import RoutingMode, Settings, Tier
from routeproxy.wire.auth import check_client_key


def _model_ids(settings: Settings) -> list[str]:
    return [settings.routing.auto_model, *(settings.tiers[tier].model for tier in Tier)]


def _card(model_id: str) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "routeproxy"}


async def list_models(request: Request) -> Response:
    resources = resources_of(request)
    check_client_key(request, resources.client_key_digests)
    return JSONResponse({"object": "list", "data": [_card(name) for name in _model_ids(resources.settings)]})


async def show_model(request: Request) -> Response:
    """``GET /v1/models/{id}``: the card of ``auto`` or a tier's model, else 404 as OpenAI answers it."""
    resources = resources_of(request)
    check_client_key(request, resources.client_key_digests)
    model_id = request.path_params["model_id"]
    known = _model_ids(resources.settings)
    if model_id not in known:
        raise ModelNotFound(
            f"The model `{model_id}` does not exist. Use one of: {', '.join(known)}.",
            param="model",
            code="model_not_found",
        )
    return JSONResponse(_card(model_id))


async def explain_route(request: Request) -> Response:
    """The decision for a chat request, without calling an upstream. In cascade mode, a ``small_answer`` in the body
    (the answer text, or a whole chat.completion body) is scored by the check the proxy runs on a small answer.

    Admitted like a chat request (it takes a concurrency slot once its body is in), and its work is a chat
    request's: a large body is parsed, and a long answer checked, off the event loop."""
    resources = resources_of(request)
    raw = await admitted(request, resources)
    try:
        return await _explain(request, resources, raw)
    finally:
        resources.release()


async def _explain(request: Request, resources: Resources, raw: bytes) -> Response:
    body, hints = await resources.offload.run(len(raw) <= PARSE_INLINE_BYTES, parse_request, raw, request)
    small_answer = body.pop("small_answer", None)
    enabled, ratio = resources.routing_now()
    mode = resources.mode_now()
    cascade = mode is RoutingMode.CASCADE
    decision = resources.router.route(
        body, hints, request.headers, enabled=enabled, ab_test_ratio=ratio, cascade=cascade
    )
    settings = resources.settings
    answer = explain(decision, settings, enabled=enabled, ab_test_ratio=ratio)
    answer["routing_mode"] = mode.value
    answer["cascade"] = {
        "small_first": decision.cascade,
        "rules": resources.check_rules.name,
        "threshold": resources.check_rules.threshold,
        "hold_tokens": settings.cascade.hold_tokens,
        "hold_ms": settings.cascade.hold_ms,
    }
    if small_answer is not None:
        view = _answer_view(small_answer)
        inline = len(view.text) <= CHECK_INLINE_CHARS
        check = await resources.offload.run(inline, check_answer, body, view, resources.check_rules)
        answer["check"] = {"score": round(check.score, 4), "escalate": check.escalate, "reasons": list(check.reasons)}
    return JSONResponse(answer)


def _answer_view(small_answer: Any) -> AnswerView:
    if isinstance(small_answer, str):
        return AnswerView(small_answer, complete=True, finish_reason="stop")
    if isinstance(small_answer, dict):
        return answer_from_body(small_answer)
    raise InvalidRequest("small_answer must be the answer text or a chat.completion object", param="small_answer")
