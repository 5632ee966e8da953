"""Real routeproxy processes for tests: started on a free loopback port, polled until they answer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.ports import free_port

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
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"routeproxy serve exited: {Served(process, url).stop()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return Served(process, url)
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError(f"routeproxy serve did not answer /healthz within 30 s: {Served(process, url).stop()}")


@pytest.fixture
def served() -> Iterator[list[Served]]:
    running: list[Served] = []
    yield running
    for item in running:
        item.stop()
