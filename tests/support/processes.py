"""Real routeproxy processes for tests: started on a loopback port the OS picks (``--port 0``), polled until they
answer.

The port is the one the process bound, read from its own log: a port picked as free here and handed to the process
could be taken by another program in the second the process needs to start (two suites at once, or another
project's tests, start hundreds of servers), and the test would then talk to that program."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.wait import answers, eventually

ROOT = Path(__file__).resolve().parents[2]
# uvicorn's start-up line, in either log format: the address it bound, with the port the OS picked.
LISTENING = re.compile(rb"Uvicorn running on (http://[^\s\"]+)")


class Served:
    """A routeproxy process whose log (stderr) is read as it comes: a pipe nobody reads fills after 64 KiB, and a
    proxy whose log line cannot be written stalls its event loop (a few hundred requests at log level info)."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.url = ""  # known once the process has bound its port (``launch``)
        self._log: list[bytes] = []
        self._reader = threading.Thread(target=self._read_log, name="routeproxy log", daemon=True)
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
        return self.logged().decode()

    def logged(self) -> bytes:
        """What the process has logged so far."""
        return b"".join(self._log)


def launch(command: list[str], env: dict[str, str] | None = None) -> Served:
    """Run ``command`` (a ``routeproxy serve`` command line without ``--port``) on a port the OS picks; return it
    once it answers ``/healthz``. Its log is JSON unless ``env`` says otherwise, at the level ``env`` gives (the
    port is read from uvicorn's start-up line, which is logged at ``info``)."""
    process = subprocess.Popen(
        [*command, "--port", "0"],
        env={**os.environ, "ROUTEPROXY_LOG_FORMAT": "json", **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    served = Served(process)

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"routeproxy serve exited: {served.stop()}")
        if not served.url:
            bound = LISTENING.search(served.logged())
            if bound is None:
                return False
            served.url = bound.group(1).decode()
        return answers(f"{served.url}/healthz")

    try:
        eventually(up, tries=600, interval=0.05, what="routeproxy serve answering /healthz")
    except AssertionError:
        process.kill()
        raise
    return served


def serve(*args: str, env: dict[str, str] | None = None) -> Served:
    """``routeproxy serve *args`` in a process of its own."""
    return launch([sys.executable, "-m", "routeproxy", "serve", *args], env)


@pytest.fixture
def served() -> Iterator[list[Served]]:
    running: list[Served] = []
    yield running
    for item in running:
        item.stop()
