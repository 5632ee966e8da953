"""The only module that knows the HTTP client: one connection pool per tier, errors mapped to ours.

Header policy (what crosses the proxy):
- client -> upstream: everything except hop-by-hop headers, ``host``, ``content-length`` (recomputed for the
  rewritten body), ``accept-encoding`` (we ask for identity, so relayed bytes are the upstream's own and usage can
  be read from them), our own ``x-routeproxy-*`` hints, spoofable client-address headers (``forwarded``,
  ``x-forwarded-*``, ``x-real-ip``) and the client's ``x-request-id`` (each upstream attempt gets a fresh one:
  vLLM rejects a duplicate id that is still running). When the tier has an api key it replaces the client's
  ``authorization``. Otherwise the client's credentials pass through (a per-user HF token, say), unless the proxy
  checks client keys itself: a routeproxy client key never leaves the proxy.
- upstream -> client: everything except hop-by-hop headers, ``content-length`` and ``content-encoding``
  of a body we re-frame, and any upstream ``x-request-id`` (the client gets its own id back).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp

from routeproxy.config import Tier, TierConfig
from routeproxy.errors import UpstreamTimeout, UpstreamUnavailable

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_DROP_REQUEST = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"content-type",
    b"accept-encoding",
    b"x-request-id",
    b"forwarded",
    b"x-real-ip",
}
_DROP_RESPONSE = HOP_BY_HOP | {b"content-length", b"x-request-id", b"date", b"server"}

# vLLM's uvicorn closes idle keep-alive connections after 5 s; expiring ours first avoids reusing a connection
# the server is closing ("Server disconnected" on the next request).
KEEPALIVE_EXPIRY = 4.0

RawHeaders = list[tuple[bytes, bytes]]


def request_headers(
    client_headers: RawHeaders, tier: TierConfig, request_id: str, *, forward_client_auth: bool = True
) -> RawHeaders:
    drop_auth = bool(tier.api_key) or not forward_client_auth
    headers = [
        (name, value)
        for name, value in client_headers
        if name not in _DROP_REQUEST
        and not name.startswith((b"x-routeproxy-", b"x-forwarded-"))
        and not (drop_auth and name == b"authorization")
    ]
    if tier.api_key:
        headers.append((b"authorization", b"Bearer " + tier.api_key.encode("latin-1")))
    headers.append((b"accept-encoding", b"identity"))
    headers.append((b"content-type", b"application/json"))  # the body is the JSON we serialised
    headers.append((b"x-request-id", request_id.encode("ascii")))
    return headers


def response_headers(upstream_headers: tuple[tuple[bytes, bytes], ...] | RawHeaders) -> RawHeaders:
    """ASGI wants lower-case names; aiohttp keeps the upstream's spelling."""
    headers = []
    for name, value in upstream_headers:
        lowered = name.lower()
        if lowered not in _DROP_RESPONSE:
            headers.append((lowered, value))
    return headers


@dataclass(slots=True)
class UpstreamResponse:
    """An upstream answer whose headers have arrived; the body is read with ``chunks()`` or ``read()``."""

    status: int
    headers: RawHeaders
    content_type: str
    _response: aiohttp.ClientResponse
    _idle_timeout: float | None
    tier: Tier

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as the upstream sends it, chunk by chunk; a gap over the idle timeout raises."""
        content = self._response.content
        while True:
            try:
                async with asyncio.timeout(self._idle_timeout):
                    chunk = await content.readany()
            except TimeoutError:
                raise UpstreamTimeout(
                    f"the {self.tier} upstream sent nothing for {self._idle_timeout:g} s", reason="idle_timeout"
                ) from None
            except (aiohttp.ClientError, OSError) as exc:
                raise UpstreamUnavailable(
                    f"the {self.tier} upstream broke off its response: {exc!r}", reason="broken_response"
                ) from exc
            if not chunk:
                return
            yield chunk

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.chunks()]
        return b"".join(parts)

    async def aclose(self) -> None:
        """Give the connection back when the body was read to the end, else close it (the upstream stops)."""
        response = self._response
        if response.content.at_eof():
            response.release()
        else:
            response.close()


class UpstreamPool:
    """One connection pool per tier (aiohttp: measured several times faster than httpx here; see the README)."""

    def __init__(self, tiers: Mapping[Tier, TierConfig], *, forward_client_auth: bool = True) -> None:
        self.tiers = tiers
        self.forward_client_auth = forward_client_auth
        self._urls = {tier: f"{config.base_url}/chat/completions" for tier, config in tiers.items()}
        self._timeouts = {
            tier: aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout)
            for tier, config in tiers.items()
        }
        self._sessions: dict[Tier, aiohttp.ClientSession] = {}

    def _session(self, tier: Tier) -> aiohttp.ClientSession:
        # Created on first use, inside the running event loop that will serve it.
        session = self._sessions.get(tier)
        if session is None:
            connector = aiohttp.TCPConnector(
                limit=0, keepalive_timeout=KEEPALIVE_EXPIRY, enable_cleanup_closed=False, ttl_dns_cache=60
            )
            session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                trust_env=False,
                skip_auto_headers=("User-Agent", "Content-Type", "Accept-Encoding"),
                timeout=self._timeouts[tier],
            )
            self._sessions[tier] = session
        return session

    async def send(self, tier: Tier, body: bytes, client_headers: RawHeaders) -> UpstreamResponse:
        """POST the chat request to the tier and wait for the response headers."""
        config = self.tiers[tier]
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request_headers(
                client_headers, config, os.urandom(16).hex(), forward_client_auth=self.forward_client_auth
            )
        ]
        try:
            async with asyncio.timeout(config.first_byte_timeout):
                response = await self._session(tier).post(
                    self._urls[tier], data=body, headers=headers, allow_redirects=False
                )
        except TimeoutError as exc:
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                raise UpstreamTimeout(
                    f"could not connect to the {tier} upstream within {config.connect_timeout:g} s",
                    reason="connect_timeout",
                    retryable=True,
                ) from exc
            raise UpstreamTimeout(
                f"the {tier} upstream did not answer within {config.first_byte_timeout:g} s",
                reason="first_byte_timeout",
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnavailable(
                f"could not connect to the {tier} upstream: {exc}", reason="connect_error", retryable=True
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnavailable(f"the {tier} upstream failed: {exc!r}", reason="protocol_error") from exc
        return UpstreamResponse(
            status=response.status,
            headers=response_headers(response.raw_headers),
            content_type=response.headers.get("Content-Type", ""),
            _response=response,
            _idle_timeout=config.idle_timeout,
            tier=tier,
        )

    async def aclose(self) -> None:
        for session in self._sessions.values():
            await session.close()
