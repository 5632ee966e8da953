"""RouteLLM's router metrics (arXiv:2406.18665), for any router that scores prompts: a cascade's escalation check
as well as the classifier.

Each example has a weak (small model) and a strong (large model) quality in [0, 1]. Sorting prompts by the
router's score, highest first, and routing the top share c to the large model traces PGR(c) =
(r(c) - W) / (S - W); APGR is the area under that curve over c in [0, 1]. Prompts with tied scores cannot be
told apart, so a tie is one step of the curve, crossed in a straight line (what a random order inside the
tie gives on average): a router that scores everything alike gets exactly 0.5, like random routing.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence


def pgr_curve(scores: Sequence[float], weak: Sequence[float], strong: Sequence[float]) -> list[tuple[float, float]]:
    """(c, PGR(c)) at every step of the threshold sweep, from (0, 0) to (1, 1); ties form one step."""
    n = len(scores)
    gap = (sum(strong) - sum(weak)) / n if n else 0.0
    if n == 0 or gap == 0:
        return [(0.0, math.nan), (1.0, math.nan)]
    order = sorted(range(n), key=lambda i: -scores[i])
    points = [(0.0, 0.0)]
    gained = 0.0
    for position, i in enumerate(order):
        gained += strong[i] - weak[i]
        if position + 1 == n or scores[order[position + 1]] != scores[i]:
            points.append(((position + 1) / n, gained / n / gap))
    return points


def apgr(curve: Sequence[tuple[float, float]]) -> float:
    """Area under the piecewise-linear PGR curve (trapezoids)."""
    return sum((c1 - c0) * (p0 + p1) / 2 for (c0, p0), (c1, p1) in itertools.pairwise(curve))


def cpt(curve: Sequence[tuple[float, float]], target: float) -> float:
    """The smallest share to large at which PGR reaches ``target`` (1.0 if it never does)."""
    if curve[0][1] >= target:
        return curve[0][0]
    for (c0, p0), (c1, p1) in itertools.pairwise(curve):
        if p1 >= target:
            return c0 + (c1 - c0) * (target - p0) / (p1 - p0)
    return 1.0


def oracle_quality(weak: Sequence[float], strong: Sequence[float], share: float) -> float:
    """W plus the largest positive gains, as many as share * N allows (a fraction of the next one)."""
    n = len(weak)
    gains = sorted((s - w for w, s in zip(weak, strong, strict=True) if s > w), reverse=True)
    room = share * n
    whole = min(int(room), len(gains))
    extra = gains[whole] * (room - whole) if whole < len(gains) else 0.0
    return (sum(weak) + sum(gains[:whole]) + extra) / n


def random_apgr_band(
    weak: Sequence[float], strong: Sequence[float], draws: int, rng: random.Random
) -> tuple[float, float]:
    """2.5-97.5 % range of APGR over random (tie-free) score vectors.

    Without ties APGR = (sum_i g_i (N - pos_i) - G / 2) / (N G), with g_i = s_i - w_i at position pos_i of
    the order and G their sum; only the prompts with a nonzero gain need a random position.
    """
    n = len(weak)
    gains = [s - w for w, s in zip(weak, strong, strict=True) if s != w]
    total = sum(gains)
    if not draws or not n or total == 0:
        return (math.nan, math.nan)
    values = []
    for _ in range(draws):
        positions = rng.sample(range(n), len(gains))
        weighted = sum(g * (n - p) for g, p in zip(gains, positions, strict=True))
        values.append((weighted - total / 2) / (n * total))
    values.sort()
    return (quantile(values, 0.025), quantile(values, 0.975))


def quantile(ordered: Sequence[float], q: float) -> float:
    """The q-quantile (0-1) of sorted values, interpolated linearly between closest ranks."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
