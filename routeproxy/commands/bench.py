"""`routeproxy bench`: the benchmark, the classifier's speed and the rollout demo (``routeproxy.bench``, imported
when the subcommand runs)."""

from __future__ import annotations

import argparse
import sys

from routeproxy.commands import routing_overrides, settings_for
from routeproxy.settings import Tier


def cmd_bench(args: argparse.Namespace) -> int:
    from routeproxy.bench.session import DEFAULT_WORKLOADS, BenchOptions
    from routeproxy.bench.workloads import render_json, render_text, run_bench

    if args.scenario == "rollout":
        return _bench_rollout(args)
    settings = settings_for(args, routing_overrides(args))
    workloads = list(args.workload or DEFAULT_WORKLOADS)
    if args.scenario:  # the mixed-load scenario, and its cascade variant next to it
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
    elif args.proxy and not args.fresh:
        cases = cases[:1]  # a running proxy keeps its rollout state: one case, the one that ramps all the way
    from routeproxy.bench.rollout import DemoRefused

    admin_token = settings_for(args).server.admin_token if args.proxy else None
    try:
        run_demo(
            cases,
            max_requests=args.requests or 12_000,
            proxy_url=args.proxy.rstrip("/") if args.proxy else None,
            fresh=args.fresh,
            admin_token=admin_token,
        )
    except DemoRefused as exc:
        print(f"routeproxy bench: {exc}", file=sys.stderr)
        return 1
    return 0
