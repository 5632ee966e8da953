"""MkDocs hook: fills each `<!-- reference: NAME -->` line of a page with the table routeproxy.reference renders from
the code, at build time (mkdocs.yml: `hooks`). The pages keep their prose; the generated text is never stored."""

from __future__ import annotations

import re
from typing import Any

from routeproxy.reference.pages import render

MARKER = re.compile(r"^<!-- reference: ([a-z-]+) -->$", re.MULTILINE)


def on_page_markdown(markdown: str, *, page: Any, config: Any, files: Any) -> str:
    return MARKER.sub(lambda match: render(match.group(1)), markdown)
