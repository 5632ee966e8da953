"""Pure: feedback tallies of the two tiers -> intervals, the small tier's relative degradation, and a verdict.

The methods, all two-sided at ``Thresholds.confidence`` (95 % by default):

* One tier's binary feedback (thumbs, or scores that are all exactly 0 or 1): the Wilson score interval.
* The difference ``q3 - q8`` of two binary tallies: Newcombe's hybrid score interval (method 10 of Newcombe,
  Statistics in Medicine 17:873-890, 1998), built from the two Wilson intervals. It keeps its coverage near 0 and
  1, where thumbs data live, where the Wald interval does not.
* As soon as either tier has a fractional score: Welch's t interval for the difference of means, with the
  Welch-Satterthwaite degrees of freedom; the t quantile comes from inverting Student's t distribution function
  (regularised incomplete beta, continued fraction), exact to ~1e-9, without scipy. One tier's mean gets the
  one-sample t interval.
* The relative degradation ``d = (q8 - q3) / q8`` gets the difference interval divided by the large tier's mean,
  ``[-U, -L] / q8``. Why not Fieller: by the delta method, Var(d) is about (Var q3 + (1 - d)^2 Var q8) / q8^2,
  while dividing the difference interval uses (Var q3 + Var q8) / q8^2, which is never smaller, so near the
  thresholds (d = 0.05 .. 0.10) this interval is a few per cent wider than the ratio's own: conservative,
  which is the safe side for a rollout. And it is built from the score intervals above, which behave at p = 1,
  where a Fieller interval on Wald variances collapses (a tier with only thumbs up has variance 0).

The verdict never says more than its interval: ``pass`` when the whole interval is below ``review_at``,
``rollback`` when it is wholly above ``rollback_at``, ``review`` when it lies within [review_at, rollback_at];
otherwise, or with fewer than ``min_feedback`` events in a tier, ``insufficient_data``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist


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


@dataclass(frozen=True, slots=True)
class Interval:
    low: float
    high: float

    def scaled(self, factor: float) -> Interval:
        """The interval times ``factor`` (a negative factor swaps the ends)."""
        ends = sorted((self.low * factor, self.high * factor))
        return Interval(ends[0], ends[1])


@dataclass(frozen=True, slots=True)
class Tally:
    """One tier's feedback: how many events, the sum and sum of squares of their scores in [0, 1], and how many
    were neither exactly 0 nor exactly 1 (any such score switches the analysis from proportions to means)."""

    count: int = 0
    score_sum: float = 0.0
    score_sq_sum: float = 0.0
    fractional: int = 0

    @classmethod
    def of(cls, scores: Iterable[float]) -> Tally:
        values = list(scores)
        return cls(
            count=len(values),
            score_sum=sum(values),
            score_sq_sum=sum(value * value for value in values),
            fractional=sum(1 for value in values if value not in (0.0, 1.0)),
        )

    @property
    def mean(self) -> float | None:
        return self.score_sum / self.count if self.count else None

    @property
    def variance(self) -> float | None:
        """The sample variance (n - 1 in the denominator); None below two events."""
        if self.count < 2:
            return None
        spread = self.score_sq_sum - self.score_sum * self.score_sum / self.count
        return max(0.0, spread) / (self.count - 1)

    @property
    def successes(self) -> int:
        """Thumbs up, when every score is 0 or 1."""
        return round(self.score_sum)


@dataclass(frozen=True, slots=True)
class Thresholds:
    review_at: float = 0.05
    rollback_at: float = 0.10
    min_feedback: int = 30  # events per tier before any verdict
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if not 0 <= self.review_at <= self.rollback_at:
            raise ValueError("expected 0 <= review_at <= rollback_at")
        if self.min_feedback < 2:
            raise ValueError("min_feedback must be at least 2 (a variance needs two events)")
        if not 0.5 < self.confidence < 1:
            raise ValueError("confidence must be between 0.5 and 1")


def z_quantile(confidence: float) -> float:
    """The two-sided standard normal quantile: 1.959964 for 0.95."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(successes: int, count: int, confidence: float = 0.95) -> Interval:
    """Wilson's score interval for a proportion (Newcombe 1998, single proportion, method 3)."""
    if count <= 0:
        return Interval(0.0, 1.0)
    z = z_quantile(confidence)
    p = successes / count
    denominator = 1 + z * z / count
    centre = (p + z * z / (2 * count)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / count + z * z / (4 * count * count))
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def newcombe(
    successes1: int, count1: int, successes2: int, count2: int, confidence: float = 0.95
) -> tuple[float, Interval]:
    """p1 - p2 and Newcombe's hybrid score interval for it (1998, method 10)."""
    p1, p2 = successes1 / count1, successes2 / count2
    first, second = wilson(successes1, count1, confidence), wilson(successes2, count2, confidence)
    difference = p1 - p2
    low = difference - math.sqrt((p1 - first.low) ** 2 + (second.high - p2) ** 2)
    high = difference + math.sqrt((first.high - p1) ** 2 + (p2 - second.low) ** 2)
    return difference, Interval(low, high)


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 400):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student's t distribution function, for any df > 0 (fractional too)."""
    tail = 0.5 * incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(probability: float, df: float) -> float:
    """The inverse of ``t_cdf`` by bisection: 12.7062 for (0.975, 1), 1.9840 for (0.975, 100)."""
    if not 0.0 < probability < 1.0 or df <= 0:
        raise ValueError("expected 0 < probability < 1 and df > 0")
    if probability < 0.5:
        return -t_quantile(1.0 - probability, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < probability:
        low, high = high, high * 2
    for _ in range(200):
        middle = (low + high) / 2
        if t_cdf(middle, df) < probability:
            low = middle
        else:
            high = middle
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2


def welch(
    mean1: float, variance1: float, count1: int, mean2: float, variance2: float, count2: int, confidence: float = 0.95
) -> tuple[float, Interval, float]:
    """mean1 - mean2, Welch's t interval for it, and the Welch-Satterthwaite degrees of freedom."""
    share1, share2 = variance1 / count1, variance2 / count2
    standard_error = math.sqrt(share1 + share2)
    difference = mean1 - mean2
    if standard_error == 0:
        return difference, Interval(difference, difference), math.inf
    df = (share1 + share2) ** 2 / (share1**2 / (count1 - 1) + share2**2 / (count2 - 1))
    half = t_quantile(0.5 + confidence / 2, df) * standard_error
    return difference, Interval(difference - half, difference + half), df


@dataclass(frozen=True, slots=True)
class TierEstimate:
    count: int
    mean: float | None
    interval: Interval | None  # Wilson for binary feedback, the one-sample t interval for scores
    thumbs_up: int | None  # None once any score was fractional


@dataclass(frozen=True, slots=True)
class Comparison:
    """The small tier against the large one. ``difference`` is q3 - q8 (negative when 3B is worse);
    ``degradation`` is (q8 - q3) / q8 (positive when 3B is worse)."""

    method: str  # "newcombe_hybrid_score" or "welch_t"
    small: TierEstimate
    large: TierEstimate
    difference: float | None
    difference_interval: Interval | None
    degradation: float | None
    degradation_interval: Interval | None
    verdict: Verdict
    reason: str
    df: float | None = None  # Welch's degrees of freedom


def _estimate(tally: Tally, binary: bool, confidence: float) -> TierEstimate:
    mean = tally.mean
    if mean is None:
        return TierEstimate(0, None, None, None if not binary else 0)
    if binary:
        return TierEstimate(tally.count, mean, wilson(tally.successes, tally.count, confidence), tally.successes)
    variance = tally.variance
    if variance is None:
        return TierEstimate(tally.count, mean, None, None)
    half = t_quantile(0.5 + confidence / 2, tally.count - 1) * math.sqrt(variance / tally.count)
    return TierEstimate(tally.count, mean, Interval(max(0.0, mean - half), min(1.0, mean + half)), None)


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def judge(degradation: Interval, thresholds: Thresholds) -> tuple[Verdict, str]:
    """The verdict an interval of the relative degradation supports, and why."""
    shown = f"the {_pct(thresholds.confidence)} interval of the degradation is {_pct(degradation.low)} to " + _pct(
        degradation.high
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


def compare(small: Tally, large: Tally, thresholds: Thresholds = Thresholds()) -> Comparison:
    """3B against 8B on one population; never a verdict the data cannot support."""
    binary = small.fractional == 0 and large.fractional == 0
    method = "newcombe_hybrid_score" if binary else "welch_t"
    confidence = thresholds.confidence
    estimates = (_estimate(small, binary, confidence), _estimate(large, binary, confidence))

    def insufficient(reason: str) -> Comparison:
        return Comparison(method, *estimates, None, None, None, None, Verdict.INSUFFICIENT_DATA, reason)

    fewest = min(small.count, large.count)
    if fewest < thresholds.min_feedback:
        return insufficient(
            f"{small.count} feedback events on 3b and {large.count} on 8b; "
            f"a verdict needs {thresholds.min_feedback} on each"
        )
    df: float | None = None
    if binary:
        difference, interval = newcombe(small.successes, small.count, large.successes, large.count, confidence)
    else:
        small_variance, large_variance = small.variance or 0.0, large.variance or 0.0
        if small_variance == 0 and large_variance == 0:
            return insufficient("every score in both tiers is the same: no spread to measure an interval from")
        difference, interval, df = welch(
            small.score_sum / small.count, small_variance, small.count,
            large.score_sum / large.count, large_variance, large.count, confidence,
        )  # fmt: skip
    large_mean = large.score_sum / large.count
    if large_mean <= 0:
        return insufficient("the 8b mean score is 0: a relative degradation is undefined")
    degradation = -difference / large_mean
    degradation_interval = interval.scaled(-1 / large_mean)
    verdict, reason = judge(degradation_interval, thresholds)
    return Comparison(
        method, *estimates, difference, interval, degradation, degradation_interval, verdict, reason, df=df
    )


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
