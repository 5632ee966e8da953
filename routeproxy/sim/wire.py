"""The common ground of the simulated upstreams: the dialect names, a decided answer, and the OpenAI-compatible
``Wire`` that each dialect in ``routeproxy.sim.dialects`` overrides where its server differs."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import orjson
from starlette.responses import Response

from routeproxy.sim.content import ToolCall

Json = dict[str, Any]


class Dialect(enum.StrEnum):
    VLLM = "vllm"
    TGI = "tgi"  # TGI >= 2.4.1: `data: {json}`
    TGI_LEGACY = "tgi-legacy"  # TGI < 2.1.0 (axum 0.6): `data:{json}`, no space
    HF = "hf"  # the Hugging Face Inference Providers router, OpenAI-style


@dataclass(frozen=True, slots=True)
class Answer:
    """One generated answer, already decided: the simulator only paces it out."""

    id: str
    model: str  # the response `model` field
    created: int
    tokens: tuple[str, ...]  # the text, or the pieces of a tool call's arguments
    # "stop" or "tool_calls" (a final chunk follows the tokens), or "length" (the last token carries it)
    finish_reason: str
    prompt_tokens: int
    include_usage: bool
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[Json, ...] | None = None  # one OpenAI logprobs entry per token, when asked for
    text: bool = False  # a legacy text completion (/v1/completions), not a chat completion

    @property
    def usage(self) -> Json:
        done = len(self.tokens)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": done,
            "total_tokens": self.prompt_tokens + done,
        }


def json_response(status: int, payload: object, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, headers=headers, media_type="application/json")


def status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def serde_kind(value: object) -> str:
    """serde's name for an unexpected JSON value, as in "invalid type: string \"\\n\", expected a sequence"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f"string {orjson.dumps(value).decode()}"
    return "sequence" if isinstance(value, list) else "map"


def _prompt_item(item: object) -> bool:
    if isinstance(item, list):
        return all(isinstance(token, int) and not isinstance(token, bool) for token in item)
    return isinstance(item, str) or (isinstance(item, int) and not isinstance(item, bool))


class Wire:
    """The OpenAI-compatible common ground; each dialect overrides what its server does differently."""

    dialect: ClassVar[Dialect]
    data_prefix: ClassVar[bytes] = b"data: "

    def __init__(self, served_model: str, tokens_per_s: float) -> None:
        self.served_model = served_model
        self.tokens_per_s = tokens_per_s

    # -- framing --

    def event(self, payload: Json) -> bytes:
        return self.data_prefix + orjson.dumps(payload) + b"\n\n"

    @property
    def done(self) -> bytes:
        return self.data_prefix + b"[DONE]\n\n"

    def stream_headers(self) -> dict[str, str]:
        return {"content-type": "text/event-stream; charset=utf-8"}

    def completion_headers(self, answer: Answer) -> dict[str, str]:
        return {}

    # -- requests --

    def guards(self, method: str, path: str) -> bool:
        """Whether this route needs the API key (when the profile sets one)."""
        return method != "OPTIONS" and path.startswith("/v1")

    def authorized(self, header: str, key: str) -> bool:
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and token == key

    def unauthorized(self) -> Response:
        raise NotImplementedError

    def error(self, status: int, message: str) -> Response:
        """A pre-stream error in this server's envelope (x-sim-status and the simulator's own refusals)."""
        raise NotImplementedError

    def parse(self, content_type: str, raw: bytes) -> Json | Response:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return self.error(400, f"Invalid JSON body: {exc}")
        if not isinstance(body, dict):
            return self.error(400, "The request body must be a JSON object.")
        return body

    def check(self, body: Json) -> Response | None:
        """A refusal sent before any stream byte, or None."""
        return None

    def check_text(self, body: Json) -> Response | None:
        """A legacy completions request: a prompt (a string, strings, token ids or lists of token ids)."""
        prompt = body.get("prompt")
        if not (
            isinstance(prompt, str)
            or (isinstance(prompt, list) and prompt and all(_prompt_item(item) for item in prompt))
        ):
            return self.error(400, "`prompt` must be a string, an array of strings or an array of token ids")
        return None

    def in_stream_error(self, body: Json) -> str | None:
        """A refusal that a *streamed* request gets inside a 200 stream (TGI), or None."""
        return None

    def include_usage(self, body: Json) -> bool:
        options = body.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True

    def response_model(self, body: Json) -> str:
        return self.served_model

    def answer_id(self, request_id: str | None) -> str:
        return f"chatcmpl-{uuid.uuid4().hex}"

    def tool_call_id(self, index: int) -> str:
        return f"call_{uuid.uuid4().hex[:24]}"

    # -- shapes --

    def _chunk(self, answer: Answer, delta: Json, finish_reason: str | None) -> Json:
        if answer.text:
            choice: Json = {"index": 0, "text": delta.get("content", ""), "logprobs": None}
            return {
                "id": answer.id,
                "object": "text_completion",
                "created": answer.created,
                "model": answer.model,
                "choices": [{**choice, "finish_reason": finish_reason}],
            }
        return {
            "id": answer.id,
            "object": "chat.completion.chunk",
            "created": answer.created,
            "model": answer.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }

    def opening(self, answer: Answer) -> list[Json]:
        """Chunks sent just before the first token: the role, then the head of a tool call."""
        if answer.text:
            return []
        chunks = [self._chunk(answer, {"role": "assistant", "content": ""}, None)]
        if answer.tool_calls:
            chunks.append(self._chunk(answer, self.tool_call_head(answer), None))
        return chunks

    def tool_call_head(self, answer: Answer) -> Json:
        call = answer.tool_calls[0]
        head = {"index": 0, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        return {"tool_calls": [head]}

    def delta(self, answer: Answer, token: str) -> Json:
        if answer.tool_calls:
            return {"tool_calls": [{"index": 0, "function": {"arguments": token}}]}
        return {"content": token}

    def token_chunk(self, answer: Answer, position: int, finish_reason: str | None) -> Json:
        chunk = self._chunk(answer, self.delta(answer, answer.tokens[position]), finish_reason)
        if answer.logprobs is not None:
            chunk["choices"][0]["logprobs"] = self.logprobs(answer, position, position + 1)
        return chunk

    def stop_chunk(self, answer: Answer) -> Json:
        return self._chunk(answer, {}, answer.finish_reason)

    def usage_chunk(self, answer: Answer) -> Json:
        return {
            "id": answer.id,
            "object": "text_completion" if answer.text else "chat.completion.chunk",
            "created": answer.created,
            "model": answer.model,
            "choices": [],
            "usage": answer.usage,
        }

    def logprobs(self, answer: Answer, start: int, end: int) -> Json | None:
        """The logprobs of tokens[start:end]: chat's ``{"content": [...]}``, or the legacy completions' lists."""
        if answer.logprobs is None:
            return None
        entries = answer.logprobs[start:end]
        if not answer.text:
            return {"content": list(entries)}
        offsets, offset = [], sum(len(token) for token in answer.tokens[:start])
        for entry in entries:
            offsets.append(offset)
            offset += len(entry["token"])
        return {
            "tokens": [entry["token"] for entry in entries],
            "token_logprobs": [entry["logprob"] for entry in entries],
            "top_logprobs": [{top["token"]: top["logprob"] for top in entry["top_logprobs"]} for entry in entries],
            "text_offset": offsets,
        }

    def stream_error(self, message: str) -> Json:
        return {"error": {"message": message, "type": "server_error", "param": None, "code": "server_error"}}

    def message(self, answer: Answer) -> Json:
        if answer.tool_calls:
            # The arguments are the tokens sent: cut short with the answer when max_tokens cut it (finish "length").
            calls = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": "".join(answer.tokens)},
                }
                for call in answer.tool_calls
            ]
            return {"role": "assistant", "content": None, "tool_calls": calls}
        return {"role": "assistant", "content": "".join(answer.tokens)}

    def completion(self, answer: Answer) -> Json:
        logprobs = self.logprobs(answer, 0, len(answer.tokens))
        if answer.text:
            choice: Json = {"index": 0, "text": "".join(answer.tokens), "logprobs": logprobs}
            kind = "text_completion"
        else:
            choice = {"index": 0, "message": self.message(answer), "logprobs": logprobs}
            kind = "chat.completion"
        return {
            "id": answer.id,
            "object": kind,
            "created": answer.created,
            "model": answer.model,
            "choices": [{**choice, "finish_reason": answer.finish_reason}],
            "usage": answer.usage,
        }

    def models(self) -> Json:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.served_model,
                    "object": "model",
                    "created": 0,
                    "owned_by": self.served_model.partition("/")[0],
                }
            ],
        }

    def health(self, status: int) -> Response:
        return Response(status_code=status)
