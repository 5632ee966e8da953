"""One decision per answer: an answer streamed whole inside the hold gets the decision the same answer gets whole,
over generated answers (prose, loops, refusals, truncations, wrong sums, tool calls, JSON) cut into arbitrary
chunks in the vLLM, TGI and OpenAI stream shapes."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routeproxy.cascade.check import AnswerView, StreamAnswer, answer_from_body, check_answer, load_check_rules

RULES = load_check_rules("general")
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city"],
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
PROMPTS = ["What is the capital of France?", "Explain photosynthesis in detail.", "A box holds 12 eggs. 15 boxes?"]
TEXTS = [
    "Paris.",
    "I'm sorry, but I can't help with that request.",
    "The plant grows and the plant grows " * 6,
    "1. 1. 1. 1. 1. 1. 1. 1. 1. 1. 1. 1. 1. 1.",
    "Each box holds 12 eggs, so 15 x 12 = 170 eggs.",
    "Plants turn light, water and carbon dioxide into sugar and oxygen. " * 5,
    '{"answer": "Paris"}',
    '{"answer": "Par',
    "Sure! Here it is: {}",
    "```python\nprint('unclosed')\n",
]
ARGUMENTS = ['{"city": "Oslo"}', '{"city": "Oslo", "days": 3}', '{"city": 3}', '{"town": "Oslo"}', '{"city": "Os', ""]


@st.composite
def answers(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """(request, the whole body, its stream chunks), in one upstream's shape."""
    dialect = draw(st.sampled_from(["vllm", "tgi", "openai"]))
    request: dict[str, Any] = {"messages": [{"role": "user", "content": draw(st.sampled_from(PROMPTS))}]}
    kind = draw(st.sampled_from(["text", "json", "tool"]))
    if kind == "json":
        request["response_format"] = {"type": "json_object"}
    if kind == "tool" or draw(st.booleans()):
        request["tools"] = TOOLS
        request["tool_choice"] = draw(st.sampled_from(["auto", "none", "required"]))
    logprobs = draw(st.booleans())
    if kind == "tool":
        name = draw(st.sampled_from(["get_weather", "get_wether"]))
        arguments = draw(st.sampled_from(ARGUMENTS))
        pieces = _cut(draw, arguments)
        finish = draw(st.sampled_from(["tool_calls", "length"]))
        call = {"id": "call_0", "type": "function", "function": {"name": name, "arguments": arguments}}
        message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
        head = {"index": 0, "id": "call_0", "type": "function", "function": {"name": name, "arguments": ""}}
        deltas = [{"tool_calls": [head]}]
        deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in pieces]
        lps: list[float] = []
    else:
        text = draw(st.sampled_from(TEXTS))
        pieces = _cut(draw, text)
        finish = draw(st.sampled_from(["stop", "length", "stop_sequence"]))
        message = {"role": "assistant", "content": text}
        deltas = [{"content": piece} for piece in pieces]
        lps = [draw(st.sampled_from([-0.01, -0.3, -2.5, -9999.0])) for _ in pieces] if logprobs else []
    entries = [_entry(piece, value, dialect) for piece, value in zip(pieces, lps, strict=False)]
    eos = [{"token": "<|eot_id|>", "logprob": -0.01, "top_logprobs": []}] if dialect == "tgi" and lps else []
    choice = {"index": 0, "message": message, "logprobs": {"content": entries + eos} if lps else None}
    body = {"choices": [{**choice, "finish_reason": finish}], "usage": {"completion_tokens": len(pieces)}}
    role = {"role": "assistant"}
    chunks = [] if dialect == "tgi" else [_chunk({**role, "content": ""}, None, None)]
    for index, delta in enumerate(deltas):
        logprob = {"content": [entries[index - (len(deltas) - len(entries))]]} if lps and "content" in delta else None
        chunks.append(_chunk({**role, **delta} if dialect == "tgi" else delta, logprob, None))
    end = {**role, "content": ""} if dialect == "tgi" else {}
    chunks.append(_chunk(end, {"content": eos} if eos else None, finish))
    if draw(st.booleans()):
        chunks.append({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": len(pieces)}})
    return request, body, chunks


def _cut(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=12))) if len(text) > 1 else []
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def _entry(token: str, logprob: float, dialect: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"token": token, "logprob": logprob, "top_logprobs": []}
    if dialect != "tgi":
        entry["bytes"] = list(token.encode())
    return entry


def _chunk(delta: dict[str, Any], logprobs: dict[str, Any] | None, finish: str | None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    return {"id": "", "object": "chat.completion.chunk", "choices": [choice]}


def _same_view(streamed: AnswerView, whole: AnswerView) -> None:
    for field in ("text", "complete", "finish_reason", "logprobs"):
        assert getattr(streamed, field) == getattr(whole, field), field
    assert [call["function"] for call in streamed.tool_calls] == [call["function"] for call in whole.tool_calls]


@settings(max_examples=300, deadline=None)
@given(case=answers())
def test_a_whole_answer_streamed_gets_the_decision_it_gets_whole(
    case: tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]],
) -> None:
    request, body, chunks = case
    stream = StreamAnswer()
    for chunk in chunks:
        stream.add(chunk)
    streamed, whole = stream.view(), answer_from_body(body)
    _same_view(streamed, whole)
    assert check_answer(request, streamed, RULES) == check_answer(request, whole, RULES)


@settings(max_examples=100, deadline=None)
@given(case=answers())
def test_a_stream_that_ends_without_a_finish_reason_is_judged_whole(
    case: tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]],
) -> None:
    """Some servers end a stream with [DONE] and no finish_reason: the proxy then has the whole answer."""
    request, body, chunks = case
    body["choices"][0]["finish_reason"] = None
    stream = StreamAnswer()
    for chunk in chunks:
        for choice in chunk["choices"]:
            choice["finish_reason"] = None
        stream.add(chunk)
    assert not stream.view().complete
    ended = stream.view(stream_ended=True)
    _same_view(ended, answer_from_body(body))
    assert check_answer(request, ended, RULES) == check_answer(request, answer_from_body(body), RULES)


@pytest.mark.parametrize("hold", [16, 32, 64, 128, 256])
def test_a_loop_is_caught_in_a_prefix_as_short_as_the_hold_allows(hold: int) -> None:
    """A looping answer streamed past the hold is escalated on its prefix, as the whole answer is."""
    loop = ["**Step", " 1:**", " add", " the", " numbers", ".\n"] * 200
    stream = StreamAnswer()
    for token in loop[:hold]:
        stream.add(_chunk({"content": token}, None, None))
    request = {"messages": [{"role": "user", "content": "Explain photosynthesis in detail."}]}
    whole = check_answer(request, AnswerView("".join(loop), complete=True), RULES)
    prefix = check_answer(request, stream.view(), RULES)
    assert whole.escalate and "repetitive" in whole.reasons
    assert prefix.escalate and "repetitive" in prefix.reasons
