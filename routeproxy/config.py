"""YAML + environment -> frozen, validated settings.

Every setting is declared once in ``SETTINGS`` with its YAML key, its environment variable, its default and
its help text. The README's settings table is generated from (and tested against) that declaration.

Precedence, highest first: explicit overrides (CLI flags) > environment > YAML file > default.
Nothing outside this module and ``cli.py`` reads the environment.
"""

from __future__ import annotations

import difflib
import enum
import os
import re
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from routeproxy.errors import ConfigError


class Tier(enum.StrEnum):
    SMALL = "small"
    LARGE = "large"

    @property
    def other(self) -> Tier:
        return Tier.LARGE if self is Tier.SMALL else Tier.SMALL


class UpstreamKind(enum.StrEnum):
    VLLM = "vllm"
    TGI = "tgi"
    HF = "hf"


class StickyKey(enum.StrEnum):
    QUERY = "query"
    USER = "user"
    HEADER = "header"


class RoutingMode(enum.StrEnum):
    CLASSIFY = "classify"  # the prompt decides the tier
    CASCADE = "cascade"  # the small tier answers first; a weak answer is re-asked on the large tier


# -- converters: str (from the environment) or YAML value -> typed value; ValueError names the problem --


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true or false")


def _ratio(value: Any) -> float:
    number = _float(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError("expected a number from 0.0 to 1.0")
    return number


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("expected a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError("expected a finite number")
    return number


def _positive(value: Any) -> float:
    number = _float(value)
    if number <= 0:
        raise ValueError("expected a number above 0")
    return number


def _non_negative(value: Any) -> float:
    number = _float(value)
    if number < 0:
        raise ValueError("expected a number of 0 or more")
    return number


def _optional_seconds(value: Any) -> float | None:
    """A timeout: seconds above 0, or none/0 for no limit."""
    if value is None or str(value).strip().lower() in {"", "none", "null", "0", "0.0"}:
        return None
    return _positive(value)


def _int_in(low: int, high: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("expected a whole number")
        try:
            number = int(str(value).strip())
        except ValueError:
            raise ValueError("expected a whole number") from None
        if not low <= number <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return number

    return convert


def _text(value: Any) -> str:
    if value is None or isinstance(value, (dict, list)):
        raise ValueError("expected a string")
    text = str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


_LABEL = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def _label(value: Any) -> str:
    text = _text(value)
    if not _LABEL.match(text):
        raise ValueError("expected 1-32 letters, digits, _ or - (it names Redis fields and Prometheus labels)")
    return text


def _optional_text(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _text(value)


def _key_list(value: Any) -> tuple[str, ...]:
    """Client api keys: a YAML list, or a comma-separated string (the environment's form)."""
    if value is None:
        return ()
    items = value if isinstance(value, list) else str(value).split(",")
    keys = tuple(str(item).strip() for item in items if str(item).strip())
    if any(len(key) < 8 for key in keys):
        raise ValueError("every client api key must be at least 8 characters")
    return keys


def _origin_list(value: Any) -> tuple[str, ...]:
    """CORS origins: a YAML list or a comma-separated string; each `*` or scheme://host[:port]."""
    if value is None:
        return ()
    items = value if isinstance(value, list) else str(value).split(",")
    origins = tuple(str(item).strip().rstrip("/") for item in items if str(item).strip())
    for origin in origins:
        if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
            raise ValueError(f"{origin!r} is not an origin: expected * or scheme://host[:port]")
    return origins


def _url(value: Any) -> str:
    text = _text(value).rstrip("/")
    if not re.match(r"^https?://[^/\s]+", text):
        raise ValueError("expected an http:// or https:// URL")
    return text


def _redis_url(value: Any) -> str | None:
    text = _optional_text(value)
    if text is not None and not re.match(r"^(redis|rediss|unix)://", text):
        raise ValueError("expected a redis://, rediss:// or unix:// URL")
    return text


def _choice(enum_type: type[enum.StrEnum]) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        text = _text(value).lower()
        try:
            return enum_type(text)
        except ValueError:
            allowed = ", ".join(member.value for member in enum_type)
            raise ValueError(f"expected one of: {allowed}") from None

    return convert


def _one_of(*allowed: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        text = _text(value).lower()
        if text not in allowed:
            raise ValueError(f"expected one of: {', '.join(allowed)}")
        return text

    return convert


def _schedule(value: Any) -> tuple[float, ...]:
    """A rising list of ratios above 0 and at most 1: a YAML list or a comma-separated string."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    try:
        steps = tuple(_ratio(item) for item in items if str(item).strip())
    except ValueError:
        raise ValueError("expected ratios from 0.0 to 1.0, comma-separated") from None
    if not steps or steps[0] <= 0 or list(steps) != sorted(set(steps)):
        raise ValueError("expected at least one ratio, each above 0 and above the one before")
    return steps


def _percent(value: Any) -> float:
    number = _float(value)
    if not 0.0 <= number <= 100.0:
        raise ValueError("expected a percentage from 0 to 100")
    return number


@dataclass(frozen=True, slots=True)
class Setting:
    key: str
    env: str | None
    default: Any
    convert: Callable[[Any], Any]
    help: str


def _tier_settings(tier: Tier, env_prefix: str, label: str, model: str, cost: float) -> tuple[Setting, ...]:
    size = label.upper()
    return (
        Setting(
            f"tiers.{tier}.label",
            f"{env_prefix}_LABEL",
            label,
            _label,
            f"Name of the {size} tier in the stats JSON, metrics, logs and Redis fields (the seed's: {label}).",
        ),
        Setting(
            f"tiers.{tier}.model",
            f"{env_prefix}_NAME",
            model,
            _text,
            f"Model id sent upstream for the {size} tier (vLLM: a served name; HF: org/repo[:policy]).",
        ),
        Setting(
            f"tiers.{tier}.base_url",
            f"{env_prefix}_BASE_URL",
            "https://router.huggingface.co/v1",
            _url,
            f"OpenAI-compatible base URL of the {size} upstream, up to and including /v1.",
        ),
        Setting(
            f"tiers.{tier}.api_key",
            f"{env_prefix}_API_KEY",
            "${HF_TOKEN}",
            _optional_text,
            f"Bearer key sent to the {size} upstream instead of the client's; ${{VAR}} names an env var.",
        ),
        Setting(
            f"tiers.{tier}.kind",
            f"{env_prefix}_KIND",
            UpstreamKind.HF,
            _choice(UpstreamKind),
            f'Upstream dialect of the {size} tier: vllm, tgi (model sent as "tgi") or hf.',
        ),
        Setting(
            f"tiers.{tier}.connect_timeout",
            f"{env_prefix}_CONNECT_TIMEOUT",
            5.0,
            _positive,
            f"Seconds to open a connection to the {size} upstream.",
        ),
        Setting(
            f"tiers.{tier}.first_byte_timeout",
            f"{env_prefix}_FIRST_BYTE_TIMEOUT",
            600.0,
            _optional_seconds,
            f"Seconds to wait for the {size} upstream's response headers (0 = none).",
        ),
        Setting(
            f"tiers.{tier}.idle_timeout",
            f"{env_prefix}_IDLE_TIMEOUT",
            600.0,
            _optional_seconds,
            f"Longest gap in seconds between two body chunks from the {size} upstream (0 = none).",
        ),
        Setting(
            f"tiers.{tier}.max_connections",
            f"{env_prefix}_MAX_CONNECTIONS",
            1000,
            _int_in(1, 1_000_000),
            f"Most connections (requests in flight) to the {size} upstream at once.",
        ),
        Setting(
            f"tiers.{tier}.pool_timeout",
            f"{env_prefix}_POOL_TIMEOUT",
            10.0,
            _positive,
            f"Seconds a request waits for a free {size} connection when all are busy; then 503.",
        ),
        Setting(
            f"tiers.{tier}.max_response_bytes",
            f"{env_prefix}_MAX_RESPONSE_BYTES",
            32 * 1024 * 1024,
            _int_in(1024, 2**31),
            f"Largest non-streamed response body taken from the {size} upstream (502 above it).",
        ),
        Setting(
            f"tiers.{tier}.max_event_bytes",
            f"{env_prefix}_MAX_EVENT_BYTES",
            1024 * 1024,
            _int_in(1024, 2**31),
            f"Largest SSE event from the {size} upstream held while incomplete (the stream ends in an error event).",
        ),
        Setting(
            f"tiers.{tier}.tls_verify",
            f"{env_prefix}_TLS_VERIFY",
            True,
            _bool,
            f"Verify the {size} upstream's TLS certificate and host name (false only for testing).",
        ),
        Setting(
            f"tiers.{tier}.ca_bundle",
            f"{env_prefix}_CA_BUNDLE",
            None,
            _optional_text,
            f"PEM file of the CAs trusted for the {size} upstream; unset = the system's trust store.",
        ),
        Setting(
            f"tiers.{tier}.client_cert",
            f"{env_prefix}_CLIENT_CERT",
            None,
            _optional_text,
            f"PEM client certificate for mutual TLS with the {size} upstream (may hold the key too).",
        ),
        Setting(
            f"tiers.{tier}.client_key",
            f"{env_prefix}_CLIENT_KEY",
            None,
            _optional_text,
            f"PEM private key of client_cert for the {size} upstream, when not in the certificate file.",
        ),
        Setting(
            f"tiers.{tier}.relative_cost",
            f"{env_prefix}_RELATIVE_COST",
            cost,
            _non_negative,
            f"Cost of one {size} request relative to the others, for estimated_cost_savings_pct.",
        ),
    )


SETTINGS: tuple[Setting, ...] = (
    Setting("server.host", "ROUTEPROXY_HOST", "127.0.0.1", _text, "Address to listen on."),
    Setting("server.port", "ROUTEPROXY_PORT", 8001, _int_in(0, 65535), "Port to listen on (the seed's 8001)."),
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
        "of the body is read and dropped for at most this long, then the connection is closed.",
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
    Setting(
        "routing.enabled",
        "ENABLE_MODEL_ROUTING",
        False,
        _bool,
        "Route `auto` requests by complexity; when false every `auto` request goes to the large tier.",
    ),
    Setting(
        "routing.ab_test_ratio",
        "AB_TEST_RATIO",
        0.5,
        _ratio,
        "Share of MEDIUM queries sent to the small tier (0.0 = all large, 1.0 = all small).",
    ),
    Setting(
        "routing.mode",
        "ROUTEPROXY_ROUTING_MODE",
        RoutingMode.CLASSIFY,
        _choice(RoutingMode),
        "classify: the prompt picks the tier. cascade: all but COMPLEX and pinned go to the small tier first and "
        "a weak answer (see cascade.*) is re-asked on the large tier.",
    ),
    Setting(
        "routing.sticky_key",
        "ROUTEPROXY_STICKY_KEY",
        StickyKey.QUERY,
        _choice(StickyKey),
        "What the MEDIUM A/B draw hashes: the query text, the OpenAI `user` field, or a header.",
    ),
    Setting(
        "routing.sticky_header",
        "ROUTEPROXY_STICKY_HEADER",
        "x-routeproxy-session",
        _text,
        "Header hashed when sticky_key is `header`.",
    ),
    Setting(
        "routing.rules",
        "ROUTEPROXY_RULES",
        "general",
        _text,
        "Classifier rule set: a built-in name (general, poultry) or a path to a rules YAML file.",
    ),
    Setting(
        "routing.auto_model",
        "ROUTEPROXY_AUTO_MODEL",
        "auto",
        _text,
        "The model name clients send to ask for routing.",
    ),
    Setting(
        "routing.log_preview_chars",
        "ROUTEPROXY_LOG_PREVIEW_CHARS",
        60,
        _int_in(0, 10_000),
        "Characters of the query shown in logs (0 = none).",
    ),
    Setting(
        "routing.fallback_small_to_large",
        "ROUTEPROXY_FALLBACK_SMALL_TO_LARGE",
        True,
        _bool,
        "Retry on the large tier when the small one refuses, times out connecting, or answers 502/503/504.",
    ),
    Setting(
        "routing.fallback_large_to_small",
        "ROUTEPROXY_FALLBACK_LARGE_TO_SMALL",
        False,
        _bool,
        "Retry on the small tier when the large one fails the same way.",
    ),
    Setting(
        "routing.rollout.enabled",
        "ROUTEPROXY_ROLLOUT",
        False,
        _bool,
        "Let the rollout controller set ab_test_ratio from the A/B verdict, following routing.rollout.schedule.",
    ),
    Setting(
        "routing.rollout.schedule",
        "ROUTEPROXY_ROLLOUT_SCHEDULE",
        "0.1,0.3,0.5,0.8",
        _schedule,
        "The rollout's steps of ab_test_ratio (the seed's weekly plan), rising.",
    ),
    Setting(
        "routing.rollout.min_hold_s",
        "ROUTEPROXY_ROLLOUT_MIN_HOLD_S",
        604800.0,
        _positive,
        "Seconds a step is held at least before a pass moves it up (default one week).",
    ),
    Setting(
        "routing.rollout.min_feedback",
        "ROUTEPROXY_ROLLOUT_MIN_FEEDBACK",
        200,
        _int_in(1, 10_000_000),
        "Feedback events on MEDIUM queries (both tiers) a step needs before the controller moves it.",
    ),
    Setting(
        "routing.rollout.rollback_to",
        "ROUTEPROXY_ROLLOUT_ROLLBACK_TO",
        "previous",
        _one_of("previous", "zero"),
        "Where a rollback verdict goes: the previous step, or ratio 0 (which pauses the controller).",
    ),
    Setting(
        "routing.rollout.interval_s",
        "ROUTEPROXY_ROLLOUT_INTERVAL_S",
        5.0,
        _positive,
        "Seconds between two looks of the controller at the shared totals.",
    ),
    Setting(
        "routing.passthrough_tier",
        "ROUTEPROXY_PASSTHROUGH_TIER",
        Tier.LARGE,
        _choice(Tier),
        "Tier that serves the passed-through endpoints (embeddings, responses, tokenize...) unless one names a "
        "tier's model.",
    ),
    Setting(
        "cascade.rules",
        "ROUTEPROXY_CASCADE_RULES",
        "general",
        _text,
        "Answer-check rule set of cascade mode: a built-in name (config/checks/<name>.yaml) or a path.",
    ),
    Setting(
        "cascade.hold_tokens",
        "ROUTEPROXY_CASCADE_HOLD_TOKENS",
        128,
        _int_in(1, 100_000),
        "Cascade streams: content tokens of the small answer held back before the check decides.",
    ),
    Setting(
        "cascade.hold_ms",
        "ROUTEPROXY_CASCADE_HOLD_MS",
        3000,
        _int_in(1, 600_000),
        "Cascade streams: the longest hold in ms; then the check decides on the part that has arrived.",
    ),
    Setting(
        "cascade.request_logprobs",
        "ROUTEPROXY_CASCADE_REQUEST_LOGPROBS",
        False,
        _bool,
        "Cascade: ask the small tier for token logprobs for the check (removed again when the client did not ask).",
    ),
    *_tier_settings(Tier.SMALL, "MODEL_3B", "3b", "meta-llama/Llama-3.2-3B-Instruct", 0.375),
    *_tier_settings(Tier.LARGE, "MODEL_8B", "8b", "meta-llama/Llama-3.1-8B-Instruct", 1.0),
    Setting(
        "counters.redis_url",
        "REDIS_URL",
        None,
        _redis_url,
        "Redis for counters shared by all replicas (redis://, rediss://, unix://); unset = in-memory.",
    ),
    Setting(
        "counters.namespace",
        "ROUTEPROXY_REDIS_NAMESPACE",
        "routeproxy",
        _text,
        "Prefix of every Redis key, so several deployments can share one Redis.",
    ),
    Setting(
        "counters.baseline_latency_ms",
        "ROUTEPROXY_BASELINE_LATENCY_MS",
        4500.0,
        _optional_seconds,
        "Baseline for latency_improvement_pct (the seed's 4500); 0 = measure it from the large tier.",
    ),
    Setting(
        "quality.review_at_pct",
        "ROUTEPROXY_QUALITY_REVIEW_AT_PCT",
        5.0,
        _percent,
        "Degradation of 3B against 8B (%) from which the A/B verdict is `review` (below it: `pass`).",
    ),
    Setting(
        "quality.rollback_at_pct",
        "ROUTEPROXY_QUALITY_ROLLBACK_AT_PCT",
        10.0,
        _percent,
        "Degradation (%) above which the A/B verdict is `rollback`.",
    ),
    Setting(
        "quality.min_feedback_per_tier",
        "ROUTEPROXY_QUALITY_MIN_FEEDBACK",
        30,
        _int_in(2, 10_000_000),
        "Feedback events each tier needs on MEDIUM queries before there is any verdict.",
    ),
    Setting(
        "quality.verdict_uses_implicit",
        "ROUTEPROXY_QUALITY_VERDICT_USES_IMPLICIT",
        False,
        _bool,
        "Let the implicit signals (errors, clients leaving, regenerations) also decide the verdict (the worse wins).",
    ),
    Setting(
        "quality.decision_ttl_s",
        "ROUTEPROXY_DECISION_TTL_S",
        86400.0,
        _positive,
        "Seconds a request's routing decision is remembered for feedback (Redis TTL; in memory, the same).",
    ),
    Setting(
        "quality.max_remembered",
        "ROUTEPROXY_MAX_REMEMBERED",
        100_000,
        _int_in(100, 100_000_000),
        "Decisions kept in memory without Redis, and decisions waiting for Redis while it is down (oldest go).",
    ),
    Setting(
        "quality.max_queued_feedback",
        "ROUTEPROXY_MAX_QUEUED_FEEDBACK",
        10_000,
        _int_in(1, 10_000_000),
        "Feedback events kept while Redis is down; past it, feedback is refused with 503 (never dropped).",
    ),
    Setting(
        "quality.regeneration_window_s",
        "ROUTEPROXY_REGENERATION_WINDOW_S",
        120.0,
        _positive,
        "The same sticky key and query asked again within this many seconds counts as a regeneration.",
    ),
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
    Setting(
        "simulator.speed",
        "ROUTEPROXY_SIM_SPEED",
        1.0,
        _positive,
        "serve --simulate: divides the simulated latencies (10 = ten times faster than the seed's).",
    ),
)

SETTINGS_BY_KEY: Mapping[str, Setting] = {setting.key: setting for setting in SETTINGS}


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str
    port: int
    workers: int
    max_body_bytes: int
    max_concurrent_requests: int
    drain_seconds: float
    header_timeout: float
    body_timeout: float
    max_header_bytes: int
    max_headers: int
    api_keys: frozenset[str] = field(repr=False)
    admin_token: str | None = field(repr=False)
    admin_loopback_without_token: bool = False
    cors_origins: tuple[str, ...] = ()
    dashboard: bool = True


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    enabled: bool
    schedule: tuple[float, ...]
    min_hold_s: float
    min_feedback: int
    rollback_to: str
    interval_s: float


@dataclass(frozen=True, slots=True)
class QualityConfig:
    review_at_pct: float
    rollback_at_pct: float
    min_feedback_per_tier: int
    verdict_uses_implicit: bool
    decision_ttl_s: float
    max_remembered: int
    max_queued_feedback: int
    regeneration_window_s: float


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    enabled: bool
    ab_test_ratio: float
    sticky_key: StickyKey
    sticky_header: str
    rules: str
    auto_model: str
    log_preview_chars: int
    fallback_small_to_large: bool
    fallback_large_to_small: bool
    rollout: RolloutConfig
    passthrough_tier: Tier = Tier.LARGE
    mode: RoutingMode = RoutingMode.CLASSIFY

    def fallback_for(self, tier: Tier) -> Tier | None:
        """The tier to retry on when ``tier`` fails before answering, if that fallback is on."""
        enabled = self.fallback_small_to_large if tier is Tier.SMALL else self.fallback_large_to_small
        return tier.other if enabled else None


@dataclass(frozen=True, slots=True)
class TlsConfig:
    verify: bool = True
    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = None


@dataclass(frozen=True, slots=True)
class TierConfig:
    tier: Tier
    label: str  # the tier's name in stats, metrics, logs and Redis fields
    model: str
    base_url: str
    api_key: str | None
    api_key_env: str | None  # the variable the key was read from, to name it when it is unset
    kind: UpstreamKind
    connect_timeout: float
    first_byte_timeout: float | None
    idle_timeout: float | None
    relative_cost: float
    max_connections: int = 1000
    pool_timeout: float = 10.0
    max_response_bytes: int = 32 * 1024 * 1024
    max_event_bytes: int = 1024 * 1024
    tls: TlsConfig = field(default_factory=TlsConfig)
    # The HTTP proxy for this upstream, from HTTP(S)_PROXY / NO_PROXY at start (it may carry credentials).
    proxy: str | None = field(default=None, repr=False)

    @property
    def upstream_model(self) -> str:
        """What goes in the upstream request's `model` field (TGI takes "tgi" for its base model)."""
        return "tgi" if self.kind is UpstreamKind.TGI else self.model


@dataclass(frozen=True, slots=True)
class CounterConfig:
    redis_url: str | None
    namespace: str
    baseline_latency_ms: float | None


@dataclass(frozen=True, slots=True)
class CascadeConfig:
    rules: str = "general"
    hold_tokens: int = 128
    hold_ms: int = 3000
    request_logprobs: bool = False


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: str
    level: str


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    speed: float


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerConfig
    routing: RoutingConfig
    tiers: Mapping[Tier, TierConfig]
    counters: CounterConfig
    logging: LogConfig
    simulator: SimulatorConfig
    quality: QualityConfig
    cascade: CascadeConfig = CascadeConfig()
    source: str = "defaults"
    values: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def tier_labels(self) -> dict[Tier, str]:
        """Each tier's name in stats, metrics, logs and Redis fields (``tiers.<tier>.label``)."""
        return {tier: config.label for tier, config in self.tiers.items()}


_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def default_config_path() -> Path | None:
    """./config/routeproxy.yaml when the working directory has one, else the copy shipped in the package."""
    local = Path("config/routeproxy.yaml")
    if local.is_file():
        return local
    shipped = resources.files("routeproxy.defaults").joinpath("routeproxy.yaml")
    return Path(str(shipped)) if shipped.is_file() else None


def config_dir() -> Path:
    """The shipped config/ directory (built-in rule sets and examples)."""
    return Path(str(resources.files("routeproxy.defaults")))


def shipped_or_path(folder: str, name_or_path: str, what: str) -> Path:
    """A built-in name -> its file in the shipped ``config/<folder>/`` (ConfigError listing the built-in ones when
    there is none); anything that is not a bare name is a file path."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name_or_path):
        return Path(name_or_path)
    path = config_dir() / folder / f"{name_or_path}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(shipped.stem for shipped in (config_dir() / folder).glob("*.yaml")))
        raise ConfigError(
            f"unknown {what} {name_or_path!r}: the built-in ones are {names} (or give the path of a YAML file)"
        )
    return path


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and key not in SETTINGS_BY_KEY:
            yield from _flatten(value, f"{key}.")
        else:
            yield key, value


def read_yaml_tree(path: Path, what: str) -> Any:
    """The parsed YAML of a file; ConfigError naming ``what`` it is (a config file, a rule set) when it cannot be
    read or parsed."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None


def did_you_mean(key: str) -> str:
    """ " (did you mean 'routing.enabled'?)" for the nearest setting, or "" when none is near."""
    near = difflib.get_close_matches(key, SETTINGS_BY_KEY, n=1, cutoff=0.75)
    return f" (did you mean {near[0]!r}?)" if near else ""


def read_yaml(path: Path) -> dict[str, Any]:
    tree = read_yaml_tree(path, "config file")
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    flat: dict[str, Any] = {}
    for key, value in _flatten(tree):
        if key not in SETTINGS_BY_KEY:
            raise ConfigError(f"{path}: unknown setting {key!r}{did_you_mean(key)}")
        flat[key] = value
    return flat


def load_settings(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the YAML file, apply the environment and overrides, validate, and freeze."""
    environ = os.environ if environ is None else environ
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(SETTINGS_BY_KEY))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}{did_you_mean(unknown[0])}")
    if path is None and environ.get("ROUTEPROXY_CONFIG"):
        path = environ["ROUTEPROXY_CONFIG"]
    config_path = Path(path) if path is not None else default_config_path()
    from_file = read_yaml(config_path) if config_path is not None else {}

    values: dict[str, Any] = {}
    key_sources: dict[str, str] = {}
    for setting in SETTINGS:
        if setting.key in overrides:
            raw, where = overrides[setting.key], "command line"
        elif setting.env and setting.env in environ:
            raw, where = environ[setting.env], f"environment variable {setting.env}"
        elif setting.key in from_file:
            raw, where = from_file[setting.key], str(config_path)
        else:
            raw, where = setting.default, "default"
        try:
            values[setting.key] = setting.convert(raw)
        except ValueError as exc:
            raise ConfigError(f"{setting.key} = {raw!r} (from {where}): {exc}") from None
        key_sources[setting.key] = where

    tiers = {tier: _tier_config(tier, values, environ) for tier in Tier}
    if tiers[Tier.SMALL].model == tiers[Tier.LARGE].model:
        raise ConfigError(
            f"tiers.small.model and tiers.large.model are both {tiers[Tier.SMALL].model!r}: "
            "a pinned request could not tell the tiers apart"
        )
    if tiers[Tier.SMALL].label == tiers[Tier.LARGE].label:
        raise ConfigError(
            f"tiers.small.label and tiers.large.label are both {tiers[Tier.SMALL].label!r}: "
            "the stats could not tell the tiers apart"
        )
    if values["routing.auto_model"] in (tiers[Tier.SMALL].model, tiers[Tier.LARGE].model):
        raise ConfigError(f"routing.auto_model = {values['routing.auto_model']!r} is also a tier's model id")
    if values["quality.review_at_pct"] > values["quality.rollback_at_pct"]:
        raise ConfigError(
            f"quality.review_at_pct = {values['quality.review_at_pct']} is above "
            f"quality.rollback_at_pct = {values['quality.rollback_at_pct']}"
        )
    return Settings(
        server=ServerConfig(
            host=values["server.host"],
            port=values["server.port"],
            workers=values["server.workers"],
            max_body_bytes=values["server.max_body_bytes"],
            max_concurrent_requests=values["server.max_concurrent_requests"],
            drain_seconds=values["server.drain_seconds"],
            header_timeout=values["server.header_timeout"],
            body_timeout=values["server.body_timeout"],
            max_header_bytes=values["server.max_header_bytes"],
            max_headers=values["server.max_headers"],
            api_keys=frozenset(values["server.api_keys"]) | _read_key_file(values["server.api_keys_file"]),
            admin_token=values["server.admin_token"],
            admin_loopback_without_token=values["server.admin_loopback_without_token"],
            cors_origins=values["server.cors_origins"],
            dashboard=values["server.dashboard"],
        ),
        routing=RoutingConfig(
            enabled=values["routing.enabled"],
            ab_test_ratio=values["routing.ab_test_ratio"],
            sticky_key=values["routing.sticky_key"],
            sticky_header=values["routing.sticky_header"].lower(),
            rules=values["routing.rules"],
            auto_model=values["routing.auto_model"],
            log_preview_chars=values["routing.log_preview_chars"],
            fallback_small_to_large=values["routing.fallback_small_to_large"],
            fallback_large_to_small=values["routing.fallback_large_to_small"],
            rollout=RolloutConfig(
                enabled=values["routing.rollout.enabled"],
                schedule=values["routing.rollout.schedule"],
                min_hold_s=values["routing.rollout.min_hold_s"],
                min_feedback=values["routing.rollout.min_feedback"],
                rollback_to=values["routing.rollout.rollback_to"],
                interval_s=values["routing.rollout.interval_s"],
            ),
            passthrough_tier=values["routing.passthrough_tier"],
            mode=values["routing.mode"],
        ),
        tiers=tiers,
        counters=CounterConfig(
            redis_url=values["counters.redis_url"],
            namespace=values["counters.namespace"],
            baseline_latency_ms=values["counters.baseline_latency_ms"],
        ),
        logging=LogConfig(format=values["logging.format"], level=values["logging.level"]),
        simulator=SimulatorConfig(speed=values["simulator.speed"]),
        quality=QualityConfig(
            review_at_pct=values["quality.review_at_pct"],
            rollback_at_pct=values["quality.rollback_at_pct"],
            min_feedback_per_tier=values["quality.min_feedback_per_tier"],
            verdict_uses_implicit=values["quality.verdict_uses_implicit"],
            decision_ttl_s=values["quality.decision_ttl_s"],
            max_remembered=values["quality.max_remembered"],
            max_queued_feedback=values["quality.max_queued_feedback"],
            regeneration_window_s=values["quality.regeneration_window_s"],
        ),
        cascade=CascadeConfig(
            rules=values["cascade.rules"],
            hold_tokens=values["cascade.hold_tokens"],
            hold_ms=values["cascade.hold_ms"],
            request_logprobs=values["cascade.request_logprobs"],
        ),
        source=str(config_path) if config_path is not None else "defaults",
        values=values,
    )


def _read_key_file(path: str | None) -> frozenset[str]:
    if path is None:
        return frozenset()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"server.api_keys_file = {path!r}: cannot read it ({exc.strerror})") from None
    keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    try:
        return frozenset(_key_list(keys))
    except ValueError as exc:
        raise ConfigError(f"server.api_keys_file = {path!r}: {exc}") from None


HF_TOKEN_ENV = "HF_TOKEN"
_HF_HOSTS = ("huggingface.co", "huggingface.cloud")


def is_hugging_face(url: str) -> bool:
    """Whether the URL is a Hugging Face host (the router, or a dedicated Inference Endpoint)."""
    host = (urlsplit(url).hostname or "").lower()
    return any(host == domain or host.endswith("." + domain) for domain in _HF_HOSTS)


def _tier_config(tier: Tier, values: Mapping[str, Any], environ: Mapping[str, str]) -> TierConfig:
    def get(name: str) -> Any:
        return values[f"tiers.{tier}.{name}"]

    api_key: str | None = get("api_key")
    api_key_env = None
    if api_key is not None and (ref := _ENV_REF.match(api_key)):
        api_key_env = ref.group(1)
        api_key = environ.get(api_key_env) or None
        if api_key_env == HF_TOKEN_ENV and not is_hugging_face(get("base_url")):
            # The default key is for the Hugging Face router: a base URL pointed elsewhere (a keyless local
            # vLLM, say) gets no key, and the HF token never goes to another host.
            api_key = api_key_env = None
    if api_key is not None and (not api_key.isprintable() or not api_key.isascii()):
        # It becomes a header line upstream: a stray newline would start a header of its own.
        where = f"environment variable {api_key_env}" if api_key_env else f"tiers.{tier}.api_key"
        raise ConfigError(f"tiers.{tier}.api_key (from {where}) has non-printable or non-ASCII characters")
    return TierConfig(
        tier=tier,
        label=get("label"),
        model=get("model"),
        base_url=get("base_url"),
        api_key=api_key,
        api_key_env=api_key_env,
        kind=get("kind"),
        connect_timeout=get("connect_timeout"),
        first_byte_timeout=get("first_byte_timeout"),
        idle_timeout=get("idle_timeout"),
        relative_cost=get("relative_cost"),
        max_connections=get("max_connections"),
        pool_timeout=get("pool_timeout"),
        max_response_bytes=get("max_response_bytes"),
        max_event_bytes=get("max_event_bytes"),
        tls=_tls_config(tier, values),
        proxy=_proxy_for(get("base_url"), environ),
    )


def _tls_config(tier: Tier, values: Mapping[str, Any]) -> TlsConfig:
    tls = TlsConfig(
        verify=values[f"tiers.{tier}.tls_verify"],
        ca_bundle=values[f"tiers.{tier}.ca_bundle"],
        client_cert=values[f"tiers.{tier}.client_cert"],
        client_key=values[f"tiers.{tier}.client_key"],
    )
    if tls.client_key is not None and tls.client_cert is None:
        raise ConfigError(f"tiers.{tier}.client_key is set without tiers.{tier}.client_cert")
    for name in ("ca_bundle", "client_cert", "client_key"):
        path = getattr(tls, name)
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(f"tiers.{tier}.{name} = {path!r}: no readable file there")
    return tls


def _proxy_for(base_url: str, environ: Mapping[str, str]) -> str | None:
    """The proxy the environment names for this URL, as curl and the standard library read it.

    ``https_proxy`` / ``http_proxy`` by the URL's scheme (the lower-case name wins), unless ``no_proxy`` lists the
    host. Read once at start: aiohttp's ``trust_env`` would re-read the environment and ~/.netrc per request.
    """
    proxies: dict[str, str] = {}
    for name, value in environ.items():
        lowered = name.lower()
        if value and lowered.endswith("_proxy") and (lowered == name or lowered[:-6] not in proxies):
            proxies[lowered[:-6]] = value
    parts = urllib.parse.urlsplit(base_url)
    proxy = proxies.get(parts.scheme)
    # proxy_bypass_environment is the standard library's NO_PROXY matching; typeshed leaves it out.
    bypass = urllib.request.proxy_bypass_environment(parts.hostname or "", proxies)  # type: ignore[attr-defined]
    if proxy is None or bypass:
        return None
    return proxy


def settings_table() -> str:
    """The README's settings table, in Markdown."""
    rows = ["| YAML key | environment variable | default | what it does |", "| --- | --- | --- | --- |"]
    for setting in SETTINGS:
        default = setting.default.value if isinstance(setting.default, enum.Enum) else setting.default
        shown = "unset" if default is None else f"`{default}`"
        rows.append(f"| `{setting.key}` | `{setting.env}` | {shown} | {setting.help} |")
    return "\n".join(rows)
