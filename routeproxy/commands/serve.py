"""`routeproxy serve` and `check-config`: the proxy, optionally in front of simulated upstreams; `simulate`: one
simulated upstream on its own. Serve hands its effective overrides to ``--workers N`` child processes through the
environment."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from routeproxy.commands import settings_for
from routeproxy.settings import SETTINGS_BY_KEY, Settings, Tier

if TYPE_CHECKING:
    from routeproxy.sim.threadserver import ThreadedServer


def cmd_serve(args: argparse.Namespace) -> int:
    from routeproxy.api.logs import configure_logging
    from routeproxy.api.startup import check_startable

    if args.speed is not None and not args.simulate:
        print(
            "routeproxy serve: --speed applies only with --simulate (it paces the simulated upstreams)", file=sys.stderr
        )
        return 2
    overrides = _serve_overrides(args)
    settings = settings_for(args, overrides)
    configure_logging(settings.logging)
    check_startable(settings, simulate=args.simulate)  # before the simulators start: nothing to clean up
    simulators: list[ThreadedServer] = []
    try:
        return _serve(args, settings, overrides, simulators)
    finally:
        # Stopped once the proxy has drained (they are its upstreams), and before the interpreter exits: a daemon
        # thread still running its event loop while the interpreter finalises can crash the process (SIGSEGV).
        for server in simulators:
            server.stop()


def _serve(
    args: argparse.Namespace, settings: Settings, overrides: dict[str, Any], simulators: list[ThreadedServer]
) -> int:
    import uvicorn

    from routeproxy.api.app import create_app
    from routeproxy.api.heap import settle_heap
    from routeproxy.api.server import uvicorn_options

    if args.simulate:
        overrides.update(_start_simulators(settings, simulators))
        # The local demo keeps its admin endpoints usable from this machine without a token (README, Security).
        if SETTINGS_BY_KEY["server.admin_loopback_without_token"].env not in os.environ:
            overrides["server.admin_loopback_without_token"] = True
        settings = settings_for(args, overrides)
    options = uvicorn_options(settings)
    # After a graceful shutdown uvicorn restores the handlers it found and raises the signal again; with the
    # default SIGTERM handler that would end the process with status 143. A drained shutdown is a clean exit.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    if settings.server.workers == 1:
        config = uvicorn.Config(create_app(settings), **options)
        settle_heap()
        # Bound before the summary, so the summary names the port (with --port 0, the one the OS picked).
        listening = config.bind_socket()
        _announce(replace(settings, server=replace(settings.server, port=listening.getsockname()[1])), args)
        server = uvicorn.Server(config)
        with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run
            server.run(sockets=[listening])
        return 0 if server.started else 3  # as uvicorn.run: 3 when the app's start-up failed
    # Child processes build their own app from the environment: hand them the same inputs.
    if args.config:
        os.environ["ROUTEPROXY_CONFIG"] = str(Path(args.config).resolve())
    for key, value in overrides.items():
        env = SETTINGS_BY_KEY[key].env
        if env:
            os.environ[env] = "" if value is None else str(value)
    # The workers share their Prometheus series through files here (prometheus_client's multiprocess mode, which
    # reads this variable when the workers import it).
    metrics_dir = tempfile.mkdtemp(prefix="routeproxy-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    _announce(settings, args)  # uvicorn's supervisor binds the socket it hands to the workers
    try:
        uvicorn.run("routeproxy.api.app:app_from_environment", factory=True, workers=settings.server.workers, **options)
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


# simulate's flags and the SimProfile fields they change.
_SIMULATE_FLAGS = (
    ("ttft", "ttft_s"),
    ("tokens_per_second", "tokens_per_s"),
    ("tokens", "answer_tokens"),
    ("api_key", "api_key"),
    ("keepalive", "keepalive_s"),
    ("weak_share", "weak_share"),
)


def _serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, flag) for flag, key in _SERVE_FLAGS if getattr(args, flag, None) is not None}


def _announce(settings: Settings, args: argparse.Namespace) -> None:
    """The start-up summary (readable lines on a console, one ``startup`` event in JSON logs), then the notes and
    warnings on the configuration."""
    import structlog

    from routeproxy.api.logs import console_format
    from routeproxy.api.startup import summary, summary_lines

    fields = summary(settings, simulate=args.simulate)
    log = structlog.get_logger("routeproxy")
    if settings.logging.level in ("debug", "info"):  # an info event, like the JSON one, which the level filters out
        if console_format(settings.logging):
            print("\n".join(summary_lines(fields)), file=sys.stderr, flush=True)
        else:
            log.info("startup", **fields)
    for note in settings.notes:  # what check-config refuses (strict) or mentions, said once at start
        if note.strict:
            log.warning("config_warning", problem=note.message)
        else:
            log.info("config_note", note=note.message)
    if settings.server.admin_token is None and settings.server.admin_loopback_without_token:
        log.warning(
            "admin_open_on_loopback",
            note="no admin token: reset and config changes answer any loopback peer (local development only)",
        )


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _start_simulators(settings: Settings, started: list[ThreadedServer]) -> dict[str, Any]:
    """One simulated upstream per tier on a free loopback port (each added to ``started``); the tiers are pointed
    at them."""
    import logging

    import structlog

    from routeproxy.sim.faults import SIMULATOR_THREAD, DeliberateFaults
    from routeproxy.sim.profile import seed_profile
    from routeproxy.sim.simulator import create_simulator_app
    from routeproxy.sim.threadserver import ThreadedServer

    logging.getLogger("uvicorn.error").addFilter(DeliberateFaults())
    overrides: dict[str, Any] = {}
    for tier in Tier:
        profile = seed_profile(tier, settings.tiers[tier].model, speed=settings.simulator.speed)
        app = create_simulator_app(profile)
        server = ThreadedServer(app, host="127.0.0.1", port=0, name=SIMULATOR_THREAD, log_config=None).start()
        started.append(server)
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

    from routeproxy.api.logs import configure_logging
    from routeproxy.sim.faults import DeliberateFaults
    from routeproxy.sim.profile import seed_profile
    from routeproxy.sim.simulator import create_simulator_app
    from routeproxy.sim.wire import Dialect

    tier = Tier(args.tier)
    settings = settings_for(args)
    configure_logging(settings.logging)
    model = args.model or settings.tiers[tier].model
    profile = seed_profile(tier, model, speed=args.speed, dialect=Dialect(args.dialect))
    changes = {field: getattr(args, flag) for flag, field in _SIMULATE_FLAGS if getattr(args, flag) is not None}
    if changes:
        from dataclasses import replace

        profile = replace(profile, **changes)
    logging.getLogger("uvicorn.error").addFilter(DeliberateFaults(any_thread=True))
    config = uvicorn.Config(
        create_simulator_app(profile),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        log_config=None,  # its warnings and errors in the same format as the proxy's (logs.configure_logging)
    )
    listening = config.bind_socket()  # bound first, so the line below names the port (--port 0: the one picked)
    print(
        f"routeproxy simulator (a demo/load-test upstream, not a model): {profile.model} as {profile.dialect} "
        f"on http://{args.host}:{listening.getsockname()[1]}/v1",
        file=sys.stderr,
        flush=True,
    )
    server = uvicorn.Server(config)
    server.run(sockets=[listening])
    return 0 if server.started else 3  # as uvicorn.run: the app's start-up failed


def cmd_check_config(args: argparse.Namespace) -> int:
    """Fails when ``serve`` (with the same flags) would fail at start, and also on what ``serve`` only warns about
    (an unknown or misspelt variable); prints the start-up summary. ``--probe`` then asks each tier's upstream
    whether it serves the configured model."""
    from routeproxy.api.startup import check_startable, refuse_warnings, summary, summary_lines

    if args.probe and args.simulate:
        print("routeproxy check-config: --probe asks the configured upstreams; --simulate has none", file=sys.stderr)
        return 2
    settings = settings_for(args, _serve_overrides(args))
    check_startable(settings, simulate=args.simulate)
    refuse_warnings(settings)
    print(f"config OK: {settings.source}")
    print("\n".join(summary_lines(summary(settings, simulate=args.simulate))))
    for note in settings.notes:
        print(f"note: {note.message}")
    if args.probe:
        from routeproxy.api.probe import probe_tiers

        return probe_tiers(settings, out=print)
    return 0
