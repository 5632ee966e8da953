"""The `routeproxy` command: a thin mapping of flags onto settings. With config.py, the only reader of the
environment (it also writes the effective overrides there for ``--workers N`` child processes)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import orjson

from routeproxy import __version__
from routeproxy.config import SETTINGS_BY_KEY, RoutingMode, Settings, Tier, load_settings
from routeproxy.errors import ConfigError


def _settings(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Settings:
    return load_settings(getattr(args, "config", None), overrides=overrides or {})


def cmd_serve(args: argparse.Namespace) -> int:
    import structlog
    import uvicorn

    from routeproxy.app import create_app
    from routeproxy.logs import configure_logging
    from routeproxy.server import uvicorn_options
    from routeproxy.startup import check_startable

    if args.speed is not None and not args.simulate:
        print(
            "routeproxy serve: --speed applies only with --simulate (it paces the simulated upstreams)", file=sys.stderr
        )
        return 2
    overrides = _serve_overrides(args)
    settings = _settings(args, overrides)
    configure_logging(settings.logging)
    check_startable(settings, simulate=args.simulate)  # before the simulators start: nothing to clean up
    if args.simulate:
        overrides.update(_start_simulators(settings))
        # The local demo keeps its admin endpoints usable from this machine without a token (README, Security).
        if SETTINGS_BY_KEY["server.admin_loopback_without_token"].env not in os.environ:
            overrides["server.admin_loopback_without_token"] = True
        settings = _settings(args, overrides)
    _announce(settings, simulate=args.simulate)
    if settings.server.admin_token is None and settings.server.admin_loopback_without_token:
        structlog.get_logger("routeproxy").warning(
            "admin_open_on_loopback",
            note="no admin token: reset and config changes answer any loopback peer (local development only)",
        )
    options = uvicorn_options(settings)
    # After a graceful shutdown uvicorn restores the handlers it found and raises the signal again; with the
    # default SIGTERM handler that would end the process with status 143. A drained shutdown is a clean exit.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    if settings.server.workers == 1:
        uvicorn.run(create_app(settings), **options)
    else:
        # Child processes build their own app from the environment: hand them the same inputs.
        if args.config:
            os.environ["ROUTEPROXY_CONFIG"] = str(Path(args.config).resolve())
        for key, value in overrides.items():
            env = SETTINGS_BY_KEY[key].env
            if env:
                os.environ[env] = "" if value is None else str(value)
        # The workers share their Prometheus series through files here (prometheus_client's multiprocess mode,
        # which reads this variable when the workers import it).
        metrics_dir = tempfile.mkdtemp(prefix="routeproxy-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        try:
            uvicorn.run("routeproxy.app:app_from_environment", factory=True, workers=settings.server.workers, **options)
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


_SERVE_FLAGS = (
    ("host", "server.host"),
    ("port", "server.port"),
    ("workers", "server.workers"),
    ("speed", "simulator.speed"),
    ("enable_routing", "routing.enabled"),
    ("ratio", "routing.ab_test_ratio"),
    ("rules", "routing.rules"),
    ("redis_url", "counters.redis_url"),
    ("log_level", "logging.level"),
)


def _serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, flag) for flag, key in _SERVE_FLAGS if getattr(args, flag, None) is not None}


def _announce(settings: Settings, *, simulate: bool) -> None:
    """The start-up summary: readable lines on a console, one ``startup`` event in JSON logs."""
    import structlog

    from routeproxy.logs import console_format
    from routeproxy.startup import summary, summary_lines

    fields = summary(settings, simulate=simulate)
    if settings.logging.level not in ("debug", "info"):
        return  # an info event, like the JSON one, which the level filters out
    if console_format(settings.logging):
        print("\n".join(summary_lines(fields)), file=sys.stderr, flush=True)
    else:
        structlog.get_logger("routeproxy").info("startup", **fields)


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _start_simulators(settings: Settings) -> dict[str, Any]:
    """One simulated upstream per tier on a free loopback port; the tiers are pointed at them."""
    import logging

    import structlog

    from routeproxy.sim.faults import SIMULATOR_THREAD, DeliberateFaults
    from routeproxy.sim.simulator import create_simulator_app, seed_profile
    from routeproxy.sim.threadserver import ThreadedServer

    logging.getLogger("uvicorn.error").addFilter(DeliberateFaults())
    overrides: dict[str, Any] = {}
    for tier in Tier:
        profile = seed_profile(tier, settings.tiers[tier].model, speed=settings.simulator.speed)
        app = create_simulator_app(profile)
        server = ThreadedServer(app, host="127.0.0.1", port=0, name=SIMULATOR_THREAD).start()
        overrides[f"tiers.{tier}.base_url"] = f"{server.url}/v1"
        overrides[f"tiers.{tier}.kind"] = "vllm"
        overrides[f"tiers.{tier}.api_key"] = None
        structlog.get_logger("routeproxy").info(
            "simulated_upstream",
            tier=settings.tiers[tier].label,
            model=profile.model,
            url=server.url,
            speed=settings.simulator.speed,
            note="built-in simulator (demo/load-test upstream), not a real model",
        )
    return overrides


def cmd_simulate(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from routeproxy.sim.faults import DeliberateFaults
    from routeproxy.sim.simulator import Dialect, create_simulator_app, seed_profile

    tier = Tier(args.tier)
    model = args.model or _settings(args).tiers[tier].model
    profile = seed_profile(tier, model, speed=args.speed, dialect=Dialect(args.dialect))
    changes: dict[str, Any] = {}
    if args.ttft is not None:
        changes["ttft_s"] = args.ttft
    if args.tokens_per_second is not None:
        changes["tokens_per_s"] = args.tokens_per_second
    if args.tokens is not None:
        changes["answer_tokens"] = args.tokens
    if args.api_key is not None:
        changes["api_key"] = args.api_key
    if args.keepalive is not None:
        changes["keepalive_s"] = args.keepalive
    if args.weak_share is not None:
        changes["weak_share"] = args.weak_share
    if changes:
        from dataclasses import replace

        profile = replace(profile, **changes)
    print(
        f"routeproxy simulator (a demo/load-test upstream, not a model): {profile.model} as {profile.dialect} "
        f"on http://{args.host}:{args.port}/v1",
        file=sys.stderr,
    )
    logging.getLogger("uvicorn.error").addFilter(DeliberateFaults(any_thread=True))
    uvicorn.run(
        create_simulator_app(profile),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )
    return 0


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
    from routeproxy.parse import parse_chat_body, pop_hints

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
    from routeproxy.classify import Classifier, load_rules
    from routeproxy.route import Router

    return Router(settings, Classifier(load_rules(settings.routing.rules)))


def cmd_explain(args: argparse.Namespace) -> int:
    from routeproxy.route import explain

    settings = _settings(args, _routing_overrides(args))
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
    settings = _settings(args, _routing_overrides(args))
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
    from routeproxy.escalation import load_check_rules
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
    from routeproxy.escalation import load_check_rules
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


def cmd_eval(args: argparse.Namespace) -> int:
    if args.cascade:
        return _eval_cascade(args)
    if not args.file:
        print("routeproxy eval: give a labelled prompts file, or --cascade FILE of labelled answers", file=sys.stderr)
        return 2
    from routeproxy.classify import Classifier, load_rules
    from routeproxy.evaluate.routing import ExampleFileError, evaluate, format_report, load_examples, report_as_dict

    settings = _settings(args, _routing_overrides(args))
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


def cmd_bench(args: argparse.Namespace) -> int:
    from routeproxy.bench.workloads import DEFAULT_WORKLOADS, BenchOptions, render_json, render_text, run_bench

    if args.scenario == "rollout":
        return _bench_rollout(args)
    settings = _settings(args, _routing_overrides(args))
    workloads = list(args.workload or DEFAULT_WORKLOADS)
    if args.scenario:  # the seed scenario, and its cascade variant next to it
        workloads += [name for name in ("scenario", "cascade") if name not in workloads]
    options = BenchOptions(
        workloads=tuple(workloads),
        requests=args.requests,
        duration=args.duration,
        concurrency=tuple(args.concurrency or ()),
        workers=args.workers,
        redis_url=args.redis_url,
        upstream=args.upstream,
        speed=args.speed,
        rules=settings.routing.rules,
        small_model=settings.tiers[Tier.SMALL].model,
        large_model=settings.tiers[Tier.LARGE].model,
    )
    try:
        report = run_bench(options)
    except ValueError as exc:
        print(f"routeproxy bench: {exc}", file=sys.stderr)
        return 2
    print(render_json(report) if args.json else render_text(report))
    return 0


def _bench_rollout(args: argparse.Namespace) -> int:
    from routeproxy.bench.rollout import DEFAULT_CASES, Case, run_demo

    cases: tuple[Case, ...] = DEFAULT_CASES
    if args.quality:
        small, large = args.quality
        if not (0 <= small <= 1 and 0 <= large <= 1):
            print("routeproxy bench: --quality takes two satisfaction rates from 0 to 1", file=sys.stderr)
            return 2
        cases = (Case(f"3B {small:.2f} vs 8B {large:.2f}", small, large),)
    elif args.proxy:
        cases = cases[:1]  # a running proxy keeps its rollout state: one case, the one that ramps all the way
    run_demo(cases, max_requests=args.requests or 3000, proxy_url=args.proxy.rstrip("/") if args.proxy else None)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """The shared statistics as a table: read from Redis, or from a running proxy when counters are in memory."""
    import asyncio

    import httpx

    from routeproxy.analysis import format_ab_lines, format_rollout_lines
    from routeproxy.errors import CounterStoreUnavailable
    from routeproxy.logs import configure_logging
    from routeproxy.stats import format_stats_table

    overrides = {"counters.redis_url": args.redis_url} if args.redis_url else {}
    settings = _settings(args, overrides)
    configure_logging(settings.logging)  # log lines go to stderr, so --json output stays JSON
    if settings.counters.redis_url:
        try:
            stats = asyncio.run(_stats_from_redis(settings))
        except CounterStoreUnavailable as exc:
            print(f"routeproxy stats: cannot read {_redacted(settings.counters.redis_url)}: {exc}", file=sys.stderr)
            return 1
    else:
        url = args.proxy.rstrip("/") + "/v1/model-routing/stats"
        try:
            response = httpx.get(url, timeout=10, trust_env=False)
        except httpx.HTTPError as exc:
            print(f"routeproxy stats: no REDIS_URL, and the proxy at {url} did not answer: {exc}", file=sys.stderr)
            return 1
        if response.status_code != 200:
            print(f"routeproxy stats: {url} answered {response.status_code}", file=sys.stderr)
            return 1
        stats = response.json()
    if args.json:
        print(orjson.dumps(stats, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_stats_table(stats))
        if "ab_analysis" in stats:
            print("\n".join(["", *format_ab_lines(stats["ab_analysis"]), *format_rollout_lines(stats["rollout"])]))
    return 0


def _redacted(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


def _in_force(name: str, shared: Any, replicas: dict[str, dict[str, Any]], own: Any) -> Any:
    """A routing setting as the serving replicas apply it: the shared runtime value, else the replicas' own."""
    if shared is not None:
        return shared
    values = [about[name] for about in replicas.values() if name in about]
    if not values:
        print(
            f"routeproxy stats: no replica has flushed in the last few seconds; {name} is this machine's setting",
            file=sys.stderr,
        )
        return own
    if len(set(values)) > 1:
        print(f"routeproxy stats: replicas disagree on {name}: {sorted(set(map(str, values)))}", file=sys.stderr)
    return max(set(values), key=values.count)


async def _stats_from_redis(settings: Settings) -> dict[str, Any]:
    from routeproxy.admin import stats_json
    from routeproxy.controller import open_rollout
    from routeproxy.redis_store import RedisCounterStore

    config = settings.counters
    assert config.redis_url is not None
    store = RedisCounterStore(
        config.redis_url, config.namespace, settings.tier_labels, replica_id="routeproxy-stats-cli"
    )
    rollout = open_rollout(settings, store)
    try:
        snapshot, shared, replicas = await store.inspect()
        await rollout.refresh()
    finally:
        await rollout.close()
        await store.aclose()
    return stats_json(
        settings,
        snapshot,
        enabled=_in_force("enable_model_routing", shared.enable_model_routing, replicas, settings.routing.enabled),
        ratio=_in_force("ab_test_ratio", shared.ab_test_ratio, replicas, settings.routing.ab_test_ratio),
        rollout=rollout,
        queued=0,
        routing_mode=RoutingMode(_in_force("routing_mode", shared.routing_mode, replicas, settings.routing.mode.value)),
    )


def cmd_check_config(args: argparse.Namespace) -> int:
    """Fails exactly when ``serve`` (with the same flags) would fail at start, and prints its start-up summary."""
    from routeproxy.startup import check_startable, summary, summary_lines

    settings = _settings(args, _serve_overrides(args))
    check_startable(settings, simulate=args.simulate)
    print(f"config OK: {settings.source}")
    print("\n".join(summary_lines(summary(settings, simulate=args.simulate))))
    return 0


def _routing_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if getattr(args, "rules", None):
        overrides["routing.rules"] = args.rules
    if getattr(args, "ratio", None) is not None:
        overrides["routing.ab_test_ratio"] = args.ratio
    if getattr(args, "enable_routing", False):
        overrides["routing.enabled"] = True
    return overrides


def _setting_flag(sub: argparse.ArgumentParser, flag: str, key: str, **options: Any) -> None:
    """A flag that overrides one setting; its help is the setting's, with its default and variable."""
    setting = SETTINGS_BY_KEY[key]
    default = getattr(setting.default, "value", setting.default)
    shown = "unset" if default is None else default
    help_text = f"{setting.help} Default: {shown}; env {setting.env}.".replace("%", "%%")
    sub.add_argument(flag, help=help_text, default=None, **options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routeproxy", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.description = "OpenAI-compatible proxy that routes each prompt to a small or a large model."
    parser.add_argument("--version", action="version", version=f"routeproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--config", help="YAML config file (default: $ROUTEPROXY_CONFIG or config/routeproxy.yaml)")
        return sub

    def with_serve_flags(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.formatter_class = argparse.RawDescriptionHelpFormatter
        flag = _setting_flag
        flag(sub, "--host", "server.host")
        flag(sub, "--port", "server.port", type=int)
        flag(sub, "--workers", "server.workers", type=int)
        flag(sub, "--enable-routing", "routing.enabled", action=argparse.BooleanOptionalAction)
        flag(sub, "--ratio", "routing.ab_test_ratio", type=float)
        flag(sub, "--rules", "routing.rules")
        flag(sub, "--redis-url", "counters.redis_url")
        flag(sub, "--log-level", "logging.level", choices=["debug", "info", "warning", "error"])
        sub.add_argument(
            "--simulate",
            action="store_true",
            help="start the built-in simulated 3B/8B upstreams (demo and load tests; no GPU, no network)",
        )
        flag(sub, "--speed", "simulator.speed", type=float)
        return sub

    def with_routing(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--rules", help="rule set: general, poultry, or a YAML path (overrides routing.rules)")
        sub.add_argument("--ratio", type=float, help="ab_test_ratio to use (overrides AB_TEST_RATIO)")
        sub.add_argument("--enable-routing", action="store_true", help="act as if ENABLE_MODEL_ROUTING=true")
        return sub

    serve = with_serve_flags(with_config(commands.add_parser("serve", help="run the proxy")))
    serve.set_defaults(handler=cmd_serve)

    simulate = with_config(commands.add_parser("simulate", help="run a simulated OpenAI-compatible upstream"))
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=8101)
    simulate.add_argument(
        "--tier",
        choices=[tier.value for tier in Tier],
        default="small",
        help="latency profile and default model: small ~2.5 s, large ~4.5 s per answer",
    )
    simulate.add_argument("--model", help="served model name (default: the tier's model from config)")
    simulate.add_argument("--dialect", default="vllm", choices=["vllm", "tgi", "tgi-legacy", "hf"])
    simulate.add_argument("--speed", type=float, default=1.0, help="divide every delay by this factor")
    simulate.add_argument("--ttft", type=float, help="seconds to the first token")
    simulate.add_argument("--tokens-per-second", type=float)
    simulate.add_argument("--tokens", type=int, help="tokens in a typical answer")
    simulate.add_argument("--api-key", help="require this bearer key")
    simulate.add_argument("--keepalive", type=float, help="TGI-style ':' comment after this many idle seconds")
    simulate.add_argument(
        "--weak-share", type=float, help="share of prompts (by hash) answered with a short refusal: a weak small model"
    )
    simulate.set_defaults(handler=cmd_simulate)

    explain_cmd = with_routing(
        with_config(commands.add_parser("explain", help="show the routing decision for a prompt"))
    )
    explain_cmd.add_argument("prompt")
    explain_cmd.add_argument("--query-type", help="the seed's query_type hint, e.g. genetics_performance")
    explain_cmd.add_argument("--entities", help='the seed\'s entities hint as JSON, e.g. \'{"breed": "Ross 308"}\'')
    explain_cmd.add_argument("--json", action="store_true")
    explain_cmd.set_defaults(handler=cmd_explain)

    classify_cmd = with_routing(
        with_config(
            commands.add_parser(
                "classify",
                help="decisions for JSON lines ({id, messages, query_type?, entities?, user?}) in FILE or on stdin",
            )
        )
    )
    classify_cmd.add_argument("file", nargs="?", default="-", help="JSON lines file (default: - for stdin)")
    classify_cmd.add_argument(
        "--answers",
        metavar="FILE",
        help="instead: the cascade's answer check on JSON lines {id, messages, small_answer} (- for stdin); "
        "--rules then names the check rule set (default general)",
    )
    classify_cmd.set_defaults(handler=cmd_classify)

    eval_cmd = with_routing(with_config(commands.add_parser("eval", help="router metrics on a labelled JSONL file")))
    eval_cmd.add_argument("file", nargs="?")
    eval_cmd.add_argument(
        "--cascade",
        metavar="FILE",
        help="instead: the cascade's answer check on labelled answers (cascade-dev.jsonl); "
        "--rules then names the check rule set (default general)",
    )
    eval_cmd.add_argument(
        "--hold-tokens",
        type=int,
        help="with --cascade: the stream prefix the proxy holds, in tokens (default: the evaluator's, 128)",
    )
    eval_cmd.add_argument(
        "--leave-one-pair-out",
        action="store_true",
        help="with --cascade: fit the check's signal weights on all pairs but one and score that one, for each pair",
    )
    eval_cmd.add_argument(
        "--min-gap",
        type=float,
        help="with --leave-one-pair-out: leave out pairs whose all-large minus all-small quality is under this "
        "(default 0.05)",
    )
    eval_cmd.add_argument(
        "--timing", action="store_true", help="with --cascade: how long the check takes on answers of 2,000 characters"
    )
    eval_cmd.add_argument(
        "--fit",
        action="append",
        metavar="SIGNAL[,SIGNAL]",
        help="with --leave-one-pair-out: learn only these signals' weights (default every one); the others keep "
        "the rule set's weights",
    )
    eval_cmd.add_argument("--json", action="store_true")
    eval_cmd.add_argument("--random-draws", type=int, default=300, help="random routers for the random band")
    eval_cmd.set_defaults(handler=cmd_eval)

    bench = with_routing(
        with_config(commands.add_parser("bench", help="benchmark the proxy against a local upstream; classifier speed"))
    )
    bench.add_argument(
        "--workload",
        action="append",
        choices=["latency", "throughput", "stream", "paced", "memory", "classifier", "scenario", "cascade"],
        help="repeatable (default: every one but scenario and cascade)",
    )
    bench.add_argument(
        "--scenario",
        choices=["seed", "rollout"],
        help="seed: also run the seed's query-mix scenario and its cascade variant; "
        "rollout: only the rollout controller's demonstration",
    )
    bench.add_argument(
        "--quality",
        type=float,
        nargs=2,
        metavar=("SMALL", "LARGE"),
        help="--scenario rollout: one case with this true satisfaction of 3B and 8B (default: three cases)",
    )
    bench.add_argument("--requests", type=int, help="at most this many requests per run (each workload has a default)")
    bench.add_argument("--duration", type=float, help="at most this many seconds per run")
    bench.add_argument("--concurrency", type=int, action="append", help="repeatable (throughput default: 32 and 128)")
    bench.add_argument("--workers", type=int, default=1, help="also measure throughput with N proxy workers")
    bench.add_argument("--redis-url", help="count into this Redis (default: in-memory counters)")
    bench.add_argument("--upstream", help="use this upstream (http://127.0.0.1:PORT[/v1]) instead of starting one")
    bench.add_argument(
        "--proxy",
        help="--scenario rollout: drive this running proxy (e.g. serve --simulate with the rollout on) instead of one "
        "started in this process",
    )
    bench.add_argument("--speed", type=float, default=10.0, help="scenario: divide the seed's latencies by this")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(handler=cmd_bench)

    stats = with_config(commands.add_parser("stats", help="print the shared routing statistics"))
    stats.add_argument("--redis-url", help="read this Redis (default: REDIS_URL / counters.redis_url)")
    stats.add_argument("--proxy", default="http://127.0.0.1:8001", help="without Redis: the proxy to ask")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(handler=cmd_stats)

    check = with_serve_flags(
        with_config(
            commands.add_parser(
                "check-config",
                help="validate the configuration as `serve` would (same flags), print its start-up summary",
            )
        )
    )
    check.set_defaults(handler=cmd_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.handler(args)
    except ConfigError as exc:
        print(f"routeproxy: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
