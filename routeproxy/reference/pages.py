"""Which renderer fills which `<!-- reference: NAME -->` line of a page."""

from __future__ import annotations

from collections.abc import Callable

from routeproxy.reference.commands import commands_reference
from routeproxy.reference.endpoints import endpoints_reference
from routeproxy.reference.errors import errors_reference
from routeproxy.reference.metrics import metrics_reference
from routeproxy.reference.settings import settings_reference
from routeproxy.reference.stores import period_rules_reference, redis_keys_reference

RENDERERS: dict[str, Callable[[], str]] = {
    "settings": settings_reference,
    "commands": commands_reference,
    "endpoints": endpoints_reference,
    "errors": errors_reference,
    "metrics": metrics_reference,
    "redis-keys": redis_keys_reference,
    "period-rules": period_rules_reference,
}


def render(name: str) -> str:
    """The Markdown of one reference block; an unknown name is an error (the strict build fails on it)."""
    if name not in RENDERERS:
        raise KeyError(f"no reference named {name!r}: one of {', '.join(RENDERERS)}")
    return RENDERERS[name]()
