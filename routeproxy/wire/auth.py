"""Who may call what: client keys on /v1/*, and the admin token on reset and runtime changes.

Admin rule: a configured ``server.admin_token`` is the only way in. Without one, reset and runtime changes are
refused to everyone, because a loopback peer is not the operator behind a service mesh (Istio's sidecar
connects to the app from 127.0.0.6) or in the sidecar layout. ``server.admin_loopback_without_token`` (local
development, and what ``serve --simulate`` turns on) lets loopback peers in when no token is set, when the
request also names a loopback host and comes from no foreign browser page (``origin.py``).

Keys are compared by their SHA-256 digest, so a key's length or prefix does not show in the time a check takes.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from starlette.requests import Request

from routeproxy.errors import Forbidden, Unauthorized
from routeproxy.settings import ServerConfig
from routeproxy.wire.origin import loopback_admin_refusal


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def bearer_token(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_client_key(request: Request, key_digests: frozenset[bytes]) -> None:
    """With client keys configured, /v1/* needs one of them as a bearer token (compared by digest)."""
    if not key_digests:
        return
    token = bearer_token(request)
    if token is None:
        raise Unauthorized("this routeproxy needs an api key: send Authorization: Bearer <key>", code="missing_api_key")
    if digest(token) not in key_digests:
        raise Unauthorized("the api key is not valid for this routeproxy", code="invalid_api_key")


def check_admin(request: Request, server: ServerConfig) -> None:
    """Reset and runtime changes: the admin token when one is set; else nobody, unless loopback is opted in."""
    admin_token = server.admin_token
    if admin_token is not None:
        given = bearer_token(request)
        if given is None or not hmac.compare_digest(digest(given), digest(admin_token)):
            raise Unauthorized(
                f"{request.url.path} needs the admin token: Authorization: Bearer <token>",
                code="invalid_admin_token",
            )
        return
    if not server.admin_loopback_without_token:
        raise Forbidden(
            f"{request.url.path} needs an admin token and none is configured: set ROUTEPROXY_ADMIN_TOKEN and send "
            "Authorization: Bearer <token> (local development only: ROUTEPROXY_ADMIN_LOOPBACK_WITHOUT_TOKEN=true)",
            code="admin_token_not_configured",
        )
    host = request.client.host if request.client else ""
    if not is_loopback(host):
        raise Forbidden(
            f"{request.url.path} answers only clients on this host without an admin token, not {host or 'unknown'} "
            "(set ROUTEPROXY_ADMIN_TOKEN to allow others)",
            code="admin_loopback_only",
        )
    refusal = loopback_admin_refusal(request.headers, server.cors_origins)
    if refusal is not None:
        raise Forbidden(
            f"{request.url.path}: {refusal} (set ROUTEPROXY_ADMIN_TOKEN to allow others)", code="admin_loopback_only"
        )
