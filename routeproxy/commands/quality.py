"""`routeproxy quality simulate`: how often the verdict, read after every batch of feedback, passes a 3B that is
worse than the review line or rolls back one that is not worse at all (the engine: ``routeproxy.evaluate.peeking``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import orjson

from routeproxy.commands import settings_for


def _floats(text: str, scale: float = 1.0) -> list[float]:
    try:
        return [float(part) / scale for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, not {text!r}") from None


def add_quality_parser(commands: Any) -> None:
    """The `quality` command and its `simulate` subcommand, on the CLI's subparsers."""
    quality = commands.add_parser("quality", help="the A/B verdict: simulate how often it errs when read continuously")
    actions = quality.add_subparsers(dest="action", required=True, metavar="ACTION")
    simulate = actions.add_parser(
        "simulate",
        help="run the verdict and the rollout rules on synthetic feedback, looking after every batch",
        description="Runs the verdict and the rollout controller's rules on synthetic feedback, looking after every "
        "batch with no limit on looks, and prints per true degradation of 3B, 3B share and feedback kind the share "
        "of runs that ever pass (step up), ever roll back, or stay undecided, and the median feedback to a decision. "
        "Thresholds and rollout rules come from the configuration.",
    )
    simulate.add_argument("--config", help="YAML config file (default: $ROUTEPROXY_CONFIG or config/routeproxy.yaml)")
    simulate.add_argument("--runs", type=int, default=400, help="runs per row (default 400)")
    simulate.add_argument("--seed", type=int, default=1, help="the runs' seed (default 1): same seed, same figures")
    simulate.add_argument("--horizon", type=int, default=20_000, help="feedback events per run at most (20000)")
    simulate.add_argument("--batch", type=int, default=25, help="feedback events between two looks (default 25)")
    simulate.add_argument(
        "--degradations",
        type=lambda text: _floats(text, 100),
        help="true degradations of 3B in %% (default 0,3,5,7,10,12,15 and the two thresholds)",
    )
    simulate.add_argument("--shares", type=_floats, help="3B shares of the feedback (default 0.1,0.5)")
    simulate.add_argument("--kinds", default="thumbs,scores", help="thumbs, scores or both (default both)")
    simulate.add_argument(
        "--baseline",
        action="store_true",
        help="also run a fixed-sample 95%% interval read the same way, on the same feedback, and the price",
    )
    simulate.add_argument("--jobs", type=int, default=1, help="processes to spread the rows over (default 1)")
    simulate.add_argument("--json", action="store_true")
    simulate.set_defaults(handler=cmd_quality_simulate)


def cmd_quality_simulate(args: argparse.Namespace) -> int:
    from routeproxy.evaluate.peeking import DEGRADATIONS, KINDS, SHARES, Options, goals, scenarios
    from routeproxy.quality.analysis import thresholds_of
    from routeproxy.quality.controller import policy_of

    settings = settings_for(args)
    thresholds, policy = thresholds_of(settings.quality), policy_of(settings)
    kinds = [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
    if not kinds or any(kind not in KINDS for kind in kinds):
        print(f"routeproxy quality simulate: --kinds takes {' and '.join(KINDS)}", file=sys.stderr)
        return 2
    problems = _problems(args)
    if problems:
        print(f"routeproxy quality simulate: {problems}", file=sys.stderr)
        return 2
    degradations = args.degradations or sorted({*DEGRADATIONS, thresholds.review_at, thresholds.rollback_at})
    options = Options(runs=args.runs, seed=args.seed, horizon=args.horizon, batch=args.batch)
    rows = scenarios(kinds, args.shares or SHARES, degradations)
    methods = ["shipped", "baseline"] if args.baseline else ["shipped"]
    work = [(row, method) for row in rows for method in methods]
    with ProcessPoolExecutor(max_workers=args.jobs) if args.jobs > 1 else _Inline() as pool:
        results = list(pool.map(_simulate, [(row, method, options, thresholds, policy) for row, method in work]))
    by_method = {
        method: [result for (_, m), result in zip(work, results, strict=True) if m == method] for method in methods
    }
    report = _report(
        rows,
        by_method,
        options,
        thresholds,
        policy,
        goals(list(zip(rows, by_method["shipped"], strict=True)), thresholds),
    )
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print("\n".join(_lines(report)))
    return 0


def _problems(args: argparse.Namespace) -> str | None:
    if args.runs < 1 or args.batch < 1 or args.horizon < args.batch or args.jobs < 1:
        return "--runs, --batch and --jobs must be at least 1, and --horizon at least --batch"
    if args.batch > 1000:
        return "--batch is at most 1000"
    if args.shares is not None and not all(0 < share < 1 for share in args.shares):
        return "--shares must be between 0 and 1"
    if args.degradations is not None and not all(-1 < d < 1 for d in args.degradations):
        return "--degradations must be between -100 and 100 (%)"
    return None


class _Inline:
    """The executor's interface in this process (--jobs 1)."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, function: Any, items: Sequence[Any]) -> Any:
        return map(function, items)


def _simulate(job: tuple[Any, str, Any, Any, Any]) -> Any:
    from routeproxy.evaluate.fixed_horizon import fixed_horizon_verdict
    from routeproxy.evaluate.peeking import shipped_rule, simulate_scenario

    scenario, method, options, thresholds, policy = job
    rule = shipped_rule if method == "shipped" else fixed_horizon_verdict
    return simulate_scenario(scenario, options, thresholds, policy, rule)


def _report(
    rows: Sequence[Any],
    by_method: dict[str, list[Any]],
    options: Any,
    thresholds: Any,
    policy: Any,
    met: dict[str, Any],
) -> dict[str, Any]:
    from routeproxy.quality.verdict import METHOD

    entries = []
    for index, scenario in enumerate(rows):
        shipped = by_method["shipped"][index]
        entry: dict[str, Any] = {
            "kind": scenario.kind,
            "share": scenario.share,
            "degradation_pct": round(scenario.degradation * 100, 2),
            "runs": shipped.runs,
            **shipped.to_json(),
        }
        if "baseline" in by_method:
            baseline = by_method["baseline"][index]
            entry["baseline"] = baseline.to_json()
            ratio = shipped.median / baseline.median if shipped.median and baseline.median else None
            entry["price"] = None if ratio is None else round(ratio, 2)
        entries.append(entry)
    return {
        "method": METHOD,
        "confidence": thresholds.confidence,
        "review_at_pct": round(thresholds.review_at * 100, 2),
        "rollback_at_pct": round(thresholds.rollback_at * 100, 2),
        "min_feedback_per_tier": thresholds.min_feedback,
        "min_feedback_per_step": policy.min_feedback,
        "runs": options.runs,
        "seed": options.seed,
        "batch": options.batch,
        "horizon": options.horizon,
        "large_thumbs": options.large_thumbs,
        "large_score": options.large_score,
        "score_levels": options.levels,
        "rows": entries,
        "goals": met,
    }


def _lines(report: dict[str, Any]) -> list[str]:
    baseline = any("baseline" in row for row in report["rows"])
    lines = [
        f"the verdict ({report['method']}, {report['confidence'] * 100:g} %) and the rollout rules, read after every "
        f"{report['batch']} feedback events up to {report['horizon']}; review at {report['review_at_pct']:g} %, "
        f"rollback at {report['rollback_at_pct']:g} %, {report['min_feedback_per_tier']} feedback per tier, "
        f"{report['min_feedback_per_step']} per step; {report['runs']} runs per row (seed {report['seed']}); "
        f"8B thumbs up {report['large_thumbs']:g}, 8B mean score {report['large_score']:g}",
        "",
    ]
    header = ["kind", "3B share", "degradation", "pass", "rollback", "undecided", "median feedback"]
    if baseline:
        header += ["fixed: pass", "fixed: rollback", "fixed: median", "price"]
    table = [header]
    for row in report["rows"]:
        cells = [
            row["kind"], f"{row['share']:g}", f"{row['degradation_pct']:g} %", f"{row['pass_pct']:.1f} %",
            f"{row['rollback_pct']:.1f} %", f"{row['undecided_pct']:.1f} %", _count(row["median_feedback_to_decision"]),
        ]  # fmt: skip
        if baseline:
            fixed = row["baseline"]
            cells += [
                f"{fixed['pass_pct']:.1f} %", f"{fixed['rollback_pct']:.1f} %",
                _count(fixed["median_feedback_to_decision"]), "-" if row["price"] is None else f"{row['price']:.1f}x",
            ]  # fmt: skip
        table.append(cells)
    widths = [max(len(row[column]) for row in table) for column in range(len(header))]
    lines += ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in table]
    goal = report["goals"]
    shown = [
        f"pass at the review line {_rate(goal['pass_at_review_pct'])}",
        f"rollback at 0 % {_rate(goal['rollback_at_zero_pct'])}",
    ]
    lines += ["", f"goal: at most 2.5 % each: {'; '.join(shown)}: {'met' if goal['met'] else 'NOT met'}"]
    return lines


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _rate(value: float | None) -> str:
    return "not simulated" if value is None else f"{value:.2f} %"
