"""The response side of one request on uvicorn's httptools protocol, where uvicorn gets two things wrong for us.

- A response without ``content-length`` is always framed as chunked, whatever the request's HTTP version. An
  HTTP/1.0 client knows no chunked coding (RFC 9112 section 6.1): it would read the chunk sizes as part of the
  body. For an HTTP/1.0 request such a body (a stream) is written as it is and ended by closing the connection.
- A response that ends while the request body is still arriving (a 413, or a 401 or 415 given before the body
  was read) makes uvicorn close the connection at once when keep-alive is off, with the rest of the body unread:
  the kernel answers unread data with a reset, which destroys the response before a client that sends its
  whole body first (urllib, ``curl --data-binary``) reads it. Such a response says ``connection: close``, and
  the connection is left open for the protocol's lingering close (``server.py``).

``GuardedHttpToolsProtocol.on_headers_complete`` gives each new cycle this class before its ASGI task runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

_BODYLESS_STATUSES = frozenset({204, 304})


def _has_framing(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in headers)


class ResponseCycle(RequestResponseCycle):
    close_delimited = False  # an HTTP/1.0 response whose body ends with the connection
    linger = False  # answered before the request body all came: the protocol reads and drops the rest

    async def send(self, message: Any) -> None:  # uvicorn's ASGISendEvent, a union of TypedDicts
        if self.disconnected or self.response_complete:
            await super().send(message)
            return
        if message["type"] == "http.response.start" and not self.response_started:
            if self.more_body:
                self.keep_alive = False  # the rest of the body is not worth parsing: this connection ends
            status = message["status"]
            if (
                self.scope["http_version"] == "1.0"
                and self.scope["method"] != "HEAD"
                and status >= 200
                and status not in _BODYLESS_STATUSES
                and not _has_framing(message.get("headers", ()))
            ):
                self.close_delimited = True
                self.keep_alive = False
                self.chunked_encoding = False  # so uvicorn adds no transfer-encoding
        elif message["type"] == "http.response.body" and self.response_started:
            if self.close_delimited:
                await self._send_close_delimited(message)
                return
            if not message.get("more_body", False) and self.more_body:
                # uvicorn closes a connection that is not kept alive right here; the protocol lingers instead.
                self.linger = True
                self.keep_alive = True
        await super().send(message)

    async def _send_close_delimited(self, message: Any) -> None:
        if self.flow.write_paused:
            await self.flow.drain()
        if self.disconnected:
            return
        body: bytes = message.get("body", b"")
        if body:
            self.transport.write(body)
        if message.get("more_body", False):
            return
        self.response_complete = True
        self.message_event.set()
        if self.more_body:
            self.linger = True
        else:
            self.transport.close()
        self.on_response()
