"""YAML + environment -> frozen, validated settings.

Every setting is declared once, per area in ``server.py``, ``routing.py``, ``tiers.py`` and ``quality.py``
(assembled into ``SETTINGS`` here), with its YAML key, its environment variable, its default and its help text.
The README's settings table is generated from (and tested against) that declaration.

Precedence, highest first: explicit overrides (CLI flags) > environment > YAML file > default.
Nothing outside this module (which hands it to ``tier_config.tier_config``) and the command line (``cli.py``,
``commands/``) reads the environment.
"""

from __future__ import annotations

import difflib
import enum
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from routeproxy.errors import ConfigError
from routeproxy.settings.declaration import RoutingMode, Setting, StickyKey, Tier, _key_list
from routeproxy.settings.files import default_config_path, read_yaml_tree
from routeproxy.settings.quality import COUNTER_SETTINGS, QUALITY_SETTINGS
from routeproxy.settings.routing import CASCADE_SETTINGS, ROUTING_SETTINGS
from routeproxy.settings.server import LOG_SETTINGS, SERVER_SETTINGS, SIMULATOR_SETTINGS
from routeproxy.settings.tier_config import TierConfig, tier_config
from routeproxy.settings.tiers import TIER_SETTINGS

SETTINGS: tuple[Setting, ...] = (
    *SERVER_SETTINGS,
    *ROUTING_SETTINGS,
    *CASCADE_SETTINGS,
    *TIER_SETTINGS,
    *COUNTER_SETTINGS,
    *QUALITY_SETTINGS,
    *LOG_SETTINGS,
    *SIMULATOR_SETTINGS,
)

SETTINGS_BY_KEY: Mapping[str, Setting] = {setting.key: setting for setting in SETTINGS}


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str
    port: int
    workers: int
    max_body_bytes: int
    max_concurrent_requests: int
    drain_seconds: float
    header_timeout: float
    body_timeout: float
    max_header_bytes: int
    max_headers: int
    api_keys: frozenset[str] = field(repr=False)
    admin_token: str | None = field(repr=False)
    admin_loopback_without_token: bool = False
    cors_origins: tuple[str, ...] = ()
    dashboard: bool = True
    keepalive_timeout: float = 75.0


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    enabled: bool
    schedule: tuple[float, ...]
    min_hold_s: float
    min_feedback: int
    rollback_to: str
    interval_s: float


@dataclass(frozen=True, slots=True)
class QualityConfig:
    review_at_pct: float
    rollback_at_pct: float
    min_feedback_per_tier: int
    verdict_uses_implicit: bool
    decision_ttl_s: float
    max_remembered: int
    max_queued_feedback: int
    regeneration_window_s: float


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    enabled: bool
    ab_test_ratio: float
    sticky_key: StickyKey
    sticky_header: str
    rules: str
    auto_model: str
    log_preview_chars: int
    fallback_small_to_large: bool
    fallback_large_to_small: bool
    rollout: RolloutConfig
    passthrough_tier: Tier = Tier.LARGE
    mode: RoutingMode = RoutingMode.CLASSIFY

    def fallback_for(self, tier: Tier) -> Tier | None:
        """The tier to retry on when ``tier`` fails before answering, if that fallback is on."""
        enabled = self.fallback_small_to_large if tier is Tier.SMALL else self.fallback_large_to_small
        return tier.other if enabled else None


@dataclass(frozen=True, slots=True)
class CounterConfig:
    redis_url: str | None
    namespace: str
    baseline_latency_ms: float | None


@dataclass(frozen=True, slots=True)
class CascadeConfig:
    rules: str = "general"
    hold_tokens: int = 128
    hold_ms: int = 3000
    request_logprobs: bool = False


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: str
    level: str


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    speed: float


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerConfig
    routing: RoutingConfig
    tiers: Mapping[Tier, TierConfig]
    counters: CounterConfig
    logging: LogConfig
    simulator: SimulatorConfig
    quality: QualityConfig
    cascade: CascadeConfig = CascadeConfig()
    source: str = "defaults"
    values: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def tier_labels(self) -> dict[Tier, str]:
        """Each tier's name in stats, metrics, logs and Redis fields (``tiers.<tier>.label``)."""
        return {tier: config.label for tier, config in self.tiers.items()}


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and key not in SETTINGS_BY_KEY:
            yield from _flatten(value, f"{key}.")
        else:
            yield key, value


def did_you_mean(key: str) -> str:
    """ " (did you mean 'routing.enabled'?)" for the nearest setting, or "" when none is near."""
    near = difflib.get_close_matches(key, SETTINGS_BY_KEY, n=1, cutoff=0.75)
    return f" (did you mean {near[0]!r}?)" if near else ""


def read_yaml(path: Path) -> dict[str, Any]:
    tree = read_yaml_tree(path, "config file")
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    flat: dict[str, Any] = {}
    for key, value in _flatten(tree):
        if key not in SETTINGS_BY_KEY:
            raise ConfigError(f"{path}: unknown setting {key!r}{did_you_mean(key)}")
        flat[key] = value
    return flat


def load_settings(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the YAML file, apply the environment and overrides, validate, and freeze."""
    environ = os.environ if environ is None else environ
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(SETTINGS_BY_KEY))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}{did_you_mean(unknown[0])}")
    if path is None and environ.get("ROUTEPROXY_CONFIG"):
        path = environ["ROUTEPROXY_CONFIG"]
    config_path = Path(path) if path is not None else default_config_path()
    from_file = read_yaml(config_path) if config_path is not None else {}

    values: dict[str, Any] = {}
    key_sources: dict[str, str] = {}
    for setting in SETTINGS:
        if setting.key in overrides:
            raw, where = overrides[setting.key], "command line"
        elif setting.env and setting.env in environ:
            raw, where = environ[setting.env], f"environment variable {setting.env}"
        elif setting.key in from_file:
            raw, where = from_file[setting.key], str(config_path)
        else:
            raw, where = setting.default, "default"
        try:
            values[setting.key] = setting.convert(raw)
        except ValueError as exc:
            raise ConfigError(f"{setting.key} = {raw!r} (from {where}): {exc}") from None
        key_sources[setting.key] = where

    tiers = {tier: tier_config(tier, values, environ) for tier in Tier}
    if tiers[Tier.SMALL].model == tiers[Tier.LARGE].model:
        raise ConfigError(
            f"tiers.small.model and tiers.large.model are both {tiers[Tier.SMALL].model!r}: "
            "a pinned request could not tell the tiers apart"
        )
    if tiers[Tier.SMALL].label == tiers[Tier.LARGE].label:
        raise ConfigError(
            f"tiers.small.label and tiers.large.label are both {tiers[Tier.SMALL].label!r}: "
            "the stats could not tell the tiers apart"
        )
    if values["routing.auto_model"] in (tiers[Tier.SMALL].model, tiers[Tier.LARGE].model):
        raise ConfigError(f"routing.auto_model = {values['routing.auto_model']!r} is also a tier's model id")
    if values["quality.review_at_pct"] > values["quality.rollback_at_pct"]:
        raise ConfigError(
            f"quality.review_at_pct = {values['quality.review_at_pct']} is above "
            f"quality.rollback_at_pct = {values['quality.rollback_at_pct']}"
        )
    return Settings(
        server=ServerConfig(
            host=values["server.host"],
            port=values["server.port"],
            workers=values["server.workers"],
            max_body_bytes=values["server.max_body_bytes"],
            max_concurrent_requests=values["server.max_concurrent_requests"],
            drain_seconds=values["server.drain_seconds"],
            header_timeout=values["server.header_timeout"],
            body_timeout=values["server.body_timeout"],
            max_header_bytes=values["server.max_header_bytes"],
            max_headers=values["server.max_headers"],
            api_keys=frozenset(values["server.api_keys"]) | _read_key_file(values["server.api_keys_file"]),
            admin_token=values["server.admin_token"],
            admin_loopback_without_token=values["server.admin_loopback_without_token"],
            cors_origins=values["server.cors_origins"],
            dashboard=values["server.dashboard"],
            keepalive_timeout=values["server.keepalive_timeout"],
        ),
        routing=RoutingConfig(
            enabled=values["routing.enabled"],
            ab_test_ratio=values["routing.ab_test_ratio"],
            sticky_key=values["routing.sticky_key"],
            sticky_header=values["routing.sticky_header"].lower(),
            rules=values["routing.rules"],
            auto_model=values["routing.auto_model"],
            log_preview_chars=values["routing.log_preview_chars"],
            fallback_small_to_large=values["routing.fallback_small_to_large"],
            fallback_large_to_small=values["routing.fallback_large_to_small"],
            rollout=RolloutConfig(
                enabled=values["routing.rollout.enabled"],
                schedule=values["routing.rollout.schedule"],
                min_hold_s=values["routing.rollout.min_hold_s"],
                min_feedback=values["routing.rollout.min_feedback"],
                rollback_to=values["routing.rollout.rollback_to"],
                interval_s=values["routing.rollout.interval_s"],
            ),
            passthrough_tier=values["routing.passthrough_tier"],
            mode=values["routing.mode"],
        ),
        tiers=tiers,
        counters=CounterConfig(
            redis_url=values["counters.redis_url"],
            namespace=values["counters.namespace"],
            baseline_latency_ms=values["counters.baseline_latency_ms"],
        ),
        logging=LogConfig(format=values["logging.format"], level=values["logging.level"]),
        simulator=SimulatorConfig(speed=values["simulator.speed"]),
        quality=QualityConfig(
            review_at_pct=values["quality.review_at_pct"],
            rollback_at_pct=values["quality.rollback_at_pct"],
            min_feedback_per_tier=values["quality.min_feedback_per_tier"],
            verdict_uses_implicit=values["quality.verdict_uses_implicit"],
            decision_ttl_s=values["quality.decision_ttl_s"],
            max_remembered=values["quality.max_remembered"],
            max_queued_feedback=values["quality.max_queued_feedback"],
            regeneration_window_s=values["quality.regeneration_window_s"],
        ),
        cascade=CascadeConfig(
            rules=values["cascade.rules"],
            hold_tokens=values["cascade.hold_tokens"],
            hold_ms=values["cascade.hold_ms"],
            request_logprobs=values["cascade.request_logprobs"],
        ),
        source=str(config_path) if config_path is not None else "defaults",
        values=values,
    )


def _read_key_file(path: str | None) -> frozenset[str]:
    if path is None:
        return frozenset()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"server.api_keys_file = {path!r}: cannot read it ({exc.strerror})") from None
    keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    try:
        return frozenset(_key_list(keys))
    except ValueError as exc:
        raise ConfigError(f"server.api_keys_file = {path!r}: {exc}") from None


def settings_table() -> str:
    """The README's settings table, in Markdown."""
    rows = ["| YAML key | environment variable | default | what it does |", "| --- | --- | --- | --- |"]
    for setting in SETTINGS:
        default = setting.default.value if isinstance(setting.default, enum.Enum) else setting.default
        shown = "unset" if default is None else f"`{default}`"
        rows.append(f"| `{setting.key}` | `{setting.env}` | {shown} | {setting.help} |")
    return "\n".join(rows)
