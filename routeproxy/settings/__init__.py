"""Settings: each declared once (per area: ``server``, ``routing``, ``tiers``, ``quality``), loaded from YAML, the
environment and flags into frozen, validated dataclasses (``load``). The names the rest of the package uses are
re-exported here."""

from routeproxy.settings.cache import CacheConfig
from routeproxy.settings.checks import ConfigNote
from routeproxy.settings.declaration import RoutingMode, Setting, StickyKey, Tier, UpstreamKind
from routeproxy.settings.load import (
    SETTINGS,
    SETTINGS_BY_KEY,
    CascadeConfig,
    CounterConfig,
    LogConfig,
    QualityConfig,
    RolloutConfig,
    RoutingConfig,
    ServerConfig,
    Settings,
    SimulatorConfig,
    VerifierConfig,
    load_settings,
    settings_table,
)

__all__ = [
    "SETTINGS",
    "SETTINGS_BY_KEY",
    "CacheConfig",
    "CascadeConfig",
    "ConfigNote",
    "CounterConfig",
    "LogConfig",
    "QualityConfig",
    "RolloutConfig",
    "RoutingConfig",
    "RoutingMode",
    "ServerConfig",
    "Setting",
    "Settings",
    "SimulatorConfig",
    "StickyKey",
    "Tier",
    "UpstreamKind",
    "VerifierConfig",
    "load_settings",
    "settings_table",
]
