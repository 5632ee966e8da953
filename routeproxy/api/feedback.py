"""``POST /v1/model-routing/feedback``: a client rates an answer it got through routeproxy, by the id routeproxy
issued for it (``x-routeproxy-request-id``).

Any replica accepts it (the decision store finds the request whichever replica served it). A malformed body is a
400, an unknown or expired id a 404, a rating with another client key than the request's a 403, all in OpenAI's
envelope; while Redis does not take writes the feedback is kept and the answer is 202.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from routeproxy.api.resources import Resources, resources_of
from routeproxy.errors import CounterStoreUnavailable, InvalidRequest, Unauthorized, preview
from routeproxy.quality.decisions import FeedbackResult, NotYourRequest, RequestNotFound, owner_digest
from routeproxy.wire.admission import read_body
from routeproxy.wire.auth import bearer_token, check_client_key

log = structlog.get_logger("routeproxy")

MAX_BODY_BYTES = 16 * 1024
_ID_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")
_EXAMPLE = (
    '{"request_id": "<the x-routeproxy-request-id routeproxy returned>", "score": 1} or '
    '{"request_id": "...", "thumbs": "up"}'
)


@dataclass(frozen=True, slots=True)
class Rating:
    request_id: str
    score: float  # in [0, 1]
    kind: str  # "thumbs" or "score"


def parse_rating(raw: bytes) -> Rating:
    """The body as a Rating, or InvalidRequest naming the field at fault."""
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"send a JSON object: {_EXAMPLE}")
    unknown = sorted(set(body) - {"request_id", "score", "thumbs"})
    if unknown:
        raise InvalidRequest(f"unknown field {preview(unknown[0])!r}; send {_EXAMPLE}", param=preview(unknown[0]))
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise InvalidRequest(
            "request_id must be the x-routeproxy-request-id routeproxy returned (a string)", param="request_id"
        )
    if len(request_id) > 128 or not set(request_id) <= _ID_CHARACTERS:
        raise InvalidRequest("request_id is not one routeproxy hands out", param="request_id")
    has_score, has_thumbs = "score" in body, "thumbs" in body
    if has_score == has_thumbs:
        raise InvalidRequest('send exactly one of "score" (0 to 1) and "thumbs" ("up" or "down")', param="score")
    if has_thumbs:
        thumbs = body["thumbs"]
        if thumbs not in ("up", "down"):
            raise InvalidRequest(f'thumbs must be "up" or "down", not {preview(thumbs)}', param="thumbs")
        return Rating(request_id, 1.0 if thumbs == "up" else 0.0, "thumbs")
    score = body["score"]
    if (
        isinstance(score, bool)
        or not isinstance(score, (int, float))
        or not math.isfinite(score)
        or not 0 <= score <= 1
    ):
        raise InvalidRequest(f"score must be a number from 0 to 1, not {preview(score)}", param="score")
    return Rating(request_id, float(score), "score")


def _answer(result: FeedbackResult) -> Response:
    if result.queued:
        return JSONResponse({"request_id": result.request_id, "queued": True}, status_code=202)
    return JSONResponse(
        {
            "request_id": result.request_id,
            "tier": result.tier,
            "complexity": result.complexity,
            "period": result.period,
            "score": result.score,
            "replaced": result.replaced,
        }
    )


def request_owner(request: Request, resources: Resources) -> str | None:
    """With client keys configured, the digest a decision keeps of the key that made the request (and that a rating
    must match); None without client keys."""
    if not resources.client_key_digests:
        return None
    token = bearer_token(request)
    return None if token is None else owner_digest(token, resources.settings.counters.namespace)


async def post_feedback(request: Request) -> Response:
    """Errors are raised: the app's handler renders them in OpenAI's envelope with the request id."""
    resources = resources_of(request)
    metrics = resources.metrics
    try:
        check_client_key(request, resources.client_key_digests)
    except Unauthorized:
        metrics.feedback_rejected("unauthorized")
        raise
    try:
        rating = parse_rating(await read_body(request, MAX_BODY_BYTES, resources.settings.server.body_timeout))
    except InvalidRequest:
        metrics.feedback_rejected("invalid")
        raise
    try:
        result = await resources.decisions.feedback(rating.request_id, rating.score, request_owner(request, resources))
    except RequestNotFound:
        metrics.feedback_rejected("unknown_id")
        raise
    except NotYourRequest:
        metrics.feedback_rejected("other_key")
        raise
    except CounterStoreUnavailable:
        metrics.feedback_rejected("store_full")
        raise
    if result.tier is not None and result.complexity is not None:
        metrics.feedback(result.tier, result.complexity, rating.kind)
    log.info(
        "feedback", request_id=rating.request_id, score=rating.score, kind=rating.kind, tier=result.tier,
        complexity=result.complexity, replaced=result.replaced, queued=result.queued,
    )  # fmt: skip
    return _answer(result)
