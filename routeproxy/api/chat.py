"""The proxied endpoints as one short pipeline: body -> admit -> parse -> route -> relay.

Chat completions (the hot path) and legacy completions are classified and routed; the other OpenAI-compatible
endpoints an upstream serves (``PASSTHROUGH``) go to ``routing.passthrough_tier``, or to the tier whose model id
they name, under the same header, timeout, error and counting rules.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from routeproxy.api.cached import plan_cache, serve_cached
from routeproxy.api.feedback import request_owner
from routeproxy.api.logs import log_request
from routeproxy.api.resources import Resources, resources_of
from routeproxy.cascade.exchange import CascadeExchange, CascadePlan
from routeproxy.counters.stats import PINNED, Outcome
from routeproxy.errors import RouteproxyError, error_response
from routeproxy.quality.decisions import Decision, check_record, issue_request_id, regeneration_key
from routeproxy.routing.route import Reason, RouteDecision, response_headers
from routeproxy.settings import RoutingMode, Settings, Tier
from routeproxy.wire.admission import client_request_id, read_body
from routeproxy.wire.auth import check_client_key
from routeproxy.wire.parse import (
    Hints,
    check_content_type,
    parse_chat_body,
    parse_completion_body,
    parse_json_body,
    pop_hints,
    prompt_messages,
)
from routeproxy.wire.relay import Exchange, Prepare, RelayResult
from routeproxy.wire.upstream import RawHeaders

log = structlog.get_logger("routeproxy")


# A larger body is parsed and checked off the event loop (wire.offload): 100,000 messages take ~200 ms to check.
PARSE_INLINE_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One proxied endpoint: its name in logs, and where it goes upstream."""

    name: str
    upstream_path: str  # after the tier's base URL (which ends in /v1), or after its origin when from_root
    routed: bool = False  # classified and routed like chat; else sent to routing.passthrough_tier
    from_root: bool = False  # served beside /v1, not under it (vLLM's /tokenize)


CHAT = Endpoint("chat", "/chat/completions", routed=True)
COMPLETIONS = Endpoint("completions", "/completions", routed=True)
# Client path -> endpoint. Each is also served without /v1, as the SDKs call it with a base_url lacking /v1.
PASSTHROUGH: dict[str, Endpoint] = {
    path: endpoint
    for endpoint in (
        Endpoint("embeddings", "/embeddings"),
        Endpoint("responses", "/responses"),
        Endpoint("rerank", "/rerank"),
        Endpoint("score", "/score"),
    )
    for path in (f"/v1{endpoint.upstream_path}", endpoint.upstream_path)
} | {
    "/tokenize": Endpoint("tokenize", "/tokenize", from_root=True),
    "/detokenize": Endpoint("detokenize", "/detokenize", from_root=True),
}


async def chat_completions(request: Request) -> Response | ASGIApp:
    return await proxied(request, CHAT)


async def text_completions(request: Request) -> Response | ASGIApp:
    return await proxied(request, COMPLETIONS)


async def passthrough(request: Request) -> Response | ASGIApp:
    return await proxied(request, PASSTHROUGH[request.url.path])


async def proxied(request: Request, endpoint: Endpoint) -> Response | ASGIApp:
    started = time.perf_counter()
    resources = resources_of(request)
    client_id = client_request_id(request)
    request_id = client_id or issue_request_id()  # x-request-id: the client's (for tracing), else ours
    # The id feedback names is always one routeproxy issued: a client's x-request-id never picks a decision.
    rating_id = (issue_request_id() if client_id else request_id) if endpoint.routed else None
    try:
        raw = await admitted(request, resources)
    except RouteproxyError as exc:
        return rejected(resources, exc, request_id)
    try:
        body, hints = await resources.offload.run(len(raw) <= PARSE_INLINE_BYTES, parse_request, raw, request, endpoint)
        enabled, ratio = resources.routing_now()
        cascade = resources.mode_now() is RoutingMode.CASCADE
        routing_started = time.perf_counter()
        if endpoint is COMPLETIONS:
            view = {**body, "messages": prompt_messages(body["prompt"])}
            decision = resources.router.route(view, hints, request.headers, enabled=enabled, ab_test_ratio=ratio)
        elif endpoint.routed:
            # Cascade mode checks chat answers only (the answer check reads chat.completion bodies and chunks).
            decision = resources.router.route(
                body, hints, request.headers, enabled=enabled, ab_test_ratio=ratio, cascade=cascade
            )
        else:
            decision = resources.router.passthrough(body.get("model"))
        classify_s = time.perf_counter() - routing_started if decision.classification is not None else None
        cache = resources.cache if endpoint.routed else None
        cache_plan = (
            plan_cache(cache, resources, request, endpoint.name, body, decision, request_id, rating_id)
            if cache
            else None
        )
    except RouteproxyError as exc:
        resources.release()
        return rejected(resources, exc, request_id)
    except BaseException:
        resources.release()  # the client left mid-body (ClientDisconnect), or a bug: the slot is given back
        raise
    settings = resources.settings
    # The one body rewrite: the cascade's check may ask the small tier for logprobs the client did not ask for.
    add_logprobs = decision.cascade and settings.cascade.request_logprobs and not body.get("logprobs")
    owner = request_owner(request, resources) if rating_id else None
    prepare, finish = exchange_hooks(
        resources, endpoint, body, decision, request_id, started, classify_s, cascade, add_logprobs=add_logprobs,
        rating_id=rating_id, owner=owner,
    )  # fmt: skip
    # A pinned request named its model: it is not switched to the other one behind the client's back; nor is a
    # passthrough request, whose endpoint the other tier may not serve.
    unswitched = decision.reason in (Reason.PINNED, Reason.PASSTHROUGH)
    fallback = None if unswitched else settings.routing.fallback_for(decision.tier)
    if decision.cascade:
        plan = CascadePlan(
            request=body,
            rules=resources.check_rules,
            hold_tokens=settings.cascade.hold_tokens,
            hold_s=settings.cascade.hold_ms / 1000,
            strip_logprobs=add_logprobs,
            signals=resources.cascade_signals,
            explore=random.random() < settings.cascade.explore_share,
            offload=resources.offload,
        )
        exchange: Exchange = CascadeExchange(
            resources.pool, fallback, prepare, request.headers.raw, started, finish, plan
        )
    else:
        exchange = Exchange(
            resources.pool,
            decision.tier,
            fallback,
            prepare,
            request.headers.raw,
            started,
            finish,
            path=endpoint.upstream_path,
            from_root=endpoint.from_root,
        )
    if cache is None:
        return exchange
    return serve_cached(cache, resources, exchange, cache_plan, decision, request_id, rating_id, owner, started)


async def admitted(request: Request, resources: Resources, *, with_body: bool = True) -> bytes:
    """The body (``with_body``), once the client key is checked; then a slot is taken."""
    check_client_key(request, resources.client_key_digests)
    # The slot is taken once the whole body is in: a client sending its body slowly holds no slot.
    raw = await read_request_body(request, resources.settings) if with_body else b""
    resources.admit()
    return raw


async def read_request_body(request: Request, settings: Settings) -> bytes:
    """The raw body, within the size limit and the body deadline, once its content type is acceptable."""
    check_content_type(request.headers.get("content-type"))
    return await read_body(request, settings.server.max_body_bytes, settings.server.body_timeout)


def parse_request(raw: bytes, request: Request, endpoint: Endpoint = CHAT) -> tuple[dict[str, Any], Hints]:
    """The validated body and, for routed endpoints, the routing hints popped from it and the headers."""
    if endpoint is CHAT:
        body = parse_chat_body(raw)
    elif endpoint is COMPLETIONS:
        body = parse_completion_body(raw)
    else:
        return parse_json_body(raw, endpoint.name), Hints()
    return body, pop_hints(body, request.headers)


def rejected(resources: Resources, exc: RouteproxyError, request_id: str) -> Response:
    resources.metrics.rejected(exc.status_code)
    log.info("request_rejected", request_id=request_id, status=exc.status_code, error=exc.message)
    return error_response(exc, request_id)


def exchange_hooks(
    resources: Resources,
    endpoint: Endpoint,
    body: dict[str, Any],
    decision: RouteDecision,
    request_id: str,
    started: float,
    classify_s: float | None,
    cascade: bool = False,
    *,
    add_logprobs: bool = False,
    raw: bytes | None = None,
    rating_id: str | None = None,
    owner: str | None = None,
) -> tuple[Prepare, Callable[[RelayResult], None]]:
    """What an exchange calls before each upstream attempt (the body and the client's extra headers) and once at
    the end (release the slot, count, log). ``raw``: a body sent as it came, never rewritten (empty: none).
    ``rating_id``: the id feedback names (answered in x-routeproxy-request-id; the decision is remembered under it),
    ``owner``: the digest of the client key that made the request."""
    settings = resources.settings
    overhead_header: list[tuple[bytes, bytes]] = []
    overhead_s: list[float] = []
    # A passthrough request naming a model of its own (an embedding model, say) keeps it.
    keep_model = decision.reason is Reason.PASSTHROUGH and body.get("model") not in (None, settings.routing.auto_model)

    def prepare(tier: Tier, fallback_reason: str | None) -> tuple[bytes, RawHeaders]:
        """The request body and the client's extra response headers, for the tier about to be tried."""
        config = settings.tiers[tier]
        if raw is not None:
            payload = raw
        else:
            if not keep_model:
                body["model"] = config.upstream_model
            payload = orjson.dumps({**body, "logprobs": True} if add_logprobs and tier is Tier.SMALL else body)
        headers = [
            (name.encode(), value.encode("utf-8", "replace"))
            for name, value in response_headers(decision, config.label, config.model).items()
        ]
        headers.append((b"x-request-id", request_id.encode()))
        if rating_id is not None:
            headers.append((b"x-routeproxy-request-id", rating_id.encode()))
        if cascade:
            headers += [(b"x-routeproxy-mode", b"cascade"), (b"x-routeproxy-escalated", b"false")]
        if fallback_reason is not None:
            headers.append((b"x-routeproxy-fallback", fallback_reason.encode()))
        if not overhead_header:  # time in the proxy before the first upstream request is sent
            overhead_s.append(time.perf_counter() - started)
            overhead_header.append((b"x-routeproxy-overhead-ms", f"{overhead_s[0] * 1000:.3f}".encode()))
        headers.extend(overhead_header)
        return payload, headers

    def finish(result: RelayResult) -> None:
        resources.release()
        outcome = _outcome(decision, result)
        resources.counters.record(outcome)
        if rating_id is not None:  # feedback rates answers: an embedding or a token list is not one
            label = resources.counters.labels[outcome.tier]
            period = resources.counters.period
            resources.decisions.remember(_decision(decision, outcome, rating_id, label, period, owner))
        resources.metrics.observe(outcome, overhead_s=overhead_s[0] if overhead_s else None, classify_s=classify_s)
        if resources.log_requests or result.upstream_error or decision.classify_error:
            log_request(
                decision,
                result,
                rating_id or request_id,
                settings,
                body_stream=bool(body.get("stream")),
                endpoint=None if endpoint is CHAT else endpoint.name,
                client_request_id=request_id if rating_id not in (None, request_id) else None,
            )

    return prepare, finish


def _decision(
    decision: RouteDecision, outcome: Outcome, request_id: str, label: str, period: int, owner: str | None
) -> Decision:
    """What feedback for this request will need: the tier that answered, the complexity, the period."""
    classification = decision.classification
    return Decision(
        request_id,
        label,
        outcome.complexity.value if outcome.complexity else PINNED,
        period,
        outcome.stream,
        outcome.status,
        outcome.latency_ms,
        time.time(),
        None
        if decision.sticky is None or classification is None
        else regeneration_key(decision.sticky, classification.query),
        check=None
        if outcome.cascade is None
        else check_record(outcome.cascade, small_answered=outcome.tier is Tier.SMALL),
        owner=owner,
    )


def _outcome(decision: RouteDecision, result: RelayResult) -> Outcome:
    return Outcome(
        tier=result.tier or decision.tier,
        complexity=decision.complexity,
        status=result.status,
        latency_ms=result.end_s * 1000,
        ttfb_ms=None if result.ttfb_s is None or not result.stream else result.ttfb_s * 1000,
        stream=result.stream,
        upstream_error=result.upstream_error is not None,
        fallback=result.fallback_reason is not None,
        classify_failed=decision.classify_error is not None,
        disconnected=result.disconnected,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        cascade=result.cascade,
        simulator_speed=result.simulator_speed,
        routing_off=decision.reason is Reason.ROUTING_DISABLED,
    )
