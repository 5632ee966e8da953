"""Per-request cache control: the ``Cache-Control`` request header, the ``x-routeproxy-cache`` header and the
``cache`` body field (LiteLLM's names), merged into one ``Controls``.

``Cache-Control`` is read the way RFC 9111 asks of a cache: directives it does not know, and values it cannot read,
are ignored. Our own header and body field are strict: a value we cannot read is the client's error (400), so a
typo never silently turns a control off.

| directive | header ``x-routeproxy-cache`` | body ``cache`` | what it does |
| --- | --- | --- | --- |
| off | ``off`` | ``{"off": true}`` | not answered from the cache, nor stored, nor joined to a request in flight |
| on | ``on`` | ``{"on": true}`` | cached even when it asks for no determinism or for several choices |
| no-cache | ``no-cache`` | ``{"no-cache": true}`` | not answered from the cache (a fresh answer, which is stored) |
| no-store | ``no-store`` | ``{"no-store": true}`` | its answer is not stored |
| max-age | ``max-age=N`` | ``{"max-age": N}`` (or ``s-maxage``) | answered only by an entry at most N seconds old |
| ttl | ``ttl=N`` | ``{"ttl": N}`` | its answer is kept N seconds (at most ``cache.ttl_s``) |
| namespace | ``namespace=NAME`` | ``{"namespace": "NAME"}`` | a cache of its own, shared only by requests naming it |
| pace | ``pace`` | ``{"pace": true}`` | a streamed hit is replayed at the pace the upstream sent it |
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from routeproxy.errors import InvalidRequest, preview

HEADER = "x-routeproxy-cache"
FIELD = "cache"
MAX_SECONDS = 10 * 365 * 86400  # a bound on max-age and ttl values, so the arithmetic stays in range
_NAMESPACE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_FLAGS = ("off", "on", "no-cache", "no-store", "pace")
_NUMBERS = ("max-age", "s-maxage", "ttl")


@dataclass(frozen=True, slots=True)
class Controls:
    off: bool = False
    on: bool = False
    no_cache: bool = False
    no_store: bool = False
    max_age_s: int | None = None
    ttl_s: int | None = None
    namespace: str = ""
    pace: bool = False


NONE = Controls()


def read_controls(headers: Mapping[str, str], body: dict[str, Any]) -> Controls:
    """The controls of one request; the body field is taken out of ``body`` (the upstream never sees it)."""
    field = body.pop(FIELD, None)
    ours = headers.get(HEADER)
    standard = headers.get("cache-control")
    if field is None and ours is None and standard is None:
        return NONE
    values: dict[str, Any] = {}
    if standard is not None:
        _merge(values, _standard(standard))
    if ours is not None:
        _merge(values, _header(ours))
    if field is not None:
        _merge(values, _field(field))
    return Controls(
        off=bool(values.get("off")),
        on=bool(values.get("on")) and not values.get("off"),
        no_cache=bool(values.get("no-cache")),
        no_store=bool(values.get("no-store")),
        max_age_s=values.get("max-age"),
        ttl_s=values.get("ttl"),
        namespace=values.get("namespace", ""),
        pace=bool(values.get("pace")),
    )


def _merge(into: dict[str, Any], values: dict[str, Any]) -> None:
    """Flags add up; of two ages or ttls the smaller wins; a second namespace must name the same one."""
    for name, value in values.items():
        if name == "s-maxage":
            name = "max-age"
        old = into.get(name)
        if name in ("max-age", "ttl") and old is not None:
            into[name] = min(old, value)
        elif name == "namespace" and old is not None and old != value:
            raise InvalidRequest(f"the {HEADER} header and the {FIELD!r} field name different namespaces", param=FIELD)
        elif name in _FLAGS:
            into[name] = value or bool(old)
        else:
            into[name] = value


def _standard(value: str) -> dict[str, Any]:
    """RFC 9111 request directives we act on; anything else (or unreadable) is ignored, as the RFC asks."""
    found: dict[str, Any] = {}
    for part in value.split(","):
        name, _, argument = part.strip().partition("=")
        name = name.strip().lower()
        if name in ("no-cache", "no-store"):
            found[name] = True
        elif name == "max-age":
            seconds = _seconds(argument.strip().strip('"'))
            if seconds is not None:
                found[name] = min(seconds, found.get(name, seconds))
    return found


def _header(value: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for part in value.split(","):
        text = part.strip()
        if not text:
            continue
        name, equals, argument = text.partition("=")
        name = name.strip().lower()
        argument = argument.strip()
        if name in _FLAGS and not equals:
            found[name] = True
        elif name in _NUMBERS and equals:
            seconds = _seconds(argument)
            if seconds is None:
                raise _bad_header(f"{name}={preview(argument)}: expected whole seconds")
            found[name] = seconds
        elif name == "namespace" and equals:
            found[name] = _namespace(argument, f"{HEADER} namespace")
        else:
            raise _bad_header(f"unknown directive {preview(text)!r}")
    return found


def _field(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(
            f'{FIELD!r} must be an object such as {{"no-cache": true}} or {{"ttl": 300}}, not {preview(value)}',
            param=FIELD,
        )
    found: dict[str, Any] = {}
    for name, item in value.items():
        where = f"{FIELD}.{preview(name)}"
        if name in _FLAGS:
            if not isinstance(item, bool):
                raise InvalidRequest(f"'{where}' must be true or false", param=where)
            found[name] = item
        elif name in _NUMBERS:
            seconds = _seconds(item) if isinstance(item, int) and not isinstance(item, bool) else None
            if seconds is None:
                raise InvalidRequest(f"'{where}' must be whole seconds (0 or more)", param=where)
            found[name] = seconds
        elif name == "namespace":
            if not isinstance(item, str):
                raise InvalidRequest(f"'{where}' must be a string", param=where)
            found[name] = _namespace(item, where)
        else:
            known = ", ".join((*_FLAGS, *_NUMBERS, "namespace"))
            raise InvalidRequest(f"unknown cache control '{where}'; known: {known}", param=where)
    return found


def _seconds(value: object) -> int | None:
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        number = int(value)
    else:
        return None
    return min(number, MAX_SECONDS) if number >= 0 else None


def _namespace(value: str, where: str) -> str:
    if not _NAMESPACE.match(value):
        raise InvalidRequest(f"'{where}' must be 1-64 letters, digits or . _ : - (not {preview(value)!r})", param=FIELD)
    return value


def _bad_header(problem: str) -> InvalidRequest:
    return InvalidRequest(
        f"the {HEADER} header: {problem}; use off, on, no-cache, no-store, pace, max-age=N, ttl=N or namespace=NAME",
        param=HEADER,
        code="invalid_cache_control",
    )
