"""Real routeproxy processes for tests: started on a free loopback port, polled until they answer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.ports import free_port
from support.wait import answers, eventually

ROOT = Path(__file__).resolve().parents[2]


class Served:
    """A routeproxy process whose log (stderr) is read as it comes: a pipe nobody reads fills after 64 KiB, and a
    proxy whose log line cannot be written stalls its event loop (a few hundred requests at log level info)."""

    def __init__(self, process: subprocess.Popen[bytes], url: str) -> None:
        self.process = process
        self.url = url
        self._log: list[bytes] = []
        self._reader = threading.Thread(target=self._read_log, name=f"log of {url}", daemon=True)
        self._reader.start()

    def _read_log(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        with stream:
            for chunk in iter(lambda: os.read(stream.fileno(), 65536), b""):
                self._log.append(chunk)

    def stop(self) -> str:
        """Stop the process like Ctrl-C does and return what it logged."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join()
        return b"".join(self._log).decode()


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
