"""Client-side helpers: a streamed chat request through the proxy, read chunk by chunk as the client gets them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import httpx

from support import http


def streamed_chunks(
    url: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
    on_chunk: Callable[[bytes], None] | None = None,
) -> tuple[httpx.Headers, list[bytes]]:
    """POST ``body`` with stream on to ``url``/v1/chat/completions; the response headers and each raw chunk the
    client read, in order (``on_chunk`` sees each one as it arrives)."""
    chunks: list[bytes] = []
    with (
        http.client(timeout=10) as client,
        client.stream(
            "POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, headers=dict(headers or {})
        ) as response,
    ):
        for chunk in response.iter_raw():
            chunks.append(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
        return response.headers, chunks
