"""Pure server-sent-events framing for the relay: where complete events end, and token usage in a body or event.

Nothing here does I/O or changes bytes that are relayed; the relay passes the upstream's bytes on as they came.
"""

from __future__ import annotations

import re

import orjson

# An SSE event ends with an empty line: two line ends in a row, each CRLF, LF or CR ("\r" then "\n" is one line
# end). EVENT_ENDS are the ways a chunk can end with one (the relay's fast path); _EVENT_END finds one anywhere.
EVENT_ENDS = (b"\n\n", b"\r\r", b"\n\r", b"\n\r\n", b"\r\r\n")
_EVENT_END = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r)")

Usage = tuple[int, int]  # (prompt_tokens, completion_tokens)


def last_event_end(data: bytes) -> int:
    """Index just past the last complete SSE event in ``data`` (0 when there is none)."""
    end = 0
    for match in _EVENT_END.finditer(data):
        end = match.end()
    return end


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
