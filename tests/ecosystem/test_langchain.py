"""LangChain's ChatModelIntegrationTests with ChatOpenAI against the proxy in front of the simulator, once per
simulated dialect (vLLM, TGI, TGI < 2.1, the HF router): zero failures, and no skip beyond the documented list in
langchain_skips.SKIPS."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_skips import SKIPS
from support.upstreams import ProxyFactory, fast_profile

from routeproxy.settings import Tier
from routeproxy.sim.simulator import create_simulator_app
from routeproxy.sim.threadserver import ThreadedServer
from routeproxy.sim.wire import Dialect

SUITE = Path(__file__).with_name("langchain_suite.py")
# The suite's plugins that these tests do not use, left out to start faster.
UNUSED_PLUGINS = ("benchmark", "codspeed", "recording", "syrupy")
CONFTEST = """import pytest
from langchain_skips import SKIPS


def pytest_collection_modifyitems(items):
    for item in items:
        if item.originalname in SKIPS:
            item.add_marker(pytest.mark.skip(reason=SKIPS[item.originalname]))
"""
INI = """[pytest]
asyncio_mode = auto
# ChatOpenAI caches one async HTTP client per process: every async test must share one event loop.
asyncio_default_fixture_loop_scope = session
asyncio_default_test_loop_scope = session
"""


@pytest.fixture
def dialect_proxies(start_proxy: ProxyFactory) -> Iterator[dict[str, str]]:
    """A proxy per simulated dialect, its two tiers on simulators of that dialect, routing on."""
    simulators: list[ThreadedServer] = []
    urls = {}
    for dialect in Dialect:
        upstreams = {}
        for tier in Tier:
            simulators.append(ThreadedServer(create_simulator_app(fast_profile(tier, dialect))).start())
            upstreams[tier] = f"{simulators[-1].url}/v1"
        kind = "tgi" if dialect in (Dialect.TGI, Dialect.TGI_LEGACY) else dialect.value
        overrides = {f"tiers.{tier}.kind": kind for tier in Tier}
        proxy = start_proxy(upstreams, **overrides, **{"routing.enabled": True, "logging.level": "warning"})
        urls[f"ROUTEPROXY_BASE_URL_{dialect.name}"] = f"{proxy.url}/v1"
    yield urls
    for server in simulators:
        server.stop()


def test_langchain_standard_suite_passes_through_the_proxy(dialect_proxies: dict[str, str], tmp_path: Path) -> None:
    shutil.copy(SUITE, tmp_path / "test_langchain_suite.py")
    shutil.copy(SUITE.with_name("langchain_skips.py"), tmp_path)
    (tmp_path / "pytest.ini").write_text(INI)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    report = tmp_path / "report.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    for plugin in UNUSED_PLUGINS:
        command += ["-p", f"no:{plugin}"]
    result = subprocess.run(
        [*command, "test_langchain_suite.py"],
        cwd=tmp_path,
        env={**os.environ, **dialect_proxies},
        capture_output=True,
        text=True,
        timeout=600,
    )
    outcomes: Counter[str] = Counter()
    skipped: dict[str, str] = {}
    classes = set()
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        name = case.get("name", "").split("[")[0]
        classes.add(case.get("classname", "").rsplit(".", 1)[-1])
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        outcomes[outcome] += 1
        if outcome == "skipped":
            skipped[name] = next(child.get("message", "") for child in case if child.tag == "skipped")
    assert outcomes["failure"] == outcomes["error"] == 0, result.stdout[-6000:]
    assert set(skipped) == set(SKIPS), skipped
    assert len(classes) == len(Dialect), classes  # the suite ran once per dialect
    assert outcomes["passed"] >= 40 * len(Dialect), outcomes
    assert result.returncode == 0, result.stdout[-3000:]
    # Shown by `pytest tests/ecosystem -rP`: the figures the README quotes.
    print(f"langchain-tests through the proxy, {len(classes)} dialects: {dict(outcomes)}")
