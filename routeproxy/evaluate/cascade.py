"""Measure the cascade's answer check on answered, graded prompts, the way the proxy runs it.

Rows are JSON lines ``{"id", "messages", "small_answer"}`` with optional ``small_logprobs`` (OpenAI's
``logprobs.content`` list), ``finish_reason``, ``response_format`` and ``tools``; labelled rows also carry
``pair``, ``small_norm`` and ``large_norm`` (../shared/data/cascade-dev.jsonl). Each row becomes the request body
and the ``AnswerView`` the proxy would build, and ``check_answer`` scores it: on the whole answer (non-stream), and
on the prefix a stream shows at the hold (at most ``hold_tokens`` content tokens, or the whole answer when it ends
within them). The prefix is replayed through ``StreamAnswer`` as chat.completion.chunk dicts, one token per chunk.

Metrics per pair, never pooled (each pair has its own judge, scale and gap), as RouteLLM defines them and
../shared/data/README.md restates: APGR of the escalation score, CPT(50%), the 2.5-97.5 % APGR band of random
scores, and the share escalated and PGR at the rule set's threshold.
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from routeproxy.cascade.check import AnswerView, CheckRules, StreamAnswer, check_answer
from routeproxy.evaluate.metrics import apgr, cpt, pgr_curve, quantile, random_apgr_band
from routeproxy.settings import SETTINGS_BY_KEY

# The proxy's default hold (setting cascade.hold_tokens), chosen with `routeproxy eval --cascade ... --hold-tokens N`:
# at 64 tokens the prefix keeps little of the whole answer's APGR, at 128 it keeps it (short answers have ended by
# then); every held token is time to first token (128 tokens at 100-200 tokens/s: 0.6-1.3 s).
DEFAULT_HOLD_TOKENS: int = SETTINGS_BY_KEY["cascade.hold_tokens"].default
RANDOM_DRAWS = 300
# Llama 3's pre-tokenizer split (letters, 1-3 digit groups, punctuation runs, whitespace): each piece is at
# least one token, and one for most English words, so a prefix of N pieces is close to N tokens.
_PIECE = re.compile(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\w]?[^\W\d_]+|\d{1,3}| ?[^\s\w]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+|_+"
)


class AnswerFileError(ValueError):
    """A row of an answers file that cannot be used; the message names the line."""


@dataclass(frozen=True, slots=True)
class AnswerRow:
    id: Any
    request: dict[str, Any]  # the chat request body the answer replies to
    answer: str
    finish_reason: str | None = None
    logprobs: tuple[tuple[str, float], ...] = ()  # (token, logprob) per content token
    pair: str = ""  # labelled rows: "<subset> <small>-><large>", the group the metrics are computed over
    small: float = math.nan  # small_norm: the small answer's grade, 0..1
    large: float = math.nan  # large_norm


@dataclass(frozen=True, slots=True)
class Scores:
    apgr: float
    cpt50: float
    share: float  # escalated at the rule set's threshold
    pgr: float  # PGR at that share


@dataclass(frozen=True, slots=True)
class PairReport:
    pair: str
    n: int
    all_small: float  # W
    all_large: float  # S
    random_low: float
    random_high: float
    full: Scores
    prefix: Scores
    length_apgr: float  # reference: shorter answer -> escalate, nothing else


@dataclass(frozen=True, slots=True)
class CascadeReport:
    rules: str
    threshold: float
    hold_tokens: int
    random_draws: int
    pairs: tuple[PairReport, ...] = field(default=())


def read_rows(lines: Iterable[str], source: str, *, labelled: bool) -> Iterator[AnswerRow]:
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                yield _row(json.loads(line), labelled)
            except (ValueError, TypeError, KeyError) as exc:
                raise AnswerFileError(f"{source}: line {number}: {exc}") from None


def _row(record: Any, labelled: bool) -> AnswerRow:
    if not isinstance(record, dict):
        raise ValueError("expected a JSON object")
    messages = record.get("messages")
    if not isinstance(messages, list) or not all(isinstance(message, dict) for message in messages):
        raise ValueError("messages: expected a list of message objects")
    answer = record.get("small_answer")
    if not isinstance(answer, str):
        raise ValueError("small_answer: expected a string")
    request: dict[str, Any] = {"messages": messages}
    for key in ("response_format", "tools", "tool_choice"):
        if record.get(key) is not None:
            request[key] = record[key]
    logprobs = record.get("small_logprobs") or []
    if not isinstance(logprobs, list):
        raise ValueError("small_logprobs: expected the OpenAI logprobs.content list")
    finish = record.get("finish_reason")
    row = AnswerRow(
        id=record.get("id"),
        request=request,
        answer=answer,
        finish_reason=finish if isinstance(finish, str) else None,
        logprobs=tuple((str(entry.get("token", "")), float(entry["logprob"])) for entry in logprobs),
    )
    if not labelled:
        return row
    pair, small, large = record.get("pair"), record.get("small_norm"), record.get("large_norm")
    if not (isinstance(pair, str) and isinstance(small, (int, float)) and isinstance(large, (int, float))):
        raise ValueError("a labelled row needs pair, small_norm and large_norm")
    subset = record.get("subset")
    group = f"{subset} {pair}" if isinstance(subset, str) and subset else pair  # one pair may grade several sets
    return AnswerRow(row.id, request, answer, row.finish_reason, row.logprobs, group, float(small), float(large))


def whole_view(row: AnswerRow) -> AnswerView:
    """The view of a non-streamed answer: what ``answer_from_body`` gives for the body the upstream would send."""
    return AnswerView(
        text=row.answer,
        complete=True,
        finish_reason=row.finish_reason or "stop",
        logprobs=tuple(logprob for _, logprob in row.logprobs),
        tokens=len(row.logprobs) or len(_PIECE.findall(row.answer)),
    )


def prefix_view(row: AnswerRow, hold_tokens: int) -> AnswerView:
    """The view the proxy has when it decides a stream: after ``hold_tokens`` content tokens or at the end."""
    pieces: list[tuple[str, dict[str, Any] | None]]
    if row.logprobs:
        pieces = [(token, {"content": [{"token": token, "logprob": logprob}]}) for token, logprob in row.logprobs]
    else:
        pieces = [(piece, None) for piece in _PIECE.findall(row.answer)]
    stream = StreamAnswer()
    for index, (piece, logprobs) in enumerate(pieces):
        last = index == len(pieces) - 1
        stream.add(
            {"choices": [{"index": 0, "delta": {"content": piece}, "logprobs": logprobs, "finish_reason": None}]}
        )
        if stream.tokens >= hold_tokens and not last:
            return stream.view()
    stream.add({"choices": [{"index": 0, "delta": {}, "finish_reason": row.finish_reason or "stop"}]})
    return stream.view()


def _pgr(escalate: Sequence[bool], small: Sequence[float], large: Sequence[float]) -> float:
    gained = sum(hi - lo for up, lo, hi in zip(escalate, small, large, strict=True) if up)
    return gained / (sum(large) - sum(small))


def _scores(views: Sequence[AnswerView], rows: Sequence[AnswerRow], rules: CheckRules) -> Scores:
    checks = [check_answer(row.request, view, rules) for row, view in zip(rows, views, strict=True)]
    small, large = [row.small for row in rows], [row.large for row in rows]
    curve = pgr_curve([check.score for check in checks], small, large)
    escalate = [check.escalate for check in checks]
    return Scores(
        apgr=apgr(curve),
        cpt50=cpt(curve, 0.5),
        share=sum(escalate) / len(rows),
        pgr=_pgr(escalate, small, large),
    )


def evaluate_cascade(
    rows: Sequence[AnswerRow],
    rules: CheckRules,
    *,
    hold_tokens: int = DEFAULT_HOLD_TOKENS,
    random_draws: int = RANDOM_DRAWS,
) -> CascadeReport:
    reports = []
    for pair, members in rows_by_pair(rows).items():
        small, large = [row.small for row in members], [row.large for row in members]
        if sum(large) == sum(small):
            continue  # no gap to recover: PGR is undefined
        low, high = random_apgr_band(small, large, random_draws, random.Random(0))  # seeded: the same every run
        lengths = [-len(row.answer.split()) for row in members]
        reports.append(
            PairReport(
                pair=pair,
                n=len(members),
                all_small=sum(small) / len(members),
                all_large=sum(large) / len(members),
                random_low=low,
                random_high=high,
                full=_scores([whole_view(row) for row in members], members, rules),
                prefix=_scores([prefix_view(row, hold_tokens) for row in members], members, rules),
                length_apgr=apgr(pgr_curve(lengths, small, large)),
            )
        )
    return CascadeReport(rules.source, rules.threshold, hold_tokens, random_draws, tuple(reports))


def classify_answers(rows: Iterable[AnswerRow], rules: CheckRules) -> Iterator[dict[str, Any]]:
    """``{"id", "escalate", "score"}`` per row: the proxy's check on the whole answer."""
    for row in rows:
        check = check_answer(row.request, whole_view(row), rules)
        yield {"id": row.id, "escalate": check.escalate, "score": round(check.score, 6)}


def report_as_dict(report: CascadeReport) -> dict[str, Any]:
    def scores(value: Scores) -> dict[str, float]:
        return {"apgr": value.apgr, "cpt50": value.cpt50, "share_escalated": value.share, "pgr": value.pgr}

    return {
        "rules": report.rules,
        "threshold": report.threshold,
        "hold_tokens": report.hold_tokens,
        "random_draws": report.random_draws,
        "pairs": [
            {
                "pair": pair.pair,
                "n": pair.n,
                "all_small": pair.all_small,
                "all_large": pair.all_large,
                "random_band": [pair.random_low, pair.random_high],
                "length_apgr": pair.length_apgr,
                "full": scores(pair.full),
                "prefix": scores(pair.prefix),
            }
            for pair in report.pairs
        ],
    }


def format_report(report: CascadeReport) -> str:
    head = (
        f"check rules {report.rules}, threshold {report.threshold:g}; stream prefix at {report.hold_tokens} tokens; "
        f"random band from {report.random_draws} random score vectors\n"
        "pair | n | W / S | random band | length APGR | APGR / CPT50 | escalated / PGR | "
        "prefix APGR / CPT50 | prefix escalated / PGR\n--- | --- | --- | --- | --- | --- | --- | --- | ---"
    )
    lines = [
        f"{p.pair} | {p.n} | {p.all_small:.3f} / {p.all_large:.3f} | {p.random_low:.3f}-{p.random_high:.3f} | "
        f"{p.length_apgr:.3f} | {p.full.apgr:.3f} / {p.full.cpt50:.0%} | {p.full.share:.0%} / {p.full.pgr:.3f} | "
        f"{p.prefix.apgr:.3f} / {p.prefix.cpt50:.0%} | {p.prefix.share:.0%} / {p.prefix.pgr:.3f}"
        for p in report.pairs
    ]
    return "\n".join([head, *lines])


def time_check(rows: Sequence[AnswerRow], rules: CheckRules, chars: int = 2000, limit: int = 500) -> str:
    """Time of ``check_answer`` on whole answers cut to ``chars`` characters (the file's answers at least that
    long, up to ``limit``, with their own prompts): per answer the fastest of 5 runs, so that other processes on a
    busy machine do not count; then the median and p99 over the answers."""
    long_rows = [row for row in rows if len(row.answer) >= chars][:limit]
    timings = []
    for row in long_rows:
        view = whole_view(replace(row, answer=row.answer[:chars]))
        runs = []
        for _ in range(5):
            start = time.perf_counter_ns()
            check_answer(row.request, view, rules)
            runs.append((time.perf_counter_ns() - start) / 1000)
        timings.append(min(runs))
    if not timings:
        return f"no answer of {chars} characters or more to time"
    timings.sort()
    structured = [_fastest(request, view, rules) for request, view in _STRUCTURED]
    return (
        f"check_answer on {len(long_rows)} answers cut to {chars} characters (fastest of 5 runs each): "
        f"median {statistics.median(timings):.0f} us, p99 {quantile(timings, 0.99):.0f} us\n"
        f"check_answer on a tool call and a JSON answer validated against their schemas: "
        f"{' and '.join(f'{value:.0f} us' for value in structured)}"
    )


def _fastest(request: Mapping[str, Any], view: AnswerView, rules: CheckRules) -> float:
    runs = []
    for _ in range(5):
        start = time.perf_counter_ns()
        check_answer(request, view, rules)
        runs.append((time.perf_counter_ns() - start) / 1000)
    return min(runs)


_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "stops": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}},
                  "required": ["name"]}},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}  # fmt: skip
_ARGUMENTS = json.dumps({"city": "Oslo", "days": 3, "unit": "celsius", "stops": [{"name": f"s{i}"} for i in range(5)]})
_STRUCTURED = (
    (
        {"messages": [{"role": "user", "content": "Weather?"}],
         "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": _SCHEMA}}]},
        AnswerView("", complete=True, finish_reason="tool_calls", tool_calls=(
            {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": _ARGUMENTS}},)),
    ),
    (
        {"messages": [{"role": "user", "content": "Weather?"}],
         "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": _SCHEMA}}},
        AnswerView(_ARGUMENTS, complete=True, finish_reason="stop"),
    ),
)  # fmt: skip


def rows_by_pair(rows: Iterable[AnswerRow]) -> Mapping[str, list[AnswerRow]]:
    grouped: dict[str, list[AnswerRow]] = {}
    for row in rows:
        grouped.setdefault(row.pair, []).append(row)
    return grouped
