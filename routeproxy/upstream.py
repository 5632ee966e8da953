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
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import httpx

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
    headers.append((b"x-request-id", request_id.encode("ascii")))
    return headers


def response_headers(upstream_headers: RawHeaders) -> RawHeaders:
    return [(name, value) for name, value in upstream_headers if name.lower() not in _DROP_RESPONSE]


@dataclass(slots=True)
class UpstreamResponse:
    """An upstream answer whose headers have arrived; the body is read with ``chunks()`` or ``read()``."""

    status: int
    headers: RawHeaders
    content_type: str
    _response: httpx.Response
    _idle_timeout: float | None
    tier: Tier

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as the upstream sends it, chunk by chunk; a gap over the idle timeout raises."""
        iterator = self._response.aiter_raw().__aiter__()
        while True:
            try:
                async with asyncio.timeout(self._idle_timeout):
                    chunk = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise UpstreamTimeout(
                    f"the {self.tier} upstream sent nothing for {self._idle_timeout:g} s", reason="idle_timeout"
                ) from None
            except httpx.HTTPError as exc:
                raise UpstreamUnavailable(
                    f"the {self.tier} upstream broke off its response: {exc!r}", reason="broken_response"
                ) from exc
            if chunk:
                yield chunk

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.chunks()]
        return b"".join(parts)

    async def aclose(self) -> None:
        await self._response.aclose()


class UpstreamPool:
    """One HTTP client (connection pool) per tier."""

    def __init__(self, tiers: Mapping[Tier, TierConfig], *, forward_client_auth: bool = True) -> None:
        self.tiers = tiers
        self.forward_client_auth = forward_client_auth
        self._clients = {
            tier: httpx.AsyncClient(
                base_url=config.base_url,
                timeout=httpx.Timeout(None, connect=config.connect_timeout),
                limits=httpx.Limits(
                    max_connections=None, max_keepalive_connections=256, keepalive_expiry=KEEPALIVE_EXPIRY
                ),
                trust_env=False,
                follow_redirects=False,
            )
            for tier, config in tiers.items()
        }

    async def send(self, tier: Tier, body: bytes, client_headers: RawHeaders) -> UpstreamResponse:
        """POST the chat request to the tier and wait for the response headers."""
        config = self.tiers[tier]
        client = self._clients[tier]
        request = client.build_request(
            "POST",
            "chat/completions",
            content=body,
            headers=request_headers(
                client_headers, config, uuid.uuid4().hex, forward_client_auth=self.forward_client_auth
            ),
        )
        try:
            async with asyncio.timeout(config.first_byte_timeout):
                response = await client.send(request, stream=True)
        except TimeoutError:
            raise UpstreamTimeout(
                f"the {tier} upstream did not answer within {config.first_byte_timeout:g} s",
                reason="first_byte_timeout",
            ) from None
        except httpx.ConnectTimeout as exc:
            raise UpstreamTimeout(
                f"could not connect to the {tier} upstream within {config.connect_timeout:g} s",
                reason="connect_timeout",
                retryable=True,
            ) from exc
        except httpx.ConnectError as exc:
            raise UpstreamUnavailable(
                f"could not connect to the {tier} upstream: {exc}", reason="connect_error", retryable=True
            ) from exc
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"the {tier} upstream timed out: {exc!r}", reason="timeout") from exc
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"the {tier} upstream failed: {exc!r}", reason="protocol_error") from exc
        return UpstreamResponse(
            status=response.status_code,
            headers=response_headers(response.headers.raw),
            content_type=response.headers.get("content-type", ""),
            _response=response,
            _idle_timeout=config.idle_timeout,
            tier=tier,
        )

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
