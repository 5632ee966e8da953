"""The README states facts the code owns; these tests fail when the two drift apart."""

from __future__ import annotations

from pathlib import Path

from routeproxy.counters.keys import KEY_LAYOUT_MARKDOWN, PERIOD_RULES_MARKDOWN
from routeproxy.settings import settings_table

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_settings_table_is_current() -> None:
    assert settings_table() in README, "paste routeproxy.settings.settings_table() into the README"


def test_redis_key_layout_is_current() -> None:
    assert KEY_LAYOUT_MARKDOWN.strip() in README, "paste routeproxy.counters.keys.KEY_LAYOUT_MARKDOWN into the README"
    assert PERIOD_RULES_MARKDOWN.strip() in README, (
        "paste routeproxy.counters.keys.PERIOD_RULES_MARKDOWN into the README"
    )


def test_quick_start_has_the_two_commands() -> None:
    assert "pip install . && routeproxy serve --simulate" in README
    assert "pip install -e '.[test]' && pytest" in README


def test_ci_runs_the_readmes_test_command() -> None:
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "pip install -e '.[test]' && pytest" in ci
