"""YAML + environment -> frozen, validated settings.

Every setting is declared once, per area in ``server.py``, ``routing.py``, ``tiers.py`` and ``quality.py``
(assembled into ``SETTINGS`` here), with its YAML key, its environment variable, its default and its help text.
The README's settings table is generated from (and tested against) that declaration.

Precedence, highest first: explicit overrides (CLI flags) > environment (a setting's ``ROUTEPROXY_*`` variable,
then its older alias) > YAML file > default.
Nothing outside this module (which hands it to ``tier_config.tier_config``) and the command line (``cli.py``,
``commands/``) reads the environment.
"""

from __future__ import annotations

import difflib
import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from routeproxy.errors import ConfigError
from routeproxy.settings.cache import CACHE_SETTINGS, CacheConfig
from routeproxy.settings.checks import ConfigNote, environment_notes, from_environment
from routeproxy.settings.declaration import RoutingMode, Setting, StickyKey, Tier, _key_list
from routeproxy.settings.files import default_config_path, read_yaml_entries
from routeproxy.settings.quality import COUNTER_SETTINGS, QUALITY_SETTINGS
from routeproxy.settings.redaction import redacted_url
from routeproxy.settings.routing import CASCADE_SETTINGS, ROUTING_SETTINGS
from routeproxy.settings.server import LOG_SETTINGS, SERVER_SETTINGS, SIMULATOR_SETTINGS
from routeproxy.settings.tier_config import TierConfig, tier_config
from routeproxy.settings.tiers import TIER_SETTINGS
from routeproxy.settings.upstream_url import base_url_note

SETTINGS: tuple[Setting, ...] = (
    *SERVER_SETTINGS,
    *ROUTING_SETTINGS,
    *CASCADE_SETTINGS,
    *TIER_SETTINGS,
    *COUNTER_SETTINGS,
    *QUALITY_SETTINGS,
    *LOG_SETTINGS,
    *SIMULATOR_SETTINGS,
    *CACHE_SETTINGS,
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
class VerifierConfig:
    kind: str = "none"  # none, classify, score, pooling, judge (routeproxy.cascade.verifier)
    url: str | None = None
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    deadline_ms: int = 300
    good_label: int = -1


@dataclass(frozen=True, slots=True)
class CascadeConfig:
    rules: str = "general"
    hold_tokens: int = 128
    hold_ms: int = 3000
    request_logprobs: bool = False
    explore_share: float = 0.0
    verifier: VerifierConfig = VerifierConfig()


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
    cache: CacheConfig = field(default_factory=CacheConfig)
    source: str = "defaults"
    values: Mapping[str, Any] = field(default_factory=dict, repr=False)
    # Probable mistakes that stop nothing (an unknown variable, say): serve warns, check-config refuses the strict.
    notes: tuple[ConfigNote, ...] = ()

    @property
    def tier_labels(self) -> dict[Tier, str]:
        """Each tier's name in stats, metrics, logs and Redis fields (``tiers.<tier>.label``)."""
        return {tier: config.label for tier, config in self.tiers.items()}


def did_you_mean(key: str) -> str:
    """ " (did you mean 'routing.enabled'?)" for the nearest setting, or "" when none is near."""
    near = difflib.get_close_matches(key, SETTINGS_BY_KEY, n=1, cutoff=0.75)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _is_setting(key: str) -> bool:
    return key in SETTINGS_BY_KEY


def _read_file(path: Path, problems: list[str]) -> dict[str, tuple[Any, str]]:
    """The file's settings as key -> (value, where it is written); unknown keys and the file's shape go to
    ``problems``, all of them."""
    entries, shape = read_yaml_entries(path, "config file", _is_setting)
    problems.extend(shape)
    found: dict[str, tuple[Any, str]] = {}
    for entry in entries:
        if entry.key in SETTINGS_BY_KEY:
            found[entry.key] = (entry.value, f"{path} line {entry.line}")
        else:
            problems.append(f"{path} line {entry.line}: unknown setting {entry.key!r}{did_you_mean(entry.key)}")
    return found


def _cross_checks(values: Mapping[str, Any], tiers: Mapping[Tier, TierConfig]) -> list[str]:
    """What no single setting can say wrong by itself."""
    problems = []
    small, large = tiers[Tier.SMALL], tiers[Tier.LARGE]
    if small.model == large.model:
        problems.append(
            f"tiers.small.model and tiers.large.model are both {small.model!r}: "
            "a pinned request could not tell the tiers apart"
        )
    if small.label == large.label:
        problems.append(
            f"tiers.small.label and tiers.large.label are both {small.label!r}: "
            "the stats could not tell the tiers apart"
        )
    if values["routing.auto_model"] in (small.model, large.model):
        problems.append(f"routing.auto_model = {values['routing.auto_model']!r} is also a tier's model id")
    if values["quality.review_at_pct"] > values["quality.rollback_at_pct"]:
        problems.append(
            f"quality.review_at_pct = {values['quality.review_at_pct']} is above "
            f"quality.rollback_at_pct = {values['quality.rollback_at_pct']}"
        )
    return problems


def _refuse(problems: list[str]) -> ConfigError:
    """One error for all the problems: one line when there is one, else a list."""
    if len(problems) == 1:
        return ConfigError(problems[0])
    return ConfigError(f"{len(problems)} problems:\n" + "\n".join(f"  - {problem}" for problem in problems))


def load_settings(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the YAML file, apply the environment and overrides, validate, and freeze.

    Every problem is found before any is reported: one ConfigError lists them all (a YAML syntax error, which the
    parser cannot get past, excepted). What is probably a mistake but stops nothing goes to ``Settings.notes``."""
    environ = os.environ if environ is None else environ
    overrides = overrides or {}
    notes = environment_notes(SETTINGS, environ)
    problems = [f"unknown setting {key!r}{did_you_mean(key)}" for key in sorted(set(overrides) - set(SETTINGS_BY_KEY))]
    if path is None and environ.get("ROUTEPROXY_CONFIG"):
        path = environ["ROUTEPROXY_CONFIG"]
    config_path = Path(path) if path is not None else default_config_path()
    from_file = _read_file(config_path, problems) if config_path is not None else {}

    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.key in overrides:
            raw, where = overrides[setting.key], "command line"
        elif (found := from_environment(setting, environ)) is not None:
            raw, where = found[0], f"environment variable {found[1]}"
        elif setting.key in from_file:
            raw, where = from_file[setting.key]
        else:
            raw, where = setting.default, "default"
        try:
            values[setting.key] = setting.convert(raw)
        except ValueError as exc:
            shown = redacted_url(raw) if isinstance(raw, str) and "://" in raw else raw  # a URL's password stays out
            problems.append(f"{setting.key} = {shown!r} (from {where}): {exc}")
    if problems:  # the checks below need every value
        raise _refuse(problems + [note.message for note in notes if note.strict])

    tiers: dict[Tier, TierConfig] = {}
    for tier in Tier:
        try:
            tiers[tier] = tier_config(tier, values, environ)
        except ConfigError as exc:
            problems.append(str(exc))
    try:
        api_keys = frozenset(values["server.api_keys"]) | _read_key_file(values["server.api_keys_file"])
    except ConfigError as exc:
        problems.append(str(exc))
    if len(tiers) == len(Tier):
        problems.extend(_cross_checks(values, tiers))
    if problems:
        raise _refuse(problems + [note.message for note in notes if note.strict])
    for tier in Tier:
        if (note := base_url_note(f"tiers.{tier}.base_url", tiers[tier].base_url)) is not None:
            notes.append(ConfigNote(note, strict=False))
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
            api_keys=api_keys,
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
            explore_share=values["cascade.explore_share"],
            verifier=VerifierConfig(
                kind=values["cascade.verifier.kind"],
                url=values["cascade.verifier.url"],
                model=values["cascade.verifier.model"],
                api_key=values["cascade.verifier.api_key"],
                deadline_ms=values["cascade.verifier.deadline_ms"],
                good_label=values["cascade.verifier.good_label"],
            ),
        ),
        cache=CacheConfig(
            enabled=values["cache.enabled"],
            redis_url=values["cache.redis_url"],
            requests=values["cache.requests"],
            multiple_choices=values["cache.multiple_choices"],
            ttl_s=values["cache.ttl_s"],
            max_entry_bytes=values["cache.max_entry_bytes"],
            max_bytes=values["cache.max_bytes"],
        ),
        source=str(config_path) if config_path is not None else "defaults",
        values=values,
        notes=tuple(notes),
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
        aliases = "".join(f" (or `{alias}`)" for alias in setting.aliases)
        rows.append(f"| `{setting.key}` | `{setting.env}`{aliases} | {shown} | {setting.help} |")
    return "\n".join(rows)
