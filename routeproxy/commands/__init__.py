"""The bodies of the `routeproxy` subcommands, one module per owner (serve, routing, bench, stats); ``cli.py``
builds the parser and maps flags onto them. What every subcommand shares: loading settings with its flags'
overrides."""

from __future__ import annotations

import argparse
from typing import Any

from routeproxy.settings import Settings, load_settings


def settings_for(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Settings:
    return load_settings(getattr(args, "config", None), overrides=overrides or {})


def routing_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if getattr(args, "rules", None):
        overrides["routing.rules"] = args.rules
    if getattr(args, "ratio", None) is not None:
        overrides["routing.ab_test_ratio"] = args.ratio
    if getattr(args, "enable_routing", False):
        overrides["routing.enabled"] = True
    return overrides
