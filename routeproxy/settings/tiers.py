"""Settings of the two upstream tiers, declared once per tier by the same template.

Their variables are ``ROUTEPROXY_SMALL_*`` and ``ROUTEPROXY_LARGE_*`` (``tiers.small.base_url`` is
``ROUTEPROXY_SMALL_BASE_URL``); the older ``MODEL_3B_*`` and ``MODEL_8B_*`` names (``MODEL_3B_NAME`` for the
model, as in the design report) still work as aliases."""

from __future__ import annotations

from dataclasses import replace

from routeproxy.settings.declaration import (
    Setting,
    Tier,
    UpstreamKind,
    _bool,
    _choice,
    _int_in,
    _label,
    _non_negative,
    _optional_seconds,
    _optional_text,
    _positive,
    _text,
)
from routeproxy.settings.upstream_url import upstream_url


def _tier_settings(tier: Tier, env_prefix: str, label: str, model: str, cost: float) -> tuple[Setting, ...]:
    size = label.upper()
    return (
        Setting(
            f"tiers.{tier}.label",
            f"{env_prefix}_LABEL",
            label,
            _label,
            f"Name of the {size} tier in the x-routeproxy-tier header, the stats JSON, metrics, logs and Redis fields.",
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
            upstream_url,
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


def _renamed(setting: Setting, tier: Tier) -> Setting:
    """The declaration under its ``ROUTEPROXY_<TIER>_*`` name, its older ``MODEL_<SIZE>_*`` name kept as an alias."""
    assert setting.env is not None
    name = setting.key.rpartition(".")[2].upper()
    return replace(setting, env=f"ROUTEPROXY_{tier.upper()}_{name}", aliases=(setting.env,))


TIER_SETTINGS: tuple[Setting, ...] = tuple(
    _renamed(setting, tier)
    for tier, settings in (
        (Tier.SMALL, _tier_settings(Tier.SMALL, "MODEL_3B", "3b", "meta-llama/Llama-3.2-3B-Instruct", 0.375)),
        (Tier.LARGE, _tier_settings(Tier.LARGE, "MODEL_8B", "8b", "meta-llama/Llama-3.1-8B-Instruct", 1.0)),
    )
    for setting in settings
)
