"""The settings reference: every declared setting, grouped by the part of its key before the last dot."""

from __future__ import annotations

import enum
from typing import Any

from routeproxy.reference.markdown import anchored, cell, code, table
from routeproxy.settings import SETTINGS, Setting


def section_of(setting: Setting) -> str:
    """`routing.rollout.enabled` is in `routing.rollout`; a new area (`cache.*`) gets its section by itself."""
    return setting.key.rpartition(".")[0]


def shown_default(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return code(str(value).lower())
    if isinstance(value, (tuple, list)):
        return code(",".join(str(item) for item in value))
    return code(str(value))


def setting_cell(setting: Setting) -> str:
    """The key (linkable), its environment variable and its default, one above the other."""
    lines = [anchored(setting.key, setting.key)]
    if setting.env:
        lines.append(code(setting.env))
    if setting.aliases:
        lines.append("alias " + ", ".join(code(alias) for alias in setting.aliases))
    lines.append(f"default {shown_default(setting.default)}")
    return "<br>".join(lines)


def settings_reference() -> str:
    sections: dict[str, list[Setting]] = {}
    for setting in SETTINGS:
        sections.setdefault(section_of(setting), []).append(setting)
    return "\n\n".join(
        f"## `{section}.*`\n\n"
        + table(("setting, variable, default", "what it does"), ((setting_cell(s), cell(s.help)) for s in settings))
        for section, settings in sections.items()
    )
