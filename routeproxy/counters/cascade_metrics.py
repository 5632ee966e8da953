"""The cascade's Prometheus series: checks and escalations by complexity, what escalations cost, the hold, the
answers explored, and the answer check's plug-in signals (a verifier): calls by outcome and their latency."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from routeproxy.counters.stats import SIGNAL_OUTCOMES, SIGNALS
from routeproxy.wire.relay import CascadeOutcome


class CascadeSeries:
    def __init__(
        self, registry: CollectorRegistry, prefix: str, buckets: tuple[float, ...], slots: Iterable[str]
    ) -> None:
        slots = tuple(slots)
        checked = Counter(
            f"{prefix}_cascade_checked", "Cascade: small answers checked, by complexity.", ["complexity"],
            registry=registry,
        )  # fmt: skip
        escalations = Counter(
            f"{prefix}_cascade_escalations", "Cascade: checked requests re-asked on the large tier, by complexity.",
            ["complexity"], registry=registry,
        )  # fmt: skip
        self.checked = {slot: checked.labels(slot) for slot in slots}
        self.escalations = {slot: escalations.labels(slot) for slot in slots}
        self.failures = Counter(
            f"{prefix}_cascade_escalation_failures",
            "Cascade: escalations whose large tier failed before answering (the client got the small answer).",
            registry=registry,
        )
        self.small_seconds = Counter(
            f"{prefix}_cascade_small_seconds", "Cascade: small-tier time spent on escalated requests.",
            registry=registry,
        )  # fmt: skip
        tokens = Counter(
            f"{prefix}_cascade_small_tokens", "Cascade: small-tier tokens spent on escalated requests, by type.",
            ["type"], registry=registry,
        )  # fmt: skip
        self.small_prompt, self.small_completion = tokens.labels("prompt"), tokens.labels("completion")
        self.added = Histogram(
            f"{prefix}_cascade_added_latency_seconds",
            "Cascade: escalated requests, request start to the large tier asked (the latency the cascade added).",
            buckets=buckets, registry=registry,
        )  # fmt: skip
        self.hold = Histogram(
            f"{prefix}_cascade_hold_seconds", "Cascade: checked streams, how long the first byte was held.",
            buckets=buckets, registry=registry,
        )  # fmt: skip
        self.mode = Gauge(
            f"{prefix}_cascade_mode",
            "1 in cascade routing mode, 0 in classify mode.",
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.explored = Counter(
            f"{prefix}_cascade_explored",
            "Cascade: answers the check would have escalated, kept on the small tier to be rated (explore_share).",
            registry=registry,
        )
        calls = Counter(
            f"{prefix}_cascade_signal_calls",
            "Cascade: plug-in signal readings (a verifier), by signal and outcome (ok, timeout, error, skipped).",
            ["signal", "outcome"], registry=registry,
        )  # fmt: skip
        seconds = Histogram(
            f"{prefix}_cascade_signal_seconds", "Cascade: how long each plug-in signal's reading took.", ["signal"],
            buckets=buckets, registry=registry,
        )  # fmt: skip
        self.calls = {(name, outcome): calls.labels(name, outcome) for name in SIGNALS for outcome in SIGNAL_OUTCOMES}
        self.seconds = {name: seconds.labels(name) for name in SIGNALS}

    def observe(self, cascade: CascadeOutcome, slot: str) -> None:
        self.checked[slot].inc()
        if cascade.hold_ms is not None:
            self.hold.observe(max(0.0, cascade.hold_ms) / 1000)
        if cascade.escalation_failed:
            self.failures.inc()
        if cascade.explored:
            self.explored.inc()
        for name, outcome, ms in cascade.signals:
            child = self.calls.get((name, outcome))
            if child is not None:
                child.inc()
                if outcome != "skipped":
                    self.seconds[name].observe(max(0.0, ms) / 1000)
        if not cascade.escalated:
            return
        self.escalations[slot].inc()
        self.small_seconds.inc(max(0.0, cascade.small_ms) / 1000)
        self.small_prompt.inc(cascade.small_prompt_tokens or 0)
        self.small_completion.inc(cascade.small_completion_tokens or 0)
        self.added.observe(max(0.0, cascade.added_ms) / 1000)
