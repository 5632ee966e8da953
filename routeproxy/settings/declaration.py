"""The declaration of one setting, its converters (each names the bad value), and the enums settings take.

The declarations themselves live per area in ``server.py``, ``routing.py``, ``tiers.py`` and ``quality.py``;
``load.py`` assembles them into ``SETTINGS``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Tier(enum.StrEnum):
    SMALL = "small"
    LARGE = "large"

    @property
    def other(self) -> Tier:
        return Tier.LARGE if self is Tier.SMALL else Tier.SMALL


class UpstreamKind(enum.StrEnum):
    VLLM = "vllm"
    TGI = "tgi"
    HF = "hf"


class StickyKey(enum.StrEnum):
    QUERY = "query"
    USER = "user"
    HEADER = "header"


class RoutingMode(enum.StrEnum):
    CLASSIFY = "classify"  # the prompt decides the tier
    CASCADE = "cascade"  # the small tier answers first; a weak answer is re-asked on the large tier


# -- converters: str (from the environment) or YAML value -> typed value; ValueError names the problem --


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true or false")


def _ratio(value: Any) -> float:
    number = _float(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError("expected a number from 0.0 to 1.0")
    return number


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("expected a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError("expected a finite number")
    return number


def _positive(value: Any) -> float:
    number = _float(value)
    if number <= 0:
        raise ValueError("expected a number above 0")
    return number


def _non_negative(value: Any) -> float:
    number = _float(value)
    if number < 0:
        raise ValueError("expected a number of 0 or more")
    return number


def _optional_seconds(value: Any) -> float | None:
    """A timeout: seconds above 0, or none/0 for no limit."""
    if value is None or str(value).strip().lower() in {"", "none", "null", "0", "0.0"}:
        return None
    return _positive(value)


def _int_in(low: int, high: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("expected a whole number")
        try:
            number = int(str(value).strip())
        except ValueError:
            raise ValueError("expected a whole number") from None
        if not low <= number <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return number

    return convert


def _text(value: Any) -> str:
    if value is None or isinstance(value, (dict, list)):
        raise ValueError("expected a string")
    text = str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


_LABEL = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def _label(value: Any) -> str:
    text = _text(value)
    if not _LABEL.match(text):
        raise ValueError("expected 1-32 letters, digits, _ or - (it names Redis fields and Prometheus labels)")
    return text


def _optional_text(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _text(value)


def _key_list(value: Any) -> tuple[str, ...]:
    """Client api keys: a YAML list, or a comma-separated string (the environment's form)."""
    if value is None:
        return ()
    items = value if isinstance(value, list) else str(value).split(",")
    keys = tuple(str(item).strip() for item in items if str(item).strip())
    if any(len(key) < 8 for key in keys):
        raise ValueError("every client api key must be at least 8 characters")
    return keys


def _origin_list(value: Any) -> tuple[str, ...]:
    """CORS origins: a YAML list or a comma-separated string; each `*` or scheme://host[:port]."""
    if value is None:
        return ()
    items = value if isinstance(value, list) else str(value).split(",")
    origins = tuple(str(item).strip().rstrip("/") for item in items if str(item).strip())
    for origin in origins:
        if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
            raise ValueError(f"{origin!r} is not an origin: expected * or scheme://host[:port]")
    return origins


def _url(value: Any) -> str:
    text = _text(value).rstrip("/")
    if not re.match(r"^https?://[^/\s]+", text):
        raise ValueError("expected an http:// or https:// URL")
    return text


def _optional_url(value: Any) -> str | None:
    return None if _optional_text(value) is None else _url(value)


def _redis_url(value: Any) -> str | None:
    text = _optional_text(value)
    if text is not None and not re.match(r"^(redis|rediss|unix)://", text):
        raise ValueError("expected a redis://, rediss:// or unix:// URL")
    return text


def _choice(enum_type: type[enum.StrEnum]) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        text = _text(value).lower()
        try:
            return enum_type(text)
        except ValueError:
            allowed = ", ".join(member.value for member in enum_type)
            raise ValueError(f"expected one of: {allowed}") from None

    return convert


def _one_of(*allowed: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        text = _text(value).lower()
        if text not in allowed:
            raise ValueError(f"expected one of: {', '.join(allowed)}")
        return text

    return convert


def _schedule(value: Any) -> tuple[float, ...]:
    """A rising list of ratios above 0 and at most 1: a YAML list or a comma-separated string."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    try:
        steps = tuple(_ratio(item) for item in items if str(item).strip())
    except ValueError:
        raise ValueError("expected ratios from 0.0 to 1.0, comma-separated") from None
    if not steps or steps[0] <= 0 or list(steps) != sorted(set(steps)):
        raise ValueError("expected at least one ratio, each above 0 and above the one before")
    return steps


def _percent(value: Any) -> float:
    number = _float(value)
    if not 0.0 <= number <= 100.0:
        raise ValueError("expected a percentage from 0 to 100")
    return number


@dataclass(frozen=True, slots=True)
class Setting:
    key: str
    env: str | None
    default: Any
    convert: Callable[[Any], Any]
    help: str
    # Older names of the variable that still work (the canonical ``env`` wins when both are set).
    aliases: tuple[str, ...] = ()
