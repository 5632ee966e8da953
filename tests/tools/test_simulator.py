"""The simulated upstreams against PROTOCOLS.md, over real uvicorn, with httpx and the real openai SDK."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam
from support import http
from support.wait import eventually

from routeproxy.settings import Tier
from routeproxy.sim.profile import SimProfile, seed_profile
from routeproxy.sim.simulator import create_simulator_app
from routeproxy.sim.threadserver import ThreadedServer
from routeproxy.sim.wire import Dialect
from routeproxy.tasks import spawn

MODEL = "meta-llama/Llama-3.2-3B-Instruct"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
FAST = {"speed": 1000.0, "answer_tokens": 6}

Serve = Callable[..., ThreadedServer]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """serve(dialect, **profile changes) -> a running simulator on loopback."""
    started: list[ThreadedServer] = []

    def start(dialect: Dialect = Dialect.VLLM, **changes: Any) -> ThreadedServer:
        server = ThreadedServer(create_simulator_app(SimProfile(MODEL, dialect, **{**FAST, **changes}))).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def chat(server: ThreadedServer, body: dict[str, Any], **headers: str) -> httpx.Response:
    return http.post(f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=10)


def request(model: str | None = MODEL, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": MESSAGES, **fields}
    if model is not None:
        body["model"] = model
    return body


def events(raw: bytes, prefix: bytes = b"data: ") -> list[Any]:
    """The data of each event, `[DONE]` as the string; asserts each event is exactly `<prefix>...\\n\\n`."""
    assert raw.endswith(b"\n\n")
    out: list[Any] = []
    for event in raw[:-2].split(b"\n\n"):
        if event == b":":
            continue
        assert event.startswith(prefix) and not event.startswith(prefix + b" "), event
        data = event[len(prefix) :]
        out.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return out


def stats(server: ThreadedServer) -> dict[str, int]:
    result: dict[str, int] = http.get(f"{server.url}/_sim/stats").json()
    return result


def sdk(server: ThreadedServer, api_key: str = "sk-test") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=api_key, max_retries=0)


# -- framing (PROTOCOLS §0 "SSE line form", §1.4, §2.5) --


def test_vllm_stream_has_role_chunk_first_and_done_last(serve: Serve) -> None:
    # §1.4: "Each event is exactly f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n""
    # and "The first chunk per choice has delta={"role":"assistant","content":""}".
    server = serve(Dialect.VLLM)
    response = chat(server, request(stream=True))
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["x-simulator"] == "routeproxy"
    data = events(response.content)
    assert data[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert data[-1] == "[DONE]"
    assert all(chunk["id"].startswith("chatcmpl-") and chunk["model"] == MODEL for chunk in data[:-1])
    assert all(chunk["choices"] for chunk in data[:-1])  # no usage chunk without stream_options
    assert "usage" not in data[-2]
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in data[:-1])
    assert len(text.split()) == 6
    assert data[-2]["choices"][0]["finish_reason"] == "stop"


def test_vllm_sends_usage_before_done_once_stream_options_is_present(serve: Serve) -> None:
    # §1.4: "vLLM's StreamOptions.include_usage defaults to True, so {"stream_options":{}} enables it."
    server = serve(Dialect.VLLM)
    data = events(chat(server, request(stream=True, stream_options={})).content)
    assert data[-1] == "[DONE]"
    assert data[-2]["choices"] == []
    assert data[-2]["usage"]["completion_tokens"] == 6


def test_tgi_stream_repeats_role_has_empty_id_and_usage_only_on_request(serve: Serve) -> None:
    # §2.5: "`id` is always """, "There is no separate role-only first chunk; every delta repeats `role`."
    server = serve(Dialect.TGI)
    response = chat(server, request(model="tgi", stream=True))
    assert response.headers["x-accel-buffering"] == "no"
    data = events(response.content)
    chunks = data[:-1]
    assert data[-1] == "[DONE]"
    assert all(chunk["id"] == "" and chunk["system_fingerprint"] for chunk in chunks)
    assert all(chunk["choices"][0]["delta"]["role"] == "assistant" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["content"] != ""
    assert all(chunk["model"] == MODEL for chunk in chunks)  # "tgi" means the base model
    assert all(chunk["choices"] for chunk in chunks)

    # "With stream_options.include_usage: true, one extra chunk follows the last token: choices: [] and usage"
    with_usage = events(chat(server, request(model="tgi", stream=True, stream_options={"include_usage": True})).content)
    assert with_usage[-2]["choices"] == [] and with_usage[-2]["usage"]["completion_tokens"] == 6


def test_tgi_echoes_any_other_model_string(serve: Serve) -> None:
    # §2.2: "Response `model`: Some("tgi") | None gives info.model_id; any other string is echoed verbatim"
    server = serve(Dialect.TGI)
    assert chat(server, request(model="my-adapter")).json()["model"] == "my-adapter"
    assert chat(server, request(model=None)).json()["model"] == MODEL


def test_tgi_legacy_writes_data_without_a_space(serve: Serve) -> None:
    # §2.5: TGI < 2.1.0 (axum 0.6): `data:{json}\n\n` and `data:[DONE]\n\n` (no space).
    server = serve(Dialect.TGI_LEGACY)
    raw = chat(server, request(model="tgi", stream=True)).content
    assert raw.startswith(b'data:{"') and raw.endswith(b"data:[DONE]\n\n")
    assert b"data: " not in raw
    assert events(raw, prefix=b"data:")[-1] == "[DONE]"


def test_tgi_sends_keepalive_comments_while_idle(serve: Serve) -> None:
    # §2.5: "KeepAlive::new() sends the comment ":\n\n" after 15 s without an event" (here 10 ms).
    server = serve(Dialect.TGI, keepalive_s=0.01)
    raw = chat(server, request(model="tgi", stream=True), **{"x-sim-ttft-ms": "80"}).content
    assert raw.startswith(b":\n\n")
    assert events(raw)[-1] == "[DONE]"


def test_vllm_sends_no_keepalive_comments_by_default(serve: Serve) -> None:
    server = serve(Dialect.VLLM)
    raw = chat(server, request(stream=True), **{"x-sim-ttft-ms": "50"}).content
    assert b":\n\n" not in raw.replace(b"data: ", b"")


# -- the openai SDK reads every dialect (§4.1) --

SDK_MODELS = {Dialect.VLLM: MODEL, Dialect.TGI: "tgi", Dialect.TGI_LEGACY: "tgi", Dialect.HF: f"{MODEL}:fastest"}


@pytest.mark.parametrize("dialect", list(Dialect))
async def test_openai_sdk_reads_streams_and_completions(serve: Serve, dialect: Dialect) -> None:
    server = serve(dialect)
    async with sdk(server) as client:
        stream = await client.chat.completions.create(
            model=SDK_MODELS[dialect],
            messages=MESSAGES,
            stream=True,
        )
        parts = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        completion = await client.chat.completions.create(
            model=SDK_MODELS[dialect],
            messages=MESSAGES,
        )
    assert "".join(parts) == completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens == 6
    assert completion.choices[0].finish_reason == "stop"


async def test_answers_are_deterministic_per_prompt_and_capped_by_max_tokens(serve: Serve) -> None:
    server = serve(Dialect.VLLM)
    async with sdk(server) as client:
        first = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        again = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        capped = await client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=2,
        )
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.id != again.id
    assert capped.choices[0].finish_reason == "length"
    assert capped.usage is not None and capped.usage.completion_tokens == 2
    assert (first.choices[0].message.content or "").startswith(capped.choices[0].message.content or "?")


# -- request errors (§1.2, §1.1, §2.3, §2.4, §3) --


def test_vllm_unknown_model_is_404_not_found(serve: Serve) -> None:
    response = chat(serve(Dialect.VLLM), request(model="gpt-4"))
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "The model `gpt-4` does not exist.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }


def test_vllm_rejects_stream_options_without_stream_and_missing_messages(serve: Serve) -> None:
    server = serve(Dialect.VLLM)
    response = chat(server, request(stream_options={"include_usage": True}))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"] == "Stream options can only be defined when `stream=True`."
    assert error["code"] == 400
    missing = chat(server, {"model": MODEL})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "body.messages"


@pytest.mark.parametrize("dialect", list(Dialect))
def test_tools_or_response_format_of_the_wrong_type_are_a_4xx_in_every_dialect(serve: Serve, dialect: Dialect) -> None:
    """Never a 500 from the simulator: a proxy test relaying it would blame the proxy."""
    server = serve(dialect)
    model = MODEL if dialect in (Dialect.VLLM, Dialect.HF) else "tgi"
    for odd in ({"tools": True}, {"tools": "search"}, {"response_format": "json"}):
        response = chat(server, request(model=model, **odd))
        assert 400 <= response.status_code < 500 or response.status_code == 200, (odd, response.text)
    if dialect == Dialect.VLLM:
        refused = chat(server, request(tools=True))
        assert (refused.status_code, refused.json()["error"]["param"]) == (400, "body.tools")


def test_tgi_type_mismatch_is_plain_text_422(serve: Serve) -> None:
    # §2.3: `"stop": "\n"` (a string; TGI expects a list) -> 422 "Failed to deserialize the JSON body ..."
    response = chat(serve(Dialect.TGI), request(model="tgi", stop="\n"))
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text.startswith("Failed to deserialize the JSON body into the target type: stop: invalid type")


def test_tgi_rejects_top_p_one_with_a_validation_error(serve: Serve) -> None:
    # §2.4: "`top_p` must be > 0.0 and < 1.0. top_p: 1.0 is rejected (unlike OpenAI and vLLM)."
    server = serve(Dialect.TGI)
    response = chat(server, request(model="tgi", top_p=1.0))
    assert response.status_code == 422
    assert response.json() == {
        "error": "Input validation error: `top_p` must be > 0.0 and < 1.0",
        "error_type": "validation",
    }
    # §0: "Validation, overload and generation errors of streamed requests all arrive this way with HTTP 200"
    streamed = chat(server, request(model="tgi", top_p=1.0, stream=True))
    assert streamed.status_code == 200
    assert events(streamed.content) == [
        {"error": {"message": "Input validation error: `top_p` must be > 0.0 and < 1.0", "http_status_code": 422}},
        "[DONE]",
    ]


def test_tgi_bad_json_is_400_and_wrong_content_type_is_415(serve: Serve) -> None:
    server = serve(Dialect.TGI)
    url = f"{server.url}/v1/chat/completions"
    bad = http.post(url, content=b"{nope", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.text.startswith("Failed to parse the request body as JSON")
    wrong = http.post(url, content=orjson.dumps(request()), headers={"content-type": "text/plain"})
    assert wrong.status_code == 415
    assert wrong.text == "Expected request with `Content-Type: application/json`"


def test_hf_unknown_model_is_400_model_not_supported(serve: Serve) -> None:
    server = serve(Dialect.HF)
    response = chat(server, request(model="org/unknown"))
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "The requested model 'org/unknown' is not supported by any provider you have enabled.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_supported",
        }
    }
    assert chat(server, request(model=f"{MODEL}:cheapest")).status_code == 200


@pytest.mark.parametrize(
    ("dialect", "body"),
    [
        (Dialect.VLLM, b'{"error":"Unauthorized"}'),
        (Dialect.TGI, b""),
        (Dialect.HF, None),
    ],
)
def test_wrong_key_is_401_in_each_dialects_shape(serve: Serve, dialect: Dialect, body: bytes | None) -> None:
    server = serve(dialect, api_key="secret")
    denied = chat(server, request(model=SDK_MODELS[dialect]), authorization="Bearer wrong")
    assert denied.status_code == 401
    if body is None:
        assert denied.json()["error"]["type"] == "invalid_request_error"
    else:
        assert denied.content == body
    allowed = chat(server, request(model=SDK_MODELS[dialect]), authorization="Bearer secret")
    assert allowed.status_code == 200
    assert http.get(f"{server.url}/health").status_code == 200  # health is never guarded


# -- faults --


@pytest.mark.parametrize(
    ("dialect", "check"),
    [
        (Dialect.VLLM, lambda body: body["error"]["code"] == 503),
        (Dialect.TGI, lambda body: body["error_type"] == "unhealthy"),
        (Dialect.HF, lambda body: body["error"]["type"] == "server_error"),
    ],
)
def test_sim_status_answers_that_status_in_the_dialects_shape(
    serve: Serve, dialect: Dialect, check: Callable[[Any], bool]
) -> None:
    response = chat(serve(dialect), request(model=SDK_MODELS[dialect], stream=True), **{"x-sim-status": "503"})
    assert response.status_code == 503
    assert check(response.json())


@pytest.mark.parametrize("dialect", [Dialect.VLLM, Dialect.TGI, Dialect.TGI_LEGACY])
async def test_mid_stream_error_event_makes_the_sdk_raise(serve: Serve, dialect: Dialect) -> None:
    server = serve(dialect)
    raw = chat(server, request(model=SDK_MODELS[dialect], stream=True), **{"x-sim-error-after": "2"})
    assert raw.status_code == 200
    data = events(raw.content, prefix=b"data:" if dialect is Dialect.TGI_LEGACY else b"data: ")
    assert data[-1] == "[DONE]" and "error" in data[-2]
    if dialect is Dialect.VLLM:
        assert data[-2]["error"]["code"] == 500
    else:
        assert data[-2]["error"]["http_status_code"] == 422
    async with sdk(server) as client:
        stream = await client.chat.completions.create(
            model=SDK_MODELS[dialect],
            messages=MESSAGES,
            stream=True,
            extra_headers={"x-sim-error-after": "2"},
        )
        received: list[str] = []
        with pytest.raises(openai.APIError):
            async for chunk in stream:
                received.extend(choice.delta.content or "" for choice in chunk.choices)
    assert len([part for part in received if part]) == 2


def test_die_after_truncates_the_chunked_body(serve: Serve) -> None:
    server = serve(Dialect.VLLM)
    seen = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream(
            "POST", f"{server.url}/v1/chat/completions", json=request(stream=True), headers={"x-sim-die-after": "2"}
        ) as response,
    ):
        for part in response.iter_bytes():
            seen += part
    assert seen.count(b'"content":"') == 3  # the role chunk and two tokens
    assert b"[DONE]" not in seen
    eventually(lambda: stats(server)["open_streams"] == 0)


def test_die_after_without_stream_sends_half_a_body(serve: Serve) -> None:
    server = serve(Dialect.VLLM)
    with pytest.raises(httpx.RemoteProtocolError):
        chat(server, request(), **{"x-sim-die-after": "0"})


async def test_hang_can_be_cancelled_and_counts_a_disconnect(serve: Serve) -> None:
    server = serve(Dialect.VLLM)
    async with http.async_client(base_url=server.url) as client:
        hanging = spawn(client.post("/v1/chat/completions", json=request(), headers={"x-sim-hang": "1"}))
        await asyncio.to_thread(eventually, lambda: stats(server)["open_streams"] == 1)
        hanging.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hanging
    await asyncio.to_thread(eventually, lambda: stats(server)["disconnected_streams"] == 1)
    assert stats(server)["open_streams"] == 0


async def test_client_leaving_mid_stream_is_counted_promptly(serve: Serve) -> None:
    server = serve(Dialect.TGI)
    async with http.async_client(base_url=server.url) as client:
        headers = {"x-sim-tokens": "1000", "x-sim-token-ms": "50"}
        async with client.stream("POST", "/v1/chat/completions", json=request(stream=True), headers=headers) as r:
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    break
            assert stats(server)["open_streams"] == 1
    await asyncio.to_thread(eventually, lambda: stats(server)["disconnected_streams"] == 1)
    assert stats(server) == {"open_streams": 0, "completed_streams": 0, "disconnected_streams": 1, "requests": 1}


def test_bad_fault_header_is_refused(serve: Serve) -> None:
    response = chat(serve(Dialect.VLLM), request(), **{"x-sim-tokens": "many"})
    assert response.status_code == 400 and "x-sim-tokens" in response.text


# -- observability and pacing --


def test_sim_requests_records_bodies_and_lowercased_headers(serve: Serve) -> None:
    server = serve(Dialect.VLLM)
    chat(server, request(temperature=0.5), **{"X-Custom": "yes"})
    http.get(f"{server.url}/v1/models")
    records = http.get(f"{server.url}/_sim/requests").json()
    assert [(record["method"], record["path"]) for record in records] == [
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
    ]
    assert records[0]["body"]["temperature"] == 0.5
    assert records[0]["headers"]["x-custom"] == "yes"
    assert records[1]["body"] is None
    assert httpx.delete(f"{server.url}/_sim/requests").status_code == 204
    assert http.get(f"{server.url}/_sim/requests").json() == []
    assert stats(server)["requests"] == 2 and stats(server)["completed_streams"] == 1


@pytest.mark.parametrize("dialect", list(Dialect))
def test_models_lists_the_served_model(serve: Serve, dialect: Dialect) -> None:
    listed = http.get(f"{serve(dialect).url}/v1/models").json()
    assert listed["object"] == "list" and listed["data"][0]["id"] == MODEL


def test_pacing_follows_ttft_and_tokens_per_second(serve: Serve) -> None:
    server = serve(Dialect.VLLM, speed=1.0, ttft_s=0.1, tokens_per_s=20.0)
    started = time.monotonic()
    response = chat(server, request(stream=True), **{"x-sim-tokens": "5"})
    elapsed = time.monotonic() - started
    assert events(response.content)[-1] == "[DONE]"
    assert elapsed >= 0.3  # 0.1 s + 5 / 20 s = 0.35 s


def test_seed_profiles_match_the_seed_latencies() -> None:
    for tier, expected in ((Tier.SMALL, 2.5), (Tier.LARGE, 4.5)):
        profile = seed_profile(tier, MODEL)
        typical = profile.ttft_s + profile.answer_tokens / profile.tokens_per_s
        assert typical == pytest.approx(expected, abs=0.05)
    assert seed_profile(Tier.SMALL, MODEL, dialect=Dialect.TGI).keepalive_s == 15.0
    assert seed_profile(Tier.LARGE, MODEL, speed=10).speed == 10


async def test_client_leaving_before_a_completion_is_counted(serve: Serve) -> None:
    server = serve(Dialect.VLLM)
    async with http.async_client(base_url=server.url) as client:
        waiting = spawn(client.post("/v1/chat/completions", json=request(), headers={"x-sim-ttft-ms": "60000"}))
        await asyncio.to_thread(eventually, lambda: stats(server)["open_streams"] == 1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    await asyncio.to_thread(eventually, lambda: stats(server)["disconnected_streams"] == 1)
