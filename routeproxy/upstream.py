"""The only module that knows the HTTP client (aiohttp): one connection pool per tier, errors mapped to ours.

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

A request is sent once. aiohttp retries a request on a fresh connection only for idempotent methods, never for
our POST; it takes a pooled connection only when the connection is still open and younger than the keep-alive
expiry. So a request is re-sent only when it provably never left: the connection could not be made (and then only
to the fallback tier, by the relay) or the pooled connection was known closed before anything was written.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http import RawResponseMessage
from aiohttp.streams import StreamReader
from multidict import CIMultiDict
from yarl import URL

from routeproxy.config import Tier, TierConfig
from routeproxy.errors import ConfigError, UpstreamBusy, UpstreamError, UpstreamTimeout, UpstreamUnavailable

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
_HEAD_END = b"\r\n\r\n"

RawHeaders = list[tuple[bytes, bytes]]


def request_headers(
    client_headers: RawHeaders, tier: TierConfig, request_id: str, *, forward_client_auth: bool = True
) -> CIMultiDict[str]:
    """The upstream request's headers, in the type aiohttp keeps them in (ASGI's bytes read as latin-1)."""
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
    headers.add("content-type", "application/json")  # the body is the JSON we serialised
    headers.add("x-request-id", request_id)
    return headers


def root_prefix(base_path: bytes) -> bytes:
    """The path beside ``/v1`` rather than under it (vLLM serves /tokenize at its root)."""
    return base_path[:-3] if base_path.endswith(b"/v1") else base_path


def response_headers(upstream_headers: tuple[tuple[bytes, bytes], ...] | RawHeaders) -> RawHeaders:
    """ASGI wants lower-case names; aiohttp keeps the upstream's spelling."""
    headers = []
    for name, value in upstream_headers:
        lowered = name.lower()
        if lowered not in _DROP_RESPONSE:
            headers.append((lowered, value))
    return headers


class _RelayReader(StreamReader):
    """aiohttp's body buffer, cheaper per HTTP chunk for a relay that only ever reads what has arrived (``readany``).

    aiohttp's parser calls three Python methods per HTTP chunk of a chunked body, and ``readany`` hands back each
    buffered chunk through its own bookkeeping (and a ``resume_reading`` call each): about 8 k instructions per
    chunk, a third of a 20-event stream's cost. The relay never reads by HTTP chunk, so the chunk boundaries are
    not tracked, and ``readany`` takes the whole buffer in one step. Flow control is aiohttp's: reading pauses past
    the high-water mark and resumes once the buffer is taken.
    """

    __slots__ = ()

    def feed_data(self, data: bytes, size: int = 0) -> bool:
        if data:
            self._size += len(data)
            self.total_bytes += len(data)
            self._buffer.append(data)
            waiter = self._waiter
            if waiter is not None:
                self._waiter = None
                if not waiter.done():
                    waiter.set_result(None)
            if self._size > self._high_water:
                self._protocol.pause_reading()
        return False

    def begin_http_chunk_receiving(self) -> None:
        """Chunk boundaries are not kept: the relay reads whatever has arrived."""

    def end_http_chunk_receiving(self) -> None:
        """Chunk boundaries are not kept: the relay reads whatever has arrived."""

    async def readany(self) -> bytes:
        if self._exception is not None:
            raise self._exception
        buffer = self._buffer
        while not buffer and not self._eof:
            await self._wait("readany")
        if not buffer:
            return b""
        self._timer.assert_timeout()
        data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        if self._buffer_offset:
            data = data[self._buffer_offset :]
            self._buffer_offset = 0
        buffer.clear()
        paused = self._size > self._high_water  # feed_data paused reading at this size
        self._size = 0
        self._cursor += len(data)
        if paused:
            self._protocol.resume_reading()
        return data


class _GuardedProtocol(ResponseHandler):
    """aiohttp's connection protocol, with three guarantees the hop needs that aiohttp does not give on its own:

    - bytes after a Content-Length body are dropped and the connection closed (aiohttp's parser reads them as the
      next response, and fails the whole exchange when they are not one);
    - bytes arriving while no request waits close the connection (aiohttp would keep a stray response there as the
      answer to the next request sent on it);
    - a reset before the end of a body delimited by the connection's close fails the body (aiohttp takes any close
      as the end of such a body, so a truncated answer would pass as complete).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, idle_timeout: float | None) -> None:
        super().__init__(loop)
        self._idle_timeout = idle_timeout
        self._awaiting = False  # a request was sent and its final response has not ended
        self._in_head = False  # the final response's head is still to come
        self._head_tail = b""  # the last bytes of an unfinished head, to find its end across reads
        self._body_left: int | None = None  # bytes still to come of a Content-Length body

    def set_response_params(self, **options: Any) -> None:
        self._awaiting, self._in_head, self._head_tail, self._body_left = True, True, b"", None
        super().set_response_params(**options)

    def data_received(self, data: bytes) -> None:
        if not self._awaiting:
            if data:  # an upstream writing out of turn: nothing it says can be trusted as the next answer
                self._should_close = True
                if self.transport is not None:
                    self.transport.close()
            return
        while data:
            if self._body_left is not None:
                body, extra = data[: self._body_left], data[self._body_left :]
                self._body_left -= len(body)
                if extra:
                    self._should_close = True  # dropped with the connection
                if body:
                    super().data_received(body)
                return
            if not self._in_head:  # a chunked or close-delimited body: aiohttp's parser finds its end
                super().data_received(data)
                return
            tail = self._head_tail
            end = (tail + data).find(_HEAD_END) - len(tail) if tail else data.find(_HEAD_END)
            if end < -len(tail):
                self._head_tail = (tail + data)[-3:]
                super().data_received(data)
                return
            self._head_tail = b""
            head, data = data[: end + 4], data[end + 4 :]
            super().data_received(head)  # the parser hands the message to feed_data, which notes its length

    def feed_data(self, data: tuple[RawResponseMessage, StreamReader], size: int = 0) -> None:
        message, payload = data
        if type(payload) is StreamReader:
            payload.__class__ = _RelayReader  # same slots; the parser has not fed it a byte yet (see data_received)
        if not 100 <= message.code < 200:  # interim responses (100 Continue) are followed by the real one
            self._in_head = False
            # aiohttp's read timeout (sock_read) was the first-byte timeout until now; between body chunks it is
            # the idle timeout. One timer, re-armed by aiohttp on each read: no asyncio.timeout per chunk.
            if self.read_timeout != self._idle_timeout:
                self.read_timeout = self._idle_timeout
                self.start_timeout()
            length = message.headers.get("Content-Length", "")
            if not message.chunked and length.isdigit():
                self._body_left = int(length) if payload.total_bytes == 0 else None
            payload.on_eof(self._response_ended)
        super().feed_data(data, size)

    def _response_ended(self) -> None:
        self._awaiting = False
        self._body_left = 0  # anything after the end of this response is dropped

    def connection_lost(self, exc: BaseException | None) -> None:
        payload = self._payload
        if exc is not None and payload is not None and not payload.is_eof():
            payload.set_exception(aiohttp.ClientPayloadError(f"the connection was reset mid-body ({exc!r})"))
        super().connection_lost(exc)


class _Connector(aiohttp.TCPConnector):
    def __init__(self, idle_timeout: float | None, **options: Any) -> None:
        super().__init__(**options)
        factory = functools.partial(_GuardedProtocol, loop=self._loop, idle_timeout=idle_timeout)
        self._factory = cast("functools.partial[ResponseHandler]", factory)


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
            base = self._base
            prefix = base.path.rstrip("/").encode()
            full = (root_prefix(prefix) if from_root else prefix).decode() + path
            # encoded=True: the base URL's query (`?api-version=...`) goes upstream exactly as configured.
            url = URL(urlunsplit((base.scheme, base.netloc, full, base.query, "")), encoded=True)
            self._urls[path, from_root] = url
        return url

    def open_session(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running event loop that will serve it (and so are the slots).
        self.slots = asyncio.Semaphore(self.config.max_connections)
        connector = _Connector(
            self.config.idle_timeout,
            limit=0,  # the slots bound the connections, with a pool timeout aiohttp cannot tell from a connect one
            keepalive_timeout=KEEPALIVE_EXPIRY,
            ssl=self.ssl,
            ttl_dns_cache=60,
        )
        config = self.config
        # sock_read bounds the wait for the response head (then _GuardedProtocol sets it to the idle timeout).
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
            trust_env=False,  # the proxy was read from the environment once, at start (config._proxy_for)
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
    ) -> UpstreamResponse:
        """POST the request to the tier's base URL + ``path`` (its origin + ``path`` when ``from_root``) and wait
        for the response headers."""
        route = self._routes[tier]
        config = route.config
        headers = request_headers(
            client_headers, config, os.urandom(16).hex(), forward_client_auth=self.forward_client_auth
        )
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
            response = await session.post(
                route.url(path, from_root), data=body, headers=headers, allow_redirects=False, proxy=route.proxy
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
