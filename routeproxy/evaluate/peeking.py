"""``routeproxy quality simulate``: the shipped verdict and rollout rules, read after every batch of synthetic
feedback, with no limit on looks. Per true degradation of 3B, 3B share of the A/B feedback and feedback kind, it
counts the runs that ever pass (the controller steps up), ever roll back, or stay undecided, and the feedback a
decision took.

One run: feedback arrives in batches of ``batch`` events; each event lands on 3B with probability ``share``; a
thumb is up with the tier's true satisfaction (8B ``large_thumbs``, 3B that times 1 - degradation), a score is
Binomial(levels, q) / levels (a 0..levels rating scale, mean q; 8B ``large_score``). After every batch the verdict
(``verdict_of``) is taken on the totals and the controller's rules (``rollout.evaluate``: enough feedback since the
step began, rollback at once, pass once the hold is over) act on it; the hold time is taken as over, the worst case
for a verdict read too often. A run ends at its first step up or back, or undecided at ``horizon`` feedback events.

Draws: one uniform number and a bisection into a precomputed binomial distribution function per draw: the 3B share
of a batch, then per tier the thumbs up (or the count at each score level): a few draws per batch, so a run of
20,000 events takes milliseconds. Seeds are strings, hashed by ``random`` with SHA-512: the same on every machine
and Python, and the baseline sees exactly the same feedback as the shipped verdict.
"""

from __future__ import annotations

import bisect
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from routeproxy.quality.intervals import Tally, Thresholds
from routeproxy.quality.rollout import Evidence, RolloutPolicy, Waiting, evaluate, initial_state
from routeproxy.quality.verdict import Verdict, verdict_of

KINDS = ("thumbs", "scores")
DEGRADATIONS = (0.0, 0.03, 0.05, 0.07, 0.10, 0.12, 0.15)
SHARES = (0.1, 0.5)
GOAL = 0.025  # at most this share of runs may pass at the review line, or roll back with no degradation

VerdictRule = Callable[[Tally, Tally, Thresholds], Verdict]


@dataclass(frozen=True, slots=True)
class Scenario:
    kind: str  # "thumbs" or "scores"
    share: float  # 3B's share of the A/B feedback
    degradation: float  # the true relative degradation of 3B


@dataclass(frozen=True, slots=True)
class Options:
    runs: int = 400
    seed: int = 1
    horizon: int = 20_000
    batch: int = 25
    large_thumbs: float = 0.90
    large_score: float = 0.75
    levels: int = 4  # scores on a 0..4 scale: 0, .25, .5, .75, 1


@dataclass(frozen=True, slots=True)
class Tallies:
    """What a method made of one scenario."""

    runs: int
    passed: int
    rolled_back: int
    decided_at: tuple[int, ...] = field(default=())  # feedback events at each decision

    @property
    def undecided(self) -> int:
        return self.runs - self.passed - self.rolled_back

    @property
    def median(self) -> float | None:
        return statistics.median(self.decided_at) if self.decided_at else None

    def to_json(self) -> dict[str, float | int | None]:
        return {
            "pass_pct": _pct(self.passed, self.runs),
            "rollback_pct": _pct(self.rolled_back, self.runs),
            "undecided_pct": _pct(self.undecided, self.runs),
            "median_feedback_to_decision": self.median,
        }


def _pct(part: int, whole: int) -> float:
    return round(part / whole * 100, 2) if whole else 0.0


def _cdf(count: int, probability: float) -> list[float]:
    """The binomial distribution function of ``count`` draws (its last entry forced to 1)."""
    cumulative, total = [], 0.0
    for k in range(count + 1):
        total += math.comb(count, k) * probability**k * (1 - probability) ** (count - k)
        cumulative.append(total)
    cumulative[-1] = 1.0
    return cumulative


class _Tier:
    """One tier's feedback generator: per batch, the draws of its ``count`` events."""

    def __init__(self, kind: str, quality: float, batch: int, levels: int) -> None:
        self.thumbs = kind == "thumbs"
        self.levels = levels
        if self.thumbs:
            self.tables = [[_cdf(count, quality) for count in range(batch + 1)]]
            return
        # The count at each score level, one conditional binomial per level: level j given the events left.
        weights = [math.comb(levels, j) * quality**j * (1 - quality) ** (levels - j) for j in range(levels + 1)]
        self.tables = []
        for j in range(levels):
            rest = sum(weights[j:])
            self.tables.append(
                [_cdf(count, min(1.0, weights[j] / rest) if rest > 0 else 1.0) for count in range(batch + 1)]
            )

    def draw(self, count: int, uniform: Callable[[], float], sums: list[float]) -> None:
        """Adds the batch's events to ``sums`` = [count, sum, sum of squares, fractional]."""
        sums[0] += count
        if self.thumbs:
            up = bisect.bisect_left(self.tables[0][count], uniform())
            sums[1] += up
            sums[2] += up
            return
        left = count
        for j, table in enumerate(self.tables):
            at_level = bisect.bisect_left(table[left], uniform()) if left else 0
            left -= at_level
            score = j / self.levels
            sums[1] += at_level * score
            sums[2] += at_level * score * score
            if j:
                sums[3] += at_level
        sums[1] += left  # the top level, 1.0
        sums[2] += left


def _tally(sums: list[float]) -> Tally:
    return Tally(int(sums[0]), sums[1], sums[2], int(sums[3]))


def run_once(
    scenario: Scenario, options: Options, thresholds: Thresholds, policy: RolloutPolicy, rule: VerdictRule, run: int
) -> tuple[str, int]:
    """("pass" | "rollback" | "undecided", feedback events at the end) of one run."""
    uniform = random.Random(f"{options.seed}:{scenario.kind}:{scenario.share}:{scenario.degradation}:{run}").random
    large_quality = options.large_thumbs if scenario.kind == "thumbs" else options.large_score
    small = _Tier(scenario.kind, large_quality * (1 - scenario.degradation), options.batch, options.levels)
    large = _Tier(scenario.kind, large_quality, options.batch, options.levels)
    split = _cdf(options.batch, scenario.share)
    small_sums, large_sums = [0.0] * 4, [0.0] * 4
    state = initial_state(0.0)
    now = policy.min_hold_s  # the hold is over at every look
    total = 0
    while total < options.horizon:
        on_small = bisect.bisect_left(split, uniform())
        small.draw(on_small, uniform, small_sums)
        large.draw(options.batch - on_small, uniform, large_sums)
        total += options.batch
        verdict = rule(_tally(small_sums), _tally(large_sums), thresholds)
        outcome = evaluate(policy, state, Evidence(verdict, total, 0), now)
        if outcome.entry is not None:
            return ("pass" if outcome.entry.to_step > outcome.entry.from_step else "rollback"), total
        if outcome.waiting is Waiting.COMPLETE:  # a one-step schedule: the pass is the decision
            return "pass", total
    return "undecided", total


def simulate_scenario(
    scenario: Scenario, options: Options, thresholds: Thresholds, policy: RolloutPolicy, rule: VerdictRule
) -> Tallies:
    passed = rolled_back = 0
    decided_at: list[int] = []
    for run in range(options.runs):
        ending, total = run_once(scenario, options, thresholds, policy, rule, run)
        if ending == "undecided":
            continue
        passed += ending == "pass"
        rolled_back += ending == "rollback"
        decided_at.append(total)
    return Tallies(options.runs, passed, rolled_back, tuple(decided_at))


def shipped_rule(small: Tally, large: Tally, thresholds: Thresholds) -> Verdict:
    return verdict_of(small, large, thresholds)


def scenarios(kinds: Sequence[str], shares: Sequence[float], degradations: Sequence[float]) -> list[Scenario]:
    return [Scenario(kind, share, degradation) for kind in kinds for share in shares for degradation in degradations]


def goals(rows: Sequence[tuple[Scenario, Tallies]], thresholds: Thresholds) -> dict[str, float | bool | None]:
    """The two error rates the verdict promises: passes at the review line, rollbacks with no degradation (the
    worst row of each), and whether both are at most 2.5 %."""
    at_review = [t.passed / t.runs for s, t in rows if math.isclose(s.degradation, thresholds.review_at)]
    at_zero = [t.rolled_back / t.runs for s, t in rows if s.degradation == 0]
    worst_pass = max(at_review) if at_review else None
    worst_rollback = max(at_zero) if at_zero else None
    return {
        "pass_at_review_pct": None if worst_pass is None else round(worst_pass * 100, 2),
        "rollback_at_zero_pct": None if worst_rollback is None else round(worst_rollback * 100, 2),
        "met": all(rate <= GOAL for rate in [*at_review, *at_zero]) and bool(at_review or at_zero),
    }
