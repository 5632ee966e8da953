"""Real routeproxy processes for tests: started on a free loopback port, polled until they answer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.ports import free_port
from support.wait import answers, eventually

ROOT = Path(__file__).resolve().parents[2]


class Served:
    def __init__(self, process: subprocess.Popen[bytes], url: str) -> None:
        self.process = process
        self.url = url

    def stop(self) -> str:
        """Stop the process like Ctrl-C does and return what it logged."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            _, stderr = self.process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, stderr = self.process.communicate()
        return stderr.decode()


def serve(*args: str, env: dict[str, str] | None = None) -> Served:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "routeproxy", "serve", "--port", str(port), *args],
        env={**os.environ, "ROUTEPROXY_LOG_FORMAT": "json", **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"routeproxy serve exited: {Served(process, url).stop()}")
        return answers(f"{url}/healthz")

    try:
        eventually(up, tries=600, interval=0.05, what="routeproxy serve answering /healthz")
    except AssertionError:
        process.kill()
        raise
    return Served(process, url)


@pytest.fixture
def served() -> Iterator[list[Served]]:
    running: list[Served] = []
    yield running
    for item in running:
        item.stop()
