"""Pure server-sent-events framing for the relay: where complete events end, and token usage in a body or event.

Nothing here does I/O or changes bytes that are relayed; the relay passes the upstream's bytes on as they came.
"""

from __future__ import annotations

import orjson

EVENT_ENDS = (b"\n\n", b"\r\n\r\n", b"\r\r")

Usage = tuple[int, int]  # (prompt_tokens, completion_tokens)


def last_event_end(data: bytes) -> int:
    """Index just past the last complete SSE event in ``data`` (0 when there is none)."""
    best = 0
    for end in EVENT_ENDS:
        position = data.rfind(end)
        if position >= 0:
            best = max(best, position + len(end))
    return best


def body_usage(body: bytes) -> Usage | None:
    """Token usage of a whole (non-streamed) completion body."""
    if b'"usage"' not in body:
        return None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return _usage(document.get("usage")) if isinstance(document, dict) else None


def stream_usage(chunk: bytes) -> Usage | None:
    """Token usage from the last usage-bearing ``data:`` event of a stream chunk."""
    for line in reversed(chunk.splitlines()):
        if not line.startswith(b"data:") or b'"usage"' not in line:
            continue
        try:
            event = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict) and isinstance(event.get("usage"), dict):
            return _usage(event["usage"])
    return None


def _usage(usage: object) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        return prompt, completion
    return None
