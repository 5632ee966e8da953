"""The HTTP reference: every path the app serves, read from the routes `create_app` builds (and the chat paths the
app answers in front of them), with what each does."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

from starlette.routing import Route

from routeproxy.api import app as app_module
from routeproxy.api.app import create_app
from routeproxy.reference.markdown import code, table
from routeproxy.settings import load_settings

# What each handler does, for a user. Keyed by the handler's module and name: a route whose handler has no entry
# stops the documentation build (a new endpoint must say what it does).
SUMMARIES: dict[str, str] = {
    "routeproxy.api.chat.chat_completions": "**Routed**: the prompt is classified, `model` rewritten to the chosen "
    "tier's, the request relayed and the answer streamed back unchanged, then counted.",
    "routeproxy.api.chat.text_completions": "**Routed** like chat: the `prompt` (a string or a list of strings) is "
    "classified; token-id prompts carry no text and classify as such.",
    "routeproxy.api.chat.passthrough": "**Passed through** to `routing.passthrough_tier` (or the tier whose model id "
    "the body names), at the tier's base URL plus the same path; `/tokenize` and `/detokenize` beside the tier's "
    "`/v1`, where vLLM serves them.",
    "routeproxy.api.responses.stored_response": "A stored response of the Responses API: **passed through**, query "
    "string kept, to `routing.passthrough_tier` first and, when it answers 404, to the other tier.",
    "routeproxy.api.models.list_models": "The proxy's own model list: `auto` and each tier's model id.",
    "routeproxy.api.models.show_model": "The card of `auto` or of a tier's model; any other id is a 404 as OpenAI "
    "answers it.",
    "routeproxy.api.models.explain_route": "The routing decision for a chat request (tier, model, complexity, score, "
    "signals, A/B draw), without calling an upstream; in cascade mode a `small_answer` in the body is checked too.",
    "routeproxy.api.admin.routing_stats": "The routing statistics of the current A/B period, across every replica "
    "sharing the counter store, with the A/B analysis, the rollout and the cascade figures.",
    "routeproxy.api.admin.routing_reset": "Starts a fresh A/B period on every replica (admin token).",
    "routeproxy.api.admin.routing_config": "GET: the routing settings in force. PUT: changes them for every replica "
    "and keeps them in the counter store (admin token).",
    "routeproxy.api.feedback.post_feedback": "A rating of an answer, by its `x-request-id`: `score` (0 to 1) or "
    "`thumbs` (`up`, `down`).",
    "routeproxy.api.admin.prometheus_metrics": "The Prometheus series, in the text format (see [Metrics](metrics.md)).",
    "routeproxy.api.admin.healthz": "Liveness: 200 while the process answers.",
    "routeproxy.api.admin.readyz": "Readiness: 503 while draining on SIGTERM; reports whether the counter store "
    "answers (an outage does not make the proxy unready).",
    "routeproxy.dashboard.page": "The dashboard page (`server.dashboard`).",
    "routeproxy.dashboard.asset": "The dashboard page's own scripts and style sheet.",
}


def handler_name(handler: Callable[..., Any]) -> str:
    while isinstance(handler, functools.partial):
        handler = handler.func
    return f"{handler.__module__}.{handler.__name__}"


def routes() -> Iterator[tuple[str, str, str]]:
    """(methods, path, handler name) for every route, the chat paths first, as a default install serves them."""
    app = create_app(load_settings(environ={"HF_TOKEN": "unused"}))
    for path in sorted(app_module._CHAT_PATHS, reverse=True):  # /v1/chat/completions first
        yield "POST", path, "routeproxy.api.chat.chat_completions"
    for route in app.app.routes:
        assert isinstance(route, Route), route
        methods = sorted((route.methods or {"GET"}) - {"HEAD"})
        yield ", ".join(methods), route.path.replace(":path}", "}"), handler_name(route.endpoint)


def endpoints_reference() -> str:
    """One row per handler, with every method and path it serves (the `/v1` and bare forms side by side)."""
    served: dict[str, list[str]] = {}
    for methods, path, handler in routes():
        if handler not in SUMMARIES:
            raise KeyError(f"{methods} {path}: {handler} has no summary in routeproxy.reference.endpoints.SUMMARIES")
        served.setdefault(handler, []).append(code(f"{methods} {path}"))
    rows = (("<br>".join(paths), SUMMARIES[handler]) for handler, paths in served.items())
    return table(("method and path", "what it does"), rows)
