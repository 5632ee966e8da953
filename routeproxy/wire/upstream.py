"""The HTTP client (aiohttp) for the upstream hop: one connection pool per tier, errors mapped to ours.

With ``upstream_protocol.py`` (its protocol and body buffer) the only module that knows aiohttp, but for the
answer check's verifier (routeproxy.cascade.verifier), which has a small client of its own for a scoring model.

Header policy (what crosses the proxy):
- client -> upstream: everything except hop-by-hop headers, ``host``, ``content-length`` (recomputed for the
  rewritten body), ``accept-encoding`` (we ask for identity, so relayed bytes are the upstream's own and usage can
  be read from them), our own ``x-routeproxy-*`` hints, spoofable client-address headers (``forwarded``,
  ``x-forwarded-*``, ``x-real-ip``) and the client's ``x-request-id`` (each upstream attempt gets a fresh one:
  vLLM rejects a duplicate id that is still running). When the tier has an api key it replaces the client's
  ``authorization``. Otherwise the client's credentials pass through (a per-user HF token, say), unless the proxy
  checks client keys itself: a routeproxy client key never leaves the proxy.
- upstream -> client: everything except hop-by-hop headers and those the upstream's ``Connection`` names,
  ``content-length`` and ``content-encoding``
  of a body we re-frame, and any upstream ``x-request-id`` (the client gets its own id back).

A POST is sent once. aiohttp retries a request on a fresh connection only for idempotent methods (the GET and
DELETE of a stored response, which are safe to ask twice), never for a POST; it takes a pooled connection only
when the connection is still open and younger than the keep-alive expiry. So a POST is re-sent only when it
provably never left: the connection could not be made (and then only to the fallback tier, by the relay) or the
pooled connection was known closed before anything was written.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from routeproxy.errors import ConfigError, UpstreamBusy, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from routeproxy.settings import Tier
from routeproxy.settings.tier_config import TierConfig
from routeproxy.wire.upstream_protocol import Connector

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
    client_headers: RawHeaders,
    tier: TierConfig,
    request_id: str,
    *,
    forward_client_auth: bool = True,
    json_body: bool = True,
) -> CIMultiDict[str]:
    """The upstream request's headers, in the type aiohttp keeps them in (ASGI's bytes read as latin-1).

    ``json_body`` false: the request has no body (a GET, a DELETE), so it has no content type either."""
    drop_auth = bool(tier.api_key) or not forward_client_auth
    # Headers the client's Connection header names are hop-by-hop for this one hop (RFC 9110 section 7.6.1).
    named = {
        token.strip().lower() for name, value in client_headers if name == b"connection" for token in value.split(b",")
    }
    headers = CIMultiDict(
        [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in client_headers
            if name not in _DROP_REQUEST
            and name not in named
            and not name.startswith((b"x-routeproxy-", b"x-forwarded-"))
            and not (drop_auth and name == b"authorization")
        ]
    )
    if tier.api_key:
        headers.add("authorization", "Bearer " + tier.api_key)
    headers.add("accept-encoding", "identity")
    if json_body:
        headers.add("content-type", "application/json")  # the body is the JSON we serialised (or checked)
    headers.add("x-request-id", request_id)
    return headers


def root_prefix(base_path: bytes) -> bytes:
    """The path beside ``/v1`` rather than under it (vLLM serves /tokenize at its root)."""
    return base_path[:-3] if base_path.endswith(b"/v1") else base_path


def response_headers(upstream_headers: tuple[tuple[bytes, bytes], ...] | RawHeaders) -> RawHeaders:
    """ASGI wants lower-case names; aiohttp keeps the upstream's spelling. The headers the upstream's
    ``Connection`` header names are for its hop only (RFC 9110 section 7.6.1), like the hop-by-hop ones."""
    named = {
        token.strip().lower()
        for name, value in upstream_headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    headers = []
    for name, value in upstream_headers:
        lowered = name.lower()
        if lowered not in _DROP_RESPONSE and lowered not in named:
            headers.append((lowered, value))
    return headers


def _upstream_error(exc: BaseException, tier: Tier, config: TierConfig, *, reading: bool) -> UpstreamError:
    """aiohttp's exceptions in routeproxy's terms (the one place they are translated).

    ``retryable`` (the relay may try the other tier) only where the request cannot have reached the upstream.
    """
    if reading:
        if isinstance(exc, TimeoutError):
            return UpstreamTimeout(
                f"the {tier} upstream sent nothing for {config.idle_timeout:g} s", reason="idle_timeout"
            )
        return UpstreamUnavailable(f"the {tier} upstream broke off its response: {exc}", reason="broken_response")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamTimeout(
            f"could not connect to the {tier} upstream within {config.connect_timeout:g} s",
            reason="connect_timeout",
            retryable=True,
        )
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(
            f"the {tier} upstream did not answer within {config.first_byte_timeout:g} s", reason="first_byte_timeout"
        )
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return UpstreamUnavailable(
            f"the HTTP proxy refused the way to the {tier} upstream: {exc.status} {exc.message}",
            reason="proxy_error",
            retryable=True,
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamUnavailable(
            f"could not connect to the {tier} upstream: {exc}", reason="connect_error", retryable=True
        )
    return UpstreamUnavailable(f"the {tier} upstream failed before answering: {exc!r}", reason="protocol_error")


@dataclass(slots=True)
class UpstreamResponse:
    """An upstream answer whose headers have arrived; the body is read with ``chunks()`` or ``read()``."""

    status: int
    headers: RawHeaders
    event_stream: bool  # text/event-stream, whatever its spelling (media types are case-insensitive)
    tier: Tier
    config: TierConfig
    _response: aiohttp.ClientResponse
    _slots: asyncio.Semaphore | None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as the upstream sends it, chunk by chunk; a gap over the idle timeout raises."""
        readany = self._response.content.readany
        try:
            while chunk := await readany():
                yield chunk
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _upstream_error(exc, self.tier, self.config, reading=True) from exc

    async def read(self) -> bytes:
        """The whole body, up to the tier's ``max_response_bytes``."""
        limit = self.config.max_response_bytes
        readany = self._response.content.readany
        parts, size = [], 0
        try:
            while chunk := await readany():
                size += len(chunk)
                if size > limit:
                    raise UpstreamUnavailable(
                        f"the {self.tier} upstream's response is larger than tiers.{self.tier}.max_response_bytes "
                        f"({limit} bytes)",
                        reason="response_too_large",
                    )
                parts.append(chunk)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _upstream_error(exc, self.tier, self.config, reading=True) from exc
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def aclose(self) -> None:
        """Give the connection back when the body was read to the end, else close it (the upstream stops)."""
        response = self._response
        if response.content.at_eof():
            response.release()
        else:
            response.close()
        if self._slots is not None:
            self._slots.release()
            self._slots = None


class _Route:
    """One tier's way upstream: its URL, TLS context, connection slots and (once in the event loop) session."""

    def __init__(self, tier: Tier, config: TierConfig) -> None:
        self.tier = tier
        self.config = config
        self._base = urlsplit(config.base_url)
        self._urls: dict[tuple[str, bool], URL] = {}
        self.proxy = URL(config.proxy) if config.proxy else None
        self.ssl = _tls_context(tier, config)
        self.slots = asyncio.Semaphore(config.max_connections)
        self.session: aiohttp.ClientSession | None = None

    def url(self, path: str, from_root: bool) -> URL:
        """The base URL + ``path`` (its origin + ``path`` when ``from_root``), built once per path."""
        url = self._urls.get((path, from_root))
        if url is None:
            url = self._urls[path, from_root] = self.build_url(path, from_root)
        return url

    def build_url(self, path: str, from_root: bool, query: str = "") -> URL:
        """The URL for ``path``, with the client's ``query`` (already percent-encoded) after the base URL's own."""
        base = self._base
        prefix = base.path.rstrip("/").encode()
        full = (root_prefix(prefix) if from_root else prefix).decode() + path
        # encoded=True: the base URL's query (`?api-version=...`) and the client's go upstream exactly as they came.
        return URL(
            urlunsplit((base.scheme, base.netloc, full, "&".join(filter(None, (base.query, query))), "")), encoded=True
        )

    def open_session(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running event loop that will serve it (and so are the slots).
        self.slots = asyncio.Semaphore(self.config.max_connections)
        connector = Connector(
            self.config.idle_timeout,
            limit=0,  # the slots bound the connections, with a pool timeout aiohttp cannot tell from a connect one
            keepalive_timeout=KEEPALIVE_EXPIRY,
            ssl=self.ssl,
            ttl_dns_cache=60,
        )
        config = self.config
        # sock_read bounds the wait for the response head (then upstream_protocol.py sets it to the idle timeout).
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=config.connect_timeout,
            sock_connect=config.connect_timeout,
            sock_read=config.first_byte_timeout,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # one client's cookies must never reach another's request
            auto_decompress=False,
            trust_env=False,  # the proxy was read from the environment once, at start (tier_config._proxy_for)
            skip_auto_headers=("User-Agent", "Content-Type", "Accept-Encoding", "Accept"),
            timeout=timeout,
        )
        return self.session


def _tls_context(tier: Tier, config: TierConfig) -> ssl.SSLContext:
    tls = config.tls
    try:
        context = ssl.create_default_context(cafile=tls.ca_bundle)
        if tls.client_cert is not None:
            context.load_cert_chain(tls.client_cert, tls.client_key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"tiers.{tier}: cannot load the TLS files: {exc}") from None
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class UpstreamPool:
    """One connection pool per tier (aiohttp; see the README's performance section for why)."""

    def __init__(self, tiers: Mapping[Tier, TierConfig], *, forward_client_auth: bool = True) -> None:
        self.tiers = tiers
        self.forward_client_auth = forward_client_auth
        self._routes = {tier: _Route(tier, config) for tier, config in tiers.items()}

    async def send(
        self,
        tier: Tier,
        body: bytes,
        client_headers: RawHeaders,
        *,
        path: str = "/chat/completions",
        from_root: bool = False,
        method: str = "POST",
        query: str | None = None,
    ) -> UpstreamResponse:
        """Send the request to the tier's base URL + ``path`` (its origin + ``path`` when ``from_root``) and wait
        for the response headers. An empty ``body`` is not sent. A path holding a client's value (a stored
        response's id) comes with the client's ``query`` (``""`` for none): its URL is built afresh, not kept."""
        route = self._routes[tier]
        config = route.config
        headers = request_headers(
            client_headers,
            config,
            os.urandom(16).hex(),
            forward_client_auth=self.forward_client_auth,
            json_body=bool(body),
        )
        url = route.url(path, from_root) if query is None else route.build_url(path, from_root, query)
        session = route.session or route.open_session()
        slots = route.slots
        if slots.locked():
            try:
                async with asyncio.timeout(config.pool_timeout):
                    await slots.acquire()
            except TimeoutError:
                raise UpstreamBusy(
                    f"all {config.max_connections} connections to the {tier} upstream stayed busy for "
                    f"{config.pool_timeout:g} s (tiers.{tier}.max_connections)",
                    reason="pool_timeout",
                    retryable=True,
                ) from None
        else:
            await slots.acquire()
        try:
            response = await session.request(
                method, url, data=body or None, headers=headers, allow_redirects=False, proxy=route.proxy
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            slots.release()
            raise _upstream_error(exc, tier, config, reading=False) from exc
        except BaseException:
            slots.release()  # cancelled (the client left): aiohttp has closed the connection
            raise
        media_type = response.headers.get("Content-Type", "").partition(";")[0].strip().lower()
        return UpstreamResponse(
            status=response.status,
            headers=response_headers(response.raw_headers),
            event_stream=media_type == "text/event-stream",
            tier=tier,
            config=config,
            _response=response,
            _slots=slots,
        )

    async def aclose(self) -> None:
        for route in self._routes.values():
            if route.session is not None:
                await route.session.close()
                route.session = None
