"""Pure: a classification + the routing policy -> RouteDecision(tier, model, complexity, reason, A/B draw).

The seed's A/B split hashed the query with Python's built-in string hash, salted per process: two replicas, or
one replica after a restart, would send the same query to different models. ``stable_draw`` uses blake2b of
the normalised key instead, so the draw is the same everywhere, and a MEDIUM query goes to the small tier when
``draw < ab_test_ratio``: raising the ratio only ever moves queries from large to small (a monotone ramp).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from routeproxy.errors import ModelNotFound, preview
from routeproxy.routing.classify import Classification, Complexity
from routeproxy.settings import Settings, StickyKey, Tier
from routeproxy.wire.parse import Hints

_TWO_TO_64 = float(2**64)


def stable_draw(key: str) -> float:
    """A number in [0, 1) that depends only on the normalised key: case and runs of white space do not count."""
    normalised = " ".join(key.lower().split())
    digest = hashlib.blake2b(normalised.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _TWO_TO_64


class Reason(enum.StrEnum):
    """Why a request went to its tier."""

    PINNED = "pinned"  # the request named a tier's model id
    ROUTING_DISABLED = "routing_disabled"  # every request to the large tier (the seed's baseline)
    CLASSIFY_FAILED = "classify_failed"  # the classifier raised: the large tier, the safe side
    CLASSIFIED = "classified"  # SIMPLE or COMPLEX: the class decides
    AB_TEST = "ab_test"  # MEDIUM: the sticky key's draw against ab_test_ratio
    PASSTHROUGH = "passthrough"  # an endpoint passed through to routing.passthrough_tier (embeddings, ...)
    CASCADE = "cascade"  # MEDIUM in cascade mode: the small tier first, its answer decides


@dataclass(frozen=True, slots=True)
class RouteDecision:
    tier: Tier
    complexity: Complexity | None
    reason: Reason
    classification: Classification | None = None
    ab_draw: float | None = None
    ab_ratio: float | None = None
    classify_error: str | None = None
    detail: str | None = None  # CLASSIFIED: the signal that pushed hardest; AB_TEST: the draw against the ratio
    sticky: str | None = None  # what the A/B draw hashes (also what "asked again" compares); None when pinned
    cascade: bool = False  # cascade mode: the small tier answers first and its answer is checked

    @property
    def why(self) -> str:
        """The reason as the x-routeproxy-reason header, the log line and explain show it."""
        return self.detail or self.reason.value

    @property
    def score(self) -> float | None:
        return None if self.classification is None else self.classification.score


def decide(
    classification: Classification, *, enabled: bool, ab_test_ratio: float, sticky: str, cascade: bool = False
) -> RouteDecision:
    """SIMPLE -> small, COMPLEX -> large, MEDIUM -> small when the sticky key's draw is under the ratio.

    With routing disabled every request goes to the large tier (the seed's baseline), but the complexity is
    still recorded so the baseline's mix is measured before routing is switched on. In cascade mode every MEDIUM
    request goes to the small tier first too (its answer, not a draw, decides whether the large tier is asked).
    """
    complexity = classification.complexity
    if not enabled:
        return RouteDecision(Tier.LARGE, complexity, Reason.ROUTING_DISABLED, classification, sticky=sticky)
    if complexity is Complexity.SIMPLE or complexity is Complexity.COMPLEX:
        tier = Tier.SMALL if complexity is Complexity.SIMPLE else Tier.LARGE
        top = _top_signal(classification, complexity.value)
        small_first = cascade and tier is Tier.SMALL
        return RouteDecision(
            tier, complexity, Reason.CLASSIFIED, classification, detail=top, sticky=sticky, cascade=small_first
        )
    if cascade:
        return RouteDecision(Tier.SMALL, complexity, Reason.CASCADE, classification, sticky=sticky, cascade=True)
    draw = stable_draw(sticky)
    if draw < ab_test_ratio:
        tier, detail = Tier.SMALL, f"ab:{draw:.2f}<{ab_test_ratio:.2f}"
    else:
        tier, detail = Tier.LARGE, f"ab:{draw:.2f}>={ab_test_ratio:.2f}"
    return RouteDecision(
        tier, complexity, Reason.AB_TEST, classification, ab_draw=draw, ab_ratio=ab_test_ratio, detail=detail,
        sticky=sticky,
    )  # fmt: skip


def pinned(tier: Tier) -> RouteDecision:
    return RouteDecision(tier, None, Reason.PINNED)


def _top_signal(classification: Classification, default: str) -> str:
    """The signal that pushed hardest towards the class chosen: the most negative weight for SIMPLE."""
    signals = classification.signals
    if not signals:
        return default
    if classification.complexity is Complexity.SIMPLE:
        return str(min(signals, key=lambda signal: signal.weight))
    return str(max(signals, key=lambda signal: signal.weight))


class ClassifierLike(Protocol):
    def classify(
        self,
        body: Mapping[str, Any],
        *,
        query_type: str | None = None,
        entities: Mapping[str, Any] | None = None,
    ) -> Classification: ...


class Router:
    """Turns a parsed request into a decision: pinned by model id, or classified and routed."""

    def __init__(self, settings: Settings, classifier: ClassifierLike) -> None:
        self.settings = settings
        self.classifier = classifier
        self.auto_model = settings.routing.auto_model
        self._pinned = {config.model: tier for tier, config in settings.tiers.items()}

    def route(
        self,
        body: Mapping[str, Any],
        hints: Hints,
        headers: Mapping[str, str],
        *,
        enabled: bool,
        ab_test_ratio: float,
        cascade: bool = False,
    ) -> RouteDecision:
        model = body.get("model")
        if model is not None and model != self.auto_model:
            tier = self._pinned.get(model)
            if tier is None:
                known = ", ".join([self.auto_model, *self._pinned])
                raise ModelNotFound(
                    f"The model `{preview(model)}` does not exist. Use one of: {known}.",
                    param="model",
                    code="model_not_found",
                )
            return pinned(tier)
        try:
            classification = self.classifier.classify(body, query_type=hints.query_type, entities=hints.entities)
        except Exception as exc:
            return RouteDecision(Tier.LARGE, None, Reason.CLASSIFY_FAILED, classify_error=preview(repr(exc)))
        return decide(
            classification,
            enabled=enabled,
            ab_test_ratio=ab_test_ratio,
            sticky=self._sticky_key(body, headers, classification.query),
            cascade=cascade,
        )

    def passthrough(self, model: object) -> RouteDecision:
        """A passed-through endpoint: a tier's model id pins that tier; anything else (`auto`, no model, a model of
        the upstream's own such as an embedding model) goes to ``routing.passthrough_tier``."""
        tier = self._pinned.get(model) if isinstance(model, str) else None
        if tier is not None:
            return pinned(tier)
        return RouteDecision(self.settings.routing.passthrough_tier, None, Reason.PASSTHROUGH)

    def _sticky_key(self, body: Mapping[str, Any], headers: Mapping[str, str], query: str) -> str:
        sticky = self.settings.routing.sticky_key
        if sticky is StickyKey.USER:
            user = body.get("user")
            if isinstance(user, str) and user:
                return "user:" + user
        elif sticky is StickyKey.HEADER:
            value = headers.get(self.settings.routing.sticky_header)
            if value:
                return "header:" + value
        return query


def explain(decision: RouteDecision, settings: Settings, *, enabled: bool, ab_test_ratio: float) -> dict[str, Any]:
    """The decision as JSON, for the explain endpoint and `routeproxy explain`."""
    classification = decision.classification
    return {
        "tier": decision.tier.value,
        "label": settings.tiers[decision.tier].label,
        "model": settings.tiers[decision.tier].model,
        "complexity": None if decision.complexity is None else decision.complexity.value,
        "score": None if classification is None else round(classification.score, 4),
        "reason": decision.why,
        "signals": []
        if classification is None
        else [
            {"name": signal.name, "detail": signal.detail, "weight": signal.weight} for signal in classification.signals
        ],
        "ab_draw": None if decision.ab_draw is None else round(decision.ab_draw, 4),
        "ab_test_ratio": ab_test_ratio,
        "routing_enabled": enabled,
        "classify_error": decision.classify_error,
    }


def response_headers(decision: RouteDecision, label: str, model: str) -> Mapping[str, str]:
    """The decision as response headers; ``label`` names the tier that answers (it differs after a fallback).

    Tiers and complexities carry the names the stats, metrics and logs use: the tier's label (``3b``, ``8b``)
    and ``simple`` / ``medium`` / ``complex``.
    """
    headers = {
        "x-routeproxy-tier": label,
        "x-routeproxy-model": model,
        "x-routeproxy-reason": decision.why,
    }
    if decision.complexity is not None:
        headers["x-routeproxy-complexity"] = decision.complexity.value
    return headers
