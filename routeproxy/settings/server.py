"""Settings of the server process: listening, limits, keys and admin, logging, the simulator."""

from __future__ import annotations

from routeproxy.settings.declaration import (
    Setting,
    _bool,
    _int_in,
    _key_list,
    _one_of,
    _optional_text,
    _origin_list,
    _positive,
    _text,
)

SERVER_SETTINGS: tuple[Setting, ...] = (
    Setting("server.host", "ROUTEPROXY_HOST", "127.0.0.1", _text, "Address to listen on."),
    Setting(
        "server.port",
        "ROUTEPROXY_PORT",
        8001,
        _int_in(0, 65535),
        "Port to listen on (0: a free one the OS picks; the start-up log names it).",
    ),
    Setting("server.workers", "ROUTEPROXY_WORKERS", 1, _int_in(1, 256), "Worker processes."),
    Setting(
        "server.max_body_bytes",
        "ROUTEPROXY_MAX_BODY_BYTES",
        10 * 1024 * 1024,
        _int_in(1024, 2**31),
        "Largest request body accepted, in bytes (413 above it).",
    ),
    Setting(
        "server.max_concurrent_requests",
        "ROUTEPROXY_MAX_CONCURRENT_REQUESTS",
        4096,
        _int_in(1, 1_000_000),
        "Chat requests one process serves at once; past it, 429 with Retry-After.",
    ),
    Setting(
        "server.header_timeout",
        "ROUTEPROXY_HEADER_TIMEOUT",
        10.0,
        _positive,
        "Seconds a client has to send a request's head (request line and headers) once it connected or began "
        "the request; past it, 408 and the connection is closed (slowloris).",
    ),
    Setting(
        "server.body_timeout",
        "ROUTEPROXY_BODY_TIMEOUT",
        60.0,
        _positive,
        "Seconds a client has to send a whole request body; past it, 408. After an early answer (413) the rest "
        "of the body is read and dropped for at most this long (30 s at most), then the connection is closed.",
    ),
    Setting(
        "server.keepalive_timeout",
        "ROUTEPROXY_KEEPALIVE_TIMEOUT",
        75.0,
        _positive,
        "Seconds an idle keep-alive connection is kept open between requests. Keep it above the idle timeout "
        "of whatever pools connections to the proxy (a load balancer, nginx, an SDK), or a request it sends on "
        "a connection the proxy is just closing fails with a reset.",
    ),
    Setting(
        "server.max_header_bytes",
        "ROUTEPROXY_MAX_HEADER_BYTES",
        32 * 1024,
        _int_in(1024, 1024 * 1024),
        "Most bytes in a request's target and headers together; past it, 431.",
    ),
    Setting(
        "server.max_headers",
        "ROUTEPROXY_MAX_HEADERS",
        100,
        _int_in(8, 10_000),
        "Most header lines in a request; past it, 431.",
    ),
    Setting(
        "server.drain_seconds",
        "ROUTEPROXY_DRAIN_SECONDS",
        30.0,
        _positive,
        "On SIGTERM: how long in-flight requests may take to finish before they are cut.",
    ),
    Setting(
        "server.api_keys",
        "ROUTEPROXY_API_KEYS",
        None,
        _key_list,
        "Client keys (comma-separated); when set, /v1/* needs `Authorization: Bearer <key>`.",
    ),
    Setting(
        "server.api_keys_file",
        "ROUTEPROXY_API_KEYS_FILE",
        None,
        _optional_text,
        "File of client keys, one per line (# comments allowed), added to server.api_keys.",
    ),
    Setting(
        "server.admin_token",
        "ROUTEPROXY_ADMIN_TOKEN",
        None,
        _optional_text,
        "Bearer token for reset and runtime config changes; unset = those are refused (see the next setting).",
    ),
    Setting(
        "server.admin_loopback_without_token",
        "ROUTEPROXY_ADMIN_LOOPBACK_WITHOUT_TOKEN",
        False,
        _bool,
        "Local development only: without an admin token, let loopback peers reset and change the config "
        "(`serve --simulate` turns it on). Never behind a mesh sidecar, whose peers are on loopback too.",
    ),
    Setting(
        "server.cors_origins",
        "ROUTEPROXY_CORS_ORIGINS",
        None,
        _origin_list,
        "Browser origins allowed by CORS (comma-separated, or *); unset = no CORS headers.",
    ),
    Setting(
        "server.dashboard",
        "ROUTEPROXY_DASHBOARD",
        True,
        _bool,
        "Serve the dashboard page at GET /dashboard (it reads the stats and config endpoints from the browser).",
    ),
)

LOG_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "logging.format",
        "ROUTEPROXY_LOG_FORMAT",
        "auto",
        _one_of("auto", "json", "console"),
        "Log lines as JSON, readable console lines, or auto (console on a terminal, else JSON).",
    ),
    Setting(
        "logging.level",
        "ROUTEPROXY_LOG_LEVEL",
        "info",
        _one_of("debug", "info", "warning", "error"),
        "Lowest log level written.",
    ),
)

SIMULATOR_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "simulator.speed",
        "ROUTEPROXY_SIM_SPEED",
        1.0,
        _positive,
        "serve --simulate: divides the simulated latencies (10 = ten times faster than the defaults: about 2.5 s per "
        "3B answer, 4.5 s per 8B).",
    ),
)
