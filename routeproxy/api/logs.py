"""structlog, configured in one place (JSON lines in production, readable lines on a terminal), and the
per-request log line."""

from __future__ import annotations

import datetime
import logging
import os
import sys
from typing import Any

import orjson
import structlog

from routeproxy.errors import preview as clip
from routeproxy.routing.route import RouteDecision
from routeproxy.settings import LogConfig, Settings
from routeproxy.wire.relay import RelayResult

log = structlog.get_logger("routeproxy")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_UTC = datetime.UTC
_LINE = orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE


class _RequestLines:
    """Where the per-request info line goes when lines are JSON: straight to stderr's file descriptor.

    The line is the one structlog would write (the same fields in the same order, then ``event``, ``level`` and
    an ISO ``timestamp`` in UTC), built with one ``orjson.dumps``: structlog's processor chain and its
    ``datetime.isoformat`` took 15-20 % of the proxy's CPU per request in a profile. structlog flushes each line
    it writes, so lines from both stay whole and in order. Set by ``configure_logging``, like structlog's own
    configuration.
    """

    fd: int | None = None


def _stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without a file descriptor
        return None


def _orjson_dumps(event: Any, default: Any = None) -> str:
    return orjson.dumps(event, default=default).decode()


def console_format(config: LogConfig) -> bool:
    """Whether log lines are for people (console) rather than JSON; auto means console on a terminal."""
    return config.format == "console" or (config.format == "auto" and sys.stderr.isatty())


def configure_logging(config: LogConfig) -> None:
    level = _LEVELS[config.level]
    renderer: Any
    _RequestLines.fd = None
    if not console_format(config):
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if level <= logging.INFO:
            _RequestLines.fd = _stderr_fd()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # uvicorn's own messages (start-up, errors) keep the standard library's logging, at the same level.
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def preview(text: str, limit: int) -> str | None:
    """The first ``limit`` characters of a prompt for a log line; 0 shows none."""
    return None if limit <= 0 else clip(" ".join(text[: limit * 4].split()), limit)


def log_request(
    decision: RouteDecision,
    result: RelayResult,
    request_id: str,
    settings: Settings,
    *,
    body_stream: bool,
    endpoint: str | None = None,
    client_request_id: str | None = None,
) -> None:
    """One line per chat request: info when it went well, warning for an upstream error, error when
    classification failed."""
    tier = result.tier or decision.tier
    fields: dict[str, Any] = {
        "request_id": request_id,
        "tier": settings.tiers[tier].label,
        "complexity": decision.complexity.value if decision.complexity else None,
        "reason": decision.why,
        "status": result.status,
        "latency_ms": round(result.end_s * 1000, 2),
        "stream": body_stream,
    }
    if client_request_id is not None:  # the client's own x-request-id, when it sent one
        fields["client_request_id"] = client_request_id
    if endpoint is not None:  # not chat completions
        fields["endpoint"] = endpoint
    if decision.ab_draw is not None:
        fields["ab_draw"] = round(decision.ab_draw, 2)
        fields["ab_ratio"] = decision.ab_ratio
    if result.ttfb_s is not None and result.stream:
        fields["ttfb_ms"] = round(result.ttfb_s * 1000, 2)
    if decision.classification is not None:
        shown = preview(decision.classification.query, settings.routing.log_preview_chars)
        if shown is not None:
            fields["query"] = shown
    if result.disconnected:
        fields["disconnected"] = True
    if result.fallback_reason is not None:
        fields["fallback"] = result.fallback_reason
    if decision.cascade:
        fields["mode"] = "cascade"
    cascade = result.cascade
    if cascade is not None:
        fields["escalated"] = cascade.escalated
        fields["check_score"] = round(cascade.score, 4)
        fields["check_reasons"] = list(cascade.reasons)
        if cascade.escalated:
            fields["small_ms"] = round(cascade.small_ms, 2)
        if cascade.hold_ms is not None:
            fields["hold_ms"] = round(cascade.hold_ms, 2)
    if result.upstream_error:
        log.warning("route", upstream_error=result.upstream_error, **fields)
    elif decision.classify_error:
        log.error("route", classify_error=decision.classify_error, **fields)
    elif _RequestLines.fd is not None:
        fields["event"], fields["level"], fields["timestamp"] = "route", "info", datetime.datetime.now(_UTC)
        line = orjson.dumps(fields, option=_LINE)
        while line:
            line = line[os.write(_RequestLines.fd, line) :]
    else:
        log.info("route", **fields)
