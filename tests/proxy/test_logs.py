"""The per-request log line: written without structlog's processor chain, in the shape structlog writes.

Each case runs in a fresh interpreter: structlog caches its loggers on first use, with the stream of that moment.
"""

from __future__ import annotations

import subprocess
import sys

import orjson

SCRIPT = """
import sys
from routeproxy.routing.classify import Complexity
from routeproxy.settings import Tier, load_settings
from routeproxy.api.logs import configure_logging, log, log_request
from routeproxy.wire.relay import RelayResult
from routeproxy.routing.route import Reason, RouteDecision

settings = load_settings(environ={}, overrides={"logging.format": "json", "logging.level": sys.argv[1]})
configure_logging(settings.logging)
decision = RouteDecision(Tier.SMALL, Complexity.MEDIUM, Reason.AB_TEST, ab_draw=0.123, ab_ratio=0.5)
ok = RelayResult(tier=Tier.SMALL, status=200, stream=True, ttfb_s=0.0123, end_s=0.5)
log_request(decision, ok, "a" * 32, settings, body_stream=True)
failed = RelayResult(tier=Tier.SMALL, status=502, end_s=0.5, upstream_error="refused")
log_request(decision, failed, "a" * 32, settings, body_stream=True)
fields = dict(request_id="a" * 32, tier="3b", complexity="medium", reason="ab_test", status=200, latency_ms=500.0,
              stream=True, ab_draw=0.12, ab_ratio=0.5, ttfb_ms=12.3)
log.info("route", **fields)  # the same line through structlog's processor chain
"""


def lines_at(level: str) -> list[dict[str, object]]:
    run = subprocess.run([sys.executable, "-c", SCRIPT, level], capture_output=True, check=True)
    return [orjson.loads(line) for line in run.stderr.splitlines()]


def test_the_request_line_has_structlogs_fields_order_and_shape() -> None:
    fast, failed, chained = lines_at("info")
    for line in (fast, failed, chained):
        assert isinstance(line.pop("timestamp"), str)
    assert list(fast.items()) == list(chained.items())
    assert list(fast)[-2:] == ["event", "level"]
    assert (failed["level"], failed["upstream_error"]) == ("warning", "refused")


def test_at_warning_only_the_failed_request_is_written() -> None:
    (failed,) = lines_at("warning")
    assert (failed["status"], failed["level"]) == (502, "warning")


STDLIB_SCRIPT = """
import logging
from routeproxy.settings import load_settings
from routeproxy.api.logs import configure_logging

configure_logging(load_settings(environ={}, overrides={"logging.format": "json"}).logging)
logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/healthz", "1.1", 200)
logging.getLogger("httpx").info("HTTP Request: GET http://127.0.0.1/ 200")
try:
    raise RuntimeError("boom")
except RuntimeError:
    logging.getLogger("uvicorn.error").exception("Exception in ASGI application\\n")
"""


def test_the_standard_librarys_records_are_json_lines_of_the_same_shape() -> None:
    """uvicorn's lines (start-up, access, errors with their traceback) in the proxy's format; httpx's info is quiet."""
    run = subprocess.run([sys.executable, "-c", STDLIB_SCRIPT], capture_output=True, check=True)
    started, access, failed = (orjson.loads(line) for line in run.stderr.splitlines())
    assert started == {
        "event": "Started server process [42]",
        "logger": "uvicorn.error",
        "level": "info",
        "timestamp": started["timestamp"],
    }
    assert {key: access[key] for key in ("event", "client", "method", "path", "status")} == {
        "event": "access",
        "client": "127.0.0.1:5000",
        "method": "GET",
        "path": "/healthz",
        "status": 200,
    }
    assert failed["event"] == "Exception in ASGI application" and failed["level"] == "error"
    assert "RuntimeError: boom" in failed["exception"]
