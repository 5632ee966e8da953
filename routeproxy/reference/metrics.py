"""The metrics reference: every series `GET /metrics` serves, read from a fresh registry of the proxy's own."""

from __future__ import annotations

from prometheus_client.metrics_core import Metric

from routeproxy.counters.metrics import Metrics
from routeproxy.reference.markdown import anchored, cell, code, table
from routeproxy.settings import SETTINGS_BY_KEY, Tier

# What each family is exposed as in the text format.
SUFFIXES: dict[str, tuple[str, ...]] = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def label_values(family: Metric) -> dict[str, list[str]]:
    """Each label with the values it takes (every child exists at zero from the start)."""
    values: dict[str, list[str]] = {}
    for sample in family.samples:
        for label, value in sample.labels.items():
            if label != "le" and value not in values.setdefault(label, []):
                values[label].append(value)
    return values


def series_cell(family: Metric) -> str:
    names = [family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))]
    return "<br>".join([anchored(names[0], names[0]), *(code(name) for name in names[1:])])


def metrics_reference() -> str:
    # The tiers under their default labels (tiers.<tier>.label), as a fresh install names them.
    labels = {tier: str(SETTINGS_BY_KEY[f"tiers.{tier.value}.label"].default) for tier in Tier}
    rows = [
        (
            series_cell(family),
            family.type,
            "<br>".join(
                f"{code(label)}: {', '.join(code(value) for value in values)}"
                for label, values in label_values(family).items()
            ),
            cell(family.documentation),
        )
        for family in Metrics(labels).registry.collect()
    ]
    return table(("series", "type", "labels and their values", "what it measures"), rows)
