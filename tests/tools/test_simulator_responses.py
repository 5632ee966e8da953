"""The simulator for agent frameworks, continued: the Responses API read back with the real openai SDK (create,
stream, retrieve, input items, delete, tools, structured output), also through the proxy; and JSON-mode answers
whose values have the types the caller's model wants (LangChain's json_mode, an instructor-style JSON mode)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import openai
import orjson
import pydantic
import pytest
from support import http
from support.processes import Served, serve

from routeproxy.sim.profile import SimProfile
from routeproxy.sim.simulator import create_simulator_app
from routeproxy.sim.threadserver import ThreadedServer
from routeproxy.sim.wire import Dialect

MODEL = "meta-llama/Llama-3.2-3B-Instruct"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"],
    },
}

Serve = Callable[[Dialect], ThreadedServer]


class Joke(pydantic.BaseModel):
    setup: str
    punchline: str
    rating: int


@pytest.fixture
def simulator() -> Iterator[Serve]:
    started: list[ThreadedServer] = []

    def start(dialect: Dialect) -> ThreadedServer:
        server = ThreadedServer(create_simulator_app(SimProfile(MODEL, dialect, speed=1000.0, answer_tokens=6)))
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)


@pytest.mark.parametrize("dialect", [Dialect.VLLM, Dialect.HF])
def test_create_retrieve_list_inputs_and_delete(simulator: Serve, dialect: Dialect) -> None:
    with client(simulator(dialect).url) as sdk:
        created = sdk.responses.create(model=MODEL, input="Say hello", instructions="Be brief")
        assert created.id.startswith("resp_") and created.status == "completed"
        assert created.output_text and created.output[0].type == "message"
        assert created.usage is not None and created.usage.output_tokens == 6
        assert sdk.responses.retrieve(created.id).output_text == created.output_text
        (item,) = sdk.responses.input_items.list(created.id).data
        assert item.type == "message" and item.content[0].text == "Say hello"  # type: ignore[union-attr]
        sdk.responses.delete(created.id)
        with pytest.raises(openai.NotFoundError, match=f"Response with id '{created.id}' not found"):
            sdk.responses.retrieve(created.id)


def test_a_stream_has_the_documented_events_in_order(simulator: Serve) -> None:
    with client(simulator(Dialect.VLLM).url) as sdk:
        events = list(sdk.responses.create(model=MODEL, input="Say hello", stream=True))
        with sdk.responses.stream(model=MODEL, input="Say hello") as stream:
            helper_types = [event.type for event in stream]
            final = stream.get_final_response()
    types = [event.type for event in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 6,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert events[-1].response.output_text == text  # type: ignore[union-attr]
    assert helper_types[-1] == "response.completed" and final.output_text


def test_a_tool_call_then_its_result_through_previous_response_id(simulator: Serve) -> None:
    with client(simulator(Dialect.VLLM).url) as sdk:
        call = sdk.responses.create(model=MODEL, input="The weather in 'Lyon' for 3 days?", tools=[WEATHER])
        (item,) = call.output
        assert item.type == "function_call" and item.name == "get_weather"
        assert orjson.loads(item.arguments) == {"city": "Lyon", "days": 3}
        with sdk.responses.stream(model=MODEL, input="And 'Paris' for 2 days?", tools=[WEATHER]) as stream:
            streamed = stream.get_final_response().output[0]
        assert streamed.type == "function_call" and orjson.loads(streamed.arguments) == {"city": "Paris", "days": 2}
        answer = sdk.responses.create(
            model=MODEL,
            previous_response_id=call.id,
            input=[{"type": "function_call_output", "call_id": item.call_id, "output": "sunny, 21 C"}],
            tools=[WEATHER],
        )
        assert answer.output[0].type == "message" and answer.output_text
        with pytest.raises(openai.NotFoundError, match="Previous response with id 'resp_nope' not found"):
            sdk.responses.create(model=MODEL, previous_response_id="resp_nope", input="again")


def test_structured_output_parses_into_the_callers_model(simulator: Serve) -> None:
    with client(simulator(Dialect.VLLM).url) as sdk:
        parsed = sdk.responses.parse(model=MODEL, input="Tell me a joke", text_format=Joke)
    assert isinstance(parsed.output_parsed, Joke)
    assert isinstance(parsed.output_parsed.rating, int)


def test_max_output_tokens_leaves_the_response_incomplete_and_an_unknown_model_is_refused(simulator: Serve) -> None:
    with client(simulator(Dialect.VLLM).url) as sdk:
        cut = sdk.responses.create(model=MODEL, input="Say hello", max_output_tokens=2)
        assert cut.status == "incomplete" and cut.incomplete_details is not None
        assert cut.incomplete_details.reason == "max_output_tokens"
        assert cut.usage is not None and cut.usage.output_tokens == 2
        with pytest.raises(openai.NotFoundError, match="The model `other` does not exist"):
            sdk.responses.create(model="other", input="hi")


def test_tgi_has_no_responses_api(simulator: Serve) -> None:
    url = simulator(Dialect.TGI).url
    assert http.post(f"{url}/v1/responses", json={"model": MODEL, "input": "hi"}).status_code == 404


def test_the_responses_api_through_the_proxy(served: list[Served]) -> None:
    proxy = serve("--simulate", "--speed", "500")
    served.append(proxy)
    with client(proxy.url) as sdk:
        created = sdk.responses.create(model="auto", input="Say hello")
        streamed = list(sdk.responses.create(model="auto", input="Say hello", stream=True))
        assert streamed[-1].type == "response.completed"
        assert sdk.responses.retrieve(created.id).output_text == created.output_text
        sdk.responses.delete(created.id)
        with pytest.raises(openai.NotFoundError):
            sdk.responses.retrieve(created.id)
    routes = [orjson.loads(line) for line in served.pop().stop().splitlines() if '"event":"route"' in line]
    assert routes[0]["upstream_id"] == created.id  # the request's log line names the response


def test_langchain_json_mode_gets_an_int_for_an_int_field(simulator: Serve) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{simulator(Dialect.VLLM).url}/v1", api_key="sk-test", model=MODEL, max_retries=0)
    structured = llm.with_structured_output(Joke, method="json_mode")
    joke = structured.invoke("Tell me a joke about cats, respond in JSON with `setup`, `punchline` and `rating` keys")
    assert isinstance(joke, Joke) and isinstance(joke.rating, int)


def test_a_schema_in_the_prompt_is_followed_in_json_mode(simulator: Serve) -> None:
    """instructor's JSON mode asks for json_object and writes the model's JSON schema into the system message."""
    schema = json.dumps(Joke.model_json_schema(), indent=2)
    messages = [
        {
            "role": "system",
            "content": f"Answer with JSON matching this json_schema:\n\n{schema}\n\nReturn an instance.",
        },
        {"role": "user", "content": "Tell me a joke about cats"},
    ]
    with client(simulator(Dialect.VLLM).url) as sdk:
        reply = sdk.chat.completions.create(model=MODEL, messages=messages, response_format={"type": "json_object"})  # type: ignore[arg-type]
    joke = Joke.model_validate_json(reply.choices[0].message.content or "")
    assert isinstance(joke.rating, int)
