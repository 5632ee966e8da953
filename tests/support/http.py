"""httpx for the tests' loopback servers, with one TLS context for the whole run.

``httpx.get()`` builds a client per call, and every ``httpx.Client()`` loads the CA bundle into a fresh TLS
context (about 70 ms here, on a busy machine), which a polling loop pays on every try. The servers here speak
plain HTTP; the shared context only saves building it again.
"""

from __future__ import annotations

from typing import Any

import httpx

_TLS = httpx.create_ssl_context()


def client(**options: Any) -> httpx.Client:
    return httpx.Client(verify=_TLS, **options)


def async_client(**options: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=_TLS, **options)


def request(method: str, url: str, *, timeout: float = 5.0, **options: Any) -> httpx.Response:
    with client(timeout=timeout) as one:
        return one.request(method, url, **options)


def get(url: str, **options: Any) -> httpx.Response:
    return request("GET", url, **options)


def post(url: str, **options: Any) -> httpx.Response:
    return request("POST", url, **options)


def put(url: str, **options: Any) -> httpx.Response:
    return request("PUT", url, **options)
