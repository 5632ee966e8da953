"""Serve an ASGI app with uvicorn on a background thread (the simulated upstreams of ``serve --simulate``,
and the tests' real servers on loopback). Start-up is deterministic: we wait on ``server.started``."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

import uvicorn


class ThreadedServer:
    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int = 0, *, name: str = "uvicorn", **options: Any
    ) -> None:
        options.setdefault("log_level", "warning")
        options.setdefault("lifespan", "on")
        self.config = uvicorn.Config(app, host=host, port=port, **options)
        self.server = uvicorn.Server(self.config)
        # uvicorn installs signal handlers only on the main thread, so a background server leaves them alone.
        self.thread = threading.Thread(target=self.server.run, name=f"{name}:{host}:{port}", daemon=True)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"server on {self.host}:{self.port} exited during start-up")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server on {self.host}:{self.port} did not start in {timeout} s")
            time.sleep(0.005)
        sockets = [sock for server in self.server.servers for sock in server.sockets]
        self.port = sockets[0].getsockname()[1]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
