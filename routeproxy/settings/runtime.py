"""The runtime config shared by all replicas (``PUT /v1/model-routing/config``): its value, the check of a change,
how a change merges into it, and how it is read back from the shared store's strings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from routeproxy.errors import InvalidRequest
from routeproxy.settings.declaration import RoutingMode

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """Settings shared by all replicas; None = use the replica's configured value."""

    ab_test_ratio: float | None = None
    enable_model_routing: bool | None = None
    routing_mode: RoutingMode | None = None


def check_runtime(change: RuntimeConfig) -> None:
    ratio = change.ab_test_ratio
    if ratio is not None and not (isinstance(ratio, (int, float)) and 0.0 <= ratio <= 1.0):
        raise InvalidRequest("ab_test_ratio must be a number from 0.0 to 1.0", param="ab_test_ratio")
    if change.routing_mode is not None and not isinstance(change.routing_mode, RoutingMode):
        raise InvalidRequest("routing_mode must be classify or cascade", param="routing_mode")


def merge_runtime(current: RuntimeConfig, change: RuntimeConfig) -> RuntimeConfig:
    return RuntimeConfig(
        ab_test_ratio=current.ab_test_ratio if change.ab_test_ratio is None else float(change.ab_test_ratio),
        enable_model_routing=current.enable_model_routing
        if change.enable_model_routing is None
        else change.enable_model_routing,
        routing_mode=current.routing_mode if change.routing_mode is None else change.routing_mode,
    )


def parse_runtime(raw: Mapping[str, str] | list[str] | None) -> RuntimeConfig:
    if isinstance(raw, list):
        raw = dict(zip(raw[::2], raw[1::2], strict=True))
    raw = raw or {}
    ratio: float | None = None
    routing: bool | None = None
    mode: RoutingMode | None = None
    if "ab_test_ratio" in raw:
        try:
            ratio = float(raw["ab_test_ratio"])
        except ValueError:
            ratio = None
        if ratio is not None and not 0.0 <= ratio <= 1.0:
            ratio = None
        if ratio is None:
            log.warning("counters.bad_runtime_value", field="ab_test_ratio", value=raw["ab_test_ratio"])
    if "enable_model_routing" in raw:
        text = raw["enable_model_routing"].strip().lower()
        routing = True if text in {"1", "true", "yes", "on"} else False if text in {"0", "false", "no", "off"} else None
        if routing is None:
            log.warning("counters.bad_runtime_value", field="enable_model_routing", value=text)
    if "routing_mode" in raw:
        try:
            mode = RoutingMode(raw["routing_mode"].strip().lower())
        except ValueError:
            log.warning("counters.bad_runtime_value", field="routing_mode", value=raw["routing_mode"])
    return RuntimeConfig(ab_test_ratio=ratio, enable_model_routing=routing, routing_mode=mode)
