"""The README's quick start and CI agree. (The reference pages are rendered from the code when the site is built:
tests/deploy/test_docs.py.)"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_quick_start_has_the_two_commands() -> None:
    assert "pip install . && routeproxy serve --simulate" in README
    assert "pip install -e '.[test]' && pytest" in README


def test_ci_runs_the_readmes_test_command() -> None:
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "pip install -e '.[test]' && pytest" in ci
