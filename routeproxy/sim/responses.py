"""The simulator's Responses API, for agent frameworks built on ``client.responses.*``: create (whole or streamed),
retrieve, delete and the input items of a stored response, in the shapes OpenAI documents and the openai SDK reads.

A request is turned into the chat request it stands for (``input`` and ``instructions`` as messages, function
``tools`` and ``tool_choice``, ``text.format`` as ``response_format``, ``max_output_tokens``) and answered by the
simulator's own answer logic (``routeproxy.sim.content``): the same filler text, tool calls and schema-true JSON as
chat completions, the same ``x-sim-*`` faults and pacing. The answer becomes one output item: a message with one
``output_text`` part, or a ``function_call``.

A stream is a sequence of named events (``event: response.output_text.delta`` / ``data: {...}``), each with its
``sequence_number``: response.created, response.in_progress, response.output_item.added, response.content_part.added,
response.output_text.delta per token (function_call_arguments.delta for a call), the matching .done events and
response.completed (or response.incomplete when ``max_output_tokens`` cut it). There is no ``[DONE]``.

Responses are stored unless ``store`` is false (the newest ``STORED`` of them), so that ``previous_response_id``,
retrieve and delete work; the vLLM and HF dialects serve these routes, TGI has no Responses API.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

from routeproxy.sim.faults import Faults
from routeproxy.sim.profile import SimProfile
from routeproxy.sim.streams import Outcome, Plan, SimStats, SimStream, Ticket, paced, sleep_unless_disconnect, truncated
from routeproxy.sim.wire import Answer, Json, Wire, json_response

STORED = 1000


class Simulated(Protocol):
    """What the Responses API takes from the simulator: its profile, wire, stats, admission and answer logic."""

    profile: SimProfile
    wire: Wire
    stats: SimStats

    def _admit(self, request: Request, body: object) -> Awaitable[Faults | Response]: ...

    def _answer(self, body: Json, headers: Headers, faults: Faults, *, text: bool) -> Answer: ...


@dataclass(slots=True)
class _Stored:
    response: Json
    inputs: list[Json] = field(default_factory=list)  # the input items, as retrieved by input_items
    messages: list[Json] = field(default_factory=list)  # the conversation so far, for previous_response_id


class ResponsesApi:
    def __init__(self, sim: Simulated) -> None:
        self.sim = sim
        self.stored: OrderedDict[str, _Stored] = OrderedDict()

    async def create(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body: object = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        admitted = await self.sim._admit(request, body)
        if isinstance(admitted, Response):
            return admitted
        wire = self.sim.wire
        if not isinstance(body, dict):
            return wire.error(400, "The request body must be a JSON object.")
        refusal = self._refusal(body)
        if refusal is not None:
            return refusal
        previous = self.stored.get(body.get("previous_response_id") or "")
        inputs = _input_items(body["input"])
        messages = [*(previous.messages if previous else ()), *_messages(body.get("instructions"), inputs)]
        answer = self.sim._answer(_chat_request(body, messages), request.headers, admitted, text=False)
        response = _response(body, answer, f"resp_{uuid.uuid4().hex}")
        if body.get("store", True) is not False:
            self._store(response, inputs, [*messages, _reply(answer)])
        speed = self.sim.profile.speed
        ttft = admitted.ttft_s if admitted.ttft_s is not None else self.sim.profile.ttft_s / speed
        gap = admitted.token_s if admitted.token_s is not None else 1 / (self.sim.profile.tokens_per_s * speed)
        ticket = Ticket(self.sim.stats, "")
        if body.get("stream") is True:
            plan = _events(response, answer, ttft, gap, admitted)
            return SimStream(paced(plan, ticket, None), ticket, {"content-type": "text/event-stream; charset=utf-8"})
        if not await sleep_unless_disconnect(request.receive, ttft + len(answer.tokens) * gap):
            ticket.close(Outcome.DISCONNECTED)
            return Response(status_code=499)  # the client is gone; nobody reads this
        payload = orjson.dumps(response)
        if admitted.die_after is not None:
            headers = {"content-type": "application/json", "content-length": str(len(payload))}
            return SimStream(truncated(payload[: len(payload) // 2], ticket), ticket, headers)
        ticket.close(Outcome.COMPLETED)
        return json_response(200, response)

    def _refusal(self, body: Json) -> Response | None:
        wire = self.sim.wire
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return wire.error(400, "Missing required parameter: 'model'.")
        # The dialect's own answer to a model it does not serve (vLLM's 404, the HF router's 400).
        refused = wire.check({"model": model, "messages": []})
        if refused is not None:
            return refused
        if "input" not in body or not isinstance(body["input"], (str, list)):
            return wire.error(400, "Missing required parameter: 'input' (a string or a list of input items).")
        previous = body.get("previous_response_id")
        if previous is not None and previous not in self.stored:
            return wire.error(404, f"Previous response with id '{previous}' not found.")
        limit = body.get("max_output_tokens")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            return wire.error(400, "max_output_tokens must be a whole number of at least 1.")
        return None

    def _store(self, response: Json, inputs: list[Json], messages: list[Json]) -> None:
        self.stored[response["id"]] = _Stored(response, inputs, messages)
        while len(self.stored) > STORED:
            self.stored.popitem(last=False)

    async def retrieve(self, request: Request) -> Response:
        return await self._with_stored(request, lambda found: json_response(200, found.response))

    async def delete(self, request: Request) -> Response:
        def deleted(found: _Stored) -> Response:
            self.stored.pop(found.response["id"], None)
            return json_response(200, {"id": found.response["id"], "object": "response", "deleted": True})

        return await self._with_stored(request, deleted)

    async def input_items(self, request: Request) -> Response:
        def listed(found: _Stored) -> Response:
            items = found.inputs
            first, last = (items[0]["id"], items[-1]["id"]) if items else (None, None)
            return json_response(
                200, {"object": "list", "data": items, "first_id": first, "last_id": last, "has_more": False}
            )

        return await self._with_stored(request, listed)

    async def _with_stored(self, request: Request, then: Callable[[_Stored], Response]) -> Response:
        admitted = await self.sim._admit(request, None)
        if isinstance(admitted, Response):
            return admitted
        response_id = request.path_params["response_id"]
        found = self.stored.get(response_id)
        if found is None:
            return self.sim.wire.error(404, f"Response with id '{response_id}' not found.")
        return then(found)


# -- the request as a chat request --


def _text(content: object) -> str:
    """The text of an input item's content: a string, or its input_text / output_text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def _input_items(given: str | list[Any]) -> list[Json]:
    """The input as stored input items, each with an id."""
    raw = (
        [{"role": "user", "content": given}]
        if isinstance(given, str)
        else [item for item in given if isinstance(item, dict)]
    )
    items = []
    for item in raw:
        kind = item.get("type", "message")
        if kind == "message":
            content = [{"type": "input_text", "text": _text(item.get("content"))}]
            items.append({"id": f"msg_{uuid.uuid4().hex}", "type": "message", "role": item.get("role", "user"),
                          "content": content, "status": "completed"})  # fmt: skip
        else:
            items.append({"id": item.get("id") or f"item_{uuid.uuid4().hex}", **item})
    return items


def _messages(instructions: object, items: list[Json]) -> list[Json]:
    """Chat messages standing for the instructions and the input items (a function's output is a tool message)."""
    messages: list[Json] = []
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    for item in items:
        kind = item.get("type")
        if kind == "message":
            role = "system" if item.get("role") == "developer" else item.get("role", "user")
            messages.append({"role": role, "content": _text(item.get("content"))})
        elif kind == "function_call_output":
            messages.append(
                {"role": "tool", "content": str(item.get("output", "")), "tool_call_id": item.get("call_id")}
            )
        elif kind == "function_call":
            messages.append({"role": "assistant", "content": None, "tool_calls": [{"id": item.get("call_id")}]})
    return messages


def _chat_request(body: Json, messages: list[Json]) -> Json:
    chat: Json = {"model": body["model"], "messages": messages}
    tools = [tool for tool in body.get("tools") or () if isinstance(tool, dict) and tool.get("type") == "function"]
    if tools:
        chat["tools"] = [{"type": "function", "function": tool} for tool in tools]
        choice = body.get("tool_choice", "auto")
        chat["tool_choice"] = (
            {"type": "function", "function": {"name": choice.get("name")}} if isinstance(choice, dict) else choice
        )
    text_format = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(text_format, dict) and text_format.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif isinstance(text_format, dict) and text_format.get("type") == "json_schema":
        chat["response_format"] = {"type": "json_schema", "json_schema": {"schema": text_format.get("schema") or {}}}
    if isinstance(body.get("max_output_tokens"), int):
        chat["max_tokens"] = body["max_output_tokens"]
    return chat


def _reply(answer: Answer) -> Json:
    if answer.tool_calls:
        return {"role": "assistant", "content": None, "tool_calls": [{"id": call.id} for call in answer.tool_calls]}
    return {"role": "assistant", "content": "".join(answer.tokens)}


# -- the response --


def _response(body: Json, answer: Answer, response_id: str) -> Json:
    complete = answer.finish_reason != "length"
    if answer.tool_calls:
        call = answer.tool_calls[0]
        item: Json = {"id": f"fc_{uuid.uuid4().hex}", "type": "function_call", "status": "completed",
                      "call_id": call.id, "name": call.name, "arguments": call.arguments}  # fmt: skip
    else:
        part = {"type": "output_text", "text": "".join(answer.tokens), "annotations": [], "logprobs": []}
        item = {"id": f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant",
                "status": "completed" if complete else "incomplete", "content": [part]}  # fmt: skip
    text_format = body.get("text") if isinstance(body.get("text"), dict) else {"format": {"type": "text"}}
    done = len(answer.tokens)
    return {
        "id": response_id,
        "object": "response",
        "created_at": answer.created,
        "status": "completed" if complete else "incomplete",
        "completed_at": int(time.time()) if complete else None,
        "error": None,
        "incomplete_details": None if complete else {"reason": "max_output_tokens"},
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": answer.model,
        "output": [item],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "store": body.get("store", True) is not False,
        "temperature": body.get("temperature", 1.0),
        "text": text_format,
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": answer.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": done,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": answer.prompt_tokens + done,
        },
        "metadata": body.get("metadata") or {},
    }


def _events(response: Json, answer: Answer, ttft: float, gap: float, faults: Faults) -> Plan:
    """The stream's events, each with its offset; ``x-sim-die-after`` / ``x-sim-error-after`` cut it."""
    sequence = iter(range(1_000_000))
    item = response["output"][0]
    started = {**response, "status": "in_progress", "output": [], "usage": None, "completed_at": None}

    def event(kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": next(sequence), **fields}
        return f"event: {kind}\ndata: ".encode() + orjson.dumps(payload) + b"\n\n"

    yield 0.0, event("response.created", response=started)
    yield 0.0, event("response.in_progress", response=started)
    calling = item["type"] == "function_call"
    opened = {**item, "status": "in_progress", **({"arguments": ""} if calling else {"content": []})}
    yield ttft, event("response.output_item.added", output_index=0, item=opened)
    empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    if not calling:
        yield (
            ttft,
            event("response.content_part.added", item_id=item["id"], output_index=0, content_index=0, part=empty_part),
        )
    for position, token in enumerate(answer.tokens):
        at = ttft + position * gap
        if position == faults.die_after:
            yield at, None
            return
        if position == faults.error_after:
            message = f"Simulated engine error after {position} tokens (x-sim-error-after)"
            yield at, event("error", code="server_error", message=message, param=None)
            return
        if calling:
            yield at, event("response.function_call_arguments.delta", item_id=item["id"], output_index=0, delta=token)
        else:
            yield at, event("response.output_text.delta", item_id=item["id"], output_index=0, content_index=0,
                            delta=token, logprobs=[])  # fmt: skip
    at = ttft + len(answer.tokens) * gap
    yield from _closing(response, item, at, event)


def _closing(response: Json, item: Json, at: float, event: Callable[..., bytes]) -> Iterator[tuple[float, bytes]]:
    if item["type"] == "function_call":
        yield at, event("response.function_call_arguments.done", item_id=item["id"], output_index=0,
                        arguments=item["arguments"])  # fmt: skip
    else:
        part = item["content"][0]
        yield at, event("response.output_text.done", item_id=item["id"], output_index=0, content_index=0,
                        text=part["text"], logprobs=[])  # fmt: skip
        yield at, event("response.content_part.done", item_id=item["id"], output_index=0, content_index=0, part=part)
    yield at, event("response.output_item.done", output_index=0, item=item)
    final = "response.completed" if response["status"] == "completed" else "response.incomplete"
    yield at, event(final, response=response)
