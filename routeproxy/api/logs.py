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
from structlog.typing import EventDict

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
    """One format for every line: structlog's own events, and the standard library's records (uvicorn's start-up,
    shutdown, errors and access lines, any library's warnings) through the same renderer, with the logger's name.

    uvicorn must be started with ``log_config=None`` (``server.uvicorn_options`` does) so that it keeps its
    loggers' records coming here instead of installing handlers that print plain ``INFO:`` lines."""
    level = _LEVELS[config.level]
    renderer: Any
    _RequestLines.fd = None
    if not console_format(config):
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if level <= logging.INFO:
            _RequestLines.fd = _stderr_fd()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    shared: list[Any] = [structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True)]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[_logger_name, _access_fields, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
            pass_foreign_args=True,
        )
    )
    root = logging.getLogger()
    for old in [old for old in root.handlers if getattr(old, _OURS, False)]:
        root.removeHandler(old)
    setattr(handler, _OURS, True)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # If uvicorn's own configuration ran before us, its handlers go and its records come to the root's handler.
        # A logger without handlers is left as it is: uvicorn silences its access log (access_log=False) that way.
        logger = logging.getLogger(name)
        if logger.handlers:
            logger.handlers.clear()
            logger.propagate = True
    # httpx and httpcore log every request at info: the commands that use them (stats, bench) print their own.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


_OURS = "_routeproxy_handler"


def _logger_name(logger: Any, method: str, event: EventDict) -> EventDict:
    record = event.get("_record")
    if record is not None:
        event["logger"] = record.name
        if isinstance(event.get("event"), str):
            event["event"] = event["event"].rstrip()  # uvicorn ends "Exception in ASGI application" with a newline
    return event


def _access_fields(logger: Any, method: str, event: EventDict) -> EventDict:
    """uvicorn's access record (client, method, path, HTTP version, status as arguments) as fields of an
    ``access`` event."""
    arguments = event.pop("positional_args", None)
    record = event.get("_record")
    if record is not None and record.name == "uvicorn.access" and isinstance(arguments, tuple) and len(arguments) == 5:
        client, method_name, path, version, status = arguments
        event.update(event="access", client=client, method=method_name, path=path, http_version=version, status=status)
    return event


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
    if result.upstream_id:  # the id the client got in the answer (chatcmpl-..., resp_...)
        fields["upstream_id"] = result.upstream_id
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
        if cascade.explored:
            fields["explored"] = True
        for name, outcome, ms in cascade.signals:  # the check's plug-in signals: how each reading went
            fields[name] = outcome
            if outcome != "skipped":
                fields[f"{name}_ms"] = round(ms, 2)
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
