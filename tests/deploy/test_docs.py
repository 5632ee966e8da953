"""The documentation site builds strictly (a broken link or anchor fails it), its reference pages hold what the code
declares, and no page speaks of the project's history or of files outside the repository."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.processes import ROOT
from support.upstreams import LABELS

from routeproxy.cli import build_parser
from routeproxy.counters.keys import KEY_LAYOUT_MARKDOWN
from routeproxy.counters.metrics import Metrics
from routeproxy.reference.commands import _subcommands
from routeproxy.reference.endpoints import routes
from routeproxy.settings import SETTINGS

# Words a user cannot know: where the project came from, and files that are not in the repository.
FORBIDDEN = re.compile(r"\bthe seed\b|\bseed's\b|\bissue \d+|PROTOCOLS\.md|\.\./shared|shared/data", re.IGNORECASE)


def mkdocs_build(config: Path, site: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # The test extra includes the docs extra, so the README's test command installs MkDocs.
    assert importlib.util.find_spec("mkdocs") and importlib.util.find_spec("material"), "pip install -e '.[test]'"
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = tmp_path_factory.mktemp("site")
    result = mkdocs_build(ROOT / "mkdocs.yml", built, ROOT)
    assert result.returncode == 0, result.stderr
    return built


def page_text(site: Path, page: str) -> str:
    """The visible text of a built page (tags dropped, entities decoded)."""
    body = (site / page / "index.html").read_text(encoding="utf-8")
    body = body[body.index('<article class="md-content__inner') :]
    return html.unescape(re.sub(r"<[^>]+>", "", body))


def page_ids(site: Path, page: str) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', (site / page / "index.html").read_text(encoding="utf-8")))


def test_every_setting_has_a_row_with_its_variable_and_an_anchor(site: Path) -> None:
    text, ids = page_text(site, "reference/settings"), page_ids(site, "reference/settings")
    for setting in SETTINGS:
        assert setting.key in ids, setting.key
        assert setting.env is None or setting.env in text, setting.env
        assert " ".join(setting.help.replace("`", "").split()) in " ".join(text.split()), setting.key  # as rendered


def test_every_metric_has_a_row(site: Path) -> None:
    body, _ = Metrics(LABELS).render()
    ids = page_ids(site, "reference/metrics")
    families = list(text_string_to_metric_families(body.decode()))
    assert families
    for family in families:
        suffix = {"counter": "_total", "histogram": "_bucket"}.get(family.type, "")
        exposed = family.name + suffix
        assert exposed in ids, exposed


def test_every_command_and_option_is_documented(site: Path) -> None:
    text = page_text(site, "reference/commands")
    for name, parser in _subcommands(build_parser()).choices.items():
        assert f"routeproxy {name}" in text
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag in text, (name, flag)


def test_every_route_is_documented(site: Path) -> None:
    text = page_text(site, "reference/endpoints")
    paths = {path for _, path, _ in routes()}
    assert {"/v1/chat/completions", "/v1/model-routing/feedback", "/metrics", "/readyz"} <= paths
    for path in paths:
        assert path in text, path
    assert "request_not_found" in text and "rollout_active" in text  # errors raised outside the api package too


def test_every_redis_key_is_documented(site: Path) -> None:
    text = page_text(site, "reference/redis-keys")
    keys = re.findall(r"^\| `(\{routeproxy\}:[^`]+)`", KEY_LAYOUT_MARKDOWN, re.MULTILINE)
    assert len(keys) > 5
    for key in keys:
        assert key.replace("\\|", "|") in text, key


def built_pages(site: Path) -> Iterator[Path]:
    yield from (path for path in site.rglob("index.html") if "assets" not in path.parts)


def test_no_page_speaks_of_the_projects_history_or_of_files_outside_the_repository(site: Path) -> None:
    # The built site holds the generated references too (the settings' and options' help, the error messages).
    sources = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]
    found = [
        f"{path.relative_to(ROOT)}: {match.group(0)!r}"
        for path in sources
        for match in FORBIDDEN.finditer(path.read_text(encoding="utf-8"))
    ]
    for page in built_pages(site):
        text = page_text(site, str(page.parent.relative_to(site)))
        found += [f"site/{page.relative_to(site)}: {match.group(0)!r}" for match in FORBIDDEN.finditer(text)]
    assert found == []


def test_the_changelog_page_is_the_changelog(site: Path) -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    first_entry = next(line for line in changelog.splitlines() if line.startswith("- "))
    words = re.sub(r"[`*\[\]]", "", first_entry[2:60])
    assert words in page_text(site, "changelog")


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    # The build is strict for real: a copy of the site with one link to an anchor that does not exist.
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copy(ROOT / "mkdocs.yml", copy)
    shutil.copy(ROOT / "CHANGELOG.md", copy)
    shutil.copytree(ROOT / "docs", copy / "docs")
    index = copy / "docs" / "index.md"
    index.write_text(index.read_text(encoding="utf-8") + "\n[a setting](reference/settings.md#no.such.key)\n")
    result = mkdocs_build(copy / "mkdocs.yml", tmp_path / "site", copy)
    assert result.returncode != 0
    assert "no.such.key" in result.stderr
