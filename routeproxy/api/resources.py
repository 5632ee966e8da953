"""The per-process resources every handler shares (the lifespan state): settings, router, upstream pool,
counters and metrics, plus the concurrency limit and the routing switch in force now."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import Gauge
from starlette.requests import Request

from routeproxy.cache.front import ResponseCache
from routeproxy.cascade.check import CheckRules
from routeproxy.cascade.signals import Signal
from routeproxy.counters.metrics import Metrics
from routeproxy.counters.store import CounterStore
from routeproxy.errors import Overloaded
from routeproxy.quality.controller import RolloutController
from routeproxy.quality.decisions import DecisionStore
from routeproxy.routing.route import Router
from routeproxy.settings import RoutingMode, Settings
from routeproxy.wire.offload import Offload
from routeproxy.wire.upstream import UpstreamPool


@dataclass(slots=True)
class Resources:
    settings: Settings
    router: Router
    pool: UpstreamPool
    counters: CounterStore
    metrics: Metrics
    decisions: DecisionStore
    rollout: RolloutController
    check_rules: CheckRules  # the cascade's answer check, loaded at start so a bad rule set fails there
    cascade_signals: tuple[Signal, ...] = ()  # the check's plug-in signals (a verifier), built at start likewise
    client_key_digests: frozenset[bytes] = frozenset()
    inflight: int = 0
    draining: bool = False
    inflight_gauge: Gauge | None = None  # several workers: the shared gauge moves with every request
    cache: ResponseCache | None = None  # the response cache, when cache.enabled
    offload: Offload = field(default_factory=Offload)  # CPU work that grows with its input, off the event loop

    def __post_init__(self) -> None:
        self.inflight_gauge = self.metrics.shared_inflight

    @property
    def log_requests(self) -> bool:
        """Whether the per-request info line is written at all (skip building it when it would be dropped)."""
        return self.settings.logging.level in ("debug", "info")

    def admit(self) -> None:
        """Count a chat request in, or refuse it when the process is at its limit."""
        limit = self.settings.server.max_concurrent_requests
        if self.inflight >= limit:
            raise Overloaded(
                f"routeproxy is serving its limit of {limit} concurrent requests; retry shortly",
                code="too_many_concurrent_requests",
            )
        self.inflight += 1
        if self.inflight_gauge is not None:
            self.inflight_gauge.inc()

    def release(self) -> None:
        self.inflight -= 1
        if self.inflight_gauge is not None:
            self.inflight_gauge.dec()

    def routing_now(self) -> tuple[bool, float]:
        """(enabled, ab_test_ratio) in force now: the shared runtime config where set, else the settings.

        No I/O: the counter store refreshes its copy of the runtime config in the background.
        """
        runtime = self.counters.current_runtime
        enabled = (
            self.settings.routing.enabled if runtime.enable_model_routing is None else runtime.enable_model_routing
        )
        ratio = runtime.ab_test_ratio
        if ratio is None:  # nothing shared (yet, or Redis lost it): with the rollout on, no more than it last allowed
            ratio = self.rollout.fallback_ratio(self.settings.routing.ab_test_ratio)
        return enabled, ratio

    def mode_now(self) -> RoutingMode:
        """The routing mode in force now: the shared runtime config's when set, else the setting (no I/O)."""
        mode = self.counters.current_runtime.routing_mode
        return self.settings.routing.mode if mode is None else mode


def resources_of(request: Request) -> Resources:
    # The lifespan state, read from the scope: request.state builds a wrapper object on every access.
    resources: Resources = request.scope["state"]["resources"]
    return resources
