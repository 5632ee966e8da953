"""The README and the docs state facts the code owns; these tests fail when the two drift apart."""

from __future__ import annotations

from pathlib import Path

from routeproxy.counters.keys import KEY_LAYOUT_MARKDOWN, PERIOD_RULES_MARKDOWN
from routeproxy.settings import settings_table

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SETTINGS_PAGE = (ROOT / "docs" / "reference" / "settings.md").read_text()
STATISTICS_PAGE = (ROOT / "docs" / "concepts" / "statistics.md").read_text()


def test_settings_table_is_current() -> None:
    assert settings_table() in SETTINGS_PAGE, (
        "paste routeproxy.settings.settings_table() into docs/reference/settings.md"
    )


def test_redis_key_layout_is_current() -> None:
    assert KEY_LAYOUT_MARKDOWN.strip() in STATISTICS_PAGE, "paste routeproxy.counters.keys.KEY_LAYOUT_MARKDOWN"
    assert PERIOD_RULES_MARKDOWN.strip() in STATISTICS_PAGE, "paste routeproxy.counters.keys.PERIOD_RULES_MARKDOWN"


def test_quick_start_has_the_two_commands() -> None:
    assert "pip install . && routeproxy serve --simulate" in README
    assert "pip install -e '.[test]' && pytest" in README


def test_ci_runs_the_readmes_test_command() -> None:
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "pip install -e '.[test]' && pytest" in ci
