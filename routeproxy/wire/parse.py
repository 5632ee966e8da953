"""The request parser: raw bytes of a chat-completions request -> a validated dict, or InvalidRequest.

Validation is only what the proxy needs to route safely and what every upstream would reject anyway; any
field we do not know (vLLM's extras, ``extra_body``) passes through untouched. The seed's hint fields
(``query_type``, ``entities``) are proxy-only: they are taken out here so they never reach the upstream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from routeproxy.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType, preview

# OpenAI's content part types plus the multimodal ones vLLM accepts.
KNOWN_PART_TYPES = frozenset(
    {"text", "image_url", "input_audio", "file", "refusal", "audio_url", "video_url", "image_embeds"}
)
MAX_MESSAGES = 100_000
# orjson serialises at most 254 levels of arrays and objects ("Recursion limit reached" past them); the body is
# serialised again for the upstream, so deeper JSON is refused here as the client's error, not found later as ours.
MAX_NESTING = 254
# Structural tokens (`,` `{` `[`, about one per JSON value; commas inside strings count too) a body may have.
# orjson parses a body in one C call that no other request can interrupt, and its time follows the number of
# values, not the bytes: 10 MiB of `{}` take half a second, a 10 MiB string 25 ms. At this cap the costliest
# shape (nested empty arrays) takes about 60 ms on a 2-core machine; 100,000 messages (MAX_MESSAGES) are about
# 300,000, a 128k-token prompt of prose about 20,000.
MAX_JSON_TOKENS = 500_000
QUERY_TYPE_HEADER = "x-routeproxy-query-type"


@dataclass(frozen=True, slots=True)
class Hints:
    query_type: str | None = None
    entities: Mapping[str, Any] | None = None


def check_content_type(value: str | None) -> None:
    """JSON, or no content type at all (curl without -H); anything else is refused as vLLM refuses it."""
    if value is None:
        return
    media_type = value.split(";", 1)[0].strip().lower()
    if media_type in ("", "application/json") or media_type.endswith("+json"):
        return
    raise UnsupportedMediaType(
        f"Content-Type must be application/json, not {preview(media_type)!r}", code="unsupported_media_type"
    )


def parse_chat_body(raw: bytes) -> dict[str, Any]:
    body = parse_json_body(raw, "chat-completions")
    _check_messages(body.get("messages"))
    return body


def parse_completion_body(raw: bytes) -> dict[str, Any]:
    """A legacy completions request: ``prompt`` is a string, strings, token ids, or lists of token ids."""
    body = parse_json_body(raw, "completions")
    prompt = body.get("prompt")
    if prompt is None:
        raise InvalidRequest("'prompt' is required", param="prompt", code="missing_required_parameter")
    if isinstance(prompt, str):
        return body
    if not isinstance(prompt, list) or not prompt or not all(_prompt_item(item) for item in prompt):
        raise InvalidRequest(
            "'prompt' must be a string, an array of strings, an array of token ids or an array of such arrays",
            param="prompt",
        )
    return body


def _prompt_item(item: Any) -> bool:
    if isinstance(item, list):
        return bool(item) and all(_token_id(token) for token in item)
    return isinstance(item, str) or _token_id(item)


def _token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def prompt_messages(prompt: str | list[Any]) -> list[dict[str, Any]]:
    """A completions prompt as the one user message the classifier reads; token ids carry no text."""
    texts = [prompt] if isinstance(prompt, str) else [item for item in prompt if isinstance(item, str)]
    return [{"role": "user", "content": "\n".join(texts)}]


def parse_json_body(raw: bytes, what: str) -> dict[str, Any]:
    """A JSON object whose ``model``, when present, is a string (what every proxied endpoint takes)."""
    if not raw.strip():
        raise InvalidRequest(f"the request body is empty; send a JSON {what} request", code="invalid_json")
    containers = raw.count(b"{") + raw.count(b"[")  # C-speed passes over the bytes, before anything is parsed
    if containers + raw.count(b",") > MAX_JSON_TOKENS:
        raise PayloadTooLarge(
            f"the request body holds more than {MAX_JSON_TOKENS} JSON values (counting its commas, braces and "
            "brackets)",
            code="too_many_json_values",
        )
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest(
            f"the request body must be a JSON object, not {_json_type(body)}", code="invalid_request_body"
        )
    if containers > MAX_NESTING:
        _check_nesting(body)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest(f"'model' must be a string, not {_json_type(model)}", param="model")
    return body


def _check_nesting(body: dict[str, Any]) -> None:
    """Refuse JSON nested deeper than the serialiser handles, by asking the serialiser (a C-speed pass; a walk in
    Python took seconds over a body of many small objects)."""
    try:
        orjson.dumps(body)
    except orjson.JSONEncodeError:
        raise InvalidRequest(
            f"the request body is nested more than {MAX_NESTING} levels deep", code="invalid_request_body"
        ) from None


def _check_messages(messages: Any) -> None:
    if messages is None:
        raise InvalidRequest("'messages' is required", param="messages", code="missing_required_parameter")
    if not isinstance(messages, list):
        raise InvalidRequest(f"'messages' must be an array, not {_json_type(messages)}", param="messages")
    if not messages:
        raise InvalidRequest("'messages' must not be empty", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise InvalidRequest(
            f"'messages' has {len(messages)} entries; at most {MAX_MESSAGES} are accepted", param="messages"
        )
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"'{where}' must be an object, not {_json_type(message)}", param=where)
        role = message.get("role")
        if not isinstance(role, str):
            raise InvalidRequest(f"'{where}.role' must be a string", param=f"{where}.role")
        content = message.get("content")
        if content is None or isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise InvalidRequest(
                f"'{where}.content' must be a string or an array of parts, not {_json_type(content)}",
                param=f"{where}.content",
            )
        for part_index, part in enumerate(content):
            part_where = f"{where}.content[{part_index}]"
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise InvalidRequest(f"'{part_where}' must be an object with a 'type'", param=part_where)
            if part["type"] not in KNOWN_PART_TYPES:
                raise InvalidRequest(
                    f"'{part_where}.type' {preview(part['type'])!r} is not a known content part type", param=part_where
                )
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise InvalidRequest(f"'{part_where}.text' must be a string", param=part_where)


def last_user_text(messages: Any) -> str:
    """The last user message's text: its string content, or its text parts joined by spaces ("" when none)."""
    message: Any
    for message in reversed(messages if isinstance(messages, list) else ()):
        if isinstance(message, Mapping) and message.get("role") == "user":
            content: Any = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(
                    part["text"] for part in content if isinstance(part, Mapping) and isinstance(part.get("text"), str)
                )
    return ""


def pop_hints(body: dict[str, Any], headers: Mapping[str, str]) -> Hints:
    """Take the seed's routing hints out of the body (they are for us, not the upstream)."""
    query_type = body.pop("query_type", None)
    entities = body.pop("entities", None)
    header_type = headers.get(QUERY_TYPE_HEADER)
    if header_type:
        query_type = header_type
    return Hints(
        query_type=query_type.strip().lower() if isinstance(query_type, str) and query_type.strip() else None,
        entities=entities if isinstance(entities, dict) else None,
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
