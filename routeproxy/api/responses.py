"""The Responses API's stored responses: retrieve, delete, cancel, and list the input items of a response by id.

The proxy keeps no record of response ids. A response is stored on the tier that served its ``POST /v1/responses``:
``routing.passthrough_tier``, or the tier whose model id the POST named. So the passthrough tier is asked first
and, when it answers 404 (it does not have the response), the other tier, whose answer is relayed as it came, a
404 included. Asking both is safe: the first one's 404 says it did nothing. Everything else follows the passthrough
rules (chat.py): the header policy, timeouts, error envelopes, client keys, the log line and the counting.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Send

from routeproxy.api.chat import Endpoint, admitted, exchange_hooks, rejected
from routeproxy.api.resources import resources_of
from routeproxy.errors import InvalidRequest, RouteproxyError, preview
from routeproxy.settings import Tier
from routeproxy.wire.admission import request_id_of
from routeproxy.wire.relay import Exchange, Prepare, RelayResult
from routeproxy.wire.upstream import RawHeaders, UpstreamPool, UpstreamResponse

# Each endpoint with its method; served with and without /v1, like the other passed-through paths.
OPERATIONS = (
    (Endpoint("responses.retrieve", "/responses/{response_id}"), "GET"),
    (Endpoint("responses.delete", "/responses/{response_id}"), "DELETE"),
    (Endpoint("responses.cancel", "/responses/{response_id}/cancel"), "POST"),
    (Endpoint("responses.input_items", "/responses/{response_id}/input_items"), "GET"),
)


def stored_response_routes() -> list[Route]:
    return [
        Route(prefix + endpoint.upstream_path, functools.partial(stored_response, endpoint=endpoint), methods=[method])
        for endpoint, method in OPERATIONS
        for prefix in ("/v1", "")
    ]


async def stored_response(request: Request, endpoint: Endpoint) -> Response | Exchange:
    started = time.perf_counter()
    resources = resources_of(request)
    request_id = request_id_of(request)
    try:
        # Checked before the key, as a path that is not served is (a 404 needs no key either).
        path = endpoint.upstream_path.format(response_id=upstream_id(request.path_params["response_id"]))
        # Only cancel is a POST, and its body (if any) goes on as it came; a body on a GET or a DELETE is not read.
        raw = await admitted(request, resources, with_body=request.method == "POST")
    except RouteproxyError as exc:
        return rejected(resources, exc, request_id)
    decision = resources.router.passthrough(None)
    prepare, finish = exchange_hooks(resources, endpoint, {}, decision, request_id, started, None, raw=raw)
    return StoredResponseExchange(
        resources.pool,
        decision.tier,
        prepare,
        request.headers.raw,
        started,
        finish,
        path=path,
        method=request.method,
        query=request.scope["query_string"].decode("latin-1"),  # as the client encoded it: include[]=..., after=
    )


def upstream_id(response_id: str) -> str:
    """The id as one path segment upstream: percent-encoded, and never a dot segment that would climb the path."""
    if response_id in (".", ".."):
        raise InvalidRequest(
            f"{preview(response_id)!r} is not a response id", param="response_id", code="invalid_response_id"
        )
    return quote(response_id, safe="")


class StoredResponseExchange(Exchange):
    """The passthrough tier first; when it answers 404, the other tier, whose answer is relayed. Neither is a
    fallback (nothing failed), so none is counted or announced as one.

    A HEAD (which Starlette serves on every GET route) is answered as the GET would be, without the body: the
    upstreams are asked with GET, whose status, headers and length the client gets (an upstream need not
    answer HEAD, and its own would lack the length); a stream's headers go out and the stream is closed."""

    def __init__(
        self,
        pool: UpstreamPool,
        tier: Tier,
        prepare: Prepare,
        client_headers: RawHeaders,
        started: float,
        on_finish: Callable[[RelayResult], None],
        *,
        path: str,
        method: str,
        query: str,
    ) -> None:
        super().__init__(pool, tier, None, prepare, client_headers, started, on_finish, path=path)
        self.head = method == "HEAD"
        self.method = "GET" if self.head else method
        self.query = query

    async def _open(self) -> UpstreamResponse:
        first = await self._ask(self.tier)
        if first.status != 404:
            return first
        await first.aclose()
        return await self._ask(self.tier.other)

    async def _ask(self, tier: Tier) -> UpstreamResponse:
        body, self.extra_headers = self.prepare(tier, None)
        self.result.tier = tier
        return await self.pool.send(
            tier, body, self.client_headers, path=self.path, method=self.method, query=self.query
        )

    async def _relay(self, upstream: UpstreamResponse, send: Send) -> None:
        if not (self.head and upstream.event_stream):
            await super()._relay(upstream, send)  # a whole body: its length is sent, uvicorn drops the body
            return
        self.result.status, self.result.stream = upstream.status, True
        headers = [*upstream.headers, *self.extra_headers]
        await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
