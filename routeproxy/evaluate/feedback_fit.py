"""Fit the answer check's weights and threshold on the operator's own decisions and feedback.

Rows are cascade decisions (from Redis, where each decision's ``check`` record sits next to its feedback
``score``, or from a file of rows exported earlier): the check's activations (numbers only), its verdict, whether
the client got the small tier's answer, whether that answer was explored (kept though the check would escalate),
and the rating the answer got. Rows are put in time order; the last ``holdout`` share of the period is held out of
everything, so its before/after figures are honest; the rest is the training part, cut into ``folds`` blocks of
consecutive rows for a cross-validated estimate.

What the ratings can say. Feedback rates the answer the client got: the small tier's when the check kept it (or
it was explored, or the large tier failed), the large tier's when it escalated. APGR needs both qualities per
prompt; here the large tier's is its mean rating over the training part (every prompt counted as if its large
answer were rated at that mean), so the figures run above the per-prompt APGR of the development pairs, but rank
weightings alike and before and after are measured the same way. The small answers of escalated requests are never
rated, so without exploration the figures cover only what the check kept; with ``cascade.explore_share`` the
explored answers stand in for the escalated ones, each weighted by the inverse of the share explored (inverse
propensity).

The fit: coordinate ascent from the rule set's weights, one signal at a time over a grid (the rule set's weight
times 0 to 3, or 0 to 3 for a signal shipped at 0; never negative: every signal is a sign of a weak answer), to
the highest APGR on the training part; answer length (``short``) is the anchor (APGR depends only on the order).
The fitted weights are proposed only when their cross-validated APGR beats the rule set's; the threshold is set so
the training part's escalated share stays what the rule set escalated (or ``share``). Nothing is applied: the
result is a rules file to review.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

SCALES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
UNIT_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0)
ANCHOR = "short"
PASSES = 3
BOOTSTRAP_DRAWS = 400


class FeedbackRowError(ValueError):
    """A row that cannot be used; the message says where."""


@dataclass(frozen=True, slots=True)
class FeedbackRow:
    request_id: str
    at: float  # epoch seconds
    rating: float  # 0..1, of the answer the client got
    small: bool  # the client got the small tier's answer (its rating is the small answer's)
    escalate: bool  # the check's verdict at the time
    explored: bool  # kept on the small tier though the check would escalate (cascade.explore_share)
    rules: str
    activations: Mapping[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        check = {"rules": self.rules, "escalate": self.escalate, "explored": self.explored, "small": self.small,
                 "activations": dict(self.activations)}  # fmt: skip
        return {"request_id": self.request_id, "at": self.at, "rating": self.rating, "check": check}


def row_from(request_id: str, at: float, rating: float, check: Mapping[str, Any]) -> FeedbackRow:
    activations = check.get("activations")
    if not isinstance(activations, Mapping) or not all(
        isinstance(value, (int, float)) and not isinstance(value, bool) for value in activations.values()
    ):
        raise FeedbackRowError("check.activations: expected signal names -> numbers")
    if not 0.0 <= rating <= 1.0:
        raise FeedbackRowError(f"rating {rating!r}: expected 0 to 1")
    return FeedbackRow(
        request_id=request_id,
        at=at,
        rating=rating,
        small=check.get("small") is True,
        escalate=check.get("escalate") is True,
        explored=check.get("explored") is True,
        rules=str(check.get("rules", "")),
        activations={str(name): float(value) for name, value in activations.items()},
    )


def read_rows(lines: Iterable[str], source: str) -> list[FeedbackRow]:
    """Rows exported earlier: JSON lines ``{"request_id", "at", "rating", "check": {...}}``."""
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
            rows.append(row_from(str(record["request_id"]), float(record["at"]), float(record["rating"]),
                                 record["check"]))  # fmt: skip
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise FeedbackRowError(f"{source}: line {number}: {exc}") from None
    return rows


@dataclass(frozen=True, slots=True)
class _Rated:
    """A row whose small answer was rated, as the fit uses it."""

    activations: Mapping[str, float]
    small: float
    weight: float  # inverse propensity of its small answer being rated


@dataclass(frozen=True, slots=True)
class Part:
    """The rated rows of a stretch of the period and the large tier's mean rating there."""

    rated: tuple[_Rated, ...]
    large: float

    def apgr(self, weights: Mapping[str, float]) -> float:
        scores = [_logit(row.activations, weights) for row in self.rated]
        return weighted_apgr(scores, [row.small for row in self.rated], self.large, [row.weight for row in self.rated])


def part_of(rows: Sequence[FeedbackRow], large: float | None = None) -> Part:
    """Rated rows (kept, explored, escalations that fell back), explored ones weighted by 1 / the share of the
    escalate verdicts explored; ``large``: the large tier's mean rating (default: these rows')."""
    escalate = sum(1 for row in rows if row.escalate)
    explored = sum(1 for row in rows if row.explored)
    weight = escalate / explored if explored else 1.0
    ratings = [row.rating for row in rows if not row.small]
    mean = large if large is not None else statistics.fmean(ratings) if ratings else 1.0
    rated = tuple(
        _Rated(row.activations, row.rating, weight if row.explored else 1.0)
        for row in rows
        if row.small and (row.explored or not row.escalate)
    )
    return Part(rated, mean)


def _logit(activations: Mapping[str, float], weights: Mapping[str, float]) -> float:
    return math.fsum(value * weights.get(name, 0.0) for name, value in activations.items())


def weighted_apgr(scores: Sequence[float], small: Sequence[float], large: float, weights: Sequence[float]) -> float:
    """APGR with row weights: the highest scores escalate first, tied scores cross in one straight step (as
    routeproxy.evaluate.metrics does without weights); NaN when there is no gap to recover."""
    total = sum(weights)
    gap = sum(weight * (large - value) for weight, value in zip(weights, small, strict=True))
    if not total or gap <= 0:
        return math.nan
    order = sorted(range(len(scores)), key=lambda index: -scores[index])
    area = c0 = p0 = gained = share = 0.0
    for position, index in enumerate(order):
        gained += weights[index] * (large - small[index])
        share += weights[index]
        if position + 1 == len(order) or scores[order[position + 1]] != scores[index]:
            c1, p1 = share / total, gained / gap
            area += (c1 - c0) * (p0 + p1) / 2
            c0, p0 = c1, p1
    return area


def fit_weights(part: Part, shipped: Mapping[str, float]) -> dict[str, float]:
    """Coordinate ascent from ``shipped`` over each signal's grid, to the highest APGR on ``part``."""
    names = sorted({name for row in part.rated for name, value in row.activations.items() if value} - {ANCHOR})
    weights = dict(shipped)
    best = part.apgr(weights)
    if math.isnan(best):
        return weights
    for _ in range(PASSES):
        moved = False
        for name in names:
            base = shipped.get(name, 0.0)
            grid = [base * scale for scale in SCALES] if base else list(UNIT_WEIGHTS)
            for value in grid:
                candidate = {**weights, name: value}
                score = part.apgr(candidate)
                if score > best + 1e-9:
                    best, weights, moved = score, candidate, True
        if not moved:
            break
    return weights


def blocks(count: int, folds: int) -> list[range]:
    size = max(1, math.ceil(count / folds))
    return [range(start, min(count, start + size)) for start in range(0, count, size)]


@dataclass(frozen=True, slots=True)
class Band:
    value: float
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class FeedbackFit:
    rules: str
    rows: int  # with a check record and a rating
    train_rows: int
    holdout_rows: int
    rated_train: int  # rows whose small answer was rated
    rated_holdout: int
    explored: int
    covers: str  # "kept answers only" or "every verdict (explored answers weighted)"
    large_mean: float
    cv_before: float
    cv_after: float
    accepted: bool  # the fitted weights beat the rule set's when cross-validated
    before: Band
    after: Band
    difference: Band  # after - before, paired
    share_before: float  # escalated share on the holdout, at the rule set's threshold
    share_after: float
    threshold: float
    weights: Mapping[str, float]  # the proposal (the rule set's when not accepted)
    changed: Mapping[str, tuple[float, float]]  # signal -> (rule set's weight, fitted)
    period: tuple[float, float, float]  # first row, start of the holdout, last row (epoch seconds)


def fit_feedback(
    rows: Sequence[FeedbackRow],
    shipped: Mapping[str, float],
    bias: float,
    threshold: float,
    *,
    rules: str = "",
    holdout: float = 0.2,
    folds: int = 5,
    share: float | None = None,
    draws: int = BOOTSTRAP_DRAWS,
) -> FeedbackFit:
    ordered = sorted(rows, key=lambda row: row.at)
    cut = max(1, min(len(ordered) - 1, round(len(ordered) * (1 - holdout))))
    train, test = ordered[:cut], ordered[cut:]
    whole_train = part_of(train)
    before_cv, after_cv = [], []
    for block in blocks(len(train), folds):
        inside = [row for index, row in enumerate(train) if index not in block]
        fitted = fit_weights(part_of(inside), shipped)
        held = part_of([train[index] for index in block], whole_train.large)
        fold_before, fold_after = held.apgr(shipped), held.apgr(fitted)
        if not (math.isnan(fold_before) or math.isnan(fold_after)):
            before_cv.append(fold_before)
            after_cv.append(fold_after)
    cv_before = statistics.fmean(before_cv) if before_cv else math.nan
    cv_after = statistics.fmean(after_cv) if after_cv else math.nan
    accepted = bool(after_cv) and cv_after > cv_before
    weights = fit_weights(whole_train, shipped) if accepted else dict(shipped)
    target = share if share is not None else _share(train, shipped, bias, threshold)
    new_threshold = _threshold_for(train, weights, bias, target) if accepted or share is not None else threshold
    tested = part_of(test, whole_train.large)
    before, after, difference = _bands(tested, shipped, weights, draws)
    return FeedbackFit(
        rules=rules,
        rows=len(ordered),
        train_rows=len(train),
        holdout_rows=len(test),
        rated_train=len(whole_train.rated),
        rated_holdout=len(tested.rated),
        explored=sum(1 for row in ordered if row.explored),
        covers="every verdict (explored answers weighted)"
        if any(row.explored for row in train)
        else "kept answers only",
        large_mean=whole_train.large,
        cv_before=cv_before,
        cv_after=cv_after,
        accepted=accepted,
        before=before,
        after=after,
        difference=difference,
        share_before=_share(test, shipped, bias, threshold),
        share_after=_share(test, weights, bias, new_threshold),
        threshold=new_threshold,
        weights=weights,
        changed={
            name: (shipped.get(name, 0.0), value) for name, value in weights.items() if value != shipped.get(name, 0.0)
        },
        period=(ordered[0].at, test[0].at if test else ordered[-1].at, ordered[-1].at),
    )


def _score(row: FeedbackRow, weights: Mapping[str, float], bias: float) -> float:
    logit = bias + _logit(row.activations, weights)
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, logit))))


def _share(rows: Sequence[FeedbackRow], weights: Mapping[str, float], bias: float, threshold: float) -> float:
    return sum(1 for row in rows if _score(row, weights, bias) >= threshold) / len(rows) if rows else math.nan


def _threshold_for(rows: Sequence[FeedbackRow], weights: Mapping[str, float], bias: float, share: float) -> float:
    """The threshold at which ``share`` of ``rows`` escalate (score >= threshold), rounded down to 4 places."""
    scores = sorted((_score(row, weights, bias) for row in rows), reverse=True)
    count = round(share * len(scores))
    if count <= 0:
        return 1.0
    return math.floor(scores[min(count, len(scores)) - 1] * 10_000) / 10_000


def _bands(part: Part, before: Mapping[str, float], after: Mapping[str, float], draws: int) -> tuple[Band, Band, Band]:
    """APGR before and after on ``part``, with 2.5-97.5 % bootstrap bands (rows resampled, paired)."""
    rng = random.Random(0)  # seeded: the same file gives the same bands
    found: list[tuple[float, float]] = []
    rated = part.rated
    for _ in range(draws if rated else 0):
        sample = Part(tuple(rated[rng.randrange(len(rated))] for _ in rated), part.large)
        pair = (sample.apgr(before), sample.apgr(after))
        if not any(math.isnan(value) for value in pair):
            found.append(pair)

    def band(value: float, values: list[float]) -> Band:
        if not values:
            return Band(value, math.nan, math.nan)
        values.sort()
        return Band(value, values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))])

    x, y = part.apgr(before), part.apgr(after)
    return (
        band(x, [a for a, _ in found]),
        band(y, [b for _, b in found]),
        band(y - x, [b - a for a, b in found]),
    )
