"""`routeproxy explain`, `classify` and `eval`: the router's decisions and metrics, offline, without upstreams.

The evaluation tools (``routeproxy.evaluate``) are imported when their subcommand runs, never at start-up."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from pathlib import Path
from typing import Any, TextIO

import orjson

from routeproxy.commands import routing_overrides, settings_for
from routeproxy.errors import ConfigError
from routeproxy.settings import Settings


def _explain_body(prompt: str, query_type: str | None, entities: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "auto", "messages": [{"role": "user", "content": prompt}]}
    if query_type:
        body["query_type"] = query_type
    if entities:
        try:
            parsed = orjson.loads(entities)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"--entities is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ConfigError('--entities must be a JSON object, e.g. \'{"breed": "Ross 308"}\'')
        body["entities"] = parsed
    return body


def _decide(router: Any, settings: Settings, body: dict[str, Any], headers: dict[str, str]) -> Any:
    from routeproxy.wire.parse import parse_chat_body, pop_hints

    body = parse_chat_body(orjson.dumps(body))
    hints = pop_hints(body, headers)
    return router.route(
        body,
        hints,
        headers,
        enabled=settings.routing.enabled,
        ab_test_ratio=settings.routing.ab_test_ratio,
    )


def _router(settings: Settings) -> Any:
    from routeproxy.routing.classify import Classifier, load_rules
    from routeproxy.routing.route import Router

    return Router(settings, Classifier(load_rules(settings.routing.rules)))


def cmd_explain(args: argparse.Namespace) -> int:
    from routeproxy.routing.route import explain

    settings = settings_for(args, routing_overrides(args))
    decision = _decide(_router(settings), settings, _explain_body(args.prompt, args.query_type, args.entities), {})
    result = explain(decision, settings, enabled=settings.routing.enabled, ab_test_ratio=settings.routing.ab_test_ratio)
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return 0
    complexity = (result["complexity"] or "-").upper()
    print(f"ROUTE -> {result['label'].upper()} ({complexity}) {result['model']}")
    print(f"  reason:  {result['reason']}")
    print(f"  score:   {result['score']}")
    if result["ab_draw"] is not None:
        print(f"  A/B:     draw {result['ab_draw']:.4f} vs ratio {result['ab_test_ratio']:.2f}")
    if not result["routing_enabled"]:
        print("  routing is disabled (ENABLE_MODEL_ROUTING=false): every `auto` request goes to the large tier")
    for fired in result["signals"]:
        print(f"  signal:  {fired['name']}:{fired['detail']} ({fired['weight']:+.2f})")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    """JSON lines in, one decision per line out: replay logged traffic against this config."""
    if args.answers:
        return _classify_answers(args.answers, args.rules or "general")
    settings = settings_for(args, routing_overrides(args))
    router = _router(settings)
    try:
        with _open_lines(args.file) as lines:
            return _classify_lines(lines, router, settings)
    except OSError as exc:
        print(f"routeproxy classify: {exc}", file=sys.stderr)
    except UnicodeDecodeError:
        print(f"routeproxy classify: {args.file} is not UTF-8 text (expected JSON lines)", file=sys.stderr)
    return 1


def _classify_lines(lines: TextIO, router: Any, settings: Settings) -> int:
    from routeproxy.errors import RouteproxyError

    status = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
            if not isinstance(record, dict):
                raise ValueError("each line must be a JSON object")
            body: dict[str, Any] = {"model": "auto", "messages": record.get("messages")}
            for field in ("query_type", "entities", "user"):
                if record.get(field) is not None:
                    body[field] = record[field]
            decision = _decide(router, settings, body, {})
        except (orjson.JSONDecodeError, ValueError, RouteproxyError) as exc:
            print(f"routeproxy classify: line {number}: {exc}", file=sys.stderr)
            status = 1
            continue
        out = {
            "id": record.get("id"),
            "tier": decision.tier.value,
            "label": settings.tiers[decision.tier].label,  # as explain: the name headers, stats and logs use
            "model": settings.tiers[decision.tier].model,
            "complexity": None if decision.complexity is None else decision.complexity.value,
            "score": None if decision.score is None else round(decision.score, 4),
            "reason": decision.why,
        }
        sys.stdout.write(orjson.dumps(out).decode() + "\n")
    return status


def _classify_answers(source: str, rules_name: str) -> int:
    """The cascade's answer check on JSON lines {id, messages, small_answer, ...}: what the proxy would decide."""
    from routeproxy.cascade.check import load_check_rules
    from routeproxy.evaluate.cascade import AnswerFileError, classify_answers, read_rows

    rules = load_check_rules(rules_name)
    try:
        with _open_lines(source) as lines:
            for out in classify_answers(read_rows(lines, source, labelled=False), rules):
                sys.stdout.write(orjson.dumps(out).decode() + "\n")
    except (OSError, AnswerFileError) as exc:
        print(f"routeproxy classify: {exc}", file=sys.stderr)
        return 1
    return 0


def _eval_cascade(args: argparse.Namespace) -> int:
    from routeproxy.cascade.check import load_check_rules
    from routeproxy.evaluate.cascade import (
        DEFAULT_HOLD_TOKENS,
        AnswerFileError,
        evaluate_cascade,
        format_report,
        read_rows,
        report_as_dict,
    )

    rules = load_check_rules(args.rules or "general")
    try:
        with _open_lines(args.cascade) as lines:
            rows = list(read_rows(lines, args.cascade, labelled=True))
    except (OSError, AnswerFileError) as exc:
        print(f"routeproxy eval: {exc}", file=sys.stderr)
        return 1
    hold_tokens = DEFAULT_HOLD_TOKENS if args.hold_tokens is None else args.hold_tokens
    if args.timing:
        from routeproxy.evaluate.cascade import time_check

        print(time_check(rows, rules))
        return 0
    if args.leave_one_pair_out:
        from routeproxy.evaluate.refit import MIN_GAP, format_refit, leave_one_pair_out

        fit = tuple(name for names in args.fit or () for name in names.split(",") if name)
        gap = MIN_GAP if args.min_gap is None else args.min_gap
        refit = leave_one_pair_out(rows, rules, hold_tokens=hold_tokens, min_gap=gap, fit=fit)
        if args.json:
            print(orjson.dumps(dataclasses.asdict(refit), option=orjson.OPT_INDENT_2).decode())
        else:
            print(format_refit(refit))
        return 0
    report = evaluate_cascade(rows, rules, hold_tokens=hold_tokens, random_draws=args.random_draws)
    if args.json:
        print(orjson.dumps(report_as_dict(report), option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_report(report))
    return 0


def _open_lines(source: str) -> contextlib.AbstractContextManager[TextIO]:
    """A file of JSON lines, or standard input for "-"."""
    if source == "-":
        return contextlib.nullcontext(sys.stdin)
    try:
        return Path(source).open(encoding="utf-8")
    except OSError as exc:
        raise OSError(f"cannot read {source}: {exc.strerror}") from None


def _eval_feedback(args: argparse.Namespace) -> int:
    """Fit the answer check on the operator's decisions and feedback (routeproxy.evaluate.feedback_fit)."""
    from routeproxy.cascade.check import load_check_rules
    from routeproxy.evaluate.feedback_fit import FeedbackRowError, fit_feedback, read_rows
    from routeproxy.evaluate.feedback_report import export_rows, fit_as_dict, fitted_rules, format_fit, rows_from_redis

    if not 0.0 < args.holdout < 1.0 or args.folds < 2 or (args.share is not None and not 0.0 <= args.share <= 1.0):
        print("routeproxy eval: --holdout from 0 to 1 (exclusive), --folds 2 or more, --share 0 to 1", file=sys.stderr)
        return 2
    rules = load_check_rules(args.rules or "general")
    source: str = args.feedback
    try:
        if source.startswith(("redis://", "rediss://", "unix://")):
            rows = list(rows_from_redis(source, args.namespace))
        else:
            with _open_lines(source) as lines:
                rows = read_rows(lines, source)
    except (OSError, FeedbackRowError) as exc:
        print(f"routeproxy eval: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the Redis client's own errors (connection refused, auth...)
        print(f"routeproxy eval: cannot read decisions from {source}: {exc}", file=sys.stderr)
        return 1
    if args.export:
        export_rows(rows, args.export)
    if len(rows) < 2 * args.folds:
        print(f"routeproxy eval: {len(rows)} rated decisions with a check record: too few to fit", file=sys.stderr)
        return 1
    fit = fit_feedback(rows, rules.weights, rules.bias, rules.threshold, rules=rules.source, holdout=args.holdout,
                       folds=args.folds, share=args.share)  # fmt: skip
    if args.json:
        print(orjson.dumps(fit_as_dict(fit), option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_fit(fit))
    if args.write:
        Path(args.write).write_text(fitted_rules(rules.source, fit), encoding="utf-8")
        load_check_rules(args.write)  # the file it wrote must load as a rule set
        if not args.json:
            print(f"wrote {args.write}: review it, then set cascade.rules to it")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.feedback:
        return _eval_feedback(args)
    if args.cascade == "":
        print("routeproxy eval: --cascade needs a FILE of labelled answers, or --feedback SOURCE", file=sys.stderr)
        return 2
    if args.cascade:
        return _eval_cascade(args)
    if not args.file:
        print("routeproxy eval: give a labelled prompts file, or --cascade FILE of labelled answers", file=sys.stderr)
        return 2
    from routeproxy.evaluate.routing import ExampleFileError, evaluate, format_report, load_examples, report_as_dict
    from routeproxy.routing.classify import Classifier, load_rules

    settings = settings_for(args, routing_overrides(args))
    classifier = Classifier(load_rules(settings.routing.rules))
    try:
        examples = load_examples(args.file)
    except ExampleFileError as exc:
        print(f"routeproxy eval: {exc}", file=sys.stderr)
        return 1
    report = evaluate(classifier, examples, random_draws=args.random_draws)
    if args.json:
        print(orjson.dumps(report_as_dict(report), option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_report(report))
    return 0
