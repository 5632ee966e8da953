"""The errors the proxy answers itself, found where the code raises them: every call of an exception class of
``routeproxy.errors`` in the request path's modules, with its status, type, code and message."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from dataclasses import dataclass

import routeproxy
from routeproxy import errors
from routeproxy.reference.markdown import cell, code, table

# Packages whose errors never reach an HTTP client: the tools, the command line and this package.
NOT_SERVED = (
    "routeproxy.sim",
    "routeproxy.bench",
    "routeproxy.evaluate",
    "routeproxy.commands",
    "routeproxy.reference",
)
NOT_SERVED_MODULES = ("routeproxy.cli", "routeproxy.__main__")

# Where each module's errors come from, for a user: the endpoints or the stage of a request that answers them. A
# module that raises an HTTP error and is not named here stops the documentation build.
WHERE: dict[str, str] = {
    "routeproxy.api.server": "any request: its head (request line and headers)",
    "routeproxy.wire.admission": "any request with a body: reading it",
    "routeproxy.wire.auth": "client keys (`/v1/*`) and the admin token (reset, config changes)",
    "routeproxy.wire.parse": "proxied endpoints: the request body",
    "routeproxy.routing.route": "routed endpoints: the `model` asked for",
    "routeproxy.api.resources": "proxied endpoints: the concurrency limit",
    "routeproxy.api.chat": "proxied endpoints",
    "routeproxy.wire.upstream": "proxied endpoints: the upstream hop",
    "routeproxy.wire.relay": "proxied endpoints: the upstream hop",
    "routeproxy.cascade.exchange": "cascade mode: the small and large tiers' hop",
    "routeproxy.api.responses": "stored responses (`/v1/responses/{response_id}`)",
    "routeproxy.api.models": "`/v1/models/{model_id}`, `/v1/model-routing/explain`",
    "routeproxy.api.admin": "`PUT /v1/model-routing/config`",
    "routeproxy.api.feedback": "`/v1/model-routing/feedback`",
    "routeproxy.settings.runtime": "`PUT /v1/model-routing/config`: the values",
    "routeproxy.quality.decisions": "`/v1/model-routing/feedback`: the request id",
    "routeproxy.quality.redis_decisions": "`/v1/model-routing/feedback` while Redis is down",
    "routeproxy.quality.controller": "`PUT /v1/model-routing/config` with `rollout`",
    "routeproxy.quality.redis_rollout": "`PUT /v1/model-routing/config` with `rollout`, while Redis is down",
    "routeproxy.counters.redis_store": "reset and config changes while Redis is down",
    "routeproxy.api.app": "any POST a page could send cross-site without a preflight, from another origin",
    "routeproxy.cache.controls": "cacheable endpoints: the `x-routeproxy-cache` header or the body's `cache` field",
}


@dataclass(frozen=True, order=True, slots=True)
class RaisedError:
    status: int
    code: str
    message: str
    error_type: str
    module: str


def http_error_class(value: object) -> type[errors.RouteproxyError] | None:
    """``value`` when it is an exception class a client can get (any RouteproxyError but ConfigError, which stops
    the proxy at start)."""
    if (
        isinstance(value, type)
        and issubclass(value, errors.RouteproxyError)
        and not issubclass(value, errors.ConfigError)
    ):
        return value
    return None


def served_modules() -> list[str]:
    return [
        info.name
        for info in pkgutil.walk_packages(routeproxy.__path__, "routeproxy.")
        if not info.name.startswith(NOT_SERVED) and info.name not in NOT_SERVED_MODULES and not info.ispkg
    ]


def _keyword(call: ast.Call, *names: str) -> str:
    for keyword in call.keywords:
        if keyword.arg in names and isinstance(keyword.value, ast.Constant):
            return str(keyword.value.value)
    return ""


def _message(call: ast.Call) -> str:
    """The message as written, with each computed part (``{...}`` of an f-string) shown as an ellipsis."""
    if not call.args:
        return ""
    first = call.args[0]
    if isinstance(first, ast.Constant):
        return str(first.value)
    if isinstance(first, ast.JoinedStr):
        return "".join(str(part.value) if isinstance(part, ast.Constant) else "…" for part in first.values)
    return "…"


def raised_errors() -> list[RaisedError]:
    found: set[RaisedError] = set()
    for name in served_modules():
        module = importlib.import_module(name)
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            # A call of a name that is, in that module, an error class: the class is looked up, not guessed.
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            error = http_error_class(getattr(module, node.func.id, None))
            if error is not None and error.status_code < 600:
                found.add(
                    RaisedError(
                        error.status_code, _keyword(node, "code", "reason"), _message(node), error.error_type, name
                    )
                )
    return sorted(found)


def errors_reference() -> str:
    rows = []
    for error in raised_errors():
        if error.module not in WHERE:
            raise KeyError(f"{error.module} raises {error.status} {error.code!r}: name it in reference.errors.WHERE")
        rows.append(
            (
                str(error.status),
                code(error.error_type),
                code(error.code) if error.code else "",
                cell(error.message),
                WHERE[error.module],
            )
        )
    return table(("status", "type", "code", "message", "where"), rows)
