"""`GET /metrics` passes Prometheus' own metric lint: `promtool check metrics` when promtool is installed (.ci/run
installs it), and always the same naming rules, written out here, so a machine without promtool checks them too."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.upstreams import LABELS

from routeproxy.counters.metrics import Metrics

# promtool's rules (client_golang's promlint), those a Python exporter can break.
TYPE_WORDS = ("counter", "gauge", "histogram", "summary", "untyped")
RESERVED_SUFFIXES = ("_count", "_sum", "_bucket")
UNIT_ABBREVIATIONS = ("_ms", "_us", "_ns", "_sec", "_secs", "_min", "_mins", "_kb", "_mb", "_gb", "_pct")
CAMEL = re.compile(r"[a-z][A-Z]")


def exposition() -> str:
    body, _ = Metrics(LABELS).render()
    return body.decode()


def lint(text: str) -> list[str]:
    problems = []
    for family in text_string_to_metric_families(text):
        name = family.name
        exposed = name + "_total" if family.type == "counter" else name
        for word in TYPE_WORDS:
            if f"_{word}_" in exposed or exposed.endswith(f"_{word}"):
                problems.append(f"{exposed}: metric name should not include type '{word}'")
        if family.type not in ("histogram", "summary") and exposed.endswith(RESERVED_SUFFIXES):
            problems.append(f"{exposed}: non-histogram and non-summary metrics should not have a reserved suffix")
        if family.type != "counter" and exposed.endswith("_total"):
            problems.append(f'{exposed}: non-counter metrics should not have "_total" suffix')
        if ":" in exposed or CAMEL.search(exposed):
            problems.append(f"{exposed}: reserved characters or camelCase in the name")
        if any(f"{unit}_" in exposed + "_" for unit in UNIT_ABBREVIATIONS):
            problems.append(f"{exposed}: abbreviated unit in the name")
        if not family.documentation:
            problems.append(f"{exposed}: no help text")
        for sample in family.samples:
            if sample.name.endswith("_created"):
                problems.append(f"{sample.name}: a _created series")
            for label in sample.labels:
                if CAMEL.search(label) or (label == "le" and family.type != "histogram"):
                    problems.append(f"{exposed}: label {label!r}")
    return sorted(set(problems))


def test_the_lint_rules_catch_what_promtool_reports() -> None:
    # The two names promtool warned about before, and a _created series: the rules above must see each.
    bad = (
        "# HELP x_counter_flush_lag_seconds h\n# TYPE x_counter_flush_lag_seconds gauge\n"
        "x_counter_flush_lag_seconds 0\n"
        "# HELP x_feedback_count h\n# TYPE x_feedback_count gauge\nx_feedback_count 0\n"
        "# HELP x_requests_total h\n# TYPE x_requests_total counter\nx_requests_total 0\n"
        "# HELP x_requests_created h\n# TYPE x_requests_created gauge\nx_requests_created 1.7e9\n"
    )
    assert len(lint(bad)) == 3, lint(bad)


def test_metrics_follow_the_naming_rules() -> None:
    assert lint(exposition()) == []


def test_metrics_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed: .ci/run installs it")
        pytest.skip("promtool is not installed (Debian's prometheus package has it; .ci/run installs it)")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=exposition(), capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
