"""What every handler shares: the per-process resources (the lifespan state), the client and admin checks,
and reading a request's body, id and errors the same way everywhere."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from routeproxy.config import Settings
from routeproxy.counters import CounterStore
from routeproxy.errors import Forbidden, Overloaded, PayloadTooLarge, RouteproxyError, Unauthorized
from routeproxy.metrics import Metrics
from routeproxy.route import Router
from routeproxy.upstream import UpstreamPool

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def digest(key: str) -> bytes:
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
        token = bearer_token(request)
        if token is None:
            raise Unauthorized(
                "this routeproxy needs an api key: send Authorization: Bearer <key>", code="missing_api_key"
            )
        if digest(token) not in self.client_key_digests:
            raise Unauthorized("the api key is not valid for this routeproxy", code="invalid_api_key")

    def check_admin(self, request: Request) -> None:
        """Reset and runtime changes: the admin token when one is set, else loopback clients only."""
        token = self.settings.server.admin_token
        if token is not None:
            given = bearer_token(request)
            if given is None or not hmac.compare_digest(digest(given), digest(token)):
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


def bearer_token(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def resources_of(request: Request) -> Resources:
    # The lifespan state, read from the scope: request.state builds a wrapper object on every access.
    resources: Resources = request.scope["state"]["resources"]
    return resources


async def read_body(request: Request, limit: int) -> bytes:
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


def request_id_of(request: Request) -> str:
    given = request.headers.get("x-request-id")
    return given if given and _REQUEST_ID.match(given) else os.urandom(16).hex()


def error_response(exc: RouteproxyError, request_id: str) -> Response:
    headers = {"x-request-id": request_id}
    if isinstance(exc, Overloaded):
        headers["retry-after"] = str(exc.retry_after_s)
    return Response(exc.body(), status_code=exc.status_code, media_type="application/json", headers=headers)
