"""The bench session: its options, and the processes shared by the workloads, started on first use and stopped at
the end."""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass
from urllib.parse import urlsplit

from routeproxy.bench.loadgen import check_loopback
from routeproxy.bench.procs import Cores, Proc, proxy_env, spawn, spawn_redis
from routeproxy.bench.run import Target

WORKLOADS = ("latency", "throughput", "stream", "paced", "memory", "classifier", "scenario", "cascade", "cache")
DEFAULT_WORKLOADS = ("latency", "throughput", "stream", "paced", "memory", "classifier")


@dataclass(frozen=True, slots=True)
class BenchOptions:
    workloads: tuple[str, ...] = DEFAULT_WORKLOADS
    requests: int | None = None  # overrides each workload's own cap
    duration: float | None = None  # seconds per run; overrides each workload's own cap
    concurrency: tuple[int, ...] = ()
    workers: int = 1
    redis_url: str | None = None  # "local": a private redis-server this bench starts
    upstream: str | None = None
    speed: float = 10.0  # scenario: the seed's latencies divided by this
    rules: str = "general"  # classifier workload's rule set
    small_model: str = "meta-llama/Llama-3.2-3B-Instruct"
    large_model: str = "meta-llama/Llama-3.1-8B-Instruct"


def parse_upstream(url: str) -> tuple[str, int, str]:
    """(host, port, base path ending in /v1) of a loopback upstream URL; ValueError for any other host."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"--upstream must be an http:// URL on 127.0.0.1, not {url!r}")
    host = check_loopback(parts.hostname)
    path = parts.path.rstrip("/")
    return host, parts.port or 80, path if path.endswith("/v1") else f"{path}/v1"


class Session:
    def __init__(self, options: BenchOptions, stack: ExitStack) -> None:
        self.options = options
        self.stack = stack
        self.cores = Cores(options.workers)
        self.procs: dict[str, Proc] = {}
        self.external = parse_upstream(options.upstream) if options.upstream else None

    def _keep(self, proc: Proc) -> Proc:
        self.stack.callback(proc.stop)
        return proc

    def upstream(self, kind: str) -> tuple[str, int, str, str]:
        """(host, port, base path, description) of the ``sim`` or ``static`` upstream, started on first use."""
        if self.external:
            host, port, base = self.external
            return host, port, base, f"given upstream {self.options.upstream}"
        if kind not in self.procs:
            if kind == "sim":
                args = ["routeproxy", "simulate", "--tier", "small", "--model", self.options.small_model]
                self.procs[kind] = self._keep(spawn("simulator", args, dict(os.environ), self.cores.rest, "/health"))
            else:
                args = ["routeproxy.bench.loadgen"]
                self.procs[kind] = self._keep(spawn("static upstream", args, dict(os.environ), self.cores.rest, "tcp"))
        description = (
            "simulator (Starlette, python -m routeproxy simulate)"
            if kind == "sim"
            else "static upstream (raw asyncio, python -m routeproxy.bench.loadgen): the simulator is too slow for this"
        )
        return "127.0.0.1", self.procs[kind].port, "/v1", description

    @property
    def redis_url(self) -> str | None:
        """The Redis the proxies count into (``--redis-url``; ``local`` starts one on first use), None: memory."""
        if self.options.redis_url != "local":
            return self.options.redis_url
        if "redis" not in self.procs:
            self.procs["redis"] = self._keep(spawn_redis(self.cores.rest))
        return f"redis://127.0.0.1:{self.procs['redis'].port}/0"

    def proxy(self, kind: str, *, workers: int = 1, fresh: bool = False, memory: bool = False) -> Proc:
        """The proxy in front of the ``kind`` upstream; ``memory``: with in-memory counters even with a Redis."""
        key = f"proxy:{kind}:{workers}:{'memory' if memory else 'default'}"
        if fresh or key not in self.procs:
            host, port, base, _ = self.upstream(kind)
            url = f"http://{host}:{port}{base}"
            env = proxy_env({"small": url, "large": url}, None if memory else self.redis_url)
            cpus = self.cores.proxy(workers)
            args = ["routeproxy", "serve", "--workers", str(workers)]
            proc = self._keep(spawn(f"proxy ({workers} worker(s))", args, env, cpus, "/healthz"))
            if fresh:
                return proc
            self.procs[key] = proc
        return self.procs[key]

    def targets(self, kind: str, *, workers: int = 1) -> tuple[Target, Target, str]:
        host, port, base, description = self.upstream(kind)
        direct = Target("direct", host, port, f"{base}/chat/completions", self.options.small_model)
        proxy = self.proxy(kind, workers=workers)
        label = "proxy" if workers == 1 else f"proxy x{workers} workers"
        through = Target(label, "127.0.0.1", proxy.port, "/v1/chat/completions", "auto", proxy)
        return direct, through, description

    def cap(self, requests: int, duration: float) -> tuple[int, float]:
        return self.options.requests or requests, self.options.duration or duration
