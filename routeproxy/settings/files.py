"""The shipped config directory (the default config file, the built-in rule sets) and reading YAML files, with a
ConfigError that names the file and what it is."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from routeproxy.errors import ConfigError


def default_config_path() -> Path | None:
    """./config/routeproxy.yaml when the working directory has one, else the copy shipped in the package."""
    local = Path("config/routeproxy.yaml")
    if local.is_file():
        return local
    shipped = resources.files("routeproxy.defaults").joinpath("routeproxy.yaml")
    return Path(str(shipped)) if shipped.is_file() else None


def config_dir() -> Path:
    """The shipped config/ directory (built-in rule sets and examples)."""
    return Path(str(resources.files("routeproxy.defaults")))


def shipped_or_path(folder: str, name_or_path: str, what: str) -> Path:
    """A built-in name -> its file in the shipped ``config/<folder>/`` (ConfigError listing the built-in ones when
    there is none); anything that is not a bare name is a file path."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name_or_path):
        return Path(name_or_path)
    path = config_dir() / folder / f"{name_or_path}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(shipped.stem for shipped in (config_dir() / folder).glob("*.yaml")))
        raise ConfigError(
            f"unknown {what} {name_or_path!r}: the built-in ones are {names} (or give the path of a YAML file)"
        )
    return path


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None


def read_yaml_tree(path: Path, what: str) -> Any:
    """The parsed YAML of a file; ConfigError naming ``what`` it is (a config file, a rule set) when it cannot be
    read or parsed."""
    text = _read_text(path, what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None


@dataclass(frozen=True, slots=True)
class YamlEntry:
    key: str  # the dotted path of the value (routing.rollout.enabled)
    value: Any
    line: int  # where the key is written, from 1


def read_yaml_entries(path: Path, what: str, is_leaf: Callable[[str], bool]) -> tuple[list[YamlEntry], list[str]]:
    """The file's values by dotted key, each with its line, and the problems of its shape (a key written twice in
    one mapping, which YAML would otherwise settle silently by keeping the last; a top level that is not a mapping).
    Nested mappings are descended into unless ``is_leaf`` says their key is a value of its own. A syntax error
    stops at the first one, as the YAML parser does: ConfigError with its line."""
    text = _read_text(path, what)
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        entries: list[YamlEntry] = []
        problems: list[str] = []
        if root is None:
            return entries, problems
        if not isinstance(root, yaml.MappingNode):
            return entries, [f"{what} {path} must hold a mapping at the top level"]
        _walk(loader, root, "", is_leaf, entries, problems, f"{path}")
        return entries, problems
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def _walk(
    loader: yaml.SafeLoader,
    node: yaml.MappingNode,
    prefix: str,
    is_leaf: Callable[[str], bool],
    entries: list[YamlEntry],
    problems: list[str],
    where: str,
) -> None:
    loader.flatten_mapping(node)  # YAML merge keys (<<: *defaults) become the mapping's own
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        key = f"{prefix}{loader.construct_object(key_node, deep=True)}"
        if key in seen:
            problems.append(f"{where} line {line}: {key!r} is written twice (also line {seen[key]}); write it once")
            continue
        seen[key] = line
        if isinstance(value_node, yaml.MappingNode) and not is_leaf(key):
            _walk(loader, value_node, f"{key}.", is_leaf, entries, problems, where)
        else:
            entries.append(YamlEntry(key, loader.construct_object(value_node, deep=True), line))
