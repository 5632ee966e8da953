"""Pure server-sent-events framing for the relay: where complete events end, and token usage in a body or event;
for the cascade, the JSON of each event it holds, and the one rewrite it may make (removing logprobs it asked for).

Nothing here does I/O. Relayed bytes are the upstream's own, except where the cascade asked the small tier for
logprobs the client did not ask for: ``strip_logprobs_*`` take them out again.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson

# An SSE event ends with an empty line: two line ends in a row, each CRLF, LF or CR ("\r" then "\n" is one line
# end). EVENT_ENDS are the ways a chunk can end with one (the relay's fast path); _EVENT_END finds one anywhere.
EVENT_ENDS = (b"\n\n", b"\r\r", b"\n\r", b"\n\r\n", b"\r\r\n")
_EVENT_END = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r)")
_LINE_END = re.compile(rb"(\r\n|\n|\r)")

Usage = tuple[int, int]  # (prompt_tokens, completion_tokens)


def last_event_end(data: bytes) -> int:
    """Index just past the last complete SSE event in ``data`` (0 when there is none)."""
    end = 0
    for match in _EVENT_END.finditer(data):
        end = match.end()
    return end


def body_usage(body: bytes) -> Usage | None:
    """Token usage of a whole (non-streamed) completion body."""
    return body_answer(body)[0]


def body_answer(body: bytes) -> tuple[Usage | None, str | None]:
    """Token usage and the answer's id (``chatcmpl-...``, ``resp_...``) of a whole body, parsed once; the id is
    looked for only in a body that has usage (a completion, not an error)."""
    document = _object_with(body, b'"usage"')
    if document is None:
        return None, None
    return _usage(document.get("usage")), _answer_id(document)


# The first "id" of an event: a chat chunk's own (it comes first in vLLM's and OpenAI's chunks), or the response's in
# a Responses API event. A quote inside a JSON string is escaped, so text that merely mentions "id" cannot match.
_FIRST_ID = re.compile(rb'"id":\s*"([^"\\\x00-\x1f]{1,200})"')


def stream_answer_id(chunk: bytes) -> str | None:
    """The answer's id from the first ``data:`` event of a stream's first events (a chat chunk's ``id``, or the
    ``response.id`` of a Responses API event); found without parsing the event, once per stream."""
    start = chunk.find(b"data:")
    if start == -1:
        return None
    end = chunk.find(b"\n", start)
    match = _FIRST_ID.search(chunk, start, len(chunk) if end == -1 else end)
    return None if match is None else match.group(1).decode("utf-8", "replace")


def _answer_id(document: object) -> str | None:
    if not isinstance(document, dict):
        return None
    found = document.get("id")
    if not found and isinstance(document.get("response"), dict):
        found = document["response"].get("id")
    # TGI's ids are "": nothing to show. An id goes into a log line: bounded and printable.
    return found[:200] if isinstance(found, str) and found and found.isprintable() else None


def _object_with(body: bytes, marker: bytes) -> dict[str, Any] | None:
    """The JSON object of a whole body that holds ``marker``; None without it (nothing parsed) or when not one."""
    if marker not in body:
        return None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


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
    if prompt is None and completion is None:  # the Responses API's names
        prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        return prompt, completion
    return None


DONE = b"[DONE]"


def event_payloads(events: bytes) -> Iterator[bytes]:
    """The payload of each ``data:`` line of complete events (``[DONE]`` included); comments are skipped."""
    for line in events.splitlines():
        if line.startswith(b"data:"):
            yield line[5:].strip()


def parse_event(payload: bytes) -> dict[str, Any] | None:
    """An event's JSON object, or None (``[DONE]``, a keep-alive, or not JSON: such events pass on untouched)."""
    if not payload.startswith(b"{"):
        return None
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


def _drop_logprobs(document: Any) -> bool:
    """Set ``choices[*].logprobs`` to null, as an upstream answers when logprobs were not asked for."""
    choices = document.get("choices") if isinstance(document, dict) else None
    dropped = False
    for choice in choices if isinstance(choices, list) else ():
        if isinstance(choice, dict) and choice.get("logprobs") is not None:
            choice["logprobs"] = None
            dropped = True
    return dropped


def strip_logprobs_events(events: bytes) -> bytes:
    """Complete SSE events with ``choices[*].logprobs`` nulled in each ``data:`` JSON; other bytes unchanged,
    every line end (CRLF, LF or CR, which SSE allows alike) kept as it came."""
    if b'"logprobs"' not in events:
        return events
    parts = _LINE_END.split(events)  # line, its end, line, its end, ..., the last line
    for index in range(0, len(parts), 2):
        line = parts[index]
        if line.startswith(b"data:") and b'"logprobs"' in line:
            document = parse_event(line[5:].strip())
            if document is not None and _drop_logprobs(document):
                parts[index] = b"data: " + orjson.dumps(document)
    return b"".join(parts)


def strip_logprobs_body(body: bytes) -> bytes:
    """A whole chat.completion body with ``choices[*].logprobs`` nulled (unchanged when it has none)."""
    document = _object_with(body, b'"logprobs"')
    return orjson.dumps(document) if document is not None and _drop_logprobs(document) else body
