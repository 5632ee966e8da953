"""Cascade decisions through the live proxy, in front of the simulator speaking vLLM's and TGI's wire formats: an
answer streamed whole inside the hold gets the decision (and the score) it gets when not streamed, for prose,
refusals, loops, truncations, tool calls and JSON; sound tool calls and JSON are kept, broken ones escalated."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support import http
from support.upstreams import ProxyFactory, fast_profile

from routeproxy.settings import Tier
from routeproxy.sim.simulator import create_simulator_app
from routeproxy.sim.threadserver import ThreadedServer
from routeproxy.sim.wire import Dialect

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
            "required": ["city"],
        },
    },
}
CAPITAL = {
    "type": "json_schema",
    "json_schema": {
        "name": "capital",
        "schema": {"type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"]},
    },
}
LOOP = ("The water cycle is the water cycle and the water cycle is " * 8).strip()

# (case, request body extras, request headers (the simulator's controls), escalated?)
CASES = [
    ("good prose", {}, {"x-sim-tokens": "120"}, False),
    ("short fact", {"messages": [{"role": "user", "content": "What is the capital of France?"}]},
     {"x-sim-answer": "Paris."}, False),
    ("refusal", {}, {"x-sim-answer": "I'm sorry, but I can't help with that request."}, True),
    ("loop", {}, {"x-sim-answer": LOOP}, True),
    ("truncated", {"max_tokens": 20}, {"x-sim-tokens": "120"}, True),
    ("unsure", {"logprobs": True}, {"x-sim-tokens": "120", "x-sim-logprob": "-3.0"}, True),
    ("tool call", {"tools": [WEATHER], "messages": [{"role": "user", "content": "Weather in 'Oslo' for 3 days?"}]},
     {}, False),
    ("tool call cut off", {"tools": [WEATHER], "max_tokens": 3,
                           "messages": [{"role": "user", "content": "Weather in 'Oslo' for 3 days?"}]}, {}, True),
    ("prose for a required call", {"tools": [WEATHER], "tool_choice": "required"},
     {"x-sim-answer": "It is sunny, with a light breeze from the west and no rain until the evening."}, True),
    ("JSON object", {"response_format": {"type": "json_object"}}, {}, False),
    ("JSON with a schema", {"response_format": CAPITAL}, {}, False),
    ("prose for JSON", {"response_format": {"type": "json_object"}}, {"x-sim-answer": "Sure! Here you go."}, True),
]  # fmt: skip
DIALECTS = [Dialect.VLLM, Dialect.TGI]


@pytest.fixture(params=DIALECTS, ids=[dialect.value for dialect in DIALECTS])
def cascade_proxy(request: pytest.FixtureRequest, start_proxy: ProxyFactory) -> Iterator[ThreadedServer]:
    dialect: Dialect = request.param
    small = ThreadedServer(create_simulator_app(fast_profile(Tier.SMALL, dialect, answer_tokens=60))).start()
    large = ThreadedServer(create_simulator_app(fast_profile(Tier.LARGE))).start()
    kind = "tgi" if dialect is Dialect.TGI else "vllm"
    proxy = start_proxy(
        {Tier.SMALL: f"{small.url}/v1", Tier.LARGE: f"{large.url}/v1"},
        **{"routing.enabled": True, "routing.mode": "cascade", "tiers.small.kind": kind, "cascade.hold_tokens": 400},
    )
    yield proxy
    small.stop()
    large.stop()


def _body(extra: dict[str, Any]) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": "Describe the water cycle."}], **extra}


def _streamed(url: str, body: dict[str, Any], headers: dict[str, str]) -> httpx.Headers:
    with http.client(timeout=30) as client, client.stream("POST", url, json=body, headers=headers) as response:
        assert response.status_code == 200, response.read()
        response.read()
        return response.headers


@pytest.mark.parametrize(("extra", "headers", "escalated"), [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_streamed_and_whole_answers_get_one_decision(
    cascade_proxy: ThreadedServer, extra: dict[str, Any], headers: dict[str, str], escalated: bool
) -> None:
    url = f"{cascade_proxy.url}/v1/chat/completions"
    whole = http.post(url, json=_body(extra), headers=headers, timeout=30)
    assert whole.status_code == 200, whole.text
    streamed = _streamed(url, {**_body(extra), "stream": True}, headers)
    for response in (whole.headers, streamed):
        assert response["x-routeproxy-escalated"] == ("true" if escalated else "false"), response
    assert streamed["x-routeproxy-check-score"] == whole.headers["x-routeproxy-check-score"]
    assert streamed["x-routeproxy-reason"] == whole.headers["x-routeproxy-reason"]


def test_a_stream_ending_without_a_finish_reason_is_judged_as_the_whole_answer(
    scripted: Any, start_proxy: ProxyFactory, simulators: dict[Tier, ThreadedServer]
) -> None:
    """[DONE] with no finish_reason before it: the proxy has the whole answer, and judges it so (a short answer
    escalates; as an unfinished prefix it would be taken for at least 100 words and kept)."""
    events = [b'data: {"choices":[{"index":0,"delta":{"content":"Rain falls."},"finish_reason":null}]}\n\n',
              b"data: [DONE]\n\n"]  # fmt: skip
    _, small = scripted([(0.0, event) for event in events])
    proxy = start_proxy(
        {Tier.SMALL: f"{small.url}/v1", Tier.LARGE: f"{simulators[Tier.LARGE].url}/v1"},
        **{"routing.enabled": True, "routing.mode": "cascade"},
    )
    headers = _streamed(f"{proxy.url}/v1/chat/completions", {**_body({}), "stream": True}, {})
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Rain falls."}}]}
    explained = http.post(f"{proxy.url}/v1/model-routing/explain", json={**_body({}), "small_answer": body}).json()
    assert headers["x-routeproxy-escalated"] == "true"
    assert float(headers["x-routeproxy-check-score"]) == pytest.approx(explained["check"]["score"], abs=1e-4)
