"""What a simulated answer says, decided from the request alone: filler text, tool calls, JSON for
``response_format``, and the logprobs of each token. Pure and deterministic (a blake2b seed from the request).

- ``tools`` with ``tool_choice``: ``none`` answers in text; a named function calls that function; ``required``
  calls a tool (the one whose name the last user message mentions, else the first); ``auto`` (the default when
  tools are given) does the same unless the conversation's last message is a tool result, which is answered in
  text, so an agent loop ends after one round.
- ``response_format``: ``json_object`` gives a JSON object; ``json_schema`` gives a value built from the schema
  (types, ``properties`` and ``required``, ``enum``/``const``, ``items``, ``anyOf``/``oneOf``, ``$ref`` into
  ``$defs``), which validates against it. Tool-call arguments are built the same way from ``parameters``.
- Values come from the last user message where it has them, so an agent loop gets plausible arguments: a number
  field takes the next number the message mentions, a string field the next text it quotes ('...' or "..."),
  and a ``json_object`` answer uses the identifier-like words the message quotes as its keys.
- ``logprobs: true`` (with ``top_logprobs: n``) gives each token a log-probability and ``n`` alternatives.
  TGI's dialect writes them as TGI does: no ``bytes``, and an entry for the end-of-turn token after the answer's
  last one (``end_of_sequence``).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from routeproxy.wire.parse import last_user_text

WORDS = (
    "the", "model", "routes", "each", "request", "to", "a", "small", "or", "large", "tier", "and", "answers",
    "with", "tokens", "that", "arrive", "one", "by", "at", "steady", "pace", "while", "proxy", "streams", "them",
    "back", "client", "latency", "budget", "cost", "quality", "balance", "simple", "questions", "need", "less",
    "compute", "than", "careful", "analysis", "so", "router", "saves", "time", "money", "for", "every", "user",
    "who", "asks", "something", "short", "clear", "direct", "useful", "result", "is", "simulated", "text", "not",
    "real", "output", "from", "any",
)  # fmt: skip
_MAX_DEPTH = 6
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")
_QUOTED = re.compile(r"'([^'\n]{1,200})'|\"([^\"\n]{1,200})\"|`([^`\n]{1,200})`")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class PromptValues:
    """The numbers and quoted texts of a message, handed out in order to the fields that ask for them."""

    def __init__(self, text: str) -> None:
        self.numbers = [float(match) for match in _NUMBER.findall(text)]
        self.quoted = [single or double or tick for single, double, tick in _QUOTED.findall(text)]

    def number(self) -> float | None:
        return self.numbers.pop(0) if self.numbers else None

    def text(self) -> str | None:
        return self.quoted.pop(0) if self.quoted else None


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


def seeded(request: object) -> random.Random:
    """A random source that depends only on the request's JSON (so answers repeat per prompt)."""
    digest = hashlib.blake2b(orjson.dumps(request, option=orjson.OPT_SORT_KEYS), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def filler(rng: random.Random, count: int) -> tuple[str, ...]:
    """``count`` filler words as tokens: the first capitalised, a full stop at the end, spaces before the rest."""
    words = rng.choices(WORDS, k=count)
    if words:
        words[0] = words[0].capitalize()
        words[-1] += "."
    return tuple(word if index == 0 else f" {word}" for index, word in enumerate(words))


def words_of(text: str) -> tuple[str, ...]:
    """Text as word tokens, each with the white space before it (as filler words come)."""
    return tuple(re.findall(r"\s*\S+", text)) or (text,)


def split_tokens(text: str, size: int = 4) -> tuple[str, ...]:
    """Text cut into token-sized pieces (what a JSON answer streams as)."""
    return tuple(text[start : start + size] for start in range(0, len(text), size))


def _function(tool: object) -> Mapping[str, Any] | None:
    if isinstance(tool, Mapping) and isinstance(tool.get("function"), Mapping):
        function: Mapping[str, Any] = tool["function"]
        if isinstance(function.get("name"), str):
            return function
    return None


def chosen_tool(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The function the answer calls under ``tool_choice``, or None for a text answer."""
    tools = body.get("tools")
    offered = tools if isinstance(tools, list) else ()  # a dialect that accepts another type offers no tool
    functions = [function for tool in offered if (function := _function(tool)) is not None]
    if not functions:
        return None
    choice = body.get("tool_choice", "auto")
    if choice == "none":
        return None
    if isinstance(choice, Mapping):
        named = _function(choice)
        wanted = named.get("name") if named is not None else None
        return next((function for function in functions if function["name"] == wanted), None)
    messages = body.get("messages") or []
    last = messages[-1] if messages else None
    if choice != "required" and isinstance(last, Mapping) and last.get("role") == "tool":
        return None  # auto, after a tool result: the answer
    text = last_user_text(messages).lower()
    return next((function for function in functions if function["name"].lower() in text), functions[0])


def prompt_values(body: Mapping[str, Any]) -> PromptValues:
    return PromptValues(last_user_text(body.get("messages") or []))


def tool_call(function: Mapping[str, Any], rng: random.Random, call_id: str, values: PromptValues) -> ToolCall:
    parameters = function.get("parameters")
    arguments = schema_value(parameters, rng, values) if isinstance(parameters, Mapping) and parameters else {}
    return ToolCall(call_id, function["name"], orjson.dumps(arguments).decode())


def json_text(
    response_format: object, rng: random.Random, values: PromptValues, messages: Sequence[object] = ()
) -> str | None:
    """The JSON text the answer is for ``response_format``, or None when plain text was asked for. For
    ``json_object`` (no schema in the request), a JSON schema written into the conversation is followed, as
    instructor's JSON mode and LangChain's output-parser instructions write one; else the keys the prompt quotes
    get values of the type their names suggest."""
    if not isinstance(response_format, Mapping):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        embedded = embedded_schema(messages)
        if embedded is not None:
            return orjson.dumps(schema_value(embedded, rng, values)).decode()
        keys = [quoted for quoted in values.quoted if _IDENTIFIER.match(quoted)] or ["answer"]
        return orjson.dumps({key: _guessed_value(key, rng, values) for key in keys}).decode()
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        value = schema_value(schema, rng, values) if isinstance(schema, Mapping) else {}
        return orjson.dumps(value).decode()
    return None


_WHOLE_NAME = re.compile(
    r"(?:^|_)(?:count|number|num|age|years?|days?|hours?|minutes?|seconds?|rating|score|total|quantity|qty|rank|"
    r"level|priority|index|size|length|votes|stars)$|^(?:n|num|number)_"
)
_DECIMAL_NAME = re.compile(r"(?:^|_)(?:price|cost|amount|percent|percentage|ratio|weight|height|width|temperature)$")
_YES_NO_NAME = re.compile(
    r"^(?:is|has|can|should|was|were|did|does)_|_(?:enabled|flag)$|^(?:valid|success|ok|correct)$"
)
_SCAN_CHARS = 64 * 1024  # of each message, for an embedded schema
_SCAN_OBJECTS = 200


def _guessed_value(key: str, rng: random.Random, values: PromptValues) -> Any:
    """A value of the type a key's name suggests (``rating`` a whole number, ``is_safe`` a boolean, ``tags`` a list
    of strings), numbers taken from the prompt where it has them."""
    name = key.lower()
    if _WHOLE_NAME.search(name):
        given = values.number()
        return int(given) if given is not None and given.is_integer() else rng.randint(1, 10)
    if _DECIMAL_NAME.search(name):
        given = values.number()
        return given if given is not None else round(rng.uniform(1, 100), 2)
    if _YES_NO_NAME.search(name):
        return rng.random() < 0.5
    if len(name) > 3 and name.endswith("s") and not name.endswith(("ss", "us", "is")):
        return ["".join(filler(rng, 2)).rstrip(".") for _ in range(2)]
    return "".join(filler(rng, 6))


def embedded_schema(messages: Sequence[object]) -> Mapping[str, Any] | None:
    """The JSON schema written into the conversation, if any: the last object with ``properties`` in the last
    message that has one (so a schema given as the format's example, before the real one, is passed over)."""
    decoder = json.JSONDecoder()
    for message in reversed(messages):
        content = message.get("content") if isinstance(message, Mapping) else None
        text = content if isinstance(content, str) else _parts_text(content)
        text = text[:_SCAN_CHARS]
        found: Mapping[str, Any] | None = None
        start, tries = text.find("{"), 0
        while start != -1 and tries < _SCAN_OBJECTS:
            tries += 1
            try:
                value, end = decoder.raw_decode(text, start)
            except ValueError:
                start = text.find("{", start + 1)
                continue
            if isinstance(value, dict) and isinstance(value.get("properties"), dict):
                found = value
            start = text.find("{", end)
        if found is not None:
            return found
    return None


def _parts_text(content: object) -> str:
    if not isinstance(content, list):
        return ""
    return "".join(part["text"] for part in content if isinstance(part, Mapping) and isinstance(part.get("text"), str))


def schema_value(schema: Mapping[str, Any], rng: random.Random, values: PromptValues | None = None) -> Any:
    """A value valid under the JSON schema (the subset tool and structured-output schemas use)."""
    builder = _Builder(rng, schema.get("$defs") or schema.get("definitions") or {}, values or PromptValues(""))
    return _value(schema, builder, 0)


@dataclass(frozen=True, slots=True)
class _Builder:
    rng: random.Random
    defs: Mapping[str, Any]
    values: PromptValues


def _value(schema: Any, builder: _Builder, depth: int) -> Any:
    rng, defs = builder.rng, builder.defs
    if not isinstance(schema, Mapping):
        return "".join(filler(rng, 2))
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _value(defs.get(ref.rsplit("/", 1)[-1], {}), builder, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            # Prefer a branch that is not null: an optional field still gets a value.
            concrete = [
                option for option in options if not (isinstance(option, Mapping) and option.get("type") == "null")
            ]
            return _value((concrete or options)[0], builder, depth + 1)
    if isinstance(schema.get("allOf"), list) and schema["allOf"]:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            if isinstance(part, Mapping):
                merged.update(part)
        return _value(merged, builder, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((name for name in kind if name != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    return _typed(kind, schema, builder, depth)


def _typed(kind: str, schema: Mapping[str, Any], builder: _Builder, depth: int) -> Any:
    rng = builder.rng
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, Mapping) or depth >= _MAX_DEPTH:
            return {}
        return {name: _value(sub, builder, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        low = schema.get("minItems", 1)
        count = max(low if isinstance(low, int) else 1, 1)
        high = schema.get("maxItems")
        if isinstance(high, int):
            count = min(count, high)
        if depth >= _MAX_DEPTH:
            count = 0
        return [_value(schema.get("items", {}), builder, depth + 1) for _ in range(count)]
    if kind in ("integer", "number"):
        whole = kind == "integer"
        given = builder.values.number()
        if given is not None and (given.is_integer() or not whole) and _in_range(schema, given):
            return int(given) if whole else given
        return _number(schema, rng, whole=whole)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    given_text = builder.values.text()
    if given_text is not None and _fits_length(schema, given_text):
        return given_text
    return _string(schema, rng)


def _in_range(schema: Mapping[str, Any], number: float) -> bool:
    def bound(key: str) -> float | None:
        value = schema.get(key)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    low, high = bound("minimum"), bound("maximum")
    above, below = bound("exclusiveMinimum"), bound("exclusiveMaximum")
    return (
        (low is None or number >= low)
        and (high is None or number <= high)
        and (above is None or number > above)
        and (below is None or number < below)
    )


def _fits_length(schema: Mapping[str, Any], text: str) -> bool:
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    return (not isinstance(low, int) or len(text) >= low) and (not isinstance(high, int) or len(text) <= high)


def _number(schema: Mapping[str, Any], rng: random.Random, *, whole: bool) -> int | float:
    low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
    high = schema.get("maximum", schema.get("exclusiveMaximum", low + 100))
    low, high = (low, high) if isinstance(low, (int, float)) and isinstance(high, (int, float)) else (0, 100)
    if whole:
        first, last = math.ceil(low), math.floor(high)
        if "exclusiveMinimum" in schema and first == low:
            first += 1
        if "exclusiveMaximum" in schema and last == high:
            last -= 1
        return rng.randint(first, max(first, last))
    return round(low + (high - low) * (0.25 + rng.random() / 2), 3)


def _string(schema: Mapping[str, Any], rng: random.Random) -> str:
    text = "".join(filler(rng, 3)).rstrip(".")
    low, high = schema.get("minLength"), schema.get("maxLength")
    if isinstance(low, int) and len(text) < low:
        text = text + "x" * (low - len(text))
    if isinstance(high, int):
        text = text[:high]
    return text


def logprob_entries(
    tokens: Sequence[str], top: int, rng: random.Random, *, fixed: float | None = None
) -> list[dict[str, Any]]:
    """OpenAI's ``logprobs.content`` entries for the tokens: the chosen token is always the most likely; ``fixed``
    sets every chosen token's logprob."""
    entries = []
    for token in tokens:
        chosen = -rng.uniform(0.001, 1.5) if fixed is None else fixed
        alternatives = sorted((chosen - rng.uniform(0.1, 4.0) for _ in range(max(0, top - 1))), reverse=True)
        others = [word for word in WORDS if word != token.strip()]
        top_entries = [{"token": token, "logprob": round(chosen, 6), "bytes": list(token.encode())}]
        for logprob in alternatives:
            other = " " + rng.choice(others)
            top_entries.append({"token": other, "logprob": round(logprob, 6), "bytes": list(other.encode())})
        entries.append({**top_entries[0], "top_logprobs": top_entries[:top]})
    return entries


def without_bytes(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A logprobs entry as TGI writes it: ``{token, logprob, top_logprobs: [{token, logprob}]}``, no ``bytes``."""
    tops = [{"token": top["token"], "logprob": top["logprob"]} for top in entry["top_logprobs"]]
    return {"token": entry["token"], "logprob": entry["logprob"], "top_logprobs": tops}


def end_of_sequence(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """TGI's entry for Llama 3's end-of-turn token, which it lists after the answer's last token when the answer
    ended on it: as sure as the surest token of the answer, with as many alternatives as the other entries."""
    top = len(entries[0]["top_logprobs"]) if entries else 0
    chosen = max((entry["logprob"] for entry in entries), default=-0.01)
    others = [{"token": token, "logprob": round(chosen - 2.0 - index, 6)} for index, token in enumerate(WORDS)]
    alternatives = [{"token": "<|eot_id|>", "logprob": chosen}, *others]
    return {"token": "<|eot_id|>", "logprob": chosen, "top_logprobs": alternatives[:top]}
