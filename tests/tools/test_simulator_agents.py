"""The simulator for agent frameworks: tool calls under tool_choice, JSON for response_format, logprobs, and legacy
completions, in each dialect's wire format, streamed and not, read back with the real openai SDK."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import http

from routeproxy.sim.content import PromptValues, chosen_tool, schema_value
from routeproxy.sim.profile import SimProfile
from routeproxy.sim.simulator import create_simulator_app
from routeproxy.sim.threadserver import ThreadedServer
from routeproxy.sim.wire import Dialect

MODEL = "meta-llama/Llama-3.2-3B-Instruct"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit"],
        },
    },
}
SEARCH = {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {}}}}
ASK = [{"role": "user", "content": "Use search, or tell me the weather in 'Lyon' for 3 days"}]
DIALECTS = [Dialect.VLLM, Dialect.TGI, Dialect.TGI_LEGACY, Dialect.HF]

Serve = Callable[[Dialect], ThreadedServer]


@pytest.fixture
def serve() -> Iterator[Serve]:
    started: list[ThreadedServer] = []

    def start(dialect: Dialect) -> ThreadedServer:
        profile = SimProfile(MODEL, dialect, speed=1000.0, answer_tokens=6)
        server = ThreadedServer(create_simulator_app(profile)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def client(server: ThreadedServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-test", max_retries=0)


def streamed_tool_call(stream: Any) -> tuple[str, str, str | None, str | None]:
    """(name, arguments, id, finish_reason) gathered from the deltas, as an agent framework does."""
    name, arguments, call_id, finish = "", "", None, None
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                name += call.function.name or "" if call.function else ""
                arguments += call.function.arguments or "" if call.function else ""
                call_id = call_id or call.id
            finish = choice.finish_reason or finish
    return name, arguments, call_id, finish


@pytest.mark.parametrize("dialect", DIALECTS)
def test_tool_call_follows_the_schema_streamed_and_not(serve: Serve, dialect: Dialect) -> None:
    with client(serve(dialect)) as sdk:
        reply = sdk.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required")
        name, arguments, call_id, finish = streamed_tool_call(
            sdk.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", stream=True)
        )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and call.id
    parsed = orjson.loads(call.function.arguments)
    jsonschema.validate(parsed, WEATHER["function"]["parameters"])
    assert parsed["city"] == "Lyon" and parsed["days"] == 3  # taken from the message
    assert (name, orjson.loads(arguments), finish) == ("get_weather", parsed, "tool_calls")
    assert call_id


@pytest.mark.parametrize(
    ("tool_choice", "last_role", "expected"),
    [
        ("none", "user", None),
        ("auto", "user", "search"),  # the message names it
        ("auto", "tool", None),  # after a tool result: the answer
        ("required", "tool", "search"),
        ({"type": "function", "function": {"name": "get_weather"}}, "user", "get_weather"),
    ],
)
def test_tool_choice_decides_between_text_and_which_tool(
    tool_choice: Any, last_role: str, expected: str | None
) -> None:
    messages: list[dict[str, Any]] = [*ASK]
    if last_role == "tool":
        messages += [
            {"role": "assistant", "tool_calls": [{"id": "1", "type": "function", "function": {"name": "search"}}]},
            {"role": "tool", "tool_call_id": "1", "content": "sunny"},
        ]
    chosen = chosen_tool({"messages": messages, "tools": [WEATHER, SEARCH], "tool_choice": tool_choice})
    assert (chosen["name"] if chosen else None) == expected


def test_agent_loop_ends_after_the_tool_result(serve: Serve) -> None:
    with client(serve(Dialect.VLLM)) as sdk:
        messages: list[Any] = [*ASK]
        first = sdk.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
        call = (first.choices[0].message.tool_calls or [])[0]
        messages += [first.choices[0].message, {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
        second = sdk.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    assert first.choices[0].finish_reason == "tool_calls"
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_answer_validates(serve: Serve, dialect: Dialect, stream: bool) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "kind": {"$ref": "#/$defs/Kind"},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "required": ["name", "tags", "score", "kind"],
        "$defs": {"Kind": {"enum": ["a", "b"]}},
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema}}
    messages = [{"role": "user", "content": "Describe a thing"}]
    with client(serve(dialect)) as sdk:
        if stream:
            chunks = sdk.chat.completions.create(
                model=MODEL, messages=messages, response_format=response_format, stream=True
            )
            text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        else:
            reply = sdk.chat.completions.create(model=MODEL, messages=messages, response_format=response_format)
            text = reply.choices[0].message.content
    jsonschema.validate(orjson.loads(text), schema)


def test_json_object_uses_the_keys_the_prompt_quotes(serve: Serve) -> None:
    prompt = "Tell me a joke. Return JSON with 'setup' and 'punchline' keys."
    with client(serve(Dialect.HF)) as sdk:
        reply = sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], response_format={"type": "json_object"}
        )
    assert set(orjson.loads(reply.choices[0].message.content or "")) == {"setup", "punchline"}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_logprobs_per_token_with_top_alternatives(serve: Serve, dialect: Dialect) -> None:
    with client(serve(dialect)) as sdk:
        reply = sdk.chat.completions.create(model=MODEL, messages=ASK, logprobs=True, top_logprobs=3)
        chunks = list(
            sdk.chat.completions.create(model=MODEL, messages=ASK, logprobs=True, top_logprobs=3, stream=True)
        )
        plain = sdk.chat.completions.create(model=MODEL, messages=ASK)
    content = reply.choices[0].logprobs.content or []
    streamed = [
        entry.token
        for chunk in chunks
        for choice in chunk.choices
        for entry in (choice.logprobs.content if choice.logprobs and choice.logprobs.content else [])
    ]
    if dialect in (Dialect.TGI, Dialect.TGI_LEGACY):
        # TGI lists the end-of-turn token after the answer's own, with no `bytes` in any entry
        assert content[-1].token == streamed[-1] == "<|eot_id|>"
        assert all(entry.bytes is None for entry in content)
        streamed = streamed[:-1]
    else:
        assert all(entry.bytes == list(entry.token.encode()) for entry in content)
    assert "".join(entry.token for entry in content if entry.token != "<|eot_id|>") == reply.choices[0].message.content
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token
        assert entry.logprob < 0 and all(other.logprob <= entry.logprob for other in entry.top_logprobs)
    assert "".join(streamed) == reply.choices[0].message.content
    assert plain.choices[0].logprobs is None


def test_vllm_refuses_top_logprobs_without_logprobs_and_empty_tools(serve: Serve) -> None:
    server = serve(Dialect.VLLM)
    for extra, param in (({"top_logprobs": 2}, "top_logprobs"), ({"tools": []}, "tools")):
        response = http.post(f"{server.url}/v1/chat/completions", json={"model": MODEL, "messages": ASK, **extra})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("dialect", [Dialect.VLLM, Dialect.TGI])
def test_legacy_completions_streamed_and_not_with_logprobs(serve: Serve, dialect: Dialect) -> None:
    with client(serve(dialect)) as sdk:
        completion = sdk.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4, logprobs=2)
        pieces = [
            chunk.choices[0].text
            for chunk in sdk.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4, stream=True)
        ]
    choice = completion.choices[0]
    assert completion.object == "text_completion"
    assert choice.finish_reason == "length"
    assert "".join(pieces) == choice.text
    assert "".join(choice.logprobs.tokens or []) == choice.text
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs or [])


def test_hf_router_serves_no_legacy_completions(serve: Serve) -> None:
    response = http.post(f"{serve(Dialect.HF).url}/v1/completions", json={"model": MODEL, "prompt": "hi"})
    assert response.status_code == 404


_LEAVES = st.sampled_from(
    [
        {"type": "string", "maxLength": 5},
        {"type": "integer", "minimum": -3, "maximum": 3},
        {"type": "number", "exclusiveMinimum": 0, "maximum": 0.5},
        {"type": "boolean"},
        {"type": "null"},
        {"enum": ["x", 2, None]},
        {"const": "fixed"},
        {"type": ["string", "null"]},
    ]
)
_SCHEMAS = st.recursive(
    _LEAVES,
    lambda children: st.one_of(
        st.builds(
            lambda props: {"type": "object", "properties": props, "required": list(props)},
            st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), children, max_size=4),
        ),
        st.builds(lambda items: {"type": "array", "items": items, "minItems": 1, "maxItems": 3}, children),
        st.builds(lambda options: {"anyOf": options}, st.lists(children, min_size=1, max_size=3)),
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(schema=_SCHEMAS, seed=st.integers(0, 2**32), prompt=st.text(max_size=40))
def test_generated_values_validate_against_their_schema(schema: dict[str, Any], seed: int, prompt: str) -> None:
    value = schema_value(schema, random.Random(seed), PromptValues(prompt))
    jsonschema.validate(value, schema)


@pytest.mark.parametrize("dialect", [Dialect.VLLM, Dialect.TGI])
def test_answer_and_logprob_can_be_set_per_request(serve: Serve, dialect: Dialect) -> None:
    headers = {"x-sim-answer": "I'm sorry, but I can't help with that.", "x-sim-logprob": "-2.5"}
    with client(serve(dialect)) as sdk:
        reply = sdk.chat.completions.create(
            model=MODEL, messages=ASK, tools=[WEATHER], logprobs=True, extra_headers=headers
        )
        chunks = sdk.chat.completions.create(model=MODEL, messages=ASK, stream=True, extra_headers=headers)
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    choice = reply.choices[0]
    assert choice.message.content == streamed == headers["x-sim-answer"]  # not a tool call: the text asked for
    assert choice.finish_reason == "stop"
    assert {entry.logprob for entry in choice.logprobs.content or []} == {-2.5}


def test_bad_logprob_header_is_refused(serve: Serve) -> None:
    response = http.post(
        f"{serve(Dialect.VLLM).url}/v1/chat/completions",
        json={"model": MODEL, "messages": ASK},
        headers={"x-sim-logprob": "0.5"},
    )
    assert response.status_code == 400
    assert "x-sim-logprob" in response.text
