"""Exact conversions between a whole chat answer and a streamed one, so one entry can answer both framings.

Exact means the client gets every field of the stored answer, in the form the other framing gives it, and nothing
that the stored answer does not hold: the same id, created time, model, fingerprint, role, text, finish reason (and
vLLM's stop reason), and usage when the framing carries it. Whatever cannot be carried across (logprobs, which a
stream splits by token; tool calls; several choices; a usage the request asks for that the stream never had; a
non-null field this module does not know) makes the conversion inexact, and the request is then a miss.

Null and empty fields (vLLM's ``refusal: null``, ``tool_calls: []``, ``prompt_logprobs: null``...) carry nothing and
are left out. Token boundaries are not information the client can use; a converted stream sends the whole text in
one event.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from routeproxy.cache.complete import _DATA

# Fields kept when not null; any other field must be null or empty for a conversion to be exact.
_TOP = ("id", "created", "model", "system_fingerprint", "service_tier")
_CHUNK_FIELDS = frozenset({*_TOP, "object", "choices", "usage"})
_CHOICE_FIELDS = frozenset({"index", "delta", "message", "logprobs", "finish_reason", "stop_reason"})
_MESSAGE_FIELDS = frozenset({"role", "content"})
_BODY_FIELDS = frozenset({*_TOP, "object", "choices", "usage"})


def _empty(value: Any) -> bool:
    return value is None or value == [] or value == {}


def _only(document: dict[str, Any], allowed: frozenset[str]) -> bool:
    return all(name in allowed or _empty(value) for name, value in document.items())


def body_to_stream(body: bytes, *, include_usage: bool) -> bytes | None:
    """The SSE bytes of a stream that carries exactly the stored chat body; None when that is not exact."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict) or document.get("object") != "chat.completion":
        return None
    if not _only(document, _BODY_FIELDS):
        return None
    found = document.get("choices")
    usage = document.get("usage")
    if not isinstance(found, list) or len(found) != 1 or (include_usage and not isinstance(usage, dict)):
        return None
    choice = found[0]
    if not isinstance(choice, dict) or not _only(choice, _CHOICE_FIELDS) or choice.get("logprobs") is not None:
        return None
    message = choice.get("message")
    if not isinstance(message, dict) or not _only(message, _MESSAGE_FIELDS):
        return None
    text = message.get("content")
    reason = choice.get("finish_reason")
    if message.get("role") != "assistant" or not isinstance(text, str) or not isinstance(reason, str):
        return None
    top = {name: document[name] for name in _TOP if document.get(name) is not None}
    head = {**top, "object": "chat.completion.chunk"}
    index = choice.get("index", 0)

    def event(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        part: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        if finish is not None and "stop_reason" in choice:
            part["stop_reason"] = choice["stop_reason"]
        return {**head, "choices": [part]}

    events = [event({"role": "assistant", "content": ""})]
    if text:
        events.append(event({"content": text}))
    events.append(event({}, reason))
    if include_usage:
        events.append({**head, "choices": [], "usage": usage})
    return b"".join(b"data: " + orjson.dumps(item) + b"\n\n" for item in events) + b"data: [DONE]\n\n"


def stream_to_body(stream: bytes) -> bytes | None:
    """The chat body a stream's events add up to; None when that is not exact (see the module docstring)."""
    top: dict[str, Any] = {}
    usage: Any = None
    role: str | None = None
    parts: list[str] = []
    reason: str | None = None
    stop_reason: Any = None
    has_stop_reason = False
    done = False
    for event in _events(stream):
        if event is None:
            done = True
            continue
        if done or event.get("object") != "chat.completion.chunk" or not _only(event, _CHUNK_FIELDS):
            return None
        for name in _TOP:
            value = event.get(name)
            if value is not None and top.setdefault(name, value) != value:
                return None
        if event.get("usage") is not None:
            usage = event["usage"]
        found = event.get("choices")
        if not isinstance(found, list) or len(found) > 1:
            return None
        for choice in found:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0 or not _only(choice, _CHOICE_FIELDS):
                return None
            delta = choice.get("delta")
            if choice.get("logprobs") is not None or not isinstance(delta, dict) or not _only(delta, _MESSAGE_FIELDS):
                return None
            if delta.get("role") is not None:
                if delta["role"] != "assistant" or (role is not None and role != delta["role"]):
                    return None
                role = delta["role"]
            content = delta.get("content")
            if content is not None:
                if not isinstance(content, str) or (reason is not None and content):
                    return None
                parts.append(content)
            if choice.get("finish_reason") is not None:
                reason = choice["finish_reason"]
                if "stop_reason" in choice:
                    has_stop_reason, stop_reason = True, choice["stop_reason"]
    if not done or role is None or not isinstance(reason, str) or not isinstance(usage, dict):
        return None
    choice_out: dict[str, Any] = {
        "index": 0,
        "message": {"role": role, "content": "".join(parts)},
        "logprobs": None,
        "finish_reason": reason,
    }
    if has_stop_reason:
        choice_out["stop_reason"] = stop_reason
    body = {**top, "object": "chat.completion", "choices": [choice_out], "usage": usage}
    ordered = {name: body[name] for name in ("id", "object", "created", "model") if name in body}
    return orjson.dumps({**ordered, **body})


def _events(stream: bytes) -> Iterator[dict[str, Any] | None]:
    """Each data event's JSON object; None for ``[DONE]``. Anything else (a comment is no data line) stops it."""
    for match in _DATA.finditer(stream):
        payload = match.group(1).strip()
        if payload == b"[DONE]":
            yield None
            continue
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            yield {}
            continue
        yield event if isinstance(event, dict) else {}
