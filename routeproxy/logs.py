"""structlog, configured in one place: JSON lines in production, readable lines on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog

from routeproxy.config import LogConfig

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _orjson_dumps(event: Any, default: Any = None) -> str:
    return orjson.dumps(event, default=default).decode()


def configure_logging(config: LogConfig) -> None:
    level = _LEVELS[config.level]
    fmt = config.format
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
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
    if limit <= 0:
        return None
    flat = " ".join(text[: limit * 4].split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
