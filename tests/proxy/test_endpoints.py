"""The OpenAI endpoints around chat: legacy completions (routed), the passed-through ones, /health, the model card,
and CORS, over real servers on loopback with the real openai SDK."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import orjson
import pytest
from support import http
from support.ports import refused_port
from support.upstreams import LARGE_MODEL, SMALL_MODEL, ProxyFactory, ScriptedUpstream
from support.wait import eventually

from routeproxy.settings import Tier
from routeproxy.sim.threadserver import ThreadedServer
from routeproxy.wire.parse import prompt_messages
from routeproxy.wire.upstream import root_prefix

Scripted = Callable[..., tuple[ScriptedUpstream, ThreadedServer]]
EMBEDDING = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5]}],
    "model": "whatever-the-upstream-says",
    "usage": {"prompt_tokens": 2, "total_tokens": 2},
}


def last_request(server: ThreadedServer) -> dict[str, Any]:
    recorded: list[dict[str, Any]] = http.get(f"{server.url}/_sim/requests").json()
    return recorded[-1]


def sim_stats(server: ThreadedServer) -> dict[str, int]:
    result: dict[str, int] = http.get(f"{server.url}/_sim/stats").json()
    return result


def stats(proxy: ThreadedServer) -> dict[str, Any]:
    result: dict[str, Any] = http.get(f"{proxy.url}/v1/model-routing/stats").json()
    return result


def json_upstreams(scripted: Scripted) -> dict[Tier, tuple[ScriptedUpstream, ThreadedServer]]:
    body = orjson.dumps(EMBEDDING)
    return {tier: scripted([(0.0, body)], content_type=b"application/json") for tier in Tier}


def test_completions_are_classified_routed_rewritten_and_counted(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy({tier: f"{server.url}/v1" for tier, server in simulators.items()}, **{"routing.enabled": True})
    with openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0) as client:
        raw = client.completions.with_raw_response.create(
            model="auto", prompt="Compare Ross 308 vs Cobb 500 in a detailed table, step by step", max_tokens=4
        )
        completion = raw.parse()
        streamed = client.completions.create(model="auto", prompt="hi", max_tokens=3, stream=True)
        pieces = [chunk.choices[0].text for chunk in streamed if chunk.choices]
    assert raw.headers["x-routeproxy-tier"] == "8b"
    assert raw.headers["x-routeproxy-complexity"] == "complex"
    assert completion.object == "text_completion" and completion.choices[0].text
    upstream = last_request(simulators[Tier.LARGE])
    assert upstream["path"] == "/v1/completions"
    assert upstream["body"]["model"] == LARGE_MODEL
    assert upstream["body"]["prompt"].startswith("Compare Ross 308")
    assert len(pieces) == 3
    assert last_request(simulators[Tier.SMALL])["body"]["model"] == SMALL_MODEL  # "hi" is SIMPLE: the small tier
    assert stats(proxy)["total_requests"] == 2


def test_completions_prompt_of_token_ids_is_routed_without_text(proxy: ThreadedServer) -> None:
    response = http.post(
        f"{proxy.url}/v1/completions", json={"model": "auto", "prompt": [[1, 2, 3], [4]], "max_tokens": 2}
    )
    assert response.status_code == 200
    assert response.json()["object"] == "text_completion"
    assert response.headers["x-routeproxy-reason"] == "routing_disabled"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "auto"}, "prompt"),
        ({"model": "auto", "prompt": 5}, "prompt"),
        ({"model": "auto", "prompt": []}, "prompt"),
        ({"model": "auto", "prompt": [True]}, "prompt"),
        ({"model": "auto", "prompt": [[]]}, "prompt"),
        ({"model": 3, "prompt": "hi"}, "model"),
    ],
)
def test_bad_completions_request_is_400_in_openai_envelope(
    proxy: ThreadedServer, body: dict[str, Any], param: str
) -> None:
    response = http.post(f"{proxy.url}/v1/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_unknown_model_for_completions_is_404(proxy: ThreadedServer) -> None:
    response = http.post(f"{proxy.url}/completions", json={"model": "gpt-9", "prompt": "hi"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_passthrough_goes_to_the_passthrough_tier_and_follows_the_model_rules(
    scripted: Scripted, start_proxy: ProxyFactory
) -> None:
    upstreams = json_upstreams(scripted)
    proxy = start_proxy(
        {tier: f"{server.url}/v1" for tier, (_, server) in upstreams.items()},
        **{"tiers.large.api_key": "sk-large-tier-key"},
    )
    small, large = upstreams[Tier.SMALL][0], upstreams[Tier.LARGE][0]
    with openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="client-key", max_retries=0) as client:
        raw = client.embeddings.with_raw_response.create(model="auto", input="hello")
        assert raw.parse().data[0].embedding == [0.25, -0.5]
        client.embeddings.create(model="BAAI/bge-small-en-v1.5", input="hello")
        client.embeddings.create(model=SMALL_MODEL, input="hello")
    assert raw.headers["x-routeproxy-tier"] == "8b"
    assert raw.headers["x-routeproxy-reason"] == "passthrough"
    first, second = (orjson.loads(request["body"]) for request in large.requests)
    assert [request["path"] for request in large.requests] == ["/v1/embeddings", "/v1/embeddings"]
    assert first["model"] == LARGE_MODEL  # auto: the tier's model
    assert second["model"] == "BAAI/bge-small-en-v1.5"  # a model of the upstream's own: unchanged
    assert large.requests[0]["headers"][b"authorization"] == b"Bearer sk-large-tier-key"
    assert [orjson.loads(request["body"])["model"] for request in small.requests] == [SMALL_MODEL]  # pinned
    assert stats(proxy)["complexity_distribution"]["pinned"]["count"] == 3


def test_root_endpoints_go_beside_v1_and_the_tier_is_a_setting(scripted: Scripted, start_proxy: ProxyFactory) -> None:
    upstreams = json_upstreams(scripted)
    proxy = start_proxy(
        {tier: f"{server.url}/v1" for tier, (_, server) in upstreams.items()},
        **{"routing.passthrough_tier": "small"},
    )
    for path in ("/tokenize", "/detokenize", "/v1/responses", "/responses", "/v1/rerank", "/score"):
        response = http.post(f"{proxy.url}{path}", json={"prompt": "hi"})
        assert response.status_code == 200, path
        assert response.headers["x-routeproxy-tier"] == "3b"
    small = upstreams[Tier.SMALL][0]
    assert [request["path"] for request in small.requests] == [
        "/tokenize",
        "/detokenize",
        "/v1/responses",
        "/v1/responses",
        "/v1/rerank",
        "/v1/score",
    ]
    assert upstreams[Tier.LARGE][0].requests == []


def test_passthrough_to_an_unreachable_tier_is_502_without_fallback(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(
        {Tier.SMALL: f"{simulators[Tier.SMALL].url}/v1", Tier.LARGE: f"http://127.0.0.1:{refused_port()}/v1"},
        **{"routing.fallback_large_to_small": True},
    )
    response = http.post(f"{proxy.url}/v1/embeddings", json={"model": "auto", "input": "x"})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "connect_error"
    assert "x-routeproxy-fallback" not in response.headers
    assert stats(proxy)["upstream_errors"]["8b"] == 1


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/completions", "/tokenize", "/v1/models/auto"])
def test_every_proxied_endpoint_needs_the_client_key(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory, path: str
) -> None:
    proxy = start_proxy(
        {tier: f"{server.url}/v1" for tier, server in simulators.items()}, **{"server.api_keys": "client-key-123"}
    )
    response = http.request("GET" if "models" in path else "POST", f"{proxy.url}{path}", json={"prompt": "hi"})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_health_answers_like_healthz_and_the_model_card_is_served(proxy: ThreadedServer) -> None:
    assert http.get(f"{proxy.url}/health").json() == http.get(f"{proxy.url}/healthz").json() == {"status": "ok"}
    with openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0) as client:
        assert client.models.retrieve(SMALL_MODEL).id == SMALL_MODEL
        assert client.models.retrieve("auto").id == "auto"
        with pytest.raises(openai.NotFoundError) as caught:
            client.models.retrieve("gpt-9")
    assert caught.value.code == "model_not_found"


def test_cors_is_off_by_default(proxy: ThreadedServer) -> None:
    response = http.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
        headers={"origin": "http://app.example"},
    )
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_cors_answers_preflight_and_exposes_the_routing_headers_on_chat(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(
        {tier: f"{server.url}/v1" for tier, server in simulators.items()},
        **{"server.cors_origins": "http://app.example"},
    )
    preflight = http.request(
        "OPTIONS",
        f"{proxy.url}/v1/chat/completions",
        headers={
            "origin": "http://app.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type, x-stainless-lang",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://app.example"
    assert "x-stainless-lang" in preflight.headers["access-control-allow-headers"]
    chat = http.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
        headers={"origin": "http://app.example"},
    )
    assert chat.status_code == 200
    assert chat.headers["access-control-allow-origin"] == "http://app.example"
    assert "x-routeproxy-tier" in chat.headers["access-control-expose-headers"]
    other = http.request(
        "OPTIONS",
        f"{proxy.url}/v1/chat/completions",
        headers={"origin": "http://evil.example", "access-control-request-method": "POST"},
    )
    assert other.status_code == 400


def test_simulated_vllm_embeds_and_tokenizes_through_the_proxy(
    proxy: ThreadedServer, simulators: dict[Tier, ThreadedServer]
) -> None:
    with openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0) as client:
        vectors = client.embeddings.create(model="auto", input=["the proxy", "the proxy", "a router"])
        as_floats = client.embeddings.create(model="auto", input="the proxy", encoding_format="float")
    first, second, third = (item.embedding for item in vectors.data)
    assert len(first) == 16 and first == second != third  # deterministic per input
    assert abs(sum(value * value for value in first) - 1) < 1e-4
    assert as_floats.data[0].embedding == pytest.approx(first, abs=1e-6)
    assert last_request(simulators[Tier.LARGE])["body"]["model"] == LARGE_MODEL
    tokens = http.post(f"{proxy.url}/tokenize", json={"model": "auto", "prompt": "the proxy routes"}).json()
    assert tokens["count"] == 3
    text = http.post(f"{proxy.url}/detokenize", json={"model": "auto", "tokens": tokens["tokens"]}).json()
    assert text == {"prompt": "the proxy routes"}
    bad = http.post(f"{proxy.url}/v1/embeddings", json={"model": "auto", "input": 5})
    assert bad.status_code == 400 and "input" in bad.json()["error"]["message"]


def test_client_leaving_a_completions_stream_closes_the_upstream_stream(
    simulators: dict[Tier, ThreadedServer], proxy: ThreadedServer
) -> None:
    large = simulators[Tier.LARGE]
    body = {"model": "auto", "prompt": "Once", "stream": True}
    slow = {"x-sim-tokens": "1000", "x-sim-token-ms": "50"}
    with (
        http.client(timeout=10) as client,
        client.stream("POST", f"{proxy.url}/v1/completions", json=body, headers=slow) as response,
    ):
        chunks = response.iter_raw()  # keep a reference: a collected generator would close the connection
        next(chunks)
        assert sim_stats(large)["open_streams"] == 1
    stats = eventually(lambda: (now := sim_stats(large))["open_streams"] == 0 and now, what="the upstream to close")
    assert stats["disconnected_streams"] == 1


def test_client_leaving_before_a_passthrough_answer_cancels_the_upstream_request(
    simulators: dict[Tier, ThreadedServer], proxy: ThreadedServer
) -> None:
    large = simulators[Tier.LARGE]
    with pytest.raises(httpx.ReadTimeout):  # the client gives up while the upstream is still working
        http.post(
            f"{proxy.url}/v1/embeddings",
            json={"model": "auto", "input": "x"},
            headers={"x-sim-hang": "1"},
            timeout=httpx.Timeout(5, read=0.3),
        )
    stats = eventually(lambda: (now := sim_stats(large))["disconnected_streams"] == 1 and now, what="the cancel")
    assert stats["open_streams"] == 0


@pytest.mark.parametrize(
    ("prompt", "content"),
    [
        ("Compare A vs B", "Compare A vs B"),
        (["first", "second"], "first\nsecond"),
        ([1, 2, 3], ""),
        ([[1, 2], [3]], ""),
    ],
)
def test_a_completions_prompt_is_classified_as_one_user_message(prompt: Any, content: str) -> None:
    assert prompt_messages(prompt) == [{"role": "user", "content": content}]


@pytest.mark.parametrize(
    ("base_path", "root"),
    [(b"/v1", b""), (b"/prefix/v1", b"/prefix"), (b"", b""), (b"/openai", b"/openai")],
)
def test_root_endpoints_go_beside_v1(base_path: bytes, root: bytes) -> None:
    assert root_prefix(base_path) == root


def test_feedback_rates_completions_but_not_passed_through_requests(proxy: ThreadedServer) -> None:
    completion = http.post(f"{proxy.url}/v1/completions", json={"model": "auto", "prompt": "Once upon a time"})
    embedding = http.post(f"{proxy.url}/v1/embeddings", json={"model": "auto", "input": "x"})
    assert completion.status_code == embedding.status_code == 200

    def rate(response: Any) -> Any:
        body = {"request_id": response.headers["x-request-id"], "thumbs": "up"}
        return http.post(f"{proxy.url}/v1/model-routing/feedback", json=body)

    rated = eventually(lambda: (answer := rate(completion)).status_code == 200 and answer, what="the decision stored")
    assert rated.json()["tier"] == completion.headers["x-routeproxy-tier"]
    assert rate(embedding).status_code == 404
