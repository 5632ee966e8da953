"""The exception tree and OpenAI's error envelope.

    RouteproxyError
    ├── ConfigError            a setting has a bad value (raised at start, never per request)
    ├── InvalidRequest         400: the client's request cannot be proxied
    │   ├── RequestTimeout     408: the request head or body did not arrive in time
    │   ├── PayloadTooLarge    413
    │   ├── UnsupportedMediaType 415
    │   └── HeadTooLarge       431: too many header lines, or too many bytes in them
    ├── Unauthorized           401
    ├── Forbidden              403
    ├── Conflict               409: the change clashes with the state it would change
    ├── Overloaded             429
    ├── CounterStoreUnavailable 503: the shared store did not answer a reset or a config change
    └── UpstreamError          the chosen upstream could not give an answer
        ├── UpstreamUnavailable 502: refused, reset, DNS, TLS, protocol error, truncated or oversize answer
        ├── UpstreamBusy        503: every connection the tier may open is busy (the upstream was never asked)
        └── UpstreamTimeout     504: connect, first byte or idle gap too long

An upstream's own 4xx/5xx answer is not an error here: it is relayed as it came.
"""

from __future__ import annotations

import reprlib
from typing import ClassVar

import orjson
from starlette.responses import Response

PREVIEW_CHARS = 80  # the most of a client-supplied value an error message or a log line shows

_BOUNDED_REPR = reprlib.Repr()
_BOUNDED_REPR.maxstring = _BOUNDED_REPR.maxother = PREVIEW_CHARS
_BOUNDED_REPR.maxlevel = 2


def preview(value: object, limit: int = PREVIEW_CHARS) -> str:
    """How a client-supplied value appears in an error body or a log line: at most ``limit`` characters however
    long the value (a 5 MB model name must not become a 5 MB 404 and a 5 MB log line). A string is shown as it
    is, cut with an ellipsis; anything else (a JSON list, a number) as a bounded repr, never built in full."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[: max(limit - 1, 0)] + "…"
    return _BOUNDED_REPR.repr(value)[:limit]


class RouteproxyError(Exception):
    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def envelope(self) -> dict[str, object]:
        return error_envelope(self.message, self.error_type, param=self.param, code=self.code)

    def body(self) -> bytes:
        return orjson.dumps(self.envelope())


class ConfigError(RouteproxyError):
    error_type = "config_error"


class InvalidRequest(RouteproxyError):
    status_code = 400
    error_type = "invalid_request_error"


class PayloadTooLarge(InvalidRequest):
    status_code = 413


class UnsupportedMediaType(InvalidRequest):
    status_code = 415


class RequestTimeout(InvalidRequest):
    status_code = 408


class HeadTooLarge(InvalidRequest):
    status_code = 431


class Unauthorized(RouteproxyError):
    status_code = 401
    error_type = "authentication_error"


class Forbidden(RouteproxyError):
    status_code = 403
    error_type = "permission_error"


class Conflict(RouteproxyError):
    status_code = 409
    error_type = "conflict_error"


class Overloaded(RouteproxyError):
    status_code = 429
    error_type = "rate_limit_error"
    retry_after_s: ClassVar[int] = 1


class UpstreamError(RouteproxyError):
    """``reason`` names the failure for headers and logs; ``retryable`` is True when the upstream cannot have
    started on the request (the connection was never made), so another tier may safely be tried."""

    status_code = 502
    error_type = "upstream_error"

    def __init__(self, message: str, *, reason: str = "upstream_error", retryable: bool = False) -> None:
        super().__init__(message, code=reason)
        self.reason = reason
        self.retryable = retryable


class UpstreamUnavailable(UpstreamError):
    status_code = 502


class UpstreamBusy(UpstreamError):
    """503, not 504: the upstream was never asked, so it did not time out; our own pool is full, which is the
    server being temporarily overloaded (RFC 9110 15.6.4). The SDKs retry a 503 after Retry-After."""

    status_code = 503
    error_type = "upstream_busy"
    retry_after_s: ClassVar[int] = 1


class UpstreamTimeout(UpstreamError):
    status_code = 504
    error_type = "upstream_timeout"


def error_envelope(
    message: str, error_type: str, *, param: str | None = None, code: str | None = None
) -> dict[str, object]:
    """OpenAI's shape, which the SDKs turn into the best client errors (PROTOCOLS.md 4.3)."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class ModelNotFound(InvalidRequest):
    status_code = 404


class CounterStoreUnavailable(RouteproxyError):
    """The shared store did not answer an operation that cannot be deferred (reset, set_runtime)."""

    status_code = 503
    error_type = "counter_store_unavailable"


def error_response(exc: RouteproxyError, request_id: str) -> Response:
    """The one rendering of our own errors: the envelope, the request id, and retry-after when overloaded."""
    headers = {"x-request-id": request_id}
    if isinstance(exc, Overloaded):
        headers["retry-after"] = str(exc.retry_after_s)
    elif isinstance(exc, RequestTimeout):
        headers["connection"] = "close"  # the rest of a late body is not worth waiting for
    return Response(exc.body(), status_code=exc.status_code, media_type="application/json", headers=headers)
