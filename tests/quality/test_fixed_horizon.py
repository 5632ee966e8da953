"""The fixed-sample intervals behind `routeproxy quality simulate --baseline`, against published values."""

from __future__ import annotations

import pytest

from routeproxy.evaluate.fixed_horizon import fixed_horizon_verdict, newcombe, t_cdf, t_quantile, welch, wilson
from routeproxy.quality.intervals import Tally, Thresholds
from routeproxy.quality.verdict import Verdict


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3 (score).
@pytest.mark.parametrize(
    ("successes", "count", "low", "high"),
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0000, 0.1611),
        (1, 29, 0.0061, 0.1718),
        (29, 29, 0.8830, 1.0000),
    ],
)
def test_wilson_interval_matches_newcombe_table(successes: int, count: int, low: float, high: float) -> None:
    interval = wilson(successes, count)
    assert interval.low == pytest.approx(low, abs=5e-5)
    assert interval.high == pytest.approx(high, abs=5e-5)


# Newcombe (1998), "Interval estimation for the difference between independent proportions", Table II, method 10.
@pytest.mark.parametrize(
    ("first", "second", "low", "high"),
    [
        ((56, 70), (48, 80), 0.0524, 0.3339),
        ((9, 10), (3, 10), 0.1705, 0.8090),
        ((6, 7), (2, 7), 0.0582, 0.8062),
        ((5, 56), (0, 29), -0.0381, 0.1926),
        ((0, 10), (0, 20), -0.1611, 0.2775),
        ((0, 10), (0, 10), -0.2775, 0.2775),
        ((10, 10), (0, 20), 0.6791, 1.0000),
        ((10, 10), (0, 10), 0.6075, 1.0000),
    ],
)
def test_newcombe_hybrid_score_interval_matches_table(
    first: tuple[int, int], second: tuple[int, int], low: float, high: float
) -> None:
    difference, interval = newcombe(*first, *second)
    assert difference == pytest.approx(first[0] / first[1] - second[0] / second[1])
    assert interval.low == pytest.approx(low, abs=5e-5)
    assert interval.high == pytest.approx(high, abs=5e-5)


# Student t quantiles from any printed table (and the normal limit).
@pytest.mark.parametrize(
    ("probability", "df", "quantile"),
    [
        (0.975, 1, 12.7062),
        (0.975, 2, 4.3027),
        (0.975, 5, 2.5706),
        (0.975, 10, 2.2281),
        (0.975, 30, 2.0423),
        (0.975, 100, 1.9840),
        (0.95, 5, 2.0150),
        (0.995, 10, 3.1693),
        (0.9, 3, 1.6377),
        (0.975, 1e7, 1.9600),
        (0.025, 10, -2.2281),
    ],
)
def test_t_quantile_matches_table(probability: float, df: float, quantile: float) -> None:
    assert t_quantile(probability, df) == pytest.approx(quantile, abs=5e-5)
    assert t_cdf(t_quantile(probability, df), df) == pytest.approx(probability, abs=1e-9)


def test_welch_interval_matches_r_on_the_sleep_data() -> None:
    # R: t.test(extra ~ group, data = sleep) -> t = -1.8608, df = 17.776, 95 % CI -3.3654832 0.2054832.
    first = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
    second = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]

    def moments(values: list[float]) -> tuple[float, float]:
        mean = sum(values) / len(values)
        return mean, sum((value - mean) ** 2 for value in values) / (len(values) - 1)

    difference, interval, df = welch(*moments(first), 10, *moments(second), 10)
    assert difference == pytest.approx(-1.58)
    assert df == pytest.approx(17.776, abs=5e-4)
    assert interval.low == pytest.approx(-3.3654832, abs=1e-6)
    assert interval.high == pytest.approx(0.2054832, abs=1e-6)


def binary(up: int, count: int) -> Tally:
    return Tally(count=count, score_sum=up, score_sq_sum=up)


@pytest.mark.parametrize(
    ("small", "large", "verdict"),
    [
        ((270, 300), (270, 300), Verdict.INSUFFICIENT_DATA),  # -5.3 % .. 5.3 %
        ((900, 1000), (900, 1000), Verdict.PASS),  # -2.9 % .. 2.9 %
        ((600, 1000), (900, 1000), Verdict.ROLLBACK),
        ((33300, 40000), (36000, 40000), Verdict.REVIEW),
        ((25, 29), (29, 29), Verdict.INSUFFICIENT_DATA),
    ],
)
def test_the_fixed_sample_verdict_reads_newcombe_divided_by_the_large_mean(
    small: tuple[int, int], large: tuple[int, int], verdict: Verdict
) -> None:
    assert fixed_horizon_verdict(binary(*small), binary(*large), Thresholds()) is verdict


def test_fractional_scores_make_the_fixed_sample_verdict_read_welch() -> None:
    small = Tally.of([0.7, 0.8, 0.9] * 200)
    large = Tally.of([1.0, 0.9, 0.8] * 200)
    # 10.1 % .. 12.1 % with n = 600 (Welch, df = 1198): wholly above 10 %.
    assert fixed_horizon_verdict(small, large, Thresholds()) is Verdict.ROLLBACK
    assert fixed_horizon_verdict(Tally.of([0.7, 0.8, 0.9] * 20), Tally.of([1.0, 0.9, 0.8] * 20), Thresholds()) is (
        Verdict.INSUFFICIENT_DATA
    )
