from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support.processes import ROOT

TOOLS = ("routeproxy.sim", "routeproxy.bench", "routeproxy.evaluate")


@pytest.mark.parametrize("module", ["routeproxy.app", "routeproxy.cli"])
def test_the_request_path_and_the_command_import_no_tool_subpackage(module: str) -> None:
    # A fresh interpreter: this test process has imported the tools already.
    loaded = subprocess.run(
        [sys.executable, "-c", f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert [name for name in json.loads(loaded) if name.startswith(TOOLS)] == []


def test_every_subpackage_ships_in_the_wheel() -> None:
    # The tests run on an editable install, which finds any folder; `pip install .` ships only the listed packages.
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "routeproxy").rglob("__init__.py")}
    assert on_disk - listed == set()
