"""The proxy end to end: real uvicorn servers on loopback, the real openai SDK and raw httpx as clients."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import openai
import pytest
from support import http
from support.clients import streamed_chunks
from support.ports import refused_port
from support.upstreams import LARGE_MODEL, SMALL_MODEL, ProxyFactory, fast_profile
from support.wait import eventually

from routeproxy.settings import Tier
from routeproxy.sim.simulator import create_simulator_app
from routeproxy.sim.threadserver import ThreadedServer
from routeproxy.sim.wire import Dialect

MESSAGES = [{"role": "user", "content": "How do I improve feed conversion in broilers?"}]


def sim_requests(server: ThreadedServer) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = http.get(f"{server.url}/_sim/requests").json()
    return records


def sim_stats(server: ThreadedServer) -> dict[str, int]:
    stats: dict[str, int] = http.get(f"{server.url}/_sim/stats").json()
    return stats


def test_sync_sdk_non_streaming_goes_to_large_tier_when_routing_disabled(
    proxy: ThreadedServer, simulators: dict[Tier, ThreadedServer]
) -> None:
    with openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="anything") as client:
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=MESSAGES)
        completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.model == LARGE_MODEL
    assert raw.headers["x-routeproxy-tier"] == "8b"
    assert raw.headers["x-routeproxy-model"] == LARGE_MODEL
    assert raw.headers["x-routeproxy-reason"] == "routing_disabled"
    assert float(raw.headers["x-routeproxy-overhead-ms"]) >= 0
    received = sim_requests(simulators[Tier.LARGE])[-1]
    assert received["body"]["model"] == LARGE_MODEL
    assert received["body"]["messages"] == MESSAGES
    assert sim_requests(simulators[Tier.SMALL]) == []


def test_sync_sdk_streaming_matches_non_streaming_text(proxy: ThreadedServer) -> None:
    with openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="anything") as client:
        whole = client.chat.completions.create(model="auto", messages=MESSAGES).choices[0].message.content
        stream = client.chat.completions.create(model="auto", messages=MESSAGES, stream=True)
        pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len([piece for piece in pieces if piece]) >= 8  # token by token, not one blob
    assert "".join(pieces) == whole


async def test_async_sdk_streaming_and_non_streaming(proxy: ThreadedServer) -> None:
    async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key="anything") as client:
        whole = await client.chat.completions.create(model="auto", messages=MESSAGES)
        stream = await client.chat.completions.create(
            model="auto", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        pieces = []
        usage = None
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
            if chunk.usage:
                usage = chunk.usage
    assert "".join(pieces) == whole.choices[0].message.content
    assert usage is not None and usage.completion_tokens == 8


def test_pinned_model_is_not_routed(proxy: ThreadedServer, simulators: dict[Tier, ThreadedServer]) -> None:
    with openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="x") as client:
        raw = client.chat.completions.with_raw_response.create(model=SMALL_MODEL, messages=MESSAGES)
    assert raw.headers["x-routeproxy-tier"] == "3b"
    assert raw.headers["x-routeproxy-reason"] == "pinned"
    assert sim_requests(simulators[Tier.SMALL])[-1]["body"]["model"] == SMALL_MODEL


def test_base_url_without_v1_works(proxy: ThreadedServer) -> None:
    with openai.OpenAI(base_url=proxy.url, api_key="x") as client:
        completion = client.chat.completions.create(model="auto", messages=MESSAGES)
    assert completion.choices[0].message.content


def test_models_lists_auto_and_both_tiers(proxy: ThreadedServer) -> None:
    with openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="x") as client:
        ids = [model.id for model in client.models.list()]
    assert ids == ["auto", SMALL_MODEL, LARGE_MODEL]


def test_unknown_model_is_404_in_openai_envelope(proxy: ThreadedServer) -> None:
    with (
        openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="x", max_retries=0) as client,
        pytest.raises(openai.NotFoundError) as caught,
    ):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"


@pytest.mark.parametrize(
    ("method", "path", "status", "error_type"),
    [
        ("GET", "/v1/chat/completions", 405, "invalid_request_error"),
        ("PUT", "/chat/completions", 405, "invalid_request_error"),
        ("GET", "/v1/nowhere", 404, "not_found_error"),
    ],
)
def test_wrong_method_or_path_gets_openai_envelope(
    proxy: ThreadedServer, method: str, path: str, status: int, error_type: str
) -> None:
    response = http.request(method, f"{proxy.url}{path}")
    assert response.status_code == status
    assert response.json()["error"]["type"] == error_type
    assert path in response.json()["error"]["message"]
    if status == 405:
        assert response.headers["allow"] == "POST"


def test_a_bug_in_the_chat_handler_is_a_500_envelope(proxy: ThreadedServer) -> None:
    resources = proxy.server.lifespan.state["resources"]
    healthy_router = resources.router

    class BrokenRouter:
        def route(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug")

    resources.router = BrokenRouter()
    try:
        response = http.post(f"{proxy.url}/v1/chat/completions", json={"model": "auto", "messages": MESSAGES})
    finally:
        resources.router = healthy_router
    assert response.status_code == 500
    assert response.json()["error"] == {
        "message": "internal error in routeproxy",
        "type": "internal_error",
        "param": None,
        "code": None,
    }
    after = http.post(f"{proxy.url}/v1/chat/completions", json={"model": "auto", "messages": MESSAGES})
    assert after.status_code == 200


@pytest.mark.parametrize(
    ("body", "content_type", "status", "fragment"),
    [
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b"[1, 2]", "application/json", 400, "must be a JSON object"),
        (b'{"model": "auto"}', "application/json", 400, "'messages' is required"),
        (b'{"model": "auto", "messages": []}', "application/json", 400, "must not be empty"),
        (b'{"model": "auto", "messages": ["hi"]}', "application/json", 400, "messages[0]"),
        (
            b'{"model": "auto", "messages": [{"role": "user", "content": 5}]}',
            "application/json",
            400,
            "content",
        ),
        (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', "application/json", 400, "'model'"),
        (b"\xff\xfe{}", "application/json", 400, "not valid JSON"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "text/plain", 415, "application/json"),
    ],
)
def test_bad_requests_get_openai_envelope(
    proxy: ThreadedServer, body: bytes, content_type: str, status: int, fragment: str
) -> None:
    response = http.post(f"{proxy.url}/v1/chat/completions", content=body, headers={"content-type": content_type})
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"]
    assert response.headers["x-request-id"]


def test_tier_labels_come_from_the_settings(simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory) -> None:
    proxy = start_proxy(
        {tier: f"{server.url}/v1" for tier, server in simulators.items()},
        **{"tiers.small.label": "llama-3b", "tiers.large.label": "llama-8b"},
    )
    for model in (SMALL_MODEL, LARGE_MODEL):
        http.post(f"{proxy.url}/v1/chat/completions", json={"model": model, "messages": MESSAGES})
    stats = http.get(f"{proxy.url}/v1/model-routing/stats").json()
    assert {label: entry["count"] for label, entry in stats["model_distribution"].items()} == {
        "llama-3b": 1,
        "llama-8b": 1,
    }
    metrics = http.get(f"{proxy.url}/metrics").text
    assert 'routeproxy_requests_total{complexity="pinned",status="2xx",tier="llama-3b"} 1.0' in metrics
    explained = http.post(
        f"{proxy.url}/v1/model-routing/explain", json={"model": LARGE_MODEL, "messages": MESSAGES}
    ).json()
    assert explained["label"] == "llama-8b"


def test_upstream_error_status_and_body_pass_through(
    simulators: dict[Tier, ThreadedServer], proxy: ThreadedServer
) -> None:
    fault = {"x-sim-status": "503"}
    upstream = http.post(
        f"{simulators[Tier.LARGE].url}/v1/chat/completions",
        json={"model": LARGE_MODEL, "messages": MESSAGES},
        headers=fault,
    )
    relayed = http.post(f"{proxy.url}/v1/chat/completions", json={"model": "auto", "messages": MESSAGES}, headers=fault)
    assert relayed.status_code == upstream.status_code == 503
    assert relayed.content == upstream.content  # the upstream's own error body, byte for byte
    assert relayed.json()["error"]["message"] == "Simulated 503 (x-sim-status)"
    assert relayed.headers["x-routeproxy-tier"] == "8b"


def test_unreachable_upstream_is_502_envelope(start_proxy: ProxyFactory) -> None:
    dead = f"http://127.0.0.1:{refused_port()}/v1"
    proxy = start_proxy({Tier.SMALL: dead, Tier.LARGE: dead})
    response = http.post(f"{proxy.url}/v1/chat/completions", json={"model": "auto", "messages": MESSAGES})
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "upstream_error"


def test_upstream_first_byte_timeout_is_504(simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory) -> None:
    proxy = start_proxy(
        {tier: f"{server.url}/v1" for tier, server in simulators.items()},
        **{"tiers.large.first_byte_timeout": 0.3},
    )
    response = http.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": "auto", "messages": MESSAGES},
        headers={"x-sim-hang": "1"},
        timeout=5,
    )
    assert response.status_code == 504
    assert "0.3 s" in response.json()["error"]["message"]


def test_streamed_bytes_are_identical_and_not_coalesced(scripted: Any, start_proxy: ProxyFactory) -> None:
    events = [b'data: {"n": %d, "choices": []}\n\n' % i for i in range(5)] + [b"data: [DONE]\n\n"]
    # The upstream sends each event only once the client has the one before: a proxy that held an event back
    # (for the next one, or to fill a buffer) would leave the upstream waiting and the stream unfinished.
    gates = [threading.Event() for _ in events]
    _, server = scripted([(0.0, event) for event in events], gates=gates)
    proxy = start_proxy({Tier.SMALL: f"{server.url}/v1", Tier.LARGE: f"{server.url}/v1"})

    def received(chunk: bytes) -> None:
        gates[events.index(chunk)].set()

    headers, chunks = streamed_chunks(proxy.url, {"model": "auto", "messages": MESSAGES}, on_chunk=received)
    assert headers["content-type"] == "text/event-stream"
    assert headers["x-accel-buffering"] == "no"
    assert chunks == events  # byte for byte, one client chunk per upstream chunk


def test_partial_event_is_held_until_complete_and_broken_stream_ends_with_error_event(
    scripted: Any, start_proxy: ProxyFactory
) -> None:
    # The upstream splits an event and then ends without finishing the second one.
    chunks = [(0.0, b'data: {"a": 1}\n\ndata: {"b"'), (0.05, b": 2}\n\n"), (0.05, b'data: {"c": ')]
    _, server = scripted(chunks)
    proxy = start_proxy({Tier.SMALL: f"{server.url}/v1", Tier.LARGE: f"{server.url}/v1"})
    _, received = streamed_chunks(proxy.url, {"model": "auto", "messages": MESSAGES})
    assert received[0] == b'data: {"a": 1}\n\n'
    assert received[1] == b'data: {"b": 2}\n\n'
    assert b"".join(received) == b'data: {"a": 1}\n\ndata: {"b": 2}\n\ndata: {"c": '


def test_upstream_dying_mid_stream_ends_with_one_error_event(proxy: ThreadedServer) -> None:
    with openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="x", max_retries=0) as client:
        stream = client.chat.completions.create(
            model="auto", messages=MESSAGES, stream=True, extra_headers={"x-sim-die-after": "3"}
        )
        received = []
        with pytest.raises(openai.APIError) as caught:
            for chunk in stream:
                received.append(chunk)
    assert len(received) >= 3
    assert "broke off" in caught.value.message


def test_client_disconnect_closes_upstream_stream(
    simulators: dict[Tier, ThreadedServer], proxy: ThreadedServer
) -> None:
    large = simulators[Tier.LARGE]
    before = sim_stats(large)
    with (
        http.client(timeout=10) as client,
        client.stream(
            "POST",
            f"{proxy.url}/v1/chat/completions",
            json={"model": "auto", "messages": MESSAGES, "stream": True},
            headers={"x-sim-tokens": "1000", "x-sim-token-ms": "50"},
        ) as response,
    ):
        chunks = response.iter_raw()  # keep a reference: a collected generator would close the connection
        next(chunks)
        assert sim_stats(large)["open_streams"] == before["open_streams"] + 1

    def upstream_stream_closed() -> dict[str, int] | None:
        stats = sim_stats(large)
        closed = stats["disconnected_streams"] > before["disconnected_streams"] and stats["open_streams"] == 0
        return stats if closed else None

    stats = eventually(upstream_stream_closed)
    assert stats["disconnected_streams"] == before["disconnected_streams"] + 1


def test_client_disconnect_before_headers_cancels_upstream(
    simulators: dict[Tier, ThreadedServer], proxy: ThreadedServer
) -> None:
    large = simulators[Tier.LARGE]
    before = sim_stats(large)

    async def give_up() -> None:
        async with http.async_client() as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post(
                    f"{proxy.url}/v1/chat/completions",
                    json={"model": "auto", "messages": MESSAGES, "stream": True},
                    headers={"x-sim-hang": "1"},
                    timeout=httpx.Timeout(5, read=0.3),
                )

    asyncio.run(give_up())

    def upstream_saw_the_disconnect() -> dict[str, int] | None:
        stats = sim_stats(large)
        return stats if stats["disconnected_streams"] > before["disconnected_streams"] else None

    stats = eventually(upstream_saw_the_disconnect)
    assert stats["disconnected_streams"] == before["disconnected_streams"] + 1


def test_headers_forwarded_and_credentials_replaced(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(
        {tier: f"{server.url}/v1" for tier, server in simulators.items()},
        **{"tiers.large.api_key": "upstream-secret"},
    )
    http.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": "auto", "messages": MESSAGES},
        headers={
            "authorization": "Bearer client-key",
            "x-custom": "kept",
            "connection": "keep-alive, x-custom-hop",
            "proxy-authorization": "Basic c2VjcmV0",
            "x-request-id": "client-id-1",
            "x-routeproxy-query-type": "metric_query",
        },
    )
    headers = sim_requests(simulators[Tier.LARGE])[-1]["headers"]
    assert headers["authorization"] == "Bearer upstream-secret"
    assert headers["x-custom"] == "kept"
    assert "proxy-authorization" not in headers
    assert "x-routeproxy-query-type" not in headers
    assert headers["x-request-id"] != "client-id-1"
    # Without a tier key the client's own credentials pass through (e.g. a per-user HF token).
    http.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": SMALL_MODEL, "messages": MESSAGES},
        headers={"authorization": "Bearer client-key"},
    )
    assert sim_requests(simulators[Tier.SMALL])[-1]["headers"]["authorization"] == "Bearer client-key"


def test_client_request_id_is_returned_and_each_attempt_gets_a_fresh_upstream_id(
    proxy: ThreadedServer, simulators: dict[Tier, ThreadedServer]
) -> None:
    ids = set()
    for _ in range(2):
        response = http.post(
            f"{proxy.url}/v1/chat/completions",
            json={"model": "auto", "messages": MESSAGES},
            headers={"x-request-id": "same-client-id"},
        )
        assert response.headers["x-request-id"] == "same-client-id"
        ids.add(sim_requests(simulators[Tier.LARGE])[-1]["headers"]["x-request-id"])
    assert len(ids) == 2


def test_unknown_fields_pass_through_untouched(proxy: ThreadedServer, simulators: dict[Tier, ThreadedServer]) -> None:
    extra = {"top_k": 20, "chat_template_kwargs": {"enable_thinking": False}, "priority": -1, "seed": 2**62}
    with openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="x") as client:
        client.chat.completions.create(model="auto", messages=MESSAGES, temperature=0.25, extra_body=extra)
    body = sim_requests(simulators[Tier.LARGE])[-1]["body"]
    assert {key: body[key] for key in extra} == extra
    assert body["temperature"] == 0.25


@pytest.fixture
def tgi_upstreams() -> Any:
    servers = {
        tier: ThreadedServer(
            create_simulator_app(
                fast_profile(
                    tier,
                    Dialect.TGI_LEGACY if tier is Tier.SMALL else Dialect.TGI,
                    keepalive_s=0.01,
                    ttft_s=0.05,
                )
            )
        ).start()
        for tier in Tier
    }
    yield servers
    for server in servers.values():
        server.stop()


def test_tgi_tiers_get_model_tgi_and_legacy_framing_parses(tgi_upstreams: Any, start_proxy: ProxyFactory) -> None:
    overrides = {f"tiers.{tier}.kind": "tgi" for tier in Tier}
    proxy = start_proxy({tier: f"{server.url}/v1" for tier, server in tgi_upstreams.items()}, **overrides)
    with openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="x") as client:
        for model, tier in ((SMALL_MODEL, Tier.SMALL), (LARGE_MODEL, Tier.LARGE)):
            stream = client.chat.completions.create(model=model, messages=MESSAGES, stream=True)
            text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
            assert text
            assert sim_requests(tgi_upstreams[tier])[-1]["body"]["model"] == "tgi"
    # The legacy `data:` framing and TGI's keep-alive comments reach the client unchanged.
    raw = b"".join(streamed_chunks(proxy.url, {"model": SMALL_MODEL, "messages": MESSAGES})[1])
    assert raw.startswith(b":\n\n")  # keep-alive comments while the first token is due (ttft 0.05 s, every 0.01 s)
    assert b"data:{" in raw and b"data: {" not in raw  # the legacy framing, not rewritten to the modern one
    assert raw.endswith(b"data:[DONE]\n\n")


def test_mid_stream_error_event_reaches_sdk_as_api_error(proxy: ThreadedServer) -> None:
    with openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="x", max_retries=0) as client:
        stream = client.chat.completions.create(
            model="auto", messages=MESSAGES, stream=True, extra_headers={"x-sim-error-after": "2"}
        )
        with pytest.raises(openai.APIError):
            for _ in stream:
                pass


def test_hf_error_shape_passes_through(start_proxy: ProxyFactory) -> None:
    servers = {tier: ThreadedServer(create_simulator_app(fast_profile(tier, Dialect.HF))).start() for tier in Tier}
    try:
        proxy = start_proxy(
            {tier: f"{server.url}/v1" for tier, server in servers.items()},
            **{"tiers.large.model": "meta-llama/Not-Served"},
        )
        with (
            openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="x", max_retries=0) as client,
            pytest.raises(openai.BadRequestError) as caught,
        ):
            client.chat.completions.create(model="auto", messages=MESSAGES)
        assert caught.value.code == "model_not_supported"
    finally:
        for server in servers.values():
            server.stop()
