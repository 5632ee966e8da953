"""The README's examples run as written: the Python snippet and the curl lines, against a served proxy (the quick
start's `routeproxy serve --simulate`, made faster)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from support.processes import Served, serve

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
DOCUMENTED_URL = "http://127.0.0.1:8001"


def block(after: str, language: str) -> str:
    """The first fenced block of that language after the heading."""
    start = README.index(f"```{language}\n", README.index(after)) + len(language) + 4
    return README[start : README.index("```", start)]


def test_python_snippet_runs_as_pasted(served: list[Served]) -> None:
    proxy = serve("--simulate", "--speed", "500")
    served.append(proxy)
    snippet = block("## Use it from the OpenAI SDK", "python")
    assert DOCUMENTED_URL in snippet
    result = subprocess.run(
        [sys.executable, "-c", snippet.replace(DOCUMENTED_URL, proxy.url)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    first, *rest = result.stdout.splitlines()
    assert first.startswith("meta-llama/Llama-3.1-8B-Instruct ")  # routing is off by default: the large tier
    assert len(first.split()) > 2  # and an answer
    assert rest[-1].endswith(" tokens")  # usage arrived at the end of the stream


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl on this machine")
def test_curl_examples_send_json_and_get_answers(served: list[Served]) -> None:
    proxy = serve("--simulate", "--speed", "500")
    served.append(proxy)
    commands = block("### With curl", "bash").replace("\\\n", " ").replace(DOCUMENTED_URL, proxy.url).splitlines()
    assert len(commands) == 4
    outputs = [
        subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60) for command in commands
    ]
    assert all(output.returncode == 0 for output in outputs)
    chat, stream, explain, stats = (output.stdout for output in outputs)
    assert orjson.loads(chat)["choices"][0]["message"]["content"]
    assert stream.rstrip().endswith("data: [DONE]")
    assert orjson.loads(explain)["complexity"] == "complex"
    assert orjson.loads(stats)["total_requests"] == 2
