"""Which requests the cache serves, and the key of one: the endpoint, the route's target, the client's identity,
the namespace and a canonical form of the body.

The canonical body is the request as the upstream will see it, minus what does not change the answer
(``stream`` and ``stream_options`` pick a variant, ``user`` is an end-user id for abuse monitoring) and with
``model`` replaced by the route's target (so ``auto`` and a tier's model id share entries). Keys are sorted at every
level, there is no whitespace, and a number is written the same way whatever its spelling (``0``, ``0.0``, ``0e0``).
Arrays keep their order: the order of messages is the conversation.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

KEY_VERSION = b"rpc1"  # bump when the key or the entry format changes: old entries are then never read
IGNORED_FIELDS = frozenset({"stream", "stream_options", "user", "model"})
_SAFE_INTEGERS = 2**53  # beyond this a float does not say which integer it was


class Variant(enum.StrEnum):
    """How the answer is framed: a whole body, a stream, or a stream that ends with a usage event."""

    BODY = "b"
    STREAM = "s"
    STREAM_USAGE = "u"


class Scope(enum.StrEnum):
    """Which requests are cached (``cache.requests``)."""

    DETERMINISTIC = "deterministic"  # temperature 0, or a seed
    ALL = "all"


def variant_of(body: Mapping[str, Any]) -> Variant:
    if body.get("stream") is not True:
        return Variant.BODY
    options = body.get("stream_options")
    return Variant.STREAM_USAGE if isinstance(options, dict) and options.get("include_usage") else Variant.STREAM


def deterministic(body: Mapping[str, Any]) -> bool:
    """The request asks for the same answer every time: temperature 0 (greedy), or a fixed seed."""
    temperature = body.get("temperature")
    if _number(temperature) and temperature == 0:
        return True
    seed = body.get("seed")
    return isinstance(seed, int) and not isinstance(seed, bool)


def choices(body: Mapping[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1


def cacheable(body: Mapping[str, Any], scope: Scope, *, multiple_choices: bool, asked: bool) -> bool:
    """Whether the cache may answer and store this request (``asked``: the request said ``on``)."""
    if asked:
        return True
    if choices(body) > 1 and not multiple_choices:
        return False
    return scope is Scope.ALL or deterministic(body)


def canonical_body(body: Mapping[str, Any]) -> bytes:
    view = {name: _normal(value) for name, value in body.items() if name not in IGNORED_FIELDS}
    return orjson.dumps(view, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True, slots=True)
class CacheKey:
    digest: str  # 32 hex characters: every variant of one request shares it
    variant: Variant

    def of(self, variant: Variant) -> str:
        return f"{self.digest}:{variant.value}"

    @property
    def name(self) -> str:
        return self.of(self.variant)


def cache_key(endpoint: str, target: str, identity: bytes, namespace: str, body: Mapping[str, Any]) -> CacheKey:
    """``target``: what the route sends the request to (a tier's upstream model, or the cascade's pair);
    ``identity``: the client's key digest when answers must not cross clients (b"" when they may)."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (KEY_VERSION, endpoint.encode(), target.encode(), identity, namespace.encode()):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    digest.update(canonical_body(body))
    return CacheKey(digest.hexdigest(), variant_of(body))


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _normal(value: Any) -> Any:
    """Integral floats as integers (JSON does not tell 1 from 1.0); containers walked without recursion limits
    mattering (the parser already refused bodies nested deeper than the serialiser takes)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < _SAFE_INTEGERS else value
    if isinstance(value, dict):
        return {name: _normal(item) for name, item in value.items()}
    if isinstance(value, list):
        return [_normal(item) for item in value]
    return value
