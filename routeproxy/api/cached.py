"""The chat pipeline's side of the cache: what a request's key holds besides its body (the route's target, the
client's identity), and how an answer served without an upstream call of its own is counted.

A hit or a follower gives its slot back, is remembered for feedback under the tier that produced the answer, and is
counted in the cache's fields only: never in the routing counters, so the A/B latency figures hold upstream answers
alone.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import structlog
from starlette.requests import Request

from routeproxy.api.resources import Resources
from routeproxy.cache.exchange import CachedExchange, CachePlan, Served
from routeproxy.cache.front import Bypassed, ResponseCache
from routeproxy.cache.stats import render_cache, served_fields
from routeproxy.cache.store import CacheUnavailable, StoreFigures
from routeproxy.counters.stats import PINNED, Snapshot
from routeproxy.quality.decisions import Decision, regeneration_key
from routeproxy.routing.route import RouteDecision
from routeproxy.settings import Tier
from routeproxy.wire.auth import bearer_token, digest
from routeproxy.wire.relay import Exchange

log = structlog.get_logger("routeproxy")


def target_of(resources: Resources, decision: RouteDecision) -> str:
    """What the route sends the request to, as the key names it: a tier's upstream, or the cascade's pair."""
    tiers = resources.settings.tiers
    if decision.cascade:
        small, large = tiers[Tier.SMALL], tiers[Tier.LARGE]
        rules = resources.settings.cascade.rules
        return f"cascade|{small.base_url}|{small.upstream_model}|{large.base_url}|{large.upstream_model}|{rules}"
    config = tiers[decision.tier]
    return f"{decision.tier.value}|{config.base_url}|{config.upstream_model}"


def identity_of(resources: Resources, request: Request) -> bytes:
    """Whose answers a request may share: the client key's digest when the proxy checks keys; else, when a tier
    passes the client's own credentials upstream, a digest of them (the upstream decides who may ask); else none."""
    if resources.client_key_digests:
        return digest(bearer_token(request) or "")
    if any(not config.api_key for config in resources.settings.tiers.values()):
        return hashlib.sha256(request.headers.get("authorization", "").encode("utf-8", "surrogateescape")).digest()
    return b""


def plan_cache(
    cache: ResponseCache,
    resources: Resources,
    request: Request,
    endpoint: str,
    body: dict[str, Any],
    decision: RouteDecision,
    request_id: str,
    rating_id: str | None,
) -> CachePlan | None:
    """The request's use of the cache (None: bypass); raises InvalidRequest for a bad cache control."""
    identity = identity_of(resources, request)
    target = target_of(resources, decision)
    return cache.plan(endpoint, body, request.headers, target, identity, request_id, rating_id)


class Accounting:
    """One request's cache events, into the shared counters, the Prometheus series, decisions and the log."""

    def __init__(
        self,
        resources: Resources,
        cache: ResponseCache,
        decision: RouteDecision,
        request_id: str,
        rating_id: str | None,
        owner: str | None,
    ) -> None:
        self.resources = resources
        self.cache = cache
        self.decision = decision
        self.request_id = request_id
        self.rating_id = rating_id  # the id feedback names: this answer's own decision is remembered under it
        self.owner = owner

    def count(self, name: str, increment: int = 1) -> None:
        counters = self.resources.counters
        counters.add_fields([(name, increment)], counters.period)
        self.cache.series.count(name, increment)

    def served(self, served: Served) -> None:
        resources, decision = self.resources, self.decision
        resources.release()
        counters = resources.counters
        tier = Tier(served.tier) if served.tier else decision.tier
        label = counters.labels[tier]
        counters.add_fields(served_fields(served, label), counters.period)
        self.cache.series.served(served, label)
        classification = decision.classification
        if self.rating_id is not None:  # feedback on a hit rates the tier that produced the answer
            resources.decisions.remember(
                Decision(
                    self.rating_id,
                    label,
                    decision.complexity.value if decision.complexity else PINNED,
                    counters.period,
                    served.stream,
                    served.status,
                    served.latency_s * 1000,
                    time.time(),
                    None
                    if decision.sticky is None or classification is None
                    else regeneration_key(decision.sticky, classification.query),
                    owner=self.owner,
                )
            )
        if resources.log_requests:
            log.info(
                "request",
                request_id=self.rating_id or self.request_id,
                **({"client_request_id": self.request_id} if self.rating_id not in (None, self.request_id) else {}),
                tier=label,
                complexity=decision.complexity.value if decision.complexity else None,
                reason=decision.why,
                status=served.status,
                latency_ms=round(served.latency_s * 1000, 2),
                stream=served.stream,
                cache=served.kind,
                **({"age_s": round(served.age_s, 1)} if served.age_s is not None else {}),
                **({"disconnected": True} if served.disconnected else {}),
            )


async def cache_stats(resources: Resources, snapshot: Snapshot | None) -> dict[str, Any]:
    """The stats JSON's ``cache`` block (``{"enabled": false}`` when the cache is off); the Prometheus gauges of
    what the store holds are set on the way."""
    cache = resources.cache
    if cache is None:
        return {"enabled": False}
    try:
        figures: StoreFigures | None = await cache.store.figures()
    except CacheUnavailable:
        figures = None
    if figures is not None:
        cache.series.set_figures(figures)
    if snapshot is None:
        return {}
    return render_cache(snapshot, resources.settings.tier_labels, cache.store.store_name, figures)


def serve_cached(
    cache: ResponseCache,
    resources: Resources,
    exchange: Exchange,
    plan: CachePlan | None,
    decision: RouteDecision,
    request_id: str,
    rating_id: str | None,
    owner: str | None,
    started: float,
) -> CachedExchange | Bypassed:
    accounting = Accounting(resources, cache, decision, request_id, rating_id, owner)
    return cache.wrap(exchange, plan, accounting, started)
