"""The cache's Prometheus series, in the app's registry (this process's numbers, like every other series)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

from routeproxy.cache.exchange import Served
from routeproxy.cache.store import StoreFigures
from routeproxy.settings import Tier

PREFIX = "routeproxy_cache"
RESULTS = ("hit", "coalesced", "miss", "bypass")
SERIES: tuple[str, ...] = tuple(
    f"{PREFIX}_{name}"
    for name in (
        "requests_total",
        "saved_upstream_seconds_total",
        "saved_tokens_total",
        "stores_total",
        "stored_bytes_total",
        "evictions_total",
        "unavailable_total",
        "bytes",
        "entries",
    )
)
# counter field -> series that counts it too
_COUNTS = {"cache_stores": "stores", "cache_stored_bytes": "stored_bytes", "cache_evictions": "evictions"}


class CacheSeries:
    def __init__(self, registry: CollectorRegistry, labels: Mapping[Tier, str]) -> None:
        requests = Counter(
            f"{PREFIX}_requests",
            "Cacheable chat and completions requests by how they were answered (hit, coalesced, miss) and the "
            "requests the cache did not serve (bypass).",
            ["result"],
            registry=registry,
        )
        self.requests = {result: requests.labels(result) for result in RESULTS}
        saved = Counter(
            f"{PREFIX}_saved_upstream_seconds",
            "What the hits' answers took upstream when they were produced, by the tier that produced them.",
            ["tier"],
            registry=registry,
        )
        tokens = Counter(
            f"{PREFIX}_saved_tokens", "The hits' tokens (when usage was known), by tier and type.", ["tier", "type"],
            registry=registry,
        )  # fmt: skip
        self.saved = {label: saved.labels(label) for label in labels.values()}
        self.prompt = {label: tokens.labels(label, "prompt") for label in labels.values()}
        self.completion = {label: tokens.labels(label, "completion") for label in labels.values()}
        self.counts = {
            "stores": Counter(f"{PREFIX}_stores", "Answers stored.", registry=registry),
            "stored_bytes": Counter(f"{PREFIX}_stored_bytes", "Bytes of the answers stored.", registry=registry),
            "evictions": Counter(f"{PREFIX}_evictions", "Entries evicted to make room.", registry=registry),
            "unavailable": Counter(
                f"{PREFIX}_unavailable",
                "Store calls that failed (requests served without the cache).",
                registry=registry,
            ),
        }
        self.bytes_now = Gauge(f"{PREFIX}_bytes", "Bytes the store holds now.", registry=registry)
        self.entries_now = Gauge(f"{PREFIX}_entries", "Entries the store holds now.", registry=registry)

    def served(self, served: Served, label: str) -> None:
        self.requests[served.kind].inc()
        if served.kind == "hit" and label in self.saved:
            self.saved[label].inc(served.saved_s)
            self.prompt[label].inc(served.prompt_tokens or 0)
            self.completion[label].inc(served.completion_tokens or 0)

    def count(self, name: str, increment: int) -> None:
        if name == "cache_bypassed":
            self.requests["bypass"].inc(increment)
        elif name == "cache_misses":
            self.requests["miss"].inc(increment)
        elif name == "cache_unavailable":
            self.counts["unavailable"].inc(increment)
        elif name in _COUNTS:
            self.counts[_COUNTS[name]].inc(increment)

    def set_figures(self, figures: StoreFigures) -> None:
        self.bytes_now.set(figures.bytes_now)
        self.entries_now.set(figures.entries_now)
