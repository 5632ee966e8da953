"""Browsers: which origins may change anything, read from a request's ``Origin``, ``Host`` and ``Sec-Fetch-Site``.

Trust model. A page on any site can make a visitor's browser send a "simple" request (CORS): a POST whose
headers a page may set without asking first (no ``Authorization``, a content type of ``text/plain``, a form, or
none at all, no custom header). The browser sends it without a preflight and only hides the answer from the
page, so whatever the request changes is changed. Every other cross-origin request is preflighted, and a
preflight only succeeds for a configured CORS origin (``server.cors_origins``). Hence:

- ``cross_site_refusal``: a POST that may have been sent as a simple request is refused when its ``Origin`` is
  neither the proxy's own (the same host and port, or ``Sec-Fetch-Site: same-origin``) nor a configured CORS
  origin. Clients that are not browsers send no ``Origin`` and are not affected.
- ``loopback_admin_refusal``: with admin changes open to loopback peers (local development), the peer being
  on loopback is not enough: a page whose name the attacker re-points at 127.0.0.1 (DNS rebinding) talks to the
  proxy from the visitor's own machine, as the same origin. Such a change must name a loopback host
  (``localhost``, ``*.localhost``, ``127.0.0.0/8``, ``[::1]``) in ``Host``, and come from no browser origin, a
  loopback one or a listed CORS origin (not ``*``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping
from urllib.parse import urlsplit

# The content types a simple request may have (the CORS-safelisted ones).
_SIMPLE_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback_host(host: str) -> bool:
    """A host name or address that can only mean this machine: ``localhost``, ``*.localhost`` (RFC 6761, which
    browsers resolve to loopback themselves), a loopback address (IPv6 with or without brackets)."""
    host = host.strip().lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def split_host(value: str) -> tuple[str, int | None] | None:
    """``Host`` header -> (host, port); None when it is not one."""
    try:
        parts = urlsplit(f"//{value.strip()}")
        return (parts.hostname or "", parts.port) if parts.hostname else None
    except ValueError:
        return None


def _origin(value: str) -> tuple[str, str, int] | None:
    """``Origin`` header -> (scheme, host, port); None for ``null`` or anything that is not an origin."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or _DEFAULT_PORTS[parts.scheme]


def _same_origin(origin: str, host_header: str | None) -> bool:
    parsed, host = _origin(origin), split_host(host_header or "")
    if parsed is None or host is None:
        return False
    scheme, name, port = parsed
    return name == host[0] and port == (host[1] or _DEFAULT_PORTS[scheme])


def may_be_simple(method: str, headers: Mapping[str, str]) -> bool:
    """Whether a browser may have sent this request without a preflight. Errs towards yes: only what a page
    cannot send without one (a method other than GET/HEAD/POST, ``Authorization``, another content type, an
    ``X-`` header) proves a preflight."""
    if method not in ("GET", "HEAD", "POST") or "authorization" in headers:
        return False
    content_type = headers.get("content-type")
    if content_type is not None and content_type.split(";", 1)[0].strip().lower() not in _SIMPLE_TYPES:
        return False
    return not any(name.startswith("x-") for name in headers)


def cross_site_refusal(method: str, headers: Mapping[str, str], cors_origins: Collection[str]) -> str | None:
    """Why this state-changing request is refused as a simple cross-site one; None when it is not."""
    origin = headers.get("origin")
    if method != "POST" or origin is None or not may_be_simple(method, headers):
        return None
    if headers.get("sec-fetch-site") == "same-origin" or "*" in cors_origins or origin in cors_origins:
        return None
    if _same_origin(origin, headers.get("host")):
        return None
    return (
        f"a browser page from {origin[:80]} may not make this request (a cross-site request that skips the CORS "
        "preflight); list the page's origin in ROUTEPROXY_CORS_ORIGINS to allow it"
    )


def loopback_admin_refusal(headers: Mapping[str, str], cors_origins: Collection[str]) -> str | None:
    """Why a loopback peer's admin change without a token is refused (a rebound name, a foreign page)."""
    host = headers.get("host")
    if host is not None:
        parsed = split_host(host)
        if parsed is None or not is_loopback_host(parsed[0]):
            return (
                f"without an admin token, changes are accepted only at a loopback name (localhost, 127.0.0.1, "
                f"[::1]), not {host[:80]!r}"
            )
    origin = headers.get("origin")
    if origin is None or origin in cors_origins:
        return None
    parsed_origin = _origin(origin)
    if parsed_origin is not None and is_loopback_host(parsed_origin[1]):
        return None
    return f"without an admin token, a browser page from {origin[:80]} may not make changes"
