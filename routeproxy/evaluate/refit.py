"""Leave-one-pair-out: how well the answer check's weights carry over to a model pair they were not fitted on.

The product is judged on a model pair and prompt sources that are not in the development file, so a figure
measured on the pairs the weights were chosen on flatters the check. Here the check's signals are computed once
per row (``answer_signals``: the logit each adds at the rule set's weights); a fit rescales them by name (one
factor per signal, 0 to ``max(SCALES)``, never a sign flip: every signal is a sign of a weak answer by design, so
a fit may only say how much it counts) to maximise the mean APGR over the training pairs; the answer length
signal is the fixed anchor (APGR depends only on the order of the scores, so one factor is free). Each usable
pair is then scored with the factors fitted on the others, on the whole answer and on the stream prefix at the
hold. Pairs whose gap between the large and the small model is under ``min_gap`` are left out of both fitting
and scoring: their APGR is noise (the claude-instant-1 -> claude-2.1 pair of the dev file).

The fit on all usable pairs is printed too: those factors times the rule set's weights are what this procedure
would ship, and the leave-one-pair-out figures are the honest estimate of how it does on a pair it has not seen.
``fit`` limits the fit to some signals (say, new ones) while the others keep the rule set's weights; comparing the
two tells whether refitting a signal carries over better than its hand-set weight.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from routeproxy.cascade.check import AnswerView, CheckRules, answer_signals
from routeproxy.evaluate.cascade import AnswerRow, prefix_view, rows_by_pair, whole_view
from routeproxy.evaluate.metrics import apgr, pgr_curve

SCALES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
ANCHOR = "short"
MIN_GAP = 0.05
PASSES = 3

Signals = list[dict[str, float]]  # per row: signal name -> logit it adds


@dataclass(frozen=True, slots=True)
class _Pair:
    name: str
    small: list[float]
    large: list[float]
    whole: Signals
    prefix: Signals
    length: list[float]  # reference: the shorter answer escalates first

    def apgr(self, signals: Signals, scales: Mapping[str, float]) -> float:
        scores = [sum(value * scales.get(name, 1.0) for name, value in row.items()) for row in signals]
        return apgr(pgr_curve(scores, self.small, self.large))


@dataclass(frozen=True, slots=True)
class HeldOut:
    pair: str
    n: int
    length_apgr: float
    rules_whole: float  # at the rule set's own weights (in-sample when they were fitted on these pairs)
    rules_prefix: float
    held_whole: float  # with the scales fitted on the other pairs
    held_prefix: float
    scales: dict[str, float]


@dataclass(frozen=True, slots=True)
class RefitReport:
    rules: str
    hold_tokens: int
    min_gap: float
    left_out: tuple[str, ...]  # pairs under min_gap
    pairs: tuple[HeldOut, ...]
    all_pairs_scales: dict[str, float]  # the fit on every usable pair: what to multiply the shipped weights by


def leave_one_pair_out(
    rows: Sequence[AnswerRow],
    rules: CheckRules,
    *,
    hold_tokens: int,
    min_gap: float = MIN_GAP,
    fit: Sequence[str] = (),
) -> RefitReport:
    """``fit``: the signals whose weights are learnt (default every one but the anchor); the others keep the rule
    set's weights in every fold."""
    usable: list[_Pair] = []
    left_out: list[str] = []
    for name, members in rows_by_pair(rows).items():
        small, large = [row.small for row in members], [row.large for row in members]
        if (sum(large) - sum(small)) / len(members) < min_gap:
            left_out.append(name)
            continue
        usable.append(
            _Pair(
                name=name,
                small=small,
                large=large,
                whole=[_signals(row, whole_view(row), rules) for row in members],
                prefix=[_signals(row, prefix_view(row, hold_tokens), rules) for row in members],
                length=[-len(row.answer.split()) for row in members],
            )
        )
    names = sorted(set(fit or {name for pair in usable for row in pair.whole for name in row}) - {ANCHOR})
    held = []
    for pair in usable:
        scales = fit_scales([other for other in usable if other is not pair], names)
        held.append(
            HeldOut(
                pair=pair.name,
                n=len(pair.small),
                length_apgr=apgr(pgr_curve(pair.length, pair.small, pair.large)),
                rules_whole=pair.apgr(pair.whole, {}),
                rules_prefix=pair.apgr(pair.prefix, {}),
                held_whole=pair.apgr(pair.whole, scales),
                held_prefix=pair.apgr(pair.prefix, scales),
                scales=scales,
            )
        )
    return RefitReport(
        rules=rules.source,
        hold_tokens=hold_tokens,
        min_gap=min_gap,
        left_out=tuple(left_out),
        pairs=tuple(held),
        all_pairs_scales=fit_scales(usable, names) if len(usable) > 1 else {},
    )


def fit_scales(train: Sequence[_Pair], names: Sequence[str]) -> dict[str, float]:
    """Coordinate ascent over ``SCALES``, from 0 for every fitted signal that fires on ``train`` (as if each were
    new: a signal earns weight only by improving the mean whole-answer APGR over ``train``); a signal that never
    fires there keeps the rule set's weight (factor 1), as do the signals not named."""
    fires = {name for pair in train for row in pair.whole for name, value in row.items() if value}
    fitted = [name for name in names if name in fires]
    scales = dict.fromkeys(fitted, 0.0)

    def objective(candidate: Mapping[str, float]) -> float:
        return statistics.fmean(pair.apgr(pair.whole, candidate) for pair in train)

    best = objective(scales)
    for _ in range(PASSES):
        moved = False
        for name in fitted:
            for factor in SCALES:
                candidate = {**scales, name: factor}
                value = objective(candidate)
                if value > best + 1e-9:
                    best, scales, moved = value, candidate, True
        if not moved:
            break
    return scales


def _signals(row: AnswerRow, view: AnswerView, rules: CheckRules) -> dict[str, float]:
    signals: dict[str, float] = {}
    for name, value in answer_signals(row.request, view, rules):
        signals[name] = signals.get(name, 0.0) + value
    return signals


def format_refit(report: RefitReport) -> str:
    def factors(scales: Mapping[str, float]) -> str:
        return ", ".join(f"{name} x{factor:g}" for name, factor in sorted(scales.items()) if factor != 1.0) or "-"

    lines = [
        f"check rules {report.rules}; stream prefix at {report.hold_tokens} tokens; pairs with a gap under "
        f"{report.min_gap:g} left out: {', '.join(report.left_out) or 'none'}",
        "held-out pair | n | length APGR | rules APGR whole / prefix | leave-one-pair-out APGR whole / prefix | "
        "factors fitted on the other pairs",
        "--- | --- | --- | --- | --- | ---",
    ]
    lines += [
        f"{p.pair} | {p.n} | {p.length_apgr:.3f} | {p.rules_whole:.3f} / {p.rules_prefix:.3f} | "
        f"{p.held_whole:.3f} / {p.held_prefix:.3f} | {factors(p.scales)}"
        for p in report.pairs
    ]
    if report.pairs:

        def mean(values: Sequence[float]) -> float:
            return statistics.fmean(values)

        pairs = report.pairs
        lines.append(
            f"mean | | {mean([p.length_apgr for p in pairs]):.3f} | {mean([p.rules_whole for p in pairs]):.3f} / "
            f"{mean([p.rules_prefix for p in pairs]):.3f} | {mean([p.held_whole for p in pairs]):.3f} / "
            f"{mean([p.held_prefix for p in pairs]):.3f} |"
        )
    lines.append(f"fit on every pair above (multiply the rule set's weights): {factors(report.all_pairs_scales)}")
    return "\n".join(lines)
