"""A real headless Chromium driven over the Chrome DevTools Protocol (JSON messages on one websocket), with just
what the dashboard tests need: load a page, evaluate JavaScript, type, take a screenshot, and collect every error
the page reports (uncaught exceptions, console.error, failed loads). Debian's ``chromium`` package provides the
browser; ``.ci/run`` installs it when missing. ``ROUTEPROXY_CHROMIUM`` names another binary."""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
from websockets.sync.client import ClientConnection, connect

from support import http
from support.wait import eventually

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
WIDTH = 1280


def find_chromium() -> str | None:
    explicit = os.environ.get("ROUTEPROXY_CHROMIUM")
    if explicit:
        return shutil.which(explicit) or (explicit if Path(explicit).is_file() else None)
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


class Browser:
    """One headless Chromium with one page. Use as a context manager; the process is stopped on exit."""

    def __init__(self, binary: str, workdir: Path) -> None:
        profile = workdir / "chromium-profile"
        port_file = profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)  # a profile used before keeps the port of its last browser
        self._log = (workdir / "chromium.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",  # the tests run as root in CI, where Chromium's sandbox refuses to start
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                f"--window-size={WIDTH},1000",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        self._ids = itertools.count(1)
        self._stack = contextlib.ExitStack()
        self.events: list[dict[str, Any]] = []
        try:
            port = eventually(lambda: self._port(port_file), tries=400, interval=0.05, what="Chromium's DevTools port")
            targets = http.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
            page = next(target for target in targets if target["type"] == "page")
            self.socket: ClientConnection = self._stack.enter_context(
                connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
            )
            for domain in ("Runtime", "Log", "Page"):
                self.send(f"{domain}.enable")
        except BaseException:
            self.close()
            raise

    def _port(self, port_file: Path) -> int | None:
        if self.process.poll() is not None:
            raise AssertionError(f"chromium exited with {self.process.returncode}; see {self._log.name}")
        text = port_file.read_text() if port_file.exists() else ""
        return int(text.split()[0]) if text.strip() else None

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One CDP command; events that arrive before its reply are kept in ``events``."""
        message_id = next(self._ids)
        self.socket.send(orjson.dumps({"id": message_id, "method": method, "params": params}).decode())
        while True:
            message = orjson.loads(self.socket.recv(timeout=30))
            if message.get("id") == message_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, *, tries: int = 200, what: str | None = None) -> Any:
        return eventually(lambda: self.evaluate(expression), tries=tries, interval=0.05, what=what or expression)

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'", what=f"{url} loaded")

    def type_into(self, selector: str, text: str) -> None:
        """Focus a field, clear it and type ``text`` as keyboard input (so the page sees real input events)."""
        self.evaluate(f"(() => {{ const e = document.querySelector({orjson.dumps(selector).decode()}); "
                      "e.focus(); e.select(); return true; })()")  # fmt: skip
        self.send("Input.insertText", text=text)

    def choose(self, selector: str, value: str) -> None:
        """Pick an option of a select, with the input and change events a user's pick fires."""
        self.evaluate(
            f"(() => {{ const e = document.querySelector({orjson.dumps(selector).decode()}); "
            f"e.value = {orjson.dumps(value).decode()}; "
            "for (const kind of ['input', 'change']) e.dispatchEvent(new Event(kind, { bubbles: true })); })()"
        )

    def click(self, selector: str) -> None:
        self.evaluate(f"document.querySelector({orjson.dumps(selector).decode()}).click()")

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page, as tall as its content."""
        height = self.evaluate("Math.ceil(document.documentElement.scrollHeight)")
        self.send("Emulation.setScrollbarsHidden", hidden=True)
        self.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=height, deviceScaleFactor=1, mobile=False)
        shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def errors(self) -> list[str]:
        """Every error the page reported so far: uncaught exceptions, console.error/assert, failed loads."""
        self.evaluate("0")  # a round trip, so events sent before now have arrived
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(details.get("exception", {}).get("description") or details.get("text", ""))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(" ".join(str(arg.get("value", arg.get("description"))) for arg in params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"{params['entry'].get('url', '')}: {params['entry']['text']}")
        return found
