"""The always-valid intervals (confidence sequences) and the verdict on them: the boundary against its closed form,
the restricted estimates against brute force, coverage at every look, and the verdicts they support."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routeproxy.evaluate.fixed_horizon import newcombe, wilson
from routeproxy.quality.intervals import (
    Interval,
    Pair,
    Tally,
    Thresholds,
    degradation_sequence,
    dispersion,
    mean_sequence,
    mixture_rho,
    radius,
    restricted_difference,
    restricted_ratio,
)
from routeproxy.quality.verdict import METHOD, ImplicitTally, Verdict, compare, judge, verdict_of, worst


def binary(up: int, count: int) -> Tally:
    return Tally(count=count, score_sum=up, score_sq_sum=up)


def test_rho_is_the_closed_form_best_for_the_tuned_width() -> None:
    # Howard et al. (2021): rho = I / (2 log(1/alpha) + log(1 + 2 log(1/alpha))), I = (1.959964 / 0.025)^2.
    information = (1.959964 / 0.025) ** 2
    assert Thresholds().information == pytest.approx(information)
    assert mixture_rho(information, 0.05) == pytest.approx(
        information / (2 * math.log(20) + math.log(1 + 2 * math.log(20)))
    )
    assert mixture_rho(information, 0.05) == pytest.approx(774.47, abs=0.01)
    assert Thresholds().tightest_at == 0.025 and Thresholds(review_at=0.2, rollback_at=0.4).tightest_at == 0.1


@pytest.mark.parametrize("information", [10.0, 100.0, 774.47, 6146.6, 1e5, 1e7])
def test_radius_is_the_two_sided_normal_mixture_boundary_and_wider_than_a_fixed_interval(information: float) -> None:
    rho, alpha = 774.47, 0.05
    boundary = math.sqrt((information + rho) * math.log((information + rho) / (rho * alpha * alpha)))
    assert radius(1 / information, rho, alpha) == pytest.approx(boundary / information)
    assert radius(1 / information, rho, alpha) > 1.959964 / math.sqrt(information)
    assert radius(0.0, rho, alpha) == 0.0


def _log_likelihood(p3: float, p8: float, small: Tally, large: Tally) -> float:
    total = 0.0
    for p, tally in ((p3, small), (p8, large)):
        p = min(max(p, 1e-12), 1 - 1e-12)
        total += tally.score_sum * math.log(p) + (tally.count - tally.score_sum) * math.log(1 - p)
    return total


@pytest.mark.parametrize(
    ("small", "large", "ratio"),
    [((30, 30), (243, 270), 0.95), ((60, 100), (80, 100), 0.9), ((5, 50), (400, 500), 1.2), ((0, 40), (30, 40), 0.5)],
)
def test_restricted_ratio_maximises_the_likelihood_under_the_hypothesis(
    small: tuple[int, int], large: tuple[int, int], ratio: float
) -> None:
    a, b = binary(*small), binary(*large)
    p3, p8 = restricted_ratio(a, b, ratio)
    assert p3 == pytest.approx(ratio * p8)
    best = max(
        (_log_likelihood(ratio * q / 20000, q / 20000, a, b), q / 20000)
        for q in range(1, 20000)
        if ratio * q / 20000 <= 1
    )
    assert p8 == pytest.approx(best[1], abs=1e-4)
    pooled = restricted_ratio(a, b, 1.0)
    assert pooled[0] == pytest.approx((a.score_sum + b.score_sum) / (a.count + b.count))


@pytest.mark.parametrize(
    ("small", "large", "delta"),
    [((30, 30), (243, 270), -0.05), ((60, 100), (80, 100), -0.3), ((5, 50), (400, 500), 0.2), ((20, 40), (20, 40), 0)],
)
def test_restricted_difference_maximises_the_likelihood_under_the_hypothesis(
    small: tuple[int, int], large: tuple[int, int], delta: float
) -> None:
    a, b = binary(*small), binary(*large)
    p3, p8 = restricted_difference(a, b, delta)
    assert p3 - p8 == pytest.approx(delta)
    grid = [q / 20000 for q in range(1, 20000) if 0 < q / 20000 + delta < 1]
    best = max(grid, key=lambda q: _log_likelihood(q + delta, q, a, b))
    assert p8 == pytest.approx(best, abs=1e-4)


def test_dispersion_is_one_for_thumbs_and_measured_for_scores() -> None:
    assert dispersion(binary(27, 30)) == 1.0
    scores = Tally.of([0.7, 0.8, 0.9] * 100)
    # With a pseudo-score at 0 and one at 1: n 302, mean 241 / 302, variance (194.0 + 1 - 241^2 / 302) / 301.
    mean = 241 / 302
    assert dispersion(scores) == pytest.approx((195.0 - 241**2 / 302) / 301 / (mean * (1 - mean)))
    assert dispersion(scores) < 0.06  # scores spread far less than thumbs with the same mean
    assert dispersion(Tally.of([0.5] * 40)) > 0  # two pseudo-scores: never "no spread at all"


def _paths_ever_excluding_the_truth(excluded: object, seed: int, paths: int = 200) -> int:
    """How many of ``paths`` feedback streams (8B 0.9, 3B 5 % worse, half each, a look every 50 events to 6,000)
    the test ``excluded(small, large)`` rejects at some look."""
    count = 0
    for path in range(paths):
        uniform = random.Random(f"{seed}:{path}").random
        sums = [[0, 0], [0, 0]]
        for look in range(120):
            for _ in range(50):
                tier = 0 if uniform() < 0.5 else 1
                sums[tier][0] += 1
                sums[tier][1] += uniform() < (0.855 if tier == 0 else 0.9)
            if look >= 2 and excluded(binary(sums[0][1], sums[0][0]), binary(sums[1][1], sums[1][0])):  # type: ignore[operator]
                count += 1
                break
    return count


def test_the_degradation_sequence_holds_at_every_look_where_a_fixed_interval_does_not() -> None:
    """Read after every 50 events, the true degradation (5 %) leaves the 95 % sequence in at most 5 % of streams;
    the fixed-sample 95 % interval (Newcombe's) leaves it in far more."""

    def sequence_excludes(small: Tally, large: Tally) -> bool:
        return Pair(small, large, Thresholds()).ratio_excess(0.05) > 0

    def fixed_excludes(small: Tally, large: Tally) -> bool:
        _, interval = newcombe(small.successes, small.count, large.successes, large.count)
        degradation = interval.scaled(-large.count / large.score_sum)
        return not degradation.low <= 0.05 <= degradation.high

    sequence, fixed = (
        _paths_ever_excluding_the_truth(sequence_excludes, 7),
        _paths_ever_excluding_the_truth(fixed_excludes, 7),
    )
    assert sequence <= 6  # 3 %; alpha = 5 % allows 10 of 200
    assert fixed >= 40  # 20 % and more: the peeking problem


def test_one_tiers_sequence_is_wider_than_wilson_and_shrinks() -> None:
    thresholds = Thresholds()
    for up, count in ((27, 30), (270, 300), (2700, 3000)):
        sequence, fixed = mean_sequence(binary(up, count), thresholds), wilson(up, count)
        assert sequence.low < fixed.low < 0.9 < fixed.high < sequence.high
    assert mean_sequence(binary(30, 30), thresholds).high == 1.0
    assert mean_sequence(binary(0, 30), thresholds).low == 0.0
    narrow = mean_sequence(binary(9000, 10000), thresholds)
    assert narrow.high - narrow.low < 0.03


def test_thirty_thumbs_up_out_of_thirty_are_not_a_certainty() -> None:
    """The variance at the hypothesis, not at the estimate (which is 0 here), keeps the sequence wide."""
    result = compare(binary(30, 30), binary(243, 270))
    assert result.verdict is Verdict.INSUFFICIENT_DATA
    assert result.degradation_interval is not None and result.degradation_interval.high > 0.3


@pytest.mark.parametrize(
    ("small", "large", "verdict"),
    [
        ((270, 300), (270, 300), Verdict.INSUFFICIENT_DATA),  # equal, n = 300: -10.7 % .. 9.3 %
        ((900, 1000), (900, 1000), Verdict.PASS),  # equal, n = 1000: -4.5 % .. 4.9 %
        ((9100, 10000), (9000, 10000), Verdict.PASS),  # 3B better
        ((600, 1000), (900, 1000), Verdict.ROLLBACK),  # 33 % worse: 27.8 % .. 39.5 %
        ((7000, 10000), (9000, 10000), Verdict.ROLLBACK),  # 22 % worse
        ((33300, 40000), (36000, 40000), Verdict.REVIEW),  # 7.5 % worse: 6.7 % .. 8.4 %
        ((25, 29), (29, 29), Verdict.INSUFFICIENT_DATA),  # below the minimum of 30 per tier
    ],
)
def test_binary_verdicts(small: tuple[int, int], large: tuple[int, int], verdict: Verdict) -> None:
    result = compare(binary(*small), binary(*large))
    assert result.verdict is verdict and result.method == METHOD
    assert verdict_of(binary(*small), binary(*large)) is verdict


def test_the_comparison_shows_its_sequences() -> None:
    result = compare(binary(900, 1000), binary(900, 1000))
    assert result.difference == 0 and result.degradation == 0
    assert result.degradation_interval is not None and result.difference_interval is not None
    assert result.degradation_interval.low < 0 < result.degradation_interval.high < 0.05
    assert result.difference_interval.low < 0 < result.difference_interval.high
    assert result.small.thumbs_up == 900 and result.small.interval == mean_sequence(binary(900, 1000), Thresholds())
    assert "confidence sequence of the degradation is -4.5% to 4.9%, wholly below 5.0%" in result.reason
    # The pass side spends a quarter of alpha: the sequence reaches further up than down from the estimate 0.
    assert result.degradation_interval.high > -result.degradation_interval.low


@pytest.mark.parametrize(("repeats", "verdict"), [(200, Verdict.INSUFFICIENT_DATA), (600, Verdict.ROLLBACK)])
def test_fractional_scores_use_their_measured_dispersion(repeats: int, verdict: Verdict) -> None:
    small = Tally.of([0.7, 0.8, 0.9] * repeats)
    large = Tally.of([1.0, 0.9, 0.8] * repeats)
    result = compare(small, large)
    assert result.small.thumbs_up is None and result.degradation == pytest.approx(1 / 9)
    # n = 600: 9.4 % .. 12.8 % straddles 10 %; n = 1800: 10.1 % .. 12.1 % is wholly above it.
    assert result.verdict is verdict


def test_no_verdict_without_spread_or_without_a_large_mean() -> None:
    same = Tally.of([0.5] * 40)
    assert compare(same, same).verdict is Verdict.INSUFFICIENT_DATA
    result = compare(binary(10, 40), binary(0, 40))
    assert result.verdict is Verdict.INSUFFICIENT_DATA and "undefined" in result.reason
    empty = compare(Tally(), Tally())
    assert empty.small.mean is None and empty.difference is None and empty.degradation_interval is None


tallies = st.builds(
    lambda count, share, fractional: Tally(
        count, count * share, count * share * share if fractional else count * share, count if fractional else 0
    ),
    st.integers(30, 50_000),
    st.floats(0.02, 1.0),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(tallies, tallies)
def test_the_verdict_from_the_two_thresholds_is_the_verdict_of_the_whole_sequence(small: Tally, large: Tally) -> None:
    """``verdict_of`` (what the controller and the simulation run) tests the thresholds only; ``judge`` reads the
    whole sequence: they must agree."""
    if small.fractional and large.fractional and not small.variance and not large.variance:
        return
    thresholds = Thresholds()
    assert verdict_of(small, large, thresholds) is judge(degradation_sequence(small, large, thresholds), thresholds)[0]


@pytest.mark.parametrize(
    ("low", "high", "verdict", "says"),
    [
        (-0.20, 0.049, Verdict.PASS, "wholly below 5.0%"),
        (0.101, 0.30, Verdict.ROLLBACK, "wholly above 10.0%"),
        (0.05, 0.10, Verdict.REVIEW, "within 5.0%..10.0%"),
        (0.00, 0.06, Verdict.INSUFFICIENT_DATA, "straddles 5.0%"),
        (0.08, 0.12, Verdict.INSUFFICIENT_DATA, "straddles 10.0%"),
        (0.02, 0.20, Verdict.INSUFFICIENT_DATA, "straddles 5.0% and 10.0%"),
    ],
)
def test_verdict_follows_the_whole_sequence(low: float, high: float, verdict: Verdict, says: str) -> None:
    got, reason = judge(Interval(low, high), Thresholds())
    assert got is verdict
    assert says in reason


def test_thresholds_are_configurable() -> None:
    assert judge(Interval(0.06, 0.09), Thresholds(review_at=0.10, rollback_at=0.20))[0] is Verdict.PASS
    assert judge(Interval(0.06, 0.09), Thresholds(review_at=0.01, rollback_at=0.05))[0] is Verdict.ROLLBACK


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
