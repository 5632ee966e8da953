"""The Responses API's stored responses through the proxy (retrieve, delete, cancel, input items): the passthrough
tier first, the other tier when it answers 404. Real upstreams on loopback and the real openai SDK."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

import openai
import pytest
from support import http
from support.stored_upstream import StoredResponsesUpstream
from support.upstreams import ProxyFactory, ScriptedUpstream
from support.wait import eventually

from routeproxy.api.responses import upstream_id
from routeproxy.errors import InvalidRequest
from routeproxy.settings import Tier
from routeproxy.sim.threadserver import ThreadedServer

Upstreams = dict[Tier, StoredResponsesUpstream]


@pytest.fixture
def stored() -> Iterator[tuple[Upstreams, dict[Tier, ThreadedServer]]]:
    """One upstream per tier: the large (the passthrough tier) has resp_large, the small has resp_small."""
    upstreams = {
        Tier.LARGE: StoredResponsesUpstream("large", known={"resp_large"}),
        Tier.SMALL: StoredResponsesUpstream("small", known={"resp_small"}),
    }
    servers = {tier: ThreadedServer(upstream).start() for tier, upstream in upstreams.items()}
    yield upstreams, servers
    for server in servers.values():
        server.stop()


def proxy_for(
    stored: tuple[Upstreams, dict[Tier, ThreadedServer]], start_proxy: ProxyFactory, **overrides: Any
) -> ThreadedServer:
    return start_proxy({tier: f"{server.url}/v1" for tier, server in stored[1].items()}, **overrides)


def stats(proxy: ThreadedServer) -> dict[str, Any]:
    result: dict[str, Any] = http.get(f"{proxy.url}/v1/model-routing/stats").json()
    return result


@pytest.mark.parametrize("prefix", ["/v1", ""])
def test_sdk_calls_on_a_stored_response_reach_the_passthrough_tier_with_their_method_path_and_query(
    stored: tuple[Upstreams, dict[Tier, ThreadedServer]], start_proxy: ProxyFactory, prefix: str
) -> None:
    upstreams = stored[0]
    proxy = proxy_for(stored, start_proxy)
    with openai.OpenAI(base_url=f"{proxy.url}{prefix}", api_key="client-key", max_retries=0) as client:
        raw = client.responses.with_raw_response.retrieve("resp_large", include=["message.output_text.logprobs"])
        retrieved = raw.parse()
        items = client.responses.input_items.list("resp_large", after="msg_0", limit=2)
        cancelled = client.responses.cancel("resp_large")
        deleted = client.responses.with_raw_response.delete("resp_large")
    assert retrieved.id == "resp_large" and retrieved.model == "large" and retrieved.status == "completed"
    assert raw.headers["x-routeproxy-tier"] == "8b"
    assert raw.headers["x-routeproxy-reason"] == "passthrough"
    assert [item.id for item in items.data] == ["msg_1"]
    assert cancelled.status == "cancelled"
    assert deleted.status_code == 200
    seen = upstreams[Tier.LARGE].requests
    assert [(request["method"], request["path"]) for request in seen] == [
        ("GET", "/v1/responses/resp_large"),
        ("GET", "/v1/responses/resp_large/input_items"),
        ("POST", "/v1/responses/resp_large/cancel"),
        ("DELETE", "/v1/responses/resp_large"),
    ]
    assert parse_qs(seen[0]["query"]) == {"include[]": ["message.output_text.logprobs"]}
    assert parse_qs(seen[1]["query"]) == {"after": ["msg_0"], "limit": ["2"]}
    assert all(request["body"] == b"" for request in seen)
    # No body, no content type (the SDK sends one on every request); the header policy holds as for chat.
    assert all(b"content-type" not in request["headers"] for request in seen)
    assert all(request["headers"][b"authorization"] == b"Bearer client-key" for request in seen)
    assert all(b"x-stainless-lang" in request["headers"] for request in seen)
    assert upstreams[Tier.SMALL].requests == []


def test_a_response_only_the_other_tier_has_is_answered_by_it_and_counted_there(
    stored: tuple[Upstreams, dict[Tier, ThreadedServer]], start_proxy: ProxyFactory
) -> None:
    upstreams = stored[0]
    proxy = proxy_for(stored, start_proxy)
    with openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0) as client:
        raw = client.responses.with_raw_response.retrieve("resp_small")
    assert raw.status_code == 200
    assert raw.parse().model == "small"
    assert raw.headers["x-routeproxy-tier"] == "3b"
    assert "x-routeproxy-fallback" not in raw.headers  # nothing failed: the large tier does not have it
    assert [request["path"] for request in upstreams[Tier.LARGE].requests] == ["/v1/responses/resp_small"]
    assert [request["path"] for request in upstreams[Tier.SMALL].requests] == ["/v1/responses/resp_small"]
    now = stats(proxy)
    assert now["total_requests"] == 1
    assert now["model_distribution"]["3b"]["count"] == 1
    assert now["complexity_distribution"]["pinned"]["tiers"] == {"3b": 1, "8b": 0}
    assert now["fallbacks"] == {"3b": 0, "8b": 0}


def test_a_response_neither_tier_has_is_the_other_tiers_404_as_it_sent_it(
    stored: tuple[Upstreams, dict[Tier, ThreadedServer]], start_proxy: ProxyFactory
) -> None:
    upstreams = stored[0]
    proxy = proxy_for(stored, start_proxy)
    response = http.get(f"{proxy.url}/v1/responses/resp_gone/input_items?limit=1")
    assert response.status_code == 404
    assert response.content == upstreams[Tier.SMALL].not_found_body("resp_gone")
    assert response.headers["x-routeproxy-tier"] == "3b"
    assert len(upstreams[Tier.LARGE].requests) == len(upstreams[Tier.SMALL].requests) == 1
    with (
        openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0) as client,
        pytest.raises(openai.NotFoundError) as caught,
    ):
        client.responses.retrieve("resp_gone")
    assert "small: Response with id 'resp_gone' not found." in caught.value.message
    assert stats(proxy)["upstream_errors"] == {"3b": 0, "8b": 0}  # the upstream's own 404 is an answer


@pytest.mark.parametrize(
    "path", ["/v1/responses/resp_large", "/v1/responses/resp_small/input_items", "/v1/responses/resp_gone"]
)
def test_head_answers_what_get_answers_without_the_body(
    stored: tuple[Upstreams, dict[Tier, ThreadedServer]], start_proxy: ProxyFactory, path: str
) -> None:
    upstreams = stored[0]
    proxy = proxy_for(stored, start_proxy)
    got = http.get(f"{proxy.url}{path}")
    head = http.request("HEAD", f"{proxy.url}{path}")
    assert head.status_code == got.status_code
    assert head.content == b""
    assert int(head.headers["content-length"]) == len(got.content) > 0
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["x-routeproxy-tier"] == got.headers["x-routeproxy-tier"]
    methods = {request["method"] for upstream in upstreams.values() for request in upstream.requests}
    assert methods == {"GET"}  # an upstream is asked what the client's GET would ask


def test_head_of_a_streamed_retrieve_answers_the_headers_and_closes_the_stream(
    scripted: Callable[..., tuple[ScriptedUpstream, ThreadedServer]], start_proxy: ProxyFactory
) -> None:
    """The stream would go on until its gate opens (never, here): a HEAD must not wait for it, nor count the
    stream it closed as an upstream failure."""
    events = [(0.0, b'data: {"type": "response.created"}\n\n'), (0.0, b'data: {"type": "response.done"}\n\n')]
    servers = {tier: scripted(events, gates=[threading.Event()])[1] for tier in Tier}
    proxy = start_proxy({tier: f"{server.url}/v1" for tier, server in servers.items()})
    head = http.request("HEAD", f"{proxy.url}/v1/responses/resp_1?stream=true")
    assert head.status_code == 200
    assert head.headers["content-type"] == "text/event-stream"
    assert "content-length" not in head.headers
    assert head.content == b""
    counted = eventually(lambda: stats(proxy) if stats(proxy)["total_requests"] == 1 else None, what="counted")
    assert counted["upstream_errors"] == {"3b": 0, "8b": 0}


def test_cancel_passes_its_body_as_it_came_and_a_body_on_get_or_delete_is_not_sent(
    stored: tuple[Upstreams, dict[Tier, ThreadedServer]], start_proxy: ProxyFactory
) -> None:
    upstreams = stored[0]
    proxy = proxy_for(stored, start_proxy, **{"routing.passthrough_tier": "small"})
    body = b'{"note":  "kept as sent"}'
    cancel = http.post(f"{proxy.url}/responses/resp_small/cancel", content=body)
    get = http.request("GET", f"{proxy.url}/v1/responses/resp_small", content=b'{"ignored": true}')
    delete = http.request(
        "DELETE", f"{proxy.url}/v1/responses/resp_small", content=b"{}", headers={"content-type": "text/plain"}
    )
    assert cancel.status_code == get.status_code == delete.status_code == 200
    seen = upstreams[Tier.SMALL].requests
    assert [request["body"] for request in seen] == [body, b"", b""]
    assert seen[0]["headers"][b"content-type"] == b"application/json"
    assert b"content-type" not in seen[1]["headers"] and b"content-type" not in seen[2]["headers"]
    assert upstreams[Tier.LARGE].requests == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/responses/resp_large"),
        ("DELETE", "/responses/resp_large"),
        ("POST", "/v1/responses/resp_large/cancel"),
        ("GET", "/responses/resp_large/input_items"),
    ],
)
def test_stored_response_paths_need_the_client_key(
    stored: tuple[Upstreams, dict[Tier, ThreadedServer]], start_proxy: ProxyFactory, method: str, path: str
) -> None:
    upstreams = stored[0]
    proxy = proxy_for(stored, start_proxy, **{"server.api_keys": "client-key-123"})
    refused = http.request(method, f"{proxy.url}{path}")
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"
    assert upstreams[Tier.LARGE].requests == upstreams[Tier.SMALL].requests == []
    allowed = http.request(method, f"{proxy.url}{path}", headers={"authorization": "Bearer client-key-123"})
    assert allowed.status_code == 200
    (request,) = upstreams[Tier.LARGE].requests
    assert b"authorization" not in request["headers"]  # a routeproxy client key never leaves the proxy
    assert stats(proxy)["model_distribution"]["8b"]["count"] == 1


@pytest.mark.parametrize(
    ("given", "sent"), [("resp_1", "resp_1"), ("a b?#%", "a%20b%3F%23%25"), ("...", "..."), ("é", "%C3%A9")]
)
def test_a_response_id_goes_upstream_as_one_path_segment(given: str, sent: str) -> None:
    assert upstream_id(given) == sent


@pytest.mark.parametrize("dots", [".", ".."])
def test_a_dot_segment_is_not_a_response_id(dots: str) -> None:
    with pytest.raises(InvalidRequest):
        upstream_id(dots)
