"""The shipped config directory (the default config file, the built-in rule sets) and reading YAML files, with a
ConfigError that names the file and what it is."""

from __future__ import annotations

import re
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


def read_yaml_tree(path: Path, what: str) -> Any:
    """The parsed YAML of a file; ConfigError naming ``what`` it is (a config file, a rule set) when it cannot be
    read or parsed."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None
