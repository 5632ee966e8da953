"""Whether an answer the upstream gave is complete and successful: only those are stored.

A stream is complete when its last event is ``[DONE]``, no event is an error (vLLM and TGI report errors inside a
200 stream, then send ``[DONE]``), and every choice ended with a finish reason that is not an error or an abort. A
whole body is complete when it is a JSON object whose choices all ended that way. ``length`` (cut by ``max_tokens``)
is complete: the same request gets the same cut.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

FAILED_REASONS = frozenset({"error", "abort"})
_FINISH = re.compile(rb'"finish_reason":\s*"([^"\\]*)"')
_DATA = re.compile(rb"^data:[ ]?(.*?)\r?$", re.MULTILINE)


def stream_complete(body: bytes, choices: int = 1) -> bool:
    payloads = [match.group(1) for match in _DATA.finditer(body)]
    if not payloads or payloads[-1].strip() != b"[DONE]":
        return False
    if b'"error"' in body:
        for payload in payloads:
            if b'"error"' in payload and _error_event(payload):
                return False
    reasons = _FINISH.findall(body)
    return len(reasons) >= choices and not any(reason.decode() in FAILED_REASONS for reason in reasons)


def _error_event(payload: bytes) -> bool:
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    return isinstance(event, dict) and "error" in event and "choices" not in event


def body_complete(body: bytes) -> bool:
    try:
        document: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(document, dict):
        return False
    found = document.get("choices")
    if not isinstance(found, list) or not found:
        return False
    for choice in found:
        reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        if not isinstance(reason, str) or reason in FAILED_REASONS:
            return False
    return True
