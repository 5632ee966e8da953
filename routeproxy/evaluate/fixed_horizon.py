"""The fixed-sample intervals the verdict read before it read confidence sequences, kept as the baseline of
``routeproxy quality simulate --baseline``: what acting on the first decisive look of a 95 % interval does.

* thumbs (every score 0 or 1): Newcombe's hybrid score interval for the difference (method 10 of Newcombe,
  Statistics in Medicine 17:873-890, 1998), built from the two Wilson intervals;
* any fractional score: Welch's t interval (Welch-Satterthwaite degrees of freedom, the t quantile from the
  regularised incomplete beta function);
* the relative degradation: the difference interval divided by the large tier's mean.
"""

from __future__ import annotations

import functools
import math
from statistics import NormalDist

from routeproxy.quality.intervals import Interval, Tally, Thresholds
from routeproxy.quality.verdict import Verdict, judge


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


@functools.lru_cache(maxsize=4096)
def _t_quantile_cached(probability: float, df: float) -> float:
    return t_quantile(probability, df)


def fixed_horizon_verdict(small: Tally, large: Tally, thresholds: Thresholds) -> Verdict:
    """The verdict a fixed-sample 95 % interval of the degradation supports at this one look."""
    if min(small.count, large.count) < thresholds.min_feedback or large.score_sum <= 0:
        return Verdict.INSUFFICIENT_DATA
    confidence = thresholds.confidence
    if small.fractional == 0 and large.fractional == 0:
        _, interval = newcombe(small.successes, small.count, large.successes, large.count, confidence)
    else:
        small_variance, large_variance = small.variance or 0.0, large.variance or 0.0
        if small_variance == 0 and large_variance == 0:
            return Verdict.INSUFFICIENT_DATA
        share_small, share_large = small_variance / small.count, large_variance / large.count
        error = math.sqrt(share_small + share_large)
        df = (share_small + share_large) ** 2 / (
            share_small**2 / (small.count - 1) + share_large**2 / (large.count - 1)
        )
        # The quantile by bisection costs milliseconds: rounded degrees of freedom change it by < 1e-4.
        half = _t_quantile_cached(0.5 + confidence / 2, round(df, 1) if df < 1000 else round(df, -2)) * error
        difference = small.score_sum / small.count - large.score_sum / large.count
        interval = Interval(difference - half, difference + half)
    return judge(interval.scaled(-count_ratio(large)), thresholds)[0]


def count_ratio(large: Tally) -> float:
    """1 / the large tier's mean: the factor from the difference to the relative degradation."""
    return large.count / large.score_sum
