"""The bench's processes: starting, pinning and stopping the proxy and upstreams; their CPU time and RSS from /proc."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(slots=True)
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Any

    @property
    def pid(self) -> int:
        return self.process.pid

    def tree(self) -> list[int]:
        """This process and its descendants (uvicorn's worker processes)."""
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    todo.extend(int(child) for child in task.read_text().split())
                except OSError:
                    continue
        return found

    def cpu_s(self) -> float:
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.tree():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks

    def memory_kb(self, field_name: str = "VmRSS") -> int:
        total = 0
        for pid in self.tree():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            match = re.search(rf"^{field_name}:\s+(\d+) kB", status, re.MULTILINE)
            total += int(match.group(1)) if match else 0
        return total

    def reset_peak(self) -> None:
        for pid in self.tree():
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            except OSError:
                continue

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def logged(self) -> bytes:
        """Everything the process has written so far."""
        self.log.flush()
        self.log.seek(0)
        data: bytes = self.log.read()
        return data

    def output(self) -> str:
        return self.logged().decode(errors="replace")[-2000:]


class Cores:
    """The proxy gets core 0 (``workers`` cores with --workers, always leaving one); everything else the rest."""

    def __init__(self, workers: int, available: Sequence[int] | None = None) -> None:
        self.all = sorted(os.sched_getaffinity(0) if available is None else available)
        self.pinned = len(self.all) >= 2
        self.rest = set(self.all) - self.proxy(workers) if self.pinned else set(self.all)

    def proxy(self, workers: int = 1) -> set[int]:
        if not self.pinned:
            return set(self.all)
        return set(self.all[: min(max(workers, 1), len(self.all) - 1)])

    def describe(self, workers: int = 1) -> str:
        """Where the proxy with this many workers runs, and where the rest runs."""
        if not self.pinned:
            return f"one core: proxy, upstream and load generator share it (cores {self.all})"
        proxy = self.proxy(workers)
        return f"proxy on cores {sorted(proxy)}; upstream and load generator on {sorted(set(self.all) - proxy)}"


# The line a spawned server prints once it has bound its port: uvicorn's start-up line (``routeproxy serve``), the
# simulator's and the static upstream's first line. Never port 0: that is the summary's configured address.
_BOUND = re.compile(rb" on http://127\.0\.0\.1:([1-9][0-9]*)")
_REDIS_ATTEMPTS = 5


def spawn(name: str, args: Sequence[str], env: dict[str, str], cpus: set[int], ready_path: str) -> Proc:
    """``python -m *args --port 0``, pinned to ``cpus``; returned once it answers ``ready_path``. The OS picks the
    port and the server says which: a port picked here as free could be another program's by the time the server
    binds it, and the bench would then measure that program."""
    log = tempfile.TemporaryFile()  # noqa: SIM115  (closed by Proc.stop)
    command = [sys.executable, "-m", *args, "--port", "0"]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    os.sched_setaffinity(process.pid, cpus)  # before it starts any worker process, which inherits it
    proc = Proc(name, process, 0, log)
    deadline = time.monotonic() + 30
    try:
        proc.port = bound_port(log, process, 30)
    except RuntimeError as exc:
        output = proc.output()
        proc.stop()
        raise RuntimeError(f"{name} {exc}: {output}") from None
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited at start-up: {proc.output()}")
        try:
            if ready_path == "tcp":
                with httpx.Client(trust_env=False) as client:
                    client.post(f"http://127.0.0.1:{proc.port}/", content=b"{}", timeout=1)
            else:
                httpx.get(f"http://127.0.0.1:{proc.port}{ready_path}", timeout=1, trust_env=False).raise_for_status()
            return proc
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                output = proc.output()
                proc.stop()
                raise RuntimeError(f"{name} did not answer within 30 s: {output}") from None
            time.sleep(0.05)  # poll interval while it starts


def bound_port(log: Any, process: subprocess.Popen[bytes], seconds: float) -> int:
    """The port a server started with ``--port 0`` says it bound, read from ``log`` (the file its output goes to)."""
    deadline = time.monotonic() + seconds
    while True:
        log.flush()
        log.seek(0)
        found = _BOUND.search(log.read())
        if found is not None:
            return int(found.group(1))
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before it listened")
        if time.monotonic() > deadline:
            raise RuntimeError(f"did not say which port it bound within {seconds:g} s")
        time.sleep(0.05)  # poll interval while it starts


def spawn_redis(cpus: set[int] | None) -> Proc:
    """A private redis-server on a free loopback port (from PATH, no persistence), pinned to ``cpus`` when given:
    a Redis that does not take its CPU time from the proxy's core, as one on another machine would not.

    redis-server cannot be given port 0, so the port is picked here; if another program binds it first, another
    port is tried, and the server counts as up only when it answers with its own process id."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ValueError("--redis-url local needs redis-server on PATH")
    for _ in range(_REDIS_ATTEMPTS):
        port = free_port()
        log = tempfile.TemporaryFile()  # noqa: SIM115  (closed by Proc.stop)
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if cpus:
            os.sched_setaffinity(process.pid, cpus)
        proc = Proc("redis-server", process, port, log)
        if _redis_up(proc):
            return proc
        proc.stop()
    raise RuntimeError(f"{_REDIS_ATTEMPTS} free ports in a row were taken before redis-server could bind them")


def _redis_up(proc: Proc) -> bool:
    """Wait until this redis-server answers as itself; False when it could not bind its port."""
    deadline = time.monotonic() + 30
    own = f"process_id:{proc.pid}\r\n".encode()
    while True:
        if proc.process.poll() is not None:
            if b"Address already in use" in proc.logged():
                return False
            raise RuntimeError(f"redis-server exited at start-up: {proc.output()}")
        try:
            with socket.create_connection(("127.0.0.1", proc.port), timeout=1) as sock:
                sock.sendall(b"INFO server\r\n")
                reply = b""
                while b"\r\n\r\n" not in reply[-8:] and (chunk := sock.recv(65536)):
                    reply += chunk
                if own in reply:
                    return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            output = proc.output()
            proc.stop()
            raise RuntimeError(f"redis-server did not answer: {output}")
        time.sleep(0.05)  # poll interval while it starts


def proxy_env(upstreams: dict[str, str], redis_url: str | None, **extra: str) -> dict[str, str]:
    """The proxy's environment: both tiers at local upstreams (base URLs with /v1), routing on, counters on."""
    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "ROUTEPROXY_REDIS_URL")}
    env.update(
        ROUTEPROXY_SMALL_BASE_URL=upstreams["small"],
        ROUTEPROXY_LARGE_BASE_URL=upstreams["large"],
        ROUTEPROXY_SMALL_KIND="vllm",
        ROUTEPROXY_LARGE_KIND="vllm",
        ROUTEPROXY_SMALL_API_KEY="",
        ROUTEPROXY_LARGE_API_KEY="",
        ROUTEPROXY_ENABLE_MODEL_ROUTING="true",
        ROUTEPROXY_LOG_LEVEL="info",  # the default, as users run it: the per-request line is part of the cost
        **extra,
    )
    if redis_url:
        env["ROUTEPROXY_REDIS_URL"] = redis_url
    return env
