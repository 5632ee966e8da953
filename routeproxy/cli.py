"""The `routeproxy` command: a thin mapping of flags onto settings; the subcommands' bodies live in
``routeproxy.commands``. With settings/load.py, the only reader of the environment (``commands.serve`` also writes the
effective overrides there for ``--workers N`` child processes)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from routeproxy import __version__
from routeproxy.commands.bench import cmd_bench
from routeproxy.commands.quality import add_quality_parser
from routeproxy.commands.routing import cmd_classify, cmd_eval, cmd_explain
from routeproxy.commands.serve import cmd_check_config, cmd_serve, cmd_simulate
from routeproxy.commands.stats import cmd_stats
from routeproxy.errors import ConfigError
from routeproxy.settings import SETTINGS_BY_KEY, Tier


def _setting_flag(sub: argparse.ArgumentParser, flag: str, key: str, **options: Any) -> None:
    """A flag that overrides one setting; its help is the setting's, with its default and variable."""
    setting = SETTINGS_BY_KEY[key]
    default = getattr(setting.default, "value", setting.default)
    shown = "unset" if default is None else default
    env = f"{setting.env}" + "".join(f" (or {alias})" for alias in setting.aliases)
    help_text = f"{setting.help} Default: {shown}; env {env}.".replace("%", "%%")
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
        sub.add_argument("--ratio", type=float, help="ab_test_ratio to use (overrides ROUTEPROXY_AB_TEST_RATIO)")
        sub.add_argument("--enable-routing", action="store_true", help="act as if ROUTEPROXY_ENABLE_MODEL_ROUTING=true")
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
    explain_cmd.add_argument("--query-type", help="a query_type routing hint, e.g. genetics_performance")
    explain_cmd.add_argument("--entities", help='an entities routing hint as JSON, e.g. \'{"breed": "Ross 308"}\'')
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
    eval_cmd.add_argument(
        "file", nargs="?", help="labelled prompts, JSON lines: id, subset, prompt, weak_norm, strong_norm"
    )
    eval_cmd.add_argument(
        "--cascade",
        metavar="FILE",
        nargs="?",
        const="",
        help="instead: the cascade's answer check on labelled answers (JSON lines: id, messages, small_answer, pair, "
        "small_norm, large_norm), or with --feedback on your own traffic; --rules then names the check rule set "
        "(default general)",
    )
    eval_cmd.add_argument(
        "--feedback",
        metavar="SOURCE",
        help="with --cascade: fit the check's weights and threshold on your decisions and their feedback, from "
        "Redis (a redis:// URL) or a file written by --export",
    )
    eval_cmd.add_argument("--export", metavar="FILE", help="with --feedback: also write the rows read as JSON lines")
    eval_cmd.add_argument("--write", metavar="FILE", help="with --feedback: write the fitted rule set here")
    eval_cmd.add_argument(
        "--holdout", type=float, default=0.2, help="with --feedback: the last share of the period held out (0.2)"
    )
    eval_cmd.add_argument("--folds", type=int, default=5, help="with --feedback: cross-validation blocks (5)")
    eval_cmd.add_argument(
        "--share",
        type=float,
        help="with --feedback: the escalated share the fitted threshold aims at (default: the rule set's own)",
    )
    eval_cmd.add_argument(
        "--namespace", default="routeproxy", help="with --feedback from Redis: counters.namespace (routeproxy)"
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
        choices=["latency", "throughput", "stream", "paced", "memory", "classifier", "scenario", "cascade", "cache"],
        help="repeatable (default: every one but scenario, cascade and cache)",
    )
    bench.add_argument(
        "--scenario",
        choices=["mix", "rollout"],
        type=lambda name: "mix" if name == "seed" else name,  # "seed": the scenario's former name
        help="mix: also run a mixed query load through the proxy at ratios 0.3, 0.5 and 0.8, and its cascade "
        "variant; rollout: only the rollout controller's demonstration",
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
    bench.add_argument(
        "--redis-url",
        help="count into this Redis (default: in-memory counters); `local` starts a private redis-server. With it, "
        "the latency workload measures in-memory and Redis counters side by side",
    )
    bench.add_argument("--upstream", help="use this upstream (http://127.0.0.1:PORT[/v1]) instead of starting one")
    bench.add_argument(
        "--proxy",
        help="--scenario rollout: drive this running proxy (e.g. serve --simulate with the rollout on) instead of one "
        "started in this process",
    )
    bench.add_argument(
        "--fresh",
        action="store_true",
        help="--scenario rollout --proxy: start each case afresh (reset the proxy's counters, put its rollout back on "
        "the first step and resume it; admin requests: ROUTEPROXY_ADMIN_TOKEN is sent when set)",
    )
    bench.add_argument(
        "--speed", type=float, default=10.0, help="scenario: divide the simulated tiers' latencies by this"
    )
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(handler=cmd_bench)

    stats = with_config(commands.add_parser("stats", help="print the shared routing statistics"))
    stats.add_argument("--redis-url", help="read this Redis (default: ROUTEPROXY_REDIS_URL / counters.redis_url)")
    stats.add_argument("--proxy", default="http://127.0.0.1:8001", help="without Redis: the proxy to ask")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(handler=cmd_stats)

    add_quality_parser(commands)

    check = with_serve_flags(
        with_config(
            commands.add_parser(
                "check-config",
                help="validate the configuration as `serve` would (same flags), print its start-up summary",
            )
        )
    )
    check.add_argument(
        "--probe",
        action="store_true",
        help="also ask each tier's upstream for its /v1/models and say whether it serves the configured model id",
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
