from __future__ import annotations

import ast
import json
import re
import subprocess
import sys

import pytest
from support.processes import ROOT

TOOLS = ("routeproxy.sim", "routeproxy.bench", "routeproxy.evaluate", "routeproxy.reference")


@pytest.mark.parametrize("module", ["routeproxy.api.app", "routeproxy.cli"])
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


# -- the layout table (docs/internals/architecture.md) against the tree and the import graph --

LAYOUT_DOC = ROOT / "docs" / "internals" / "architecture.md"
TOOL_PACKAGES = ("sim", "bench", "evaluate", "reference")


def _layout_rows() -> list[tuple[str, str]]:
    """(package, module) for every module the layout tables name, in table order ("" = the top level)."""
    text = LAYOUT_DOC.read_text()
    start = text.index("<!-- layout-table")
    rows: list[tuple[str, str]] = []
    package = ""
    for line in text[start:].splitlines()[1:]:
        if not line.startswith("|"):
            if rows and line.strip() and not line.startswith("The tools"):
                break
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0] in ("package", "---"):
            continue
        if cells[0]:
            package = cells[0].strip("`").removeprefix("routeproxy/").rstrip("/")
        rows += [(package, name) for name in re.findall(r"`([\w.]+\.py)`", cells[1])]
    return rows


def _modules_on_disk() -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / "routeproxy").rglob("*.py"):
        package = path.parent.relative_to(ROOT / "routeproxy").as_posix()
        package = "" if package == "." else package
        if path.name != "__init__.py" or package == "dashboard" or package == "":
            found.add((package, path.name))
    return found - {("", "__init__.py")}


def test_the_layout_table_names_every_module_and_only_those() -> None:
    rows = _layout_rows()
    assert len(rows) == len(set(rows)), "a module is named twice"
    assert set(rows) == _modules_on_disk()


def _package_imports() -> dict[str, set[str]]:
    """package -> the routeproxy packages its modules import ("" = a top-level module such as errors.py)."""
    imports: dict[str, set[str]] = {}
    for path in (ROOT / "routeproxy").rglob("*.py"):
        relative = path.relative_to(ROOT / "routeproxy").parts
        package = relative[0] if len(relative) > 1 else path.stem
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("routeproxy."):
                target = node.module.split(".")[1]
                if target != package:
                    imports.setdefault(package, set()).add(target)
    return imports


def test_imports_run_down_the_layout_table() -> None:
    # The request path's packages, top to bottom as the table lists them; each imports only those below it.
    order: list[str] = []
    for package, module in _layout_rows():
        name = package or module.removesuffix(".py")
        if package == "" and module in ("cli.py", "__main__.py"):
            name = module.removesuffix(".py")
        if name not in order and name not in TOOL_PACKAGES:
            order.append(name)
    imports = _package_imports()
    upward = {
        (package, target)
        for package, targets in imports.items()
        if package in order
        for target in targets
        if target in order and order.index(target) <= order.index(package)
    }
    assert upward == set()
    assert {
        (package, tool)
        for package, targets in imports.items()
        if package in order and package not in ("cli", "commands")
        for tool in targets
        if tool in TOOL_PACKAGES
    } == set()


def test_no_module_imports_itself_through_others() -> None:
    # Every `from routeproxy.x import` counts, also under TYPE_CHECKING or inside a function: a circle there is still
    # two modules that each need the other (put the shared name lower, or a Protocol with its user).
    graph: dict[str, set[str]] = {}
    for path in (ROOT / "routeproxy").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {
            node.module
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("routeproxy.")
        }
    for name, targets in graph.items():  # a package's __init__ re-exporting its own modules is not a circle
        graph[name] = {target for target in targets if target in graph and not target.startswith(name + ".")}
        graph[name] -= {name}
        graph[name] = {target for target in graph[name] if not name.startswith(target + ".")}

    circles = []
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        for target in sorted(graph[name]):
            if target in path:
                circles.append([*path[path.index(target) :], target])
            elif target not in done:
                visit(target, [*path, target])
        done.add(name)

    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert circles == []
