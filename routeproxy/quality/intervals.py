"""Pure: feedback tallies of the two tiers -> always-valid intervals of each tier's mean, of the difference and of
the small tier's relative degradation (the verdict on them is verdict.py's). The controller and the dashboard read
them again after every batch of feedback, so every interval here is a confidence sequence: at the confidence level
(95 % by default) it holds at every look at once, however often it is read and whenever the reader acts on it. A
fixed-sample interval read that way passes 3B at the review line in about one run in five;
``routeproxy quality simulate`` measures both.

The method: the normal-mixture confidence sequence (Robbins 1970; Howard, Ramdas, McAuliffe, Sekhon,
"Time-uniform, nonparametric, nonasymptotic confidence sequences", Annals of Statistics 49(2):1055-1080, 2021,
the two-sided normal mixture and its best tuning), on a score statistic with an estimated variance, that is an
asymptotic confidence sequence (Waudby-Smith, Arbour, Sinha, Kennedy, Ramdas, "Time-uniform central limit theory and
asymptotic confidence sequences", Annals of Statistics 52(6), 2024). For two tiers it is the mixture sequential
probability ratio test of Johari, Pekelis, Walsh ("Always valid inference: continuous monitoring of A/B tests",
Operations Research 70(3), 2022), the test behind Optimizely's Stats Engine. A value x is in the sequence while

    |estimate - x| <= sqrt(V (1 + rho V) log((1 + rho V) / (rho V alpha^2)))

with V the estimate's variance under "the truth is x", alpha = 1 - confidence, and rho tuned so that the sequence
is narrowest where the verdict needs it (``mixture_rho``, ``Thresholds.information``).

The two comparisons spend their alpha unevenly: the end that lets a worse 3B pass (the degradation's upper end, the
difference's lower end) errs at most ``PASS_SIDE`` of alpha (1.25 % at 95 %), the end that rolls it back the rest
(3.75 %): passing a worse model costs the users, rolling back a good one only costs time. Each end is the boundary
above at twice its own share: the two-sided mixture's crossings at s > 0 are the one-sided (half-normal) mixture's
of Howard et al. up to a factor 2 Phi(s / sqrt(V + rho)) > 0.99 at the boundary. Each tier's mean splits evenly.

* The relative degradation d = (q8 - q3) / q8: d0 is in the sequence while the score statistic m3 - (1 - d0) m8
  passes the test above, its variance taken at the estimates that maximise the likelihood under q3 = (1 - d0) q8
  (Farrington & Manning, Statistics in Medicine 9:1447-1454, 1990). Variances at the hypothesis, not at the
  estimate, keep 30 thumbs up out of 30 from looking certain (the sample variance is 0 there), as the Wilson
  interval does for one proportion. Scores in [0, 1] use the same quasi-likelihood equations, each tier's variance
  scaled by its dispersion (sample variance over m (1 - m); 1 for thumbs).
* The difference q3 - q8: the same with the restricted estimates under q3 = q8 + delta (Farrington & Manning's
  cubic, solved in closed form).
* One tier's mean: every p with |m - p| within the boundary at the variance phi p (1 - p) / n.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from statistics import NormalDist


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
    were neither exactly 0 nor exactly 1 (any such score makes the tier's dispersion a measured one)."""

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

    @property
    def alpha(self) -> float:
        return 1 - self.confidence

    @property
    def information(self) -> float:
        """Where the sequences are tuned to be narrowest: the information (1 / variance, on the scale of the relative
        degradation) at which a fixed-sample interval at this confidence is +-``tightest_at`` wide."""
        return (NormalDist().inv_cdf(1 - self.alpha / 2) / self.tightest_at) ** 2

    @property
    def tightest_at(self) -> float:
        """The half-width (of the relative degradation) at which the sequences are tuned to be narrowest: half the
        wider of the review margin and the band between the thresholds (2.5 points by default)."""
        return max(self.review_at, self.rollback_at - self.review_at, 0.01) / 2


def mixture_rho(information: float, alpha: float) -> float:
    """The mixture's rho that makes the two-sided boundary at ``alpha`` narrowest at ``information``: Howard et al.'s
    closed form rho = I / (2 log(1/alpha) + log(1 + 2 log(1/alpha)))."""
    two_log = 2 * math.log(1 / alpha)
    return information / (two_log + math.log(1 + two_log))


def radius(variance: float, rho: float, alpha: float) -> float:
    """The sequence's half-width around an estimate with this variance: the two-sided normal-mixture boundary
    sqrt((I + rho) log((I + rho) / (rho alpha^2))) on the sum scale, divided by the information I = 1 / variance."""
    if variance <= 0:
        return 0.0
    scaled = rho * variance
    return math.sqrt(variance * (1 + scaled) * math.log((1 + scaled) / (scaled * alpha * alpha)))


def dispersion(tally: Tally) -> float:
    """Variance over m (1 - m): exactly 1 for thumbs; for scores from the sample, with one pseudo-score at 0 and
    one at 1, so that a handful of equal scores never claims that the tier has no spread."""
    if tally.fractional == 0:
        return 1.0
    count, total, squares = tally.count + 2, tally.score_sum + 1, tally.score_sq_sum + 1
    mean = total / count
    return max(0.0, squares - total * total / count) / (count - 1) / (mean * (1 - mean))


def restricted_ratio(
    small: Tally, large: Tally, ratio: float, weights: tuple[float, float] = (1.0, 1.0)
) -> tuple[float, float]:
    """(p3, p8) maximising the (quasi-)likelihood under p3 = ratio * p8 (Farrington & Manning 1990): the smaller
    root of ratio N p^2 - (ratio n3 + n8 + x3 + ratio x8) p + (x3 + x8) = 0. ``weights``: each tier's
    quasi-likelihood weight, 1 / its dispersion (a tier whose scores spread little pins its mean harder)."""
    w3, w8 = weights
    n3, n8, x3, x8 = w3 * small.count, w8 * large.count, w3 * small.score_sum, w8 * large.score_sum
    a = ratio * (n3 + n8)
    b = ratio * n3 + n8 + x3 + ratio * x8
    c = x3 + x8
    if a <= 0 or b <= 0:
        return 0.0, min(1.0, c / b) if b > 0 else 0.0
    p8 = 2 * c / (b + math.sqrt(max(0.0, b * b - 4 * a * c)))  # the smaller root, without cancellation
    p8 = min(max(p8, 0.0), 1.0)
    return min(ratio * p8, 1.0), p8


def restricted_difference(
    small: Tally, large: Tally, delta: float, weights: tuple[float, float] = (1.0, 1.0)
) -> tuple[float, float]:
    """(p3, p8) maximising the (quasi-)likelihood under p3 = p8 + delta: Farrington & Manning's closed-form root
    of the cubic (1990, after Miettinen & Nurminen 1985); ``weights`` as for ``restricted_ratio``."""
    p1, p2 = small.score_sum / small.count, large.score_sum / large.count
    theta = weights[1] * large.count / (weights[0] * small.count)
    a = 1 + theta
    b = -(1 + theta + p1 + theta * p2 + delta * (theta + 2))
    c = delta * delta + delta * (2 * p1 + theta + 1) + p1 + theta * p2
    d = -p1 * delta * (1 + delta)
    v = b**3 / (27 * a**3) - b * c / (6 * a * a) + d / (2 * a)
    u = math.copysign(math.sqrt(max(0.0, b * b / (9 * a * a) - c / (3 * a))), v)
    if u == 0:
        q1 = -b / (3 * a)
    else:
        q1 = 2 * u * math.cos((math.pi + math.acos(min(1.0, max(-1.0, v / u**3)))) / 3) - b / (3 * a)
    q1 = min(max(q1, max(0.0, delta)), min(1.0, 1.0 + delta))
    return q1, q1 - delta


PASS_SIDE = 0.25  # the share of alpha spent on the end of the comparison that lets a worse 3B pass


class Pair:
    """The tests of one pair of tallies (the large tier's mean above 0): ``*_excess`` > 0 means the value is
    outside the sequence."""

    def __init__(self, small: Tally, large: Tally, thresholds: Thresholds) -> None:
        self.small, self.large = small, large
        self.phi3, self.phi8 = dispersion(small), dispersion(large)
        self.weights = (1 / max(self.phi3, 1e-9), 1 / max(self.phi8, 1e-9))
        self.m3, self.m8 = small.score_sum / small.count, large.score_sum / large.count
        # Each end is the two-sided boundary at twice its share of alpha (see the module's docstring).
        self.alpha_pass = 2 * PASS_SIDE * thresholds.alpha
        self.alpha_back = 2 * (1 - PASS_SIDE) * thresholds.alpha
        # Tuned on the scale of the relative degradation; the 8B mean turns that into the scale of the scores.
        scale = self.m8**2
        self.rho_pass = mixture_rho(thresholds.information, self.alpha_pass) / scale
        self.rho_back = mixture_rho(thresholds.information, self.alpha_back) / scale

    def _excess(self, statistic: float, variance: float) -> float:
        """A positive statistic (3B better than the hypothesis says) is what a pass rests on."""
        if statistic > 0:
            return statistic - radius(variance, self.rho_pass, self.alpha_pass)
        return -statistic - radius(variance, self.rho_back, self.alpha_back)

    def _variance(self, p3: float, p8: float, weight: float) -> float:
        return self.phi3 * p3 * (1 - p3) / self.small.count + weight * self.phi8 * p8 * (1 - p8) / self.large.count

    def ratio_excess(self, degradation: float) -> float:
        ratio = 1 - degradation
        p3, p8 = restricted_ratio(self.small, self.large, ratio, self.weights)
        return self._excess(self.m3 - ratio * self.m8, self._variance(p3, p8, ratio * ratio))

    def difference_excess(self, delta: float) -> float:
        p3, p8 = restricted_difference(self.small, self.large, delta, self.weights)
        return self._excess(self.m3 - self.m8 - delta, self._variance(p3, p8, 1.0))


LOWEST_DEGRADATION = -1.0  # the degradation sequence's lower end is shown no lower (3B twice as good as 8B)
_TOLERANCE = 1e-7


def _crossing(excess: Callable[[float], float], inside: float, outside: float) -> float:
    """Where ``excess`` turns positive between ``inside`` (<= 0) and ``outside`` (> 0): the Illinois variant of
    regula falsi, a handful of evaluations for these smooth functions."""
    f_in, f_out = excess(inside), excess(outside)
    side = 0
    for _ in range(100):
        if abs(outside - inside) < _TOLERANCE:
            break
        point = outside - f_out * (outside - inside) / (f_out - f_in) if f_out != f_in else (inside + outside) / 2
        if not min(inside, outside) < point < max(inside, outside):
            point = (inside + outside) / 2
        value = excess(point)
        if value > 0:
            outside, f_out = point, value
            f_in = f_in / 2 if side == 1 else f_in
            side = 1
        else:
            inside, f_in = point, value
            f_out = f_out / 2 if side == -1 else f_out
            side = -1
    return outside


def _edge(excess: Callable[[float], float], centre: float, limit: float) -> float:
    """The end of the sequence from ``centre`` towards ``limit`` (``limit`` itself when it is inside)."""
    if limit == centre or excess(limit) <= 0:
        return limit
    step = math.copysign(0.01, limit - centre)
    inside = centre
    while abs(step) < abs(limit - centre) and excess(centre + step) <= 0:  # bracket first: the ends are near
        inside = centre + step
        step *= 4
    return _crossing(excess, inside, centre + step if abs(step) < abs(limit - centre) else limit)


def mean_sequence(tally: Tally, thresholds: Thresholds) -> Interval:
    """One tier's mean (at least 2 events), tuned on the scores' own scale."""
    mean = tally.score_sum / tally.count
    phi, alpha = dispersion(tally), thresholds.alpha
    rho = mixture_rho(thresholds.information, alpha)

    def excess(p: float) -> float:
        return abs(mean - p) - radius(phi * p * (1 - p) / tally.count, rho, alpha)

    return Interval(_edge(excess, mean, 0.0), _edge(excess, mean, 1.0))


def degradation_sequence(small: Tally, large: Tally, thresholds: Thresholds) -> Interval:
    """The relative degradation (q8 - q3) / q8; the large tier's mean must be above 0."""
    pair = Pair(small, large, thresholds)
    centre = 1 - pair.m3 / pair.m8
    return Interval(_edge(pair.ratio_excess, centre, LOWEST_DEGRADATION), _edge(pair.ratio_excess, centre, 1.0))


def difference_sequence(small: Tally, large: Tally, thresholds: Thresholds) -> Interval:
    pair = Pair(small, large, thresholds)
    centre = pair.m3 - pair.m8
    return Interval(_edge(pair.difference_excess, centre, -1.0), _edge(pair.difference_excess, centre, 1.0))
