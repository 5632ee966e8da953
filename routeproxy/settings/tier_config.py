"""One tier's upstream configuration, built from the settings and the environment at start.

The API key (a ``${VAR}`` reference read from the environment, the Hugging Face token kept to Hugging Face hosts),
the TLS files, and the HTTP proxy the environment names for the base URL. ``config.load_settings`` calls
``tier_config`` once per tier with the environment it was given; nothing here reads ``os.environ`` itself.
"""

from __future__ import annotations

import os
import re
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from routeproxy.errors import ConfigError
from routeproxy.settings.declaration import Tier, UpstreamKind


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


_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")

HF_TOKEN_ENV = "HF_TOKEN"
_HF_HOSTS = ("huggingface.co", "huggingface.cloud")


def is_hugging_face(url: str) -> bool:
    """Whether the URL is a Hugging Face host (the router, or a dedicated Inference Endpoint)."""
    host = (urlsplit(url).hostname or "").lower()
    return any(host == domain or host.endswith("." + domain) for domain in _HF_HOSTS)


def tier_config(tier: Tier, values: Mapping[str, Any], environ: Mapping[str, str]) -> TierConfig:
    """The tier's upstream from the converted setting values (``load_settings``) and the environment."""

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
    parts = urlsplit(base_url)
    proxy = proxies.get(parts.scheme)
    # proxy_bypass_environment is the standard library's NO_PROXY matching; typeshed leaves it out.
    bypass = urllib.request.proxy_bypass_environment(parts.hostname or "", proxies)  # type: ignore[attr-defined]
    if proxy is None or bypass:
        return None
    return proxy
