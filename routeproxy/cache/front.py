"""The cache as the request path sees it: which requests it serves (``plan``), and the ASGI callable that serves one
(``wrap``); its store and flights live as long as the process."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.types import Message, Receive, Scope, Send

from routeproxy.cache.controls import read_controls
from routeproxy.cache.exchange import CacheContext, CachedExchange, CacheEvents, CachePlan
from routeproxy.cache.flight import Flights
from routeproxy.cache.keys import Scope as Requests
from routeproxy.cache.keys import cache_key, cacheable, choices
from routeproxy.cache.metrics import CacheSeries
from routeproxy.cache.replay import CACHE_HEADER
from routeproxy.cache.store import CacheStore, MemoryCacheStore
from routeproxy.settings import CacheConfig, Settings
from routeproxy.wire.relay import Exchange


class ResponseCache:
    def __init__(self, config: CacheConfig, store: CacheStore, series: CacheSeries) -> None:
        self.config = config
        self.store = store
        self.series = series
        self.flights = Flights()
        self.requests = Requests(config.requests)

    def plan(
        self,
        endpoint: str,
        body: dict[str, Any],
        headers: Mapping[str, str],
        target: str,
        identity: bytes,
        request_id: str,
        rating_id: str | None = None,
    ) -> CachePlan | None:
        """How this request uses the cache; None when it does not (not cacheable, or asked not to). The cache
        controls are taken out of ``body`` either way; a bad one raises InvalidRequest."""
        controls = read_controls(headers, body)
        config = self.config
        if controls.off or not cacheable(
            body, self.requests, multiple_choices=config.multiple_choices, asked=controls.on
        ):
            return None
        ttl = config.ttl_s if controls.ttl_s is None else min(float(controls.ttl_s), config.ttl_s)
        if ttl <= 0:
            controls = replace(controls, no_store=True)
        return CachePlan(
            key=cache_key(endpoint, target, identity, controls.namespace, body),
            controls=controls,
            chat=endpoint == "chat",
            choices=choices(body),
            ttl_s=ttl,
            request_id=request_id,
            rating_id=rating_id,
        )

    def wrap(
        self, exchange: Exchange, plan: CachePlan | None, events: CacheEvents, started: float
    ) -> CachedExchange | Bypassed:
        if plan is None:
            events.count("cache_bypassed")
            return Bypassed(exchange)
        events.count("cache_lookups")
        context = CacheContext(self.store, self.flights, events, self.config.max_entry_bytes)
        return CachedExchange(exchange, plan, context, started)

    async def start(self) -> None:
        await self.store.start()

    async def close(self) -> None:
        await self.store.close()


class Bypassed:
    """A request the cache does not serve: the exchange as it is, its response saying so."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (CACHE_HEADER, b"bypass")]}
            await send(message)

        await self.exchange(scope, receive, tagged)


def open_cache(settings: Settings, registry: CollectorRegistry) -> ResponseCache | None:
    """None when the cache is off; Redis when ``cache.redis_url`` or ``REDIS_URL`` is set, else memory."""
    config = settings.cache
    if not config.enabled:
        return None
    url = config.redis_url or settings.counters.redis_url
    store: CacheStore
    if url is None:
        store = MemoryCacheStore(config.max_bytes)
    else:
        from routeproxy.cache.redis_store import RedisCacheStore  # the Redis client only when Redis is configured

        store = RedisCacheStore(url, settings.counters.namespace, config.max_bytes, config.ttl_s)
    return ResponseCache(config, store, CacheSeries(registry, settings.tier_labels))
