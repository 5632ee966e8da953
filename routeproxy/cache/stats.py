"""The cache's counts in the shared counters and the ``cache`` block of the stats JSON.

Counted in the counter store's fields (so every replica's add up, per A/B period), never in the routing fields: a
hit or a follower is not a sample of a tier's latency. Fields (`<tier>` is the tier's label):

| field | counts |
| --- | --- |
| `cache_lookups` | requests the cache served or tried to (cacheable, not `off`) |
| `cache_bypassed` | requests it did not serve (not cacheable, or `off`) |
| `cache_misses` | requests it sent upstream (and may have stored) |
| `cache_hits:<tier>` | answered from a stored entry the tier produced |
| `cache_coalesced:<tier>` | answered by an identical request in flight to the tier |
| `cache_saved_ms:<tier>` | what the hits' answers took upstream, whole ms |
| `cache_saved_prompt_tokens:<tier>`, `cache_saved_completion_tokens:<tier>` | the hits' tokens, when known |
| `cache_stores`, `cache_stored_bytes` | answers stored, and their stored bytes |
| `cache_evictions` | entries evicted to make room |
| `cache_unavailable` | store calls that failed (the request went without the cache) |
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from routeproxy.cache.exchange import Served
from routeproxy.cache.store import StoreFigures
from routeproxy.counters.stats import Snapshot
from routeproxy.settings import Tier


def served_fields(served: Served, label: str) -> Iterable[tuple[str, int]]:
    if served.kind == "hit":
        yield f"cache_hits:{label}", 1
        yield f"cache_saved_ms:{label}", round(served.saved_s * 1000)
        if served.prompt_tokens is not None:
            yield f"cache_saved_prompt_tokens:{label}", served.prompt_tokens
        if served.completion_tokens is not None:
            yield f"cache_saved_completion_tokens:{label}", served.completion_tokens
    else:
        yield f"cache_coalesced:{label}", 1


def _pct(part: int, whole: int) -> float:
    return round(part / whole * 100, 1) if whole else 0.0


def render_cache(
    snapshot: Snapshot, labels: Mapping[Tier, str], store: str, figures: StoreFigures | None
) -> dict[str, Any]:
    """``figures``: what the store holds now (None when it did not answer)."""
    names = [labels[tier] for tier in Tier]
    hits = {label: snapshot.get("cache_hits", label) for label in names}
    coalesced = {label: snapshot.get("cache_coalesced", label) for label in names}
    lookups = snapshot.get("cache_lookups")
    answered = sum(hits.values()) + sum(coalesced.values())
    return {
        "enabled": True,
        "store": store,
        "lookups": lookups,
        "hits": sum(hits.values()),
        "coalesced": sum(coalesced.values()),
        "misses": snapshot.get("cache_misses"),
        "bypassed": snapshot.get("cache_bypassed"),
        "hit_rate_pct": _pct(sum(hits.values()), lookups),
        "answered_without_upstream_pct": _pct(answered, lookups),
        "by_tier": {
            label: {
                "hits": hits[label],
                "coalesced": coalesced[label],
                "saved_upstream_ms": snapshot.get("cache_saved_ms", label),
                "saved_prompt_tokens": snapshot.get("cache_saved_prompt_tokens", label),
                "saved_completion_tokens": snapshot.get("cache_saved_completion_tokens", label),
            }
            for label in names
        },
        "stores": snapshot.get("cache_stores"),
        "stored_bytes": snapshot.get("cache_stored_bytes"),
        "evictions": snapshot.get("cache_evictions"),
        "unavailable": snapshot.get("cache_unavailable"),
        "bytes_now": None if figures is None else figures.bytes_now,
        "entries_now": None if figures is None else figures.entries_now,
    }
