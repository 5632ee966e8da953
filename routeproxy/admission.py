"""What every endpoint reads from a request before its own work: the request id and the body, within its limit."""

from __future__ import annotations

import os
import re

from starlette.requests import Request

from routeproxy.errors import PayloadTooLarge

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_of(request: Request) -> str:
    """The client's x-request-id when it is a sane token, else a fresh one."""
    given = request.headers.get("x-request-id")
    return given if given and _REQUEST_ID.match(given) else os.urandom(16).hex()


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
