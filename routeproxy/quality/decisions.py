"""Decision memory and feedback: request id -> what was decided, so feedback lands on the right tier, complexity
and A/B period, once per request, whichever replica receives it.

Trust model. The id feedback names is issued here (``issue_request_id``: 128 random bits, returned in
``x-routeproxy-request-id``): a client cannot choose it, so two requests never share a decision and nobody can aim a
rating at someone else's request by reusing an id. The client's own ``x-request-id`` is only echoed and logged. With
client keys configured, a decision keeps a keyed digest of the key that made the request (``owner_digest``, never
the key), and only the same key may rate it.

This module holds the interface, the in-memory store (no REDIS_URL) and the fields one feedback adds; the Redis
store lives in redis_decisions.py, and open.py picks one.
"""

from __future__ import annotations

import abc
import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from routeproxy.counters.store import CounterStore
from routeproxy.errors import Forbidden, RouteproxyError
from routeproxy.wire.relay import CascadeOutcome

SCORE_SCALE = 1000  # scores are kept in thousandths, so every sum is an exact integer in Redis


class RequestNotFound(RouteproxyError):
    status_code = 404
    error_type = "invalid_request_error"


@dataclass(frozen=True, slots=True)
class Decision:
    request_id: str
    tier: str  # "3b" / "8b"
    complexity: str  # simple, medium, complex or pinned
    period: int
    stream: bool
    status: int
    latency_ms: float
    at: float  # epoch seconds
    regeneration_key: str | None = None  # None: never counted as a regeneration (pinned requests)
    check: str | None = None  # cascade mode: what the answer check read (``check_record``), joined by feedback
    owner: str | None = None  # owner_digest of the client key that made the request (None: no client keys)


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    request_id: str
    score: float
    queued: bool = False
    tier: str | None = None
    complexity: str | None = None
    period: int | None = None
    replaced: bool = False


def check_record(cascade: CascadeOutcome, *, small_answered: bool) -> str:
    """The answer check's reading of one request as compact JSON, numbers only (never the answer's text): the
    rule set, score, its verdict, whether the small tier's answer is the one the client got (so feedback rates
    it) and whether it was kept to be rated though the check would escalate (explored), each signal's activation
    rounded to 4 places. Feedback
    on the request joins it; ``routeproxy eval --cascade --feedback`` fits the check's weights on such rows."""
    record = {
        "rules": cascade.rules,
        "score": round(cascade.score, 4),
        "escalate": cascade.escalated or cascade.escalation_failed or cascade.explored,  # the check's verdict
        "explored": cascade.explored,
        "small": small_answered,
        "activations": {name: round(value, 4) for name, value in sorted(cascade.activations.items())},
    }
    return orjson.dumps(record).decode()


def issue_request_id() -> str:
    """The id a response carries for feedback: 128 random bits as 32 hex digits (no two ever meet)."""
    return os.urandom(16).hex()


def owner_digest(client_key: str, namespace: str) -> str:
    """What a decision keeps of the client key that made the request: a keyed BLAKE2b-128 digest (the key: the
    deployment's namespace), the same on every replica, never the key."""
    return hashlib.blake2b(
        client_key.encode("utf-8", "surrogateescape"), key=namespace.encode()[:64], digest_size=16, person=b"rp-owner"
    ).hexdigest()


def same_owner(stored: str | None, given: str | None) -> bool:
    """A decision made without a key (or feedback sent without one: keys are off) has no owner to check."""
    return stored is None or given is None or hmac.compare_digest(stored, given)


class NotYourRequest(Forbidden):
    """Feedback with another client key than the one that made the request."""


def not_yours(request_id: str) -> NotYourRequest:
    return NotYourRequest(
        f"request {request_id!r} was made with another api key: only that key may rate it",
        param="request_id",
        code="feedback_key_mismatch",
    )


def regeneration_key(sticky: str, query: str) -> str:
    """What "asked again" compares: the A/B sticky key and the normalised query (case and spaces do not count)."""
    normalised = " ".join(f"{sticky}\0{query}".lower().split())
    return hashlib.blake2b(normalised.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def score_units(score: float) -> int:
    return round(score * SCORE_SCALE)


def _fractional(units: int) -> int:
    return 0 if units in (0, SCORE_SCALE) else 1


def feedback_fields(tier: str, complexity: str, old: int | None, new: int) -> list[tuple[str, int]]:
    """The (field, increment) pairs one feedback adds, replacing ``old`` (None: first feedback for the request).
    ``_FEEDBACK_LUA`` does the same in Redis."""
    fields: list[tuple[str, int]] = []
    for scope in (tier, f"{tier}:{complexity}"):
        if old is None:
            fields += [(f"feedback:{scope}", 1), (f"score_milli:{scope}", new), (f"score_sq_micro:{scope}", new * new)]
            fields.append((f"feedback_fractional:{scope}", _fractional(new)))
        else:
            fields += [(f"score_milli:{scope}", new - old), (f"score_sq_micro:{scope}", new * new - old * old)]
            fields.append((f"feedback_fractional:{scope}", _fractional(new) - _fractional(old)))
    if old is not None and old != new:
        fields.append(("feedback_replaced", 1))
    return [(name, increment) for name, increment in fields if increment]


def regeneration_fields(tier: str, complexity: str) -> list[tuple[str, int]]:
    return [(f"regenerations:{tier}", 1), (f"regenerations:{tier}:{complexity}", 1)]


class DecisionStore(abc.ABC):
    """Remembers decisions and counts feedback for them into the counter store's period of the decision."""

    def __init__(self, counters: CounterStore, *, ttl_s: float, regeneration_window_s: float) -> None:
        self.counters = counters
        self.ttl_s = ttl_s
        self.regeneration_window_s = regeneration_window_s

    @abc.abstractmethod
    def remember(self, decision: Decision) -> None:
        """Synchronous, no I/O."""

    @abc.abstractmethod
    async def feedback(self, request_id: str, score: float, owner: str | None = None) -> FeedbackResult:
        """Count ``score`` for the request, replacing an earlier score; RequestNotFound when unknown or expired,
        NotYourRequest when ``owner`` (the rating client's key digest) is not the request's."""

    async def start(self) -> None:
        """Start the background flush, if any."""
        return None

    async def close(self) -> None:
        """Final flush, then stop."""
        return None

    async def flush(self) -> bool:
        """Send what waits; True when nothing is left."""
        return True

    @property
    def queued(self) -> int:
        """Feedback waiting for the shared store."""
        return 0


def not_found(request_id: str, ttl_s: float) -> RequestNotFound:
    return RequestNotFound(
        f"no routing decision is remembered for request id {request_id!r}: it is unknown, or older than "
        f"{ttl_s:.0f} s (quality.decision_ttl_s)",
        param="request_id",
        code="request_not_found",
    )


class MemoryDecisionStore(DecisionStore):
    """This process's decisions in a bounded map (no REDIS_URL); the oldest go first past ``max_entries``."""

    def __init__(
        self,
        counters: CounterStore,
        *,
        ttl_s: float,
        regeneration_window_s: float,
        max_entries: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(counters, ttl_s=ttl_s, regeneration_window_s=regeneration_window_s)
        self.max_entries = max_entries
        self._clock = clock
        self._decisions: OrderedDict[str, tuple[Decision, int | None]] = OrderedDict()
        self._recent: OrderedDict[str, tuple[float, Decision]] = OrderedDict()

    def remember(self, decision: Decision) -> None:
        self._decisions[decision.request_id] = (decision, None)
        self._decisions.move_to_end(decision.request_id)
        while len(self._decisions) > self.max_entries:
            self._decisions.popitem(last=False)
        key = decision.regeneration_key
        if key is None:
            return
        previous = self._recent.pop(key, None)
        if previous is not None and decision.at - previous[0] <= self.regeneration_window_s:
            first = previous[1]
            self.counters.add_fields(regeneration_fields(first.tier, first.complexity), decision.period)
        self._recent[key] = (decision.at, decision)
        while self._recent and (
            len(self._recent) > self.max_entries
            or next(iter(self._recent.values()))[0] < decision.at - self.regeneration_window_s
        ):
            self._recent.popitem(last=False)

    async def feedback(self, request_id: str, score: float, owner: str | None = None) -> FeedbackResult:
        entry = self._decisions.get(request_id)
        if entry is None or entry[0].at + self.ttl_s < self._clock():
            raise not_found(request_id, self.ttl_s)
        decision, old = entry
        if not same_owner(decision.owner, owner):
            raise not_yours(request_id)
        new = score_units(score)
        self.counters.add_fields(feedback_fields(decision.tier, decision.complexity, old, new), decision.period)
        self._decisions[request_id] = (decision, new)
        return FeedbackResult(
            request_id, score, tier=decision.tier, complexity=decision.complexity, period=decision.period,
            replaced=old is not None,
        )  # fmt: skip
