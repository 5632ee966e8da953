"""Measure the classifier as a router on graded prompts, with the metrics of ``routeproxy.evaluate.metrics``.

The router's own operating point counts COMPLEX as large and MEDIUM as half large: the expected share under
the default ab_test_ratio of 0.5.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routeproxy.evaluate.metrics import apgr, cpt, oracle_quality, pgr_curve, quantile, random_apgr_band
from routeproxy.routing.classify import Classifier, Complexity

MEDIUM_LARGE_SHARE = 0.5  # 1 - ab_test_ratio at its default


@dataclass(frozen=True)
class Example:
    id: str
    subset: str
    prompt: str
    weak: float
    strong: float


@dataclass(frozen=True, slots=True)
class SubsetReport:
    subset: str
    n: int
    share_large: float  # c at the router's own thresholds
    share_complex: float
    share_medium: float
    quality: float  # r at that share
    all_weak: float  # W
    all_strong: float  # S
    random_quality: float
    oracle_quality: float
    pgr: float  # PGR at the router's own share
    apgr: float
    cpt50: float
    cpt80: float
    random_apgr_low: float  # 2.5 % of APGR over random score vectors
    random_apgr_high: float  # 97.5 %


@dataclass(frozen=True, slots=True)
class EvalReport:
    subsets: tuple[SubsetReport, ...]
    overall: SubsetReport
    random_draws: int


class ExampleFileError(ValueError):
    """A labelled prompts file that cannot be used; the message names the file and the line."""


_FIELDS = ("id", "subset", "prompt", "weak_norm", "strong_norm")


def load_examples(path: str | Path) -> list[Example]:
    """Rows of routing-dev.jsonl: id, subset, prompt (the first user message), weak_norm, strong_norm."""
    examples = []
    try:
        with Path(path).open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    examples.append(_example(line, f"{path}: line {number}"))
    except OSError as exc:
        raise ExampleFileError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ExampleFileError(f"{path} is not UTF-8 text (expected JSON lines)") from None
    if not examples:
        raise ExampleFileError(f"{path} has no labelled prompts (expected one JSON object per line)")
    return examples


def _example(line: str, where: str) -> Example:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ExampleFileError(f"{where}: not JSON ({exc.msg}); expected one JSON object per line") from None
    if not isinstance(row, dict):
        raise ExampleFileError(f"{where}: expected a JSON object with {', '.join(_FIELDS)}")
    missing = [name for name in _FIELDS if name not in row]
    if missing:
        raise ExampleFileError(
            f"{where}: missing {', '.join(missing)} (a labelled prompt has {', '.join(_FIELDS)}; "
            "see the README's eval file format)"
        )
    try:
        return Example(
            id=str(row["id"]),
            subset=str(row["subset"]),
            prompt=str(row["prompt"]),
            weak=float(row["weak_norm"]),
            strong=float(row["strong_norm"]),
        )
    except (TypeError, ValueError):
        raise ExampleFileError(f"{where}: weak_norm and strong_norm must be numbers") from None


def evaluate(
    classifier: Classifier, examples: Sequence[Example], *, random_draws: int = 300, seed: int = 0
) -> EvalReport:
    scored = [
        (example, classifier.classify({"messages": [{"role": "user", "content": example.prompt}]}))
        for example in examples
    ]
    rng = random.Random(seed)
    subsets = sorted({example.subset for example in examples})
    reports = tuple(
        _report(name, [item for item in scored if item[0].subset == name], random_draws, rng) for name in subsets
    )
    return EvalReport(reports, _report("overall", scored, random_draws, rng), random_draws)


def _report(name: str, scored: Sequence[tuple[Example, Any]], draws: int, rng: random.Random) -> SubsetReport:
    n = len(scored)
    weak = [example.weak for example, _ in scored]
    strong = [example.strong for example, _ in scored]
    scores = [result.score for _, result in scored]
    to_large = [
        1.0
        if result.complexity is Complexity.COMPLEX
        else MEDIUM_LARGE_SHARE
        if result.complexity is Complexity.MEDIUM
        else 0.0
        for _, result in scored
    ]
    all_weak = sum(weak) / n if n else math.nan
    all_strong = sum(strong) / n if n else math.nan
    share = sum(to_large) / n if n else math.nan
    quality = sum(d * s + (1 - d) * w for d, w, s in zip(to_large, weak, strong, strict=True)) / n if n else math.nan
    gap = all_strong - all_weak
    curve = pgr_curve(scores, weak, strong)
    low, high = random_apgr_band(weak, strong, draws, rng)
    return SubsetReport(
        subset=name,
        n=n,
        share_large=share,
        share_complex=sum(r.complexity is Complexity.COMPLEX for _, r in scored) / n if n else math.nan,
        share_medium=sum(r.complexity is Complexity.MEDIUM for _, r in scored) / n if n else math.nan,
        quality=quality,
        all_weak=all_weak,
        all_strong=all_strong,
        random_quality=all_weak + share * gap,
        oracle_quality=oracle_quality(weak, strong, share) if n else math.nan,
        pgr=(quality - all_weak) / gap if gap else math.nan,
        apgr=apgr(curve),
        cpt50=cpt(curve, 0.5),
        cpt80=cpt(curve, 0.8),
        random_apgr_low=low,
        random_apgr_high=high,
    )


def format_report(report: EvalReport) -> str:
    header = (
        f"{'subset':<10} {'N':>6} {'large':>6} {'r':>6} {'W':>6} {'S':>6} {'random':>6} {'oracle':>6} "
        f"{'PGR':>6} {'APGR':>6} {'random band':>13} {'CPT50':>6} {'CPT80':>6}"
    )
    rows = [header, "-" * len(header)]
    for item in (*report.subsets, report.overall):
        verdict = "" if math.isnan(item.random_apgr_high) or item.apgr > item.random_apgr_high else " (in band)"
        rows.append(
            f"{item.subset:<10} {item.n:>6} {_pct(item.share_large)} {_num(item.quality)} "
            f"{_num(item.all_weak)} {_num(item.all_strong)} {_num(item.random_quality)} "
            f"{_num(item.oracle_quality)} {_num(item.pgr)} "
            f"{_num(item.apgr)} {_num(item.random_apgr_low)}-{_num(item.random_apgr_high).strip():<6} "
            f"{_pct(item.cpt50)} {_pct(item.cpt80)}{verdict}"
        )
    rows.append(
        f"large = share to the large model at the rules' thresholds (COMPLEX + half of MEDIUM); "
        f"random band = 2.5-97.5 % of APGR over {report.random_draws} random routers"
    )
    return "\n".join(rows)


def _num(value: float) -> str:
    return f"{'n/a':>6}" if math.isnan(value) else f"{value:>6.3f}"


def _pct(value: float) -> str:
    return f"{'n/a':>6}" if math.isnan(value) else f"{value * 100:>5.1f}%"


def report_as_dict(report: EvalReport) -> dict[str, Any]:
    def clean(item: SubsetReport) -> dict[str, Any]:
        return {
            key: (None if isinstance(value, float) and math.isnan(value) else value)
            for key, value in ((name, getattr(item, name)) for name in SubsetReport.__slots__)
        }

    return {
        "subsets": {item.subset: clean(item) for item in report.subsets},
        "overall": clean(report.overall),
        "random_draws": report.random_draws,
        "medium_large_share": MEDIUM_LARGE_SHARE,
    }


_TYPICAL = (
    "What is the average body weight of Ross 308 broilers at 21 days, and how does the feed conversion "
    "ratio change between week three and week five on a standard diet?"
)


def bench_classifier(classifier: Classifier) -> str:
    """Median and p99 classification time for a typical ~30-word prompt and for 1 KB / 100 KB / 1 MB ones."""
    filler = "Please explain how the feed conversion ratio of a flock changes with age and diet. "
    cases = [
        ("typical 30 words", _TYPICAL, 5000),
        ("1 KB", (filler * 20)[:1024], 2000),
        ("100 KB", (filler * 1300)[: 100 * 1024], 200),
        ("1 MB", (filler * 13000)[: 1024 * 1024], 50),
    ]
    rows = [
        f"{'message':<18} {'median us':>10} {'p99 us':>10}  (scan: first {classifier.rules.scan_head_chars} "
        f"+ last {classifier.rules.scan_tail_chars} chars)"
    ]
    for label, text, runs in cases:
        body = {"messages": [{"role": "user", "content": text}]}
        timings = []
        for _ in range(runs):
            start = time.perf_counter_ns()
            classifier.classify(body)
            timings.append((time.perf_counter_ns() - start) / 1000)
        timings.sort()
        rows.append(f"{label:<18} {statistics.median(timings):>10.1f} {quantile(timings, 0.99):>10.1f}")
    return "\n".join(rows)
