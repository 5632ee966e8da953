"""What every endpoint reads from a request before its own work: the request id and the body, within its limit."""

from __future__ import annotations

import asyncio
import os
import re

from starlette.requests import Request

from routeproxy.errors import PayloadTooLarge, RequestTimeout, preview

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def client_request_id(request: Request) -> str | None:
    """The client's x-request-id when it is a sane token: echoed and logged for tracing, never trusted."""
    given = request.headers.get("x-request-id")
    return given if given and _REQUEST_ID.match(given) else None


def request_id_of(request: Request) -> str:
    """The client's x-request-id when it is a sane token, else a fresh one."""
    return client_request_id(request) or os.urandom(16).hex()


async def read_body(request: Request, limit: int, deadline_s: float) -> bytes:
    """The whole body, refused past ``limit`` bytes (413) or when it has not all come within ``deadline_s`` (408)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"the request body is {preview(declared)} bytes; the limit is {limit}", code="payload_too_large"
        )
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(deadline_s):
            async for part in request.stream():
                size += len(part)
                if size > limit:
                    raise PayloadTooLarge(
                        f"the request body is over the limit of {limit} bytes", code="payload_too_large"
                    )
                parts.append(part)
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {deadline_s:g} s ({size} bytes came)", code="body_timeout"
        ) from None
    return b"".join(parts)
