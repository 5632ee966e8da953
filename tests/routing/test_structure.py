"""Structured answers judged by their structure (routeproxy.cascade.structure, routeproxy.cascade.schema), and the
token log-probabilities read from each upstream's shape (routeproxy.cascade.logprobs)."""

from __future__ import annotations

import math
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routeproxy.cascade.check import AnswerView, check_answer, load_check_rules
from routeproxy.cascade.logprobs import FLOOR, token_logprobs
from routeproxy.cascade.schema import schema_error
from routeproxy.sim.content import schema_value

RULES = load_check_rules("general")
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
    },
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {}}}},
]
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"capital": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["capital"],
}


def ask(prompt: str = "What is the weather in Oslo?", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": prompt}], **extra}


def calls(*pairs: tuple[str, str]) -> tuple[dict[str, Any], ...]:
    return tuple(
        {"id": f"call_{index}", "type": "function", "function": {"name": name, "arguments": arguments}}
        for index, (name, arguments) in enumerate(pairs)
    )


def tool_answer(*pairs: tuple[str, str], complete: bool = True) -> AnswerView:
    return AnswerView("", complete=complete, finish_reason="tool_calls" if complete else None, tool_calls=calls(*pairs))


SCHEMA = {"type": "json_schema", "json_schema": {"name": "capital", "schema": ANSWER_SCHEMA}}

# (case, request, answer, the fault it must show or None for a sound answer)
CASES = [
    ("sound call", ask(tools=TOOLS), tool_answer(("get_weather", '{"city": "Oslo"}')), None),
    ("sound call, every field", ask(tools=TOOLS), tool_answer(("get_weather", '{"city": "Oslo", "days": 3}')), None),
    ("two sound calls", ask(tools=TOOLS), tool_answer(("get_weather", '{"city": "Oslo"}'), ("search", "{}")), None),
    ("named and called", ask(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "search"}}),
     tool_answer(("search", "{}")), None),
    ("unknown tool", ask(tools=TOOLS), tool_answer(("get_wether", '{"city": "Oslo"}')), "unknown_tool"),
    ("arguments not JSON", ask(tools=TOOLS), tool_answer(("get_weather", '{"city": Oslo}')), "bad_tool_arguments"),
    ("arguments cut off", ask(tools=TOOLS), tool_answer(("get_weather", '{"city": "Os')), "bad_tool_arguments"),
    ("arguments a list", ask(tools=TOOLS), tool_answer(("get_weather", '["Oslo"]')), "bad_tool_arguments"),
    ("missing required", ask(tools=TOOLS), tool_answer(("get_weather", '{"unit": "celsius"}')),
     "tool_arguments_schema"),
    ("wrong type", ask(tools=TOOLS), tool_answer(("get_weather", '{"city": "Oslo", "days": "3"}')),
     "tool_arguments_schema"),
    ("not in enum", ask(tools=TOOLS), tool_answer(("get_weather", '{"city": "Oslo", "unit": "kelvin"}')),
     "tool_arguments_schema"),
    ("extra property", ask(tools=TOOLS), tool_answer(("get_weather", '{"city": "Oslo", "zip": 1}')),
     "tool_arguments_schema"),
    ("call under none", ask(tools=TOOLS, tool_choice="none"), tool_answer(("search", "{}")), "tool_choice_ignored"),
    ("another function than named", ask(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "search"}}),
     tool_answer(("get_weather", '{"city": "Oslo"}')), "tool_choice_ignored"),
    ("two calls, parallel off", ask(tools=TOOLS, parallel_tool_calls=False),
     tool_answer(("search", "{}"), ("search", "{}")), "tool_choice_ignored"),
    ("prose where a call is required", ask(tools=TOOLS, tool_choice="required"),
     AnswerView("It is sunny in Oslo today, with a light breeze from the west.", complete=True), "missing_tool_call"),
    ("JSON object", ask("Capital of France, as JSON.", response_format={"type": "json_object"}),
     AnswerView('{"answer": "Paris"}', complete=True), None),
    ("JSON matching its schema", ask("Capital of France?", response_format=SCHEMA),
     AnswerView('{"capital": "Paris", "population": 2102650}', complete=True), None),
    ("JSON cut off", ask("Capital of France, as JSON.", response_format={"type": "json_object"}),
     AnswerView('{"answer": "Par', complete=True), "invalid_json"),
    ("prose for a JSON object", ask("Capital of France, as JSON.", response_format={"type": "json_object"}),
     AnswerView("Sure! The capital is Paris.", complete=True), "invalid_json"),
    ("a list for a JSON object", ask("Capital of France, as JSON.", response_format={"type": "json_object"}),
     AnswerView('["Paris"]', complete=True), "invalid_json"),
    ("JSON against its schema", ask("Capital of France?", response_format=SCHEMA),
     AnswerView('{"capital": "Paris", "population": "two million"}', complete=True), "json_schema_mismatch"),
]  # fmt: skip


@pytest.mark.parametrize(("request_body", "answer", "fault"), [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_structured_answers_are_judged_by_their_structure(
    request_body: dict[str, Any], answer: AnswerView, fault: str | None
) -> None:
    check = check_answer(request_body, answer, RULES)
    if fault is None:
        # Sound: nothing fires, however short (the prose signals, length first, are not read on it).
        assert check.reasons == ()
        assert not check.escalate
    else:
        assert check.reasons[0] == fault
        assert check.escalate


def test_a_sound_structured_answer_scores_as_an_empty_one_whatever_its_length() -> None:
    """The score of a sound tool call or JSON answer is the rule set's bias alone."""
    sound = [check_answer(request, answer, RULES).score for _, request, answer, fault in CASES if fault is None]
    assert sound == [pytest.approx(1 / (1 + math.exp(-RULES.bias)))] * len(sound)


def test_a_short_answer_to_a_short_factual_question_is_kept_and_to_a_task_it_is_not() -> None:
    kept = check_answer(ask("What is the capital of France?"), AnswerView("Paris.", complete=True), RULES)
    assert not kept.escalate
    task = check_answer(ask("Explain why Paris became the capital of France?"), AnswerView("Paris.", True), RULES)
    assert task.escalate and task.reasons == ("short",)


@pytest.mark.parametrize(
    ("request_body", "prefix", "fault"),
    [
        (ask(tools=TOOLS), tool_answer(("get_wether", '{"ci'), complete=False), "unknown_tool"),
        (ask(tools=TOOLS), tool_answer(("get_weather", 'city="Os'), complete=False), "bad_tool_arguments"),
        (ask(tools=TOOLS, tool_choice="none"), tool_answer(("search", ""), complete=False), "tool_choice_ignored"),
        (ask(response_format={"type": "json_object"}), AnswerView("Sure! Here is", complete=False), "invalid_json"),
        (ask(response_format=SCHEMA), AnswerView('["Par', complete=False), "invalid_json"),
    ],
)
def test_a_held_prefix_is_judged_on_the_structure_it_already_shows(
    request_body: dict[str, Any], prefix: AnswerView, fault: str
) -> None:
    check = check_answer(request_body, prefix, RULES)
    assert check.reasons[0] == fault and check.escalate


@pytest.mark.parametrize(
    ("request_body", "prefix"),
    [
        (ask(tools=TOOLS), tool_answer(("get_weather", '{"city": "Os'), complete=False)),
        (ask(response_format={"type": "json_object"}), AnswerView('  {"answer": "Par', complete=False)),
        (ask(response_format=SCHEMA), AnswerView('{"capital"', complete=False)),
    ],
)
def test_a_sound_structured_prefix_is_not_judged_before_it_ends(
    request_body: dict[str, Any], prefix: AnswerView
) -> None:
    assert check_answer(request_body, prefix, RULES).reasons == ()


# -- the schema subset, against jsonschema (Draft 2020-12) --

NAMES = st.sampled_from(["a", "b", "city", "n"])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 20), st.sampled_from([0.5, 1.0, 2.5, -0.1]),
    st.sampled_from(["", "abc", "Oslo", "a1"]),
)  # fmt: skip
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NAMES, inner, max_size=3), max_leaves=8
)


def _leaf_schemas() -> st.SearchStrategy[dict[str, Any]]:
    bound = st.sampled_from([0, 1, 2.5, -3, 10])
    number = st.fixed_dictionaries(
        {"type": st.sampled_from(["integer", "number"])},
        optional={"minimum": bound, "maximum": bound, "exclusiveMinimum": bound, "exclusiveMaximum": bound,
                  "multipleOf": st.sampled_from([2, 0.5, 3])},
    )  # fmt: skip
    string = st.fixed_dictionaries(
        {"type": st.just("string")},
        optional={"minLength": st.integers(0, 3), "maxLength": st.integers(1, 5),
                  "pattern": st.sampled_from(["^[a-z]+$", "\\d", "^O"])},
    )  # fmt: skip
    other = st.sampled_from([{"type": "boolean"}, {"type": "null"}, {"enum": ["Oslo", 1, None]}, {"const": 1},
                             {"type": ["string", "null"]}, {}])  # fmt: skip
    return st.one_of(number, string, other)


def _composite(inner: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    properties = st.dictionaries(NAMES, inner, max_size=3)
    obj = properties.flatmap(
        lambda props: st.fixed_dictionaries(
            {"type": st.just("object"), "properties": st.just(props)},
            optional={
                "required": st.lists(st.sampled_from(sorted(props) or ["a"]), max_size=2, unique=True),
                "additionalProperties": st.one_of(st.booleans(), inner),
            },
        )
    )
    array = st.fixed_dictionaries(
        {"type": st.just("array"), "items": inner},
        optional={"minItems": st.integers(0, 2), "maxItems": st.integers(1, 3), "uniqueItems": st.just(True)},
    )
    combined = st.tuples(st.sampled_from(["anyOf", "oneOf", "allOf"]), st.lists(inner, min_size=1, max_size=3))
    return st.one_of(obj, array, combined.map(lambda pair: {pair[0]: pair[1]}), inner.map(lambda s: {"not": s}))


SCHEMAS = st.recursive(_leaf_schemas(), _composite, max_leaves=6)


@settings(max_examples=400, deadline=None)
@given(schema=SCHEMAS, value=VALUES, seed=st.integers(0, 2**32 - 1), built=st.booleans())
def test_the_schema_subset_decides_as_jsonschema_does(
    schema: dict[str, Any], value: Any, seed: int, built: bool
) -> None:
    import random

    if built:  # a value built from the schema (mostly valid), as a model answering under it would
        value = schema_value(schema, random.Random(seed))
    expected = jsonschema.Draft202012Validator(schema).is_valid(value)
    assert (schema_error(schema, value) is None) == expected


@pytest.mark.parametrize(
    ("schema", "value", "valid"),
    [
        ({"$defs": {"n": {"type": "integer"}}, "type": "array", "items": {"$ref": "#/$defs/n"}}, [1, 2], True),
        ({"$defs": {"n": {"type": "integer"}}, "type": "array", "items": {"$ref": "#/$defs/n"}}, [1, "2"], False),
        ({"definitions": {"n": {"type": "integer"}}, "properties": {"a": {"$ref": "#/definitions/n"}}}, {"a": 1.0},
         True),
        ({"type": "object", "properties": {"next": {"$ref": "#"}}}, {"next": {"next": {}}}, True),
        ({"type": "object", "properties": {"next": {"$ref": "#"}}}, {"next": {"next": 3}}, False),
        ({"type": "string", "nullable": True}, None, True),  # OpenAPI's nullable, which some tool schemas use
        ({"type": "string"}, None, False),
        ({"format": "email", "type": "string"}, "not an email", True),  # a keyword it does not read: not checked
        ({"type": 7}, "x", True),  # a malformed schema never fails an answer
        ({"$ref": "#"}, 1, True),  # a reference loop ends at the depth bound
    ],
)  # fmt: skip
def test_references_unknown_keywords_and_malformed_schemas(schema: dict[str, Any], value: Any, valid: bool) -> None:
    assert (schema_error(schema, value) is None) is valid


# -- logprobs in each upstream's shape --

VLLM = {
    "content": [
        {"token": "Paris", "logprob": -0.01, "bytes": [80, 97, 114, 105, 115], "top_logprobs": []},
        {"token": ".", "logprob": -9999.0, "bytes": [46], "top_logprobs": []},
    ]
}
TGI = {"content": [{"token": "Paris", "logprob": -0.25, "top_logprobs": [{"token": " Lyon", "logprob": -2.5}]}]}
LEGACY = {"tokens": ["A", "B", "C"], "token_logprobs": [None, -0.5, -1.5], "top_logprobs": [None, {}, {}],
          "text_offset": [0, 1, 2]}  # fmt: skip


@pytest.mark.parametrize(
    ("logprobs", "expected"),
    [
        (VLLM, (-0.01, FLOOR)),  # vLLM's -9999.0 (an underflow) counts as the floor
        (TGI, (-0.25,)),
        (LEGACY, (-0.5, -1.5)),  # legacy completions' lists; the first entry may be null
        ({"content": None}, ()),
        (None, ()),
        ({"content": [{"token": "x", "logprob": "low"}, {"token": "y", "logprob": True}]}, ()),
    ],
    ids=["vllm", "tgi", "legacy", "null-content", "null", "not-numbers"],
)
def test_token_logprobs_read_every_upstream_shape(logprobs: Any, expected: tuple[float, ...]) -> None:
    assert token_logprobs(logprobs) == expected
