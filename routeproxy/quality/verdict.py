"""Pure: the verdict on 3B against 8B, and what stats show of it (``compare``), from the confidence sequences of
intervals.py.

The verdict never says more than the sequence of the relative degradation: ``pass`` when it lies wholly below
``review_at``, ``rollback`` when wholly above ``rollback_at``, ``review`` when within [review_at, rollback_at];
otherwise, or with fewer than ``min_feedback`` events in a tier, ``insufficient_data``. ``verdict_of`` decides it
from the tests at the two thresholds alone (what the controller and ``routeproxy quality simulate`` run: a few
microseconds); ``compare`` adds the sequences for people to read, and its verdict is ``verdict_of``'s.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from routeproxy.quality.intervals import (
    Interval,
    Pair,
    Tally,
    Thresholds,
    degradation_sequence,
    difference_sequence,
    mean_sequence,
)

METHOD = "normal_mixture_confidence_sequence"
DEFAULTS = Thresholds()


class Verdict(enum.StrEnum):
    PASS = "pass"
    REVIEW = "review"
    ROLLBACK = "rollback"
    INSUFFICIENT_DATA = "insufficient_data"


# Most severe first: what ``worst`` picks when two signals disagree. A pass and an insufficient_data make an
# insufficient_data: a pass needs every signal in use to support it.
_SEVERITY = (Verdict.ROLLBACK, Verdict.REVIEW, Verdict.INSUFFICIENT_DATA, Verdict.PASS)


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    given = set(verdicts)
    return next((verdict for verdict in _SEVERITY if verdict in given), Verdict.INSUFFICIENT_DATA)


def _insufficiency(small: Tally, large: Tally, thresholds: Thresholds) -> str | None:
    """Why there is no verdict at all yet, or None."""
    if min(small.count, large.count) < thresholds.min_feedback:
        return (
            f"{small.count} feedback events on 3b and {large.count} on 8b; "
            f"a verdict needs {thresholds.min_feedback} on each"
        )
    if large.score_sum <= 0:
        return "the 8b mean score is 0: a relative degradation is undefined"
    if small.fractional and large.fractional and not small.variance and not large.variance:
        return "every score in both tiers is the same: no spread to measure an interval from"
    return None


def verdict_of(small: Tally, large: Tally, thresholds: Thresholds = DEFAULTS) -> Verdict:
    """The verdict, from the tests at the two thresholds alone: the same as judging ``degradation_sequence``."""
    if _insufficiency(small, large, thresholds) is not None:
        return Verdict.INSUFFICIENT_DATA
    pair = Pair(small, large, thresholds)
    centre = 1 - pair.m3 / pair.m8
    review, rollback = thresholds.review_at, thresholds.rollback_at
    if centre < review:
        return Verdict.PASS if pair.ratio_excess(review) > 0 else Verdict.INSUFFICIENT_DATA
    if centre > rollback:
        return Verdict.ROLLBACK if pair.ratio_excess(rollback) > 0 else Verdict.INSUFFICIENT_DATA
    if pair.ratio_excess(review) >= 0 and pair.ratio_excess(rollback) >= 0:
        return Verdict.REVIEW
    return Verdict.INSUFFICIENT_DATA


@dataclass(frozen=True, slots=True)
class TierEstimate:
    count: int
    mean: float | None
    interval: Interval | None  # the mean's confidence sequence (two events at least)
    thumbs_up: int | None  # None once any score was fractional


@dataclass(frozen=True, slots=True)
class Comparison:
    """The small tier against the large one. ``difference`` is q3 - q8 (negative when 3B is worse);
    ``degradation`` is (q8 - q3) / q8 (positive when 3B is worse)."""

    method: str
    small: TierEstimate
    large: TierEstimate
    difference: float | None
    difference_interval: Interval | None
    degradation: float | None
    degradation_interval: Interval | None
    verdict: Verdict
    reason: str
    df: float | None = None  # kept for the stats JSON's shape: a confidence sequence has no degrees of freedom


def estimate(tally: Tally, thresholds: Thresholds = DEFAULTS) -> TierEstimate:
    mean = tally.mean
    thumbs_up = tally.successes if tally.fractional == 0 else None
    if mean is None:
        return TierEstimate(0, None, None, thumbs_up)
    interval = mean_sequence(tally, thresholds) if tally.count >= 2 else None
    return TierEstimate(tally.count, mean, interval, thumbs_up)


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def judge(degradation: Interval, thresholds: Thresholds) -> tuple[Verdict, str]:
    """The verdict a sequence of the relative degradation supports, and why."""
    shown = (
        f"the {_pct(thresholds.confidence)} confidence sequence of the degradation is {_pct(degradation.low)} to "
        + _pct(degradation.high)
    )
    if degradation.high < thresholds.review_at:
        return Verdict.PASS, f"{shown}, wholly below {_pct(thresholds.review_at)}"
    if degradation.low > thresholds.rollback_at:
        return Verdict.ROLLBACK, f"{shown}, wholly above {_pct(thresholds.rollback_at)}"
    if degradation.low >= thresholds.review_at and degradation.high <= thresholds.rollback_at:
        return Verdict.REVIEW, f"{shown}, within {_pct(thresholds.review_at)}..{_pct(thresholds.rollback_at)}"
    straddled = [
        _pct(bound)
        for bound in (thresholds.review_at, thresholds.rollback_at)
        if degradation.low <= bound <= degradation.high
    ]
    return Verdict.INSUFFICIENT_DATA, f"{shown}, which straddles {' and '.join(straddled)}"


def compare(small: Tally, large: Tally, thresholds: Thresholds = DEFAULTS) -> Comparison:
    """3B against 8B on one population; never a verdict the data cannot support."""
    estimates = (estimate(small, thresholds), estimate(large, thresholds))
    missing = _insufficiency(small, large, thresholds)
    if missing is not None:
        return Comparison(METHOD, *estimates, None, None, None, None, Verdict.INSUFFICIENT_DATA, missing)
    m3, m8 = small.score_sum / small.count, large.score_sum / large.count
    degradation = degradation_sequence(small, large, thresholds)
    _, reason = judge(degradation, thresholds)
    return Comparison(
        METHOD, *estimates, m3 - m8, difference_sequence(small, large, thresholds), (m8 - m3) / m8, degradation,
        verdict_of(small, large, thresholds), reason,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ImplicitTally:
    """Signals counted without asking anyone, per tier: requests and the ones that went badly."""

    requests: int = 0
    upstream_errors: int = 0
    disconnects: int = 0
    regenerations: int = 0

    def as_tally(self) -> Tally:
        """Each request as a binary event: 0 when it failed, was abandoned or was asked again. The three can
        overlap on one request, so the bad count is capped at the request count."""
        bad = min(self.requests, self.upstream_errors + self.disconnects + self.regenerations)
        good = self.requests - bad
        return Tally(count=self.requests, score_sum=good, score_sq_sum=good)
