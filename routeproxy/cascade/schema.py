"""Does a JSON value match a JSON Schema? The subset that tool parameters and structured outputs use.

Tool ``parameters`` and ``response_format.json_schema.schema`` are JSON Schema, and OpenAI's structured outputs
(and vLLM's and TGI's guided decoding) accept a documented subset: ``type`` (one or a list), ``enum``, ``const``,
``properties``, ``required``, ``additionalProperties``, ``patternProperties``, ``items`` / ``prefixItems``,
``minItems`` / ``maxItems`` / ``uniqueItems``, ``minimum`` / ``maximum`` / ``exclusiveMinimum`` /
``exclusiveMaximum`` / ``multipleOf``, ``minLength`` / ``maxLength`` / ``pattern``, ``anyOf`` / ``oneOf`` /
``allOf`` / ``not``, ``$ref`` into ``$defs`` / ``definitions`` (or ``#``), and OpenAPI's ``nullable``. Those are
checked here; any other keyword (``format``, ``dependentRequired``...) is not, so an answer is never called broken
for a keyword this module does not read.

Pure, no dependency: a few microseconds for a typical tool call, where building a ``jsonschema`` validator per
request costs tens to hundreds (measured in the design notes). A schema that is itself malformed (``type: 7``) never
fails an answer: only a value that breaks a rule the schema states clearly does.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from typing import Any

MAX_DEPTH = 64  # nested schemas and $ref hops followed; past it the value is taken as valid

_TYPES = {
    "object": lambda value: isinstance(value, dict),
    "array": lambda value: isinstance(value, list),
    "string": lambda value: isinstance(value, str),
    "boolean": lambda value: isinstance(value, bool),
    "null": lambda value: value is None,
    "number": lambda value: isinstance(value, (int, float)) and not isinstance(value, bool),
    "integer": lambda value: (
        (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())
    ),
}


_NUMERIC_BOUNDS = (("minimum", True), ("maximum", False))
_EXCLUSIVE_BOUNDS = (("exclusiveMinimum", True), ("exclusiveMaximum", False))
_BOUNDS = frozenset(("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"))
_STRING_KEYS = frozenset(("minLength", "maxLength", "pattern"))
_COMBINERS = frozenset(("allOf", "anyOf", "oneOf", "not"))


def _type_error(kinds: Any, value: Any, nullable: bool) -> str | None:
    """What ``type`` (one name or a list of names) asks for, when ``value`` is none of it; None when it is one (or
    when ``type`` is not a list of known names)."""
    if type(kinds) is str:
        check = _TYPES.get(kinds)
        if check is None or check(value) or (nullable and value is None):
            return None
        return kinds
    if type(kinds) is not list or not all(type(kind) is str and kind in _TYPES for kind in kinds):
        return None
    if any(_TYPES[kind](value) for kind in kinds) or (nullable and value is None):
        return None
    return " or ".join(kinds)


def schema_error(schema: Any, value: Any) -> str | None:
    """The first rule ``value`` breaks, as ``path: why`` (``$`` is the value itself), or None when it matches."""
    if type(schema) is not dict:
        return None
    return _Check(schema).error(schema, value, "$", 0)


@functools.lru_cache(maxsize=256)
def _pattern(regex: str) -> re.Pattern[str] | None:
    try:
        return re.compile(regex)
    except (re.error, RecursionError):
        return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _same(left: Any, right: Any) -> bool:
    """JSON equality: 1 == 1.0, but true is not 1."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_same(left[key], right[key]) for key in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(_same(a, b) for a, b in zip(left, right, strict=True))
    return bool(type(left) is type(right) or (_number(left) is not None and _number(right) is not None)) and bool(
        left == right
    )


class _Check:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root

    def _resolve(self, ref: str) -> Any:
        if ref == "#":
            return self.root
        if not ref.startswith("#/"):
            return None  # a remote or anchored reference: not followed
        node: Any = self.root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return None
        return node

    def error(self, schema: Any, value: Any, path: str, depth: int) -> str | None:
        if schema is False:
            return f"{path}: no value is allowed here"
        if type(schema) is not dict or depth > MAX_DEPTH:
            return None
        ref = schema.get("$ref")
        if ref is not None and type(ref) is str:
            found = self.error(self._resolve(ref), value, path, depth + 1)
            if found:
                return found
        kinds = schema.get("type")
        if kinds is not None:
            found = _type_error(kinds, value, schema.get("nullable") is True)
            if found:
                return f"{path}: expected {found}"
        enum = schema.get("enum")
        if enum is not None and type(enum) is list and not any(_same(value, option) for option in enum):
            return f"{path}: not one of the allowed values"
        if "const" in schema and not _same(value, schema["const"]):
            return f"{path}: not the constant value"
        if not _COMBINERS.isdisjoint(schema):
            found = self._combined(schema, value, path, depth)
            if found:
                return found
        if isinstance(value, dict):
            return self._object(schema, value, path, depth)
        if isinstance(value, list):
            return self._array(schema, value, path, depth)
        if isinstance(value, str):
            return self._string(schema, value, path)
        number = _number(value)
        return None if number is None else self._numeric(schema, number, path)

    def _combined(self, schema: Mapping[str, Any], value: Any, path: str, depth: int) -> str | None:
        every = schema.get("allOf")
        for part in every if isinstance(every, list) else ():
            found = self.error(part, value, path, depth + 1)
            if found:
                return found
        some = schema.get("anyOf")
        if isinstance(some, list) and some and all(self.error(part, value, path, depth + 1) for part in some):
            return f"{path}: matches none of anyOf"
        one = schema.get("oneOf")
        if isinstance(one, list) and one:
            matching = sum(1 for part in one if not self.error(part, value, path, depth + 1))
            if matching != 1:
                return f"{path}: matches {matching} of oneOf, not exactly one"
        negated = schema.get("not")
        if isinstance(negated, (Mapping, bool)) and not self.error(negated, value, path, depth + 1):
            return f"{path}: matches a schema it must not"
        return None

    def _object(self, schema: Mapping[str, Any], value: dict[str, Any], path: str, depth: int) -> str | None:
        required = schema.get("required")
        for name in required if isinstance(required, list) else ():
            if isinstance(name, str) and name not in value:
                return f"{path}: missing required property {name!r}"
        properties = schema.get("properties")
        properties = properties if type(properties) is dict else {}
        patterns = schema.get("patternProperties")
        patterns = patterns if type(patterns) is dict else {}
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            sub = properties.get(name)
            matched = sub is not None
            if matched:
                found = self.error(sub, item, f"{path}.{name}", depth + 1)
                if found:
                    return found
            if not patterns and extra is True:
                continue
            where = f"{path}.{name}"
            for regex, sub in patterns.items():
                compiled = _pattern(regex) if isinstance(regex, str) else None
                if compiled is not None and compiled.search(name):
                    matched = True
                    found = self.error(sub, item, where, depth + 1)
                    if found:
                        return found
            if not matched:
                if extra is False:
                    return f"{path}: property {name!r} is not allowed"
                found = self.error(extra, item, where, depth + 1)
                if found:
                    return found
        low, high = schema.get("minProperties"), schema.get("maxProperties")
        if type(low) is int and len(value) < low:
            return f"{path}: fewer than {low} properties"
        if type(high) is int and len(value) > high:
            return f"{path}: more than {high} properties"
        return None

    def _array(self, schema: Mapping[str, Any], value: list[Any], path: str, depth: int) -> str | None:
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        items = schema.get("items")
        if isinstance(items, list):  # draft 4-7 tuple form
            prefix, items = items, schema.get("additionalItems", True)
        for index, item in enumerate(value):
            sub = prefix[index] if index < len(prefix) else items
            if sub is not None:
                found = self.error(sub, item, f"{path}[{index}]", depth + 1)
                if found:
                    return found
        low, high = schema.get("minItems"), schema.get("maxItems")
        if isinstance(low, int) and not isinstance(low, bool) and len(value) < low:
            return f"{path}: fewer than {low} items"
        if isinstance(high, int) and not isinstance(high, bool) and len(value) > high:
            return f"{path}: more than {high} items"
        if schema.get("uniqueItems") is True:
            for index, item in enumerate(value):
                if any(_same(item, other) for other in value[:index]):
                    return f"{path}: items are not unique"
        return None

    @staticmethod
    def _string(schema: Mapping[str, Any], value: str, path: str) -> str | None:
        if _STRING_KEYS.isdisjoint(schema):
            return None
        low, high = schema.get("minLength"), schema.get("maxLength")
        length = len(value)  # code points, as JSON Schema counts
        if isinstance(low, int) and not isinstance(low, bool) and length < low:
            return f"{path}: shorter than {low} characters"
        if isinstance(high, int) and not isinstance(high, bool) and length > high:
            return f"{path}: longer than {high} characters"
        regex = schema.get("pattern")
        compiled = _pattern(regex) if isinstance(regex, str) else None
        if compiled is not None and not compiled.search(value):
            return f"{path}: does not match its pattern"
        return None

    @staticmethod
    def _numeric(schema: Mapping[str, Any], value: float, path: str) -> str | None:
        if _BOUNDS.isdisjoint(schema):
            return None
        for key, below in _NUMERIC_BOUNDS:
            bound = _number(schema.get(key))
            if bound is not None and (value < bound if below else value > bound):
                return f"{path}: breaks {key} {schema[key]}"
        for key, below in _EXCLUSIVE_BOUNDS:
            bound = _number(schema.get(key))
            if bound is not None and (value <= bound if below else value >= bound):
                return f"{path}: breaks {key} {schema[key]}"
        step = _number(schema.get("multipleOf"))
        if step is not None and step > 0 and math.isfinite(value):
            quotient = value / step
            if not math.isclose(quotient, round(quotient), rel_tol=1e-9, abs_tol=1e-9):
                return f"{path}: not a multiple of {schema['multipleOf']}"
        return None
