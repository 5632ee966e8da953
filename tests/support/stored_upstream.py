"""An upstream that keeps stored responses as vLLM and OpenAI do: retrieve, delete, cancel and input items by id,
and 404 in OpenAI's envelope for an id it does not have. It records every request it gets."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from support.upstreams import read_request_body, serve_lifespan


class StoredResponsesUpstream:
    def __init__(self, name: str, known: Iterable[str] = ()) -> None:
        self.name = name  # in its 404 message, so a test can tell whose 404 reached the client
        self.known = set(known)
        self.requests: list[dict[str, Any]] = []

    def not_found_body(self, response_id: str) -> bytes:
        message = f"{self.name}: Response with id '{response_id}' not found."
        return orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None}})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        body = await read_request_body(receive)
        method, path = scope["method"], scope["path"]
        self.requests.append(
            {
                "method": method,
                "path": path,
                "query": scope["query_string"].decode(),
                "headers": dict(scope["headers"]),
                "body": body,
            }
        )
        _, _, rest = path.partition("/v1/responses/")
        response_id, _, action = rest.partition("/")
        if response_id not in self.known:
            status, answer = 404, self.not_found_body(response_id)
        else:
            status, answer = 200, orjson.dumps(self._answer(method, response_id, action))
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": answer, "more_body": False})

    def _answer(self, method: str, response_id: str, action: str) -> dict[str, Any]:
        if action == "input_items":
            item = {"id": "msg_1", "type": "message", "role": "user", "status": "completed", "content": []}
            return {"object": "list", "data": [item], "first_id": "msg_1", "last_id": "msg_1", "has_more": False}
        if method == "DELETE":
            return {"id": response_id, "object": "response.deleted", "deleted": True}
        return {
            "id": response_id,
            "object": "response",
            "created_at": 1,
            "model": self.name,
            "status": "cancelled" if action == "cancel" else "completed",
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
        }
