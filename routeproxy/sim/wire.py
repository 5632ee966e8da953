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
    tokens: tuple[str, ...]
    finish_reason: str  # "stop" (an EOS chunk follows the tokens) or "length" (the last token carries it)
    prompt_tokens: int
    include_usage: bool

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

    # -- shapes --

    def _chunk(self, answer: Answer, delta: Json, finish_reason: str | None) -> Json:
        return {
            "id": answer.id,
            "object": "chat.completion.chunk",
            "created": answer.created,
            "model": answer.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }

    def opening(self, answer: Answer) -> list[Json]:
        """Chunks sent just before the first token."""
        return [self._chunk(answer, {"role": "assistant", "content": ""}, None)]

    def token_chunk(self, answer: Answer, token: str, finish_reason: str | None) -> Json:
        return self._chunk(answer, {"content": token}, finish_reason)

    def stop_chunk(self, answer: Answer) -> Json:
        return self._chunk(answer, {}, "stop")

    def usage_chunk(self, answer: Answer) -> Json:
        return {
            "id": answer.id,
            "object": "chat.completion.chunk",
            "created": answer.created,
            "model": answer.model,
            "choices": [],
            "usage": answer.usage,
        }

    def stream_error(self, message: str) -> Json:
        return {"error": {"message": message, "type": "server_error", "param": None, "code": "server_error"}}

    def completion(self, answer: Answer) -> Json:
        return {
            "id": answer.id,
            "object": "chat.completion",
            "created": answer.created,
            "model": answer.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(answer.tokens)},
                    "logprobs": None,
                    "finish_reason": answer.finish_reason,
                }
            ],
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
