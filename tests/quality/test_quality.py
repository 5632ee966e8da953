"""The verdict maths against published and hand-computed values."""

from __future__ import annotations

import math

import pytest

from routeproxy.quality.intervals import (
    ImplicitTally,
    Interval,
    Tally,
    Thresholds,
    Verdict,
    compare,
    judge,
    newcombe,
    t_cdf,
    t_quantile,
    welch,
    wilson,
    worst,
)


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


def test_tally_moments_match_the_scores() -> None:
    tally = Tally.of([1.0, 0.0, 0.5, 0.75])
    assert (tally.count, tally.fractional) == (4, 2)
    assert tally.mean == pytest.approx(0.5625)
    assert tally.variance == pytest.approx(sum((x - 0.5625) ** 2 for x in (1.0, 0.0, 0.5, 0.75)) / 3)


@pytest.mark.parametrize(
    ("low", "high", "verdict", "says"),
    [
        (-0.20, 0.049, Verdict.PASS, "wholly below 5.0%"),
        (0.101, 0.30, Verdict.ROLLBACK, "wholly above 10.0%"),
        (0.05, 0.10, Verdict.REVIEW, "within 5.0%..10.0%"),
        (0.06, 0.09, Verdict.REVIEW, "within"),
        (0.00, 0.06, Verdict.INSUFFICIENT_DATA, "straddles 5.0%"),
        (0.08, 0.12, Verdict.INSUFFICIENT_DATA, "straddles 10.0%"),
        (0.02, 0.20, Verdict.INSUFFICIENT_DATA, "straddles 5.0% and 10.0%"),
    ],
)
def test_verdict_follows_the_whole_interval(low: float, high: float, verdict: Verdict, says: str) -> None:
    got, reason = judge(Interval(low, high), Thresholds())
    assert got is verdict
    assert says in reason


def test_thresholds_are_configurable() -> None:
    assert judge(Interval(0.06, 0.09), Thresholds(review_at=0.10, rollback_at=0.20))[0] is Verdict.PASS
    assert judge(Interval(0.06, 0.09), Thresholds(review_at=0.01, rollback_at=0.05))[0] is Verdict.ROLLBACK


def binary(up: int, count: int) -> Tally:
    return Tally(count=count, score_sum=up, score_sq_sum=up)


def test_binary_feedback_uses_newcombe_and_divides_by_the_large_mean() -> None:
    # 3B 48/80 vs 8B 56/70: difference -0.2 with Newcombe (-0.3339, -0.0524); q8 = 0.8.
    result = compare(binary(48, 80), binary(56, 70))
    assert result.method == "newcombe_hybrid_score"
    assert result.difference == pytest.approx(-0.2)
    assert result.difference_interval is not None and result.degradation_interval is not None
    assert result.difference_interval.low == pytest.approx(-0.3339, abs=5e-5)
    assert result.degradation == pytest.approx(0.25)
    assert result.degradation_interval.low == pytest.approx(0.0524 / 0.8, abs=1e-4)
    assert result.degradation_interval.high == pytest.approx(0.3339 / 0.8, abs=1e-4)
    assert result.verdict is Verdict.INSUFFICIENT_DATA  # 6.5 % .. 41.7 % straddles 10 %
    assert result.small.thumbs_up == 48 and result.small.interval == wilson(48, 80)


@pytest.mark.parametrize(
    ("small", "large", "verdict"),
    [
        ((270, 300), (270, 300), Verdict.INSUFFICIENT_DATA),  # equal, but n = 300 cannot exclude 5 %: -5.3 % .. 5.3 %
        ((900, 1000), (900, 1000), Verdict.PASS),  # equal, n = 1000: -2.9 % .. 2.9 %
        ((9100, 10000), (9000, 10000), Verdict.PASS),  # 3B better
        ((600, 1000), (900, 1000), Verdict.ROLLBACK),  # 33 % worse
        ((7000, 10000), (9000, 10000), Verdict.ROLLBACK),  # 22 % worse
        ((25, 29), (29, 29), Verdict.INSUFFICIENT_DATA),  # below the minimum of 30 per tier
    ],
)
def test_binary_verdicts(small: tuple[int, int], large: tuple[int, int], verdict: Verdict) -> None:
    assert compare(binary(*small), binary(*large)).verdict is verdict


def test_review_needs_a_tight_interval_between_the_thresholds() -> None:
    # 3B 0.8325 vs 8B 0.90 on 40000 each: degradation 7.5 %, Newcombe half-width ~0.6 points -> 6.8 % .. 8.2 %.
    result = compare(binary(33300, 40000), binary(36000, 40000))
    assert result.verdict is Verdict.REVIEW
    assert result.degradation == pytest.approx(0.075)


@pytest.mark.parametrize(("repeats", "verdict"), [(20, Verdict.INSUFFICIENT_DATA), (200, Verdict.ROLLBACK)])
def test_any_fractional_score_switches_to_welch(repeats: int, verdict: Verdict) -> None:
    small = Tally.of([0.7, 0.8, 0.9] * repeats)
    large = Tally.of([1.0, 0.9, 0.8] * repeats)
    count = 3 * repeats
    result = compare(small, large)
    assert result.method == "welch_t"
    assert result.small.thumbs_up is None
    variance = sum((x - 0.8) ** 2 for x in (0.7, 0.8, 0.9)) * repeats / (count - 1)  # the same in both tiers
    half = t_quantile(0.975, 2 * (count - 1)) * math.sqrt(2 * variance / count)  # equal spreads: df = 2 (n - 1)
    assert result.df == pytest.approx(2 * (count - 1))
    assert result.difference == pytest.approx(-0.1)
    assert result.degradation_interval is not None
    assert result.degradation_interval.low == pytest.approx((0.1 - half) / 0.9)
    assert result.degradation_interval.high == pytest.approx((0.1 + half) / 0.9)
    # n = 60: 7.8 % .. 14.4 % straddles 10 %; n = 600: 10.1 % .. 12.1 % is wholly above it.
    assert result.verdict is verdict


def test_no_verdict_without_spread_or_without_a_large_mean() -> None:
    same = Tally.of([0.5] * 40)
    assert compare(same, same).verdict is Verdict.INSUFFICIENT_DATA
    zero = binary(0, 40)
    result = compare(binary(10, 40), zero)
    assert result.verdict is Verdict.INSUFFICIENT_DATA and "undefined" in result.reason


def test_no_feedback_yields_no_numbers() -> None:
    result = compare(Tally(), Tally())
    assert result.verdict is Verdict.INSUFFICIENT_DATA
    assert result.small.mean is None and result.difference is None and result.degradation_interval is None


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        ((Verdict.PASS, Verdict.PASS), Verdict.PASS),
        ((Verdict.PASS, Verdict.INSUFFICIENT_DATA), Verdict.INSUFFICIENT_DATA),
        ((Verdict.REVIEW, Verdict.INSUFFICIENT_DATA), Verdict.REVIEW),
        ((Verdict.PASS, Verdict.ROLLBACK), Verdict.ROLLBACK),
        ((), Verdict.INSUFFICIENT_DATA),
    ],
)
def test_worst_of_two_signals(verdicts: tuple[Verdict, ...], expected: Verdict) -> None:
    assert worst(verdicts) is expected


def test_implicit_signals_become_binary_events_capped_at_the_requests() -> None:
    tally = ImplicitTally(requests=100, upstream_errors=3, disconnects=2, regenerations=5).as_tally()
    assert (tally.count, tally.successes, tally.fractional) == (100, 90, 0)
    assert ImplicitTally(requests=2, upstream_errors=2, disconnects=2).as_tally().successes == 0
