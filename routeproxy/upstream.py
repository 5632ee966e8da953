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

from routeproxy import http1
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
    b"expect",  # the whole body goes at once; an interim 100 Continue is of no use
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
    # Headers the client's Connection header names are hop-by-hop for this one hop (RFC 9110 section 7.6.1).
    named = {
        token.strip().lower() for name, value in client_headers if name == b"connection" for token in value.split(b",")
    }
    headers = [
        (name, value)
        for name, value in client_headers
        if name not in _DROP_REQUEST
        and name not in named
        and not name.startswith((b"x-routeproxy-", b"x-forwarded-"))
        and not (drop_auth and name == b"authorization")
    ]
    if tier.api_key:
        headers.append((b"authorization", b"Bearer " + tier.api_key.encode("latin-1")))
    headers.append((b"accept-encoding", b"identity"))
    headers.append((b"content-type", b"application/json"))  # the body is the JSON we serialised
    headers.append((b"x-request-id", request_id.encode("ascii")))
    return headers


def root_prefix(base_path: bytes) -> bytes:
    """The path beside ``/v1`` rather than under it (vLLM serves /tokenize at its root)."""
    return base_path[:-3] if base_path.endswith(b"/v1") else base_path


def response_headers(upstream_headers: tuple[tuple[bytes, bytes], ...] | RawHeaders) -> RawHeaders:
    """ASGI wants lower-case names; the upstream may spell them otherwise."""
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
    _connection: http1.Connection
    _pool: http1.Pool
    _idle_timeout: float | None
    tier: Tier

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as the upstream sends it, chunk by chunk; a gap over the idle timeout raises."""
        connection = self._connection
        while True:
            try:
                async with asyncio.timeout(self._idle_timeout):
                    chunk = await connection.read()
            except TimeoutError:
                raise UpstreamTimeout(
                    f"the {self.tier} upstream sent nothing for {self._idle_timeout:g} s", reason="idle_timeout"
                ) from None
            except http1.HTTPError as exc:
                raise UpstreamUnavailable(
                    f"the {self.tier} upstream broke off its response: {exc}", reason="broken_response"
                ) from exc
            if not chunk:
                return
            yield chunk

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.chunks()]
        return b"".join(parts)

    async def aclose(self) -> None:
        """Give the connection back when the body was read to the end, else close it (the upstream stops)."""
        self._pool.release(self._connection)


class UpstreamPool:
    """One keep-alive connection pool per tier (routeproxy.http1; see the README for why not httpx or aiohttp)."""

    def __init__(self, tiers: Mapping[Tier, TierConfig], *, forward_client_auth: bool = True) -> None:
        self.tiers = tiers
        self.forward_client_auth = forward_client_auth
        self._pools = {
            tier: http1.Pool(config.base_url, connect_timeout=config.connect_timeout, keepalive_expiry=KEEPALIVE_EXPIRY)
            for tier, config in tiers.items()
        }

    async def send(
        self,
        tier: Tier,
        body: bytes,
        client_headers: RawHeaders,
        *,
        path: str = "/chat/completions",
        from_root: bool = False,
    ) -> UpstreamResponse:
        """POST the request to the tier's base URL + ``path`` (its origin + ``path`` when ``from_root``) and wait
        for the response headers."""
        config = self.tiers[tier]
        pool = self._pools[tier]
        headers = request_headers(
            client_headers, config, os.urandom(16).hex(), forward_client_auth=self.forward_client_auth
        )
        try:
            async with asyncio.timeout(config.first_byte_timeout):
                connection = await pool.request(
                    path.encode(), headers, body, prefix=root_prefix(pool.path_prefix) if from_root else None
                )
        except TimeoutError:
            raise UpstreamTimeout(
                f"the {tier} upstream did not answer within {config.first_byte_timeout:g} s",
                reason="first_byte_timeout",
            ) from None
        except http1.ConnectTimedOut as exc:
            raise UpstreamTimeout(
                f"could not connect to the {tier} upstream within {config.connect_timeout:g} s",
                reason="connect_timeout",
                retryable=True,
            ) from exc
        except http1.ConnectFailed as exc:
            raise UpstreamUnavailable(
                f"could not connect to the {tier} upstream: {exc}", reason="connect_error", retryable=True
            ) from exc
        except http1.HTTPError as exc:
            raise UpstreamUnavailable(f"the {tier} upstream failed: {exc}", reason="protocol_error") from exc
        headers_out = response_headers(connection.headers)
        content_type = next((value for name, value in headers_out if name == b"content-type"), b"")
        return UpstreamResponse(
            status=connection.status,
            headers=headers_out,
            content_type=content_type.decode("latin-1"),
            _connection=connection,
            _pool=pool,
            _idle_timeout=config.idle_timeout,
            tier=tier,
        )

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
