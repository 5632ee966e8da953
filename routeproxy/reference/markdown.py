"""Markdown as the documentation site renders it (Python-Markdown with the attr_list extension): table cells, inline
code, and anchors a row can be linked to."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence


def cell(text: str) -> str:
    """Text that stays inside one table cell and shows as written: a pipe does not end the cell, a newline does not
    end the row, and `<name>` outside inline code is text, not an HTML tag the browser would hide."""
    parts = re.split(r"(`[^`]*`)", " ".join(text.split()))
    return "".join(
        part if part.startswith("`") else part.replace("<", "&lt;").replace(">", "&gt;") for part in parts
    ).replace("|", "\\|")


def code(text: str) -> str:
    """Inline code that stays inside a table cell, backticks and pipes included."""
    escaped = text.replace("|", "\\|")
    if "`" in escaped:
        return f"`` {escaped} ``"
    return f"`{escaped}`"


def anchored(text: str, anchor: str) -> str:
    """``text`` as inline code linking to itself and carrying the id ``anchor``: a row others can link to
    (``settings.md#routing.enabled``), which the site's link check sees (an id in raw HTML it would not)."""
    return f"[{code(text)}](#{anchor}){{#{anchor}}}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
