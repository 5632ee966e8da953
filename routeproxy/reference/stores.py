"""What routeproxy keeps in Redis, as the counter store's key module declares it."""

from __future__ import annotations

from routeproxy.counters.keys import KEY_LAYOUT_MARKDOWN, PERIOD_RULES_MARKDOWN


def redis_keys_reference() -> str:
    return KEY_LAYOUT_MARKDOWN.strip()


def period_rules_reference() -> str:
    return PERIOD_RULES_MARKDOWN.strip()
