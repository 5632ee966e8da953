"""An upstream's base URL, checked where the common mistakes are: white space, a scheme other than http(s), no
host, a port out of range, a #fragment, an endpoint's path instead of the base (``/v1/chat/completions``), or no
path at all where vLLM, TGI and the Hugging Face router serve under ``/v1``. A query is kept: it goes with every
request (Azure's ``?api-version=``). A path that ends elsewhere is accepted (a
provider's own base path) and explained by ``base_url_note``."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

# What the proxy appends to a base URL; a base URL that already ends in one of them names an endpoint.
_ENDPOINTS = ("/chat/completions", "/completions", "/responses", "/models", "/embeddings")


def upstream_url(value: Any) -> str:
    """The base URL, normalised (no trailing slash, lower-case scheme); ValueError says what is wrong with it."""
    if value is None or isinstance(value, (dict, list, bool)):
        raise ValueError("expected a URL such as http://127.0.0.1:8000/v1")
    text = str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    if any(char.isspace() for char in text):
        raise ValueError("has white space in it; a URL has none")
    if "://" not in text:
        scheme, colon, rest = text.partition(":")
        if colon and scheme.lower() in ("http", "https"):
            raise ValueError(f"needs two slashes after {scheme}: ({scheme + '://' + rest.lstrip('/')!r})")
        raise ValueError(f"has no scheme: expected http:// or https://, such as {'http://' + text!r}")
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"has the scheme {parts.scheme!r}: expected http:// or https://")
    if not parts.hostname:
        raise ValueError("has no host: expected http://HOST[:PORT]/v1")
    host_port = parts.netloc.rpartition("@")[2].rpartition("]")[2]  # past the user info and an IPv6 address
    if ":" in host_port:
        port = host_port.partition(":")[2]
        if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(f"has the port {port!r}: expected a number from 1 to 65535")
    if parts.fragment:
        raise ValueError("has a #fragment, which is never sent: remove it")
    path = parts.path.rstrip("/")
    for endpoint in _ENDPOINTS:
        if path.endswith(endpoint):
            base = urlunsplit(parts._replace(path=path[: -len(endpoint)]))
            raise ValueError(
                f"names the endpoint {endpoint}: give the base URL up to /v1 ({base!r}); the proxy adds the endpoint"
            )
    if not path:
        suggestion = urlunsplit(parts._replace(path="/v1"))
        raise ValueError(f"has no path: vLLM, TGI and the Hugging Face router serve under /v1 ({suggestion!r})")
    return urlunsplit(parts._replace(scheme=parts.scheme.lower(), path=path))


def base_url_note(key: str, url: str) -> str | None:
    """Why a base URL whose path does not end in /v1 may be wrong (None when it does)."""
    if urlsplit(url).path.endswith("/v1"):
        return None
    return (
        f"{key} = {url!r} does not end in /v1: the proxy sends requests to {url}/chat/completions, and vLLM, TGI "
        "and the Hugging Face router serve them under /v1 (right for a provider whose API has another base path)"
    )
