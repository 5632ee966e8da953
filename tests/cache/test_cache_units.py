"""The cache's pure parts, table-driven: keys, controls, entries, completeness, conversions, the memory store."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest

from routeproxy.cache.complete import body_complete, stream_complete
from routeproxy.cache.controls import Controls, read_controls
from routeproxy.cache.convert import body_to_stream, stream_to_body
from routeproxy.cache.entry import BadEntry, Entry, decode, encode
from routeproxy.cache.keys import Scope, Variant, cache_key, cacheable
from routeproxy.cache.store import MemoryCacheStore, entry_size
from routeproxy.errors import InvalidRequest

MESSAGES = [{"role": "user", "content": "Hi"}]


def key(body: dict[str, Any], target: str = "large|http://u/v1|m", identity: bytes = b"", namespace: str = "") -> str:
    return cache_key("chat", target, identity, namespace, body).name


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ({"messages": MESSAGES, "temperature": 0}, {"temperature": 0.0, "messages": MESSAGES}),
        ({"messages": MESSAGES, "seed": 1, "top_p": 1}, {"messages": MESSAGES, "seed": 1, "top_p": 1.0}),
        ({"messages": MESSAGES, "model": "auto"}, {"messages": MESSAGES, "model": "meta-llama/Llama-3.1-8B"}),
        ({"messages": MESSAGES, "user": "alice"}, {"messages": MESSAGES, "user": "bob"}),
        ({"messages": MESSAGES, "stream": False}, {"messages": MESSAGES}),
        (
            {"messages": MESSAGES, "response_format": {"type": "json_schema", "json_schema": {"a": 1, "b": 2}}},
            {"messages": MESSAGES, "response_format": {"json_schema": {"b": 2, "a": 1}, "type": "json_schema"}},
        ),
    ],
)
def test_requests_that_mean_the_same_share_a_key(one: dict[str, Any], other: dict[str, Any]) -> None:
    assert key(one) == key(other)


@pytest.mark.parametrize(
    "other",
    [
        {"messages": [{"role": "user", "content": "Hi!"}]},
        {"messages": [*MESSAGES, {"role": "assistant", "content": "Hello"}]},
        {"messages": MESSAGES, "temperature": 0.5},
        {"messages": MESSAGES, "max_tokens": 10},
        {"messages": MESSAGES, "tools": [{"type": "function", "function": {"name": "f"}}]},
        {"messages": MESSAGES, "response_format": {"type": "json_object"}},
        {"messages": MESSAGES, "stream": True},
        {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}},
    ],
)
def test_requests_that_differ_have_different_keys(other: dict[str, Any]) -> None:
    assert key({"messages": MESSAGES}) != key(other)


def test_the_route_target_identity_and_namespace_are_in_the_key() -> None:
    base = key({"messages": MESSAGES})
    assert base != key({"messages": MESSAGES}, target="small|http://u/v1|m")
    assert base != key({"messages": MESSAGES}, identity=hashlib.sha256(b"key").digest())
    assert base != key({"messages": MESSAGES}, namespace="team-a")


@pytest.mark.parametrize(
    ("body", "scope", "multiple", "asked", "expected"),
    [
        ({"temperature": 0}, Scope.DETERMINISTIC, False, False, True),
        ({"seed": 42, "temperature": 0.9}, Scope.DETERMINISTIC, False, False, True),
        ({"temperature": 0.7}, Scope.DETERMINISTIC, False, False, False),
        ({}, Scope.DETERMINISTIC, False, False, False),
        ({"temperature": True}, Scope.DETERMINISTIC, False, False, False),
        ({}, Scope.ALL, False, False, True),
        ({"temperature": 0, "n": 2}, Scope.DETERMINISTIC, False, False, False),
        ({"temperature": 0, "n": 2}, Scope.DETERMINISTIC, True, False, True),
        ({"temperature": 0.7, "n": 3}, Scope.DETERMINISTIC, False, True, True),
    ],
)
def test_which_requests_are_cacheable(
    body: dict[str, Any], scope: Scope, multiple: bool, asked: bool, expected: bool
) -> None:
    assert cacheable(body, scope, multiple_choices=multiple, asked=asked) is expected


@pytest.mark.parametrize(
    ("headers", "field", "expected"),
    [
        ({}, None, Controls()),
        ({"cache-control": "no-cache"}, None, Controls(no_cache=True)),
        ({"cache-control": "No-Store, max-age=60"}, None, Controls(no_store=True, max_age_s=60)),
        ({"cache-control": "max-age=abc, private"}, None, Controls()),  # unreadable or unknown: ignored (RFC 9111)
        ({"x-routeproxy-cache": "ttl=30, namespace=a.b"}, None, Controls(ttl_s=30, namespace="a.b")),
        ({"x-routeproxy-cache": "on, pace"}, None, Controls(on=True, pace=True)),
        ({"x-routeproxy-cache": "on, off"}, None, Controls(off=True)),
        ({"cache-control": "max-age=60"}, {"s-maxage": 10}, Controls(max_age_s=10)),
        ({}, {"no-cache": True, "ttl": 5, "namespace": "x"}, Controls(no_cache=True, ttl_s=5, namespace="x")),
    ],
)
def test_cache_controls_are_read_from_headers_and_the_body(
    headers: dict[str, str], field: dict[str, Any] | None, expected: Controls
) -> None:
    body: dict[str, Any] = {"messages": MESSAGES} if field is None else {"messages": MESSAGES, "cache": field}
    assert read_controls(headers, body) == expected
    assert "cache" not in body


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({"x-routeproxy-cache": "max-age"}, None),
        ({"x-routeproxy-cache": "ttl=-1"}, None),
        ({"x-routeproxy-cache": "namespace=a b"}, None),
        ({}, {"ttl": 1.5}),
        ({}, {"no-store": "yes"}),
        ({}, {"bucket": 3}),
        ({"x-routeproxy-cache": "namespace=a"}, {"namespace": "b"}),
    ],
)
def test_bad_cache_controls_are_the_clients_error(headers: dict[str, str], field: Any) -> None:
    body: dict[str, Any] = {"messages": MESSAGES} if field is None else {"messages": MESSAGES, "cache": field}
    with pytest.raises(InvalidRequest):
        read_controls(headers, body)


def _stream(*events: dict[str, Any], done: bool = True) -> bytes:
    data = b"".join(b"data: " + orjson.dumps(event) + b"\n\n" for event in events)
    return data + (b"data: [DONE]\n\n" if done else b"")


HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 5, "model": "m"}


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {**HEAD, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish, **extra}]}


USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
GOOD_STREAM = _stream(
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"content": "Hello"}),
    _chunk({"content": " there"}),
    _chunk({}, "stop", stop_reason=None),
    {**HEAD, "choices": [], "usage": USAGE},
)


@pytest.mark.parametrize(
    ("data", "complete"),
    [
        (GOOD_STREAM, True),
        (GOOD_STREAM.replace(b"data: ", b"data:"), True),  # TGI before 2.1
        (GOOD_STREAM.replace(b"\n\n", b"\r\n\r\n"), True),
        (GOOD_STREAM[: -len(b"data: [DONE]\n\n")], False),  # cut before its end
        (_stream(_chunk({"content": "Hi"}), {"error": {"message": "boom", "code": 500}}), False),
        (_stream(_chunk({"content": "Hi"}, "abort")), False),
        (_stream(_chunk({"content": "Hi"}, "length")), True),
        (_stream(_chunk({"content": "Hi"})), False),  # no finish reason
    ],
)
def test_only_complete_streams_are_stored(data: bytes, complete: bool) -> None:
    assert stream_complete(data) is complete


@pytest.mark.parametrize(
    ("document", "complete"),
    [
        ({"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}]}, True),
        ({"choices": [{"message": {"content": "x"}, "finish_reason": None}]}, False),
        ({"choices": [{"message": {"content": "x"}, "finish_reason": "error"}]}, False),
        ({"choices": []}, False),
        ({"error": {"message": "x"}}, False),
    ],
)
def test_only_complete_bodies_are_stored(document: dict[str, Any], complete: bool) -> None:
    assert body_complete(orjson.dumps(document)) is complete


VLLM_BODY = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 5, "model": "m",
    "choices": [{
        "index": 0, "logprobs": None, "finish_reason": "stop", "stop_reason": None,
        "message": {"role": "assistant", "content": "Hello there", "refusal": None, "tool_calls": [],
                    "reasoning_content": None},
    }],
    "usage": USAGE, "service_tier": None, "system_fingerprint": None, "prompt_logprobs": None,
}  # fmt: skip


def test_a_whole_answer_and_its_stream_convert_exactly_both_ways() -> None:
    streamed = body_to_stream(orjson.dumps(VLLM_BODY), include_usage=True)
    assert streamed is not None and stream_complete(streamed)
    again = stream_to_body(streamed)
    assert again is not None
    document = orjson.loads(again)
    assert document["choices"][0]["message"] == {"role": "assistant", "content": "Hello there"}
    assert (document["id"], document["created"], document["usage"]) == ("chatcmpl-1", 5, USAGE)
    assert orjson.loads(stream_to_body(GOOD_STREAM) or b"null") == document
    without_usage = body_to_stream(orjson.dumps(VLLM_BODY), include_usage=False)
    assert without_usage is not None and b'"usage"' not in without_usage


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["choices"][0].update(logprobs={"content": [{"token": "Hello", "logprob": -0.1}]}),
        lambda d: d["choices"][0]["message"].update(tool_calls=[{"id": "1", "type": "function"}], content=None),
        lambda d: d["choices"].append({**d["choices"][0], "index": 1}),
        lambda d: d.update(kv_transfer_params={"x": 1}),
        lambda d: d.update(object="text_completion"),
    ],
)
def test_a_whole_answer_that_a_stream_cannot_carry_is_not_converted(change: Any) -> None:
    document = orjson.loads(orjson.dumps(VLLM_BODY))
    change(document)
    assert body_to_stream(orjson.dumps(document), include_usage=False) is None


@pytest.mark.parametrize(
    "data",
    [
        _stream(_chunk({"role": "assistant", "content": "Hi"}, "stop")),  # no usage: a whole answer always has it
        GOOD_STREAM.replace(b'"logprobs":null,"finish_reason":null', b'"logprobs":{"content":[]},"finish_reason":null'),
        GOOD_STREAM.replace(b'"created":5', b'"created":6', 1),  # chunks that disagree
        GOOD_STREAM.replace(b"data: [DONE]\n\n", b""),
        GOOD_STREAM.replace(b'{"content":"Hello"}', b'{"content":"Hello","tool_calls":[{"index":0}]}'),
    ],
)
def test_a_stream_that_a_whole_answer_cannot_carry_is_not_converted(data: bytes) -> None:
    assert stream_to_body(data) is None


def _entry(body: bytes = b"data: x\n\n" * 200, **changes: Any) -> Entry:
    fields: dict[str, Any] = {
        "status": 200, "headers": ((b"content-type", b"text/event-stream"), (b"x-routeproxy-tier", b"8b")),
        "body": body, "stream": True, "tier": "large", "created": 1.5e9, "upstream_s": 0.25,
        "prompt_tokens": 3, "completion_tokens": 2, "chunks": ((0, 9), (12, 1791)),
    }  # fmt: skip
    fields.update(changes)
    return Entry(**fields)


@pytest.mark.parametrize(
    "entry", [_entry(), _entry(b"{}", stream=False, chunks=(), prompt_tokens=None, completion_tokens=None)]
)
def test_entries_round_trip_and_are_compressed_when_that_pays(entry: Entry) -> None:
    data = encode(entry)
    assert decode(data) == entry
    assert (len(data) < len(entry.body) / 4) is (len(entry.body) > 1000)


@pytest.mark.parametrize("data", [b"", b"RPE0" + b"\0" * 20, encode(_entry())[:-10], b"garbage" * 10])
def test_unreadable_entries_are_a_miss_not_a_crash(data: bytes) -> None:
    with pytest.raises(BadEntry):
        decode(data)


def entry_bytes(number: int) -> bytes:
    return b"x" * (32 + number % 2000)


def test_the_memory_store_stays_within_its_bound_under_100000_distinct_keys() -> None:
    bound = 4 * 1024 * 1024
    store = MemoryCacheStore(bound)
    sizes = 0
    for number in range(100_000):
        name = hashlib.blake2b(str(number).encode(), digest_size=16).hexdigest() + ":b"
        data = entry_bytes(number)
        store.put_now(name, data, 3600)
        sizes = max(sizes, store.figures_now().bytes_now)
    figures = store.figures_now()
    assert sizes <= bound
    assert figures.evictions == 100_000 - figures.entries_now > 0
    kept = hashlib.blake2b(b"99999", digest_size=16).hexdigest() + ":b"
    assert store.get_now([kept]) is not None  # the newest is kept, the oldest went
    assert store.get_now([hashlib.blake2b(b"0", digest_size=16).hexdigest() + ":b"]) is None
    assert figures.bytes_now == sum(entry_size(entry_bytes(n)) for n in range(100_000 - figures.entries_now, 100_000))


def test_the_memory_store_forgets_entries_past_their_ttl_and_keeps_used_ones() -> None:
    now = [0.0]
    store = MemoryCacheStore(3 * entry_size(b"x" * 100), clock=lambda: now[0])
    for name, ttl in (("a", 10), ("b", 100), ("c", 100)):
        store.put_now(name, b"x" * 100, ttl)
    assert store.get_now(["a"]) is not None  # used: the least recently used is now b
    store.put_now("d", b"x" * 100, 100)
    assert store.get_now(["b"]) is None and store.get_now(["c"]) is not None
    now[0] = 50
    assert store.get_now(["a"]) is None  # expired
    assert store.get_now(["zz", "c"]) == ("c", b"x" * 100)


def test_variants_of_one_request_share_the_digest() -> None:
    whole = cache_key("chat", "t", b"", "", {"messages": MESSAGES})
    streamed = cache_key("chat", "t", b"", "", {"messages": MESSAGES, "stream": True})
    assert whole.digest == streamed.digest
    assert (whole.variant, streamed.variant) == (Variant.BODY, Variant.STREAM)
