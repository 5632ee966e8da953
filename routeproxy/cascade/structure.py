"""Structured answers judged by their structure: tool calls, and JSON answers to ``response_format``.

An answer is structured when it calls tools, or when the request asked for JSON (``json_object`` or
``json_schema``). It is judged on what a client does with it, parse and dispatch: the tool exists in the request's
``tools``, ``tool_choice`` (and ``parallel_tool_calls: false``) is respected, the arguments parse as a JSON object
and validate against the tool's ``parameters``; a JSON answer parses (as an object for ``json_object``) and
validates against ``json_schema.schema`` (routeproxy.cascade.schema). A sound structured answer has no length: the
prose signals are not read on it. A held prefix is judged on what it already shows: a call's name, the first
character of the arguments or of the JSON text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from routeproxy.cascade.schema import schema_error
from routeproxy.cascade.view import AnswerView

_JSON_STARTS = '{["-0123456789tfn'


@dataclass(frozen=True, slots=True)
class Structure:
    """What the request asks of the answer's structure."""

    tools: Mapping[str, Any]  # function name -> its parameters schema (None when it gives none)
    choice: str  # tool_choice: "none", "auto", "required", or "function" (a named one: ``named``)
    named: str | None  # the function tool_choice names
    parallel: bool  # parallel_tool_calls (true unless the request says false)
    json_mode: str | None  # "json_object", "json_schema" or None
    schema: Any  # response_format.json_schema.schema, when given

    def structured(self, answer: AnswerView) -> bool:
        """Judged by structure: the answer calls tools, or JSON was asked for (broken JSON included)."""
        return bool(answer.tool_calls) or self.json_mode is not None


_NONE = Structure({}, "auto", None, True, None, None)


def requested_structure(request: Mapping[str, Any]) -> Structure:
    if "tools" not in request and "response_format" not in request:
        return _NONE  # most requests: prose asked for
    tools: dict[str, Any] = {}
    raw_tools = request.get("tools")
    for tool in raw_tools if isinstance(raw_tools, list) else ():
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            tools[function["name"]] = function.get("parameters")
    raw_choice = request.get("tool_choice")
    choice, named = (raw_choice if isinstance(raw_choice, str) else "auto"), None
    if isinstance(raw_choice, Mapping):
        function = raw_choice.get("function")
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            choice, named = "function", function["name"]
    response_format = request.get("response_format")
    json_mode, schema = None, None
    if isinstance(response_format, Mapping) and response_format.get("type") in ("json_object", "json_schema"):
        json_mode = str(response_format["type"])
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
    return Structure(tools, choice, named, request.get("parallel_tool_calls") is not False, json_mode, schema)


def structure_faults(structure: Structure, answer: AnswerView) -> Iterator[str]:
    """The structural faults the answer shows (none for a sound one, nor for prose that nothing asked to be
    structured). Prose where ``tool_choice`` asked for a call is ``missing_tool_call``, once the answer ended."""
    if answer.tool_calls:
        yield from _call_faults(structure, answer)
    elif structure.tools and structure.choice in ("required", "function") and answer.complete:
        yield "missing_tool_call"
    if structure.json_mode is not None and not answer.tool_calls:
        yield from _json_faults(structure, answer)


def _call_faults(structure: Structure, answer: AnswerView) -> Iterator[str]:
    if structure.choice == "none" or (len(answer.tool_calls) > 1 and not structure.parallel):
        yield "tool_choice_ignored"
    for call in answer.tool_calls:
        function = call.get("function")
        function = function if isinstance(function, Mapping) else {}
        name = function.get("name")
        if not isinstance(name, str) or name not in structure.tools:
            yield "unknown_tool"
            continue
        if structure.named is not None and name != structure.named:
            yield "tool_choice_ignored"
        arguments = function.get("arguments")
        text = arguments.strip() if isinstance(arguments, str) else ""
        if not answer.complete:
            if text and text[0] != "{":
                yield "bad_tool_arguments"
            continue
        value = _json_value(text)
        if not isinstance(value, dict):
            yield "bad_tool_arguments"
        elif schema_error(structure.tools[name], value) is not None:
            yield "tool_arguments_schema"


def _json_faults(structure: Structure, answer: AnswerView) -> Iterator[str]:
    text = answer.text.strip()
    wants_object = structure.json_mode == "json_object" or (
        isinstance(structure.schema, Mapping) and structure.schema.get("type") == "object"
    )
    if not answer.complete:
        # A prefix shows only how the JSON starts: an object opens with "{", any JSON value with one of these.
        if text and text[0] not in ("{" if wants_object else _JSON_STARTS):
            yield "invalid_json"
        return
    value = _json_value(text)
    if value is _BROKEN or (structure.json_mode == "json_object" and not isinstance(value, dict)):
        yield "invalid_json"
    elif structure.schema is not None and schema_error(structure.schema, value) is not None:
        yield "json_schema_mismatch"


_BROKEN = object()


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _BROKEN
