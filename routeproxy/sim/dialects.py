"""What each simulated upstream says on the wire: request checks, error envelopes, SSE framing and chunk shapes.

Used only by ``routeproxy.sim.simulator``. Every shape follows /work/shared/PROTOCOLS.md (§0 side by side,
§1 vLLM, §2 TGI, §3 the HF router); a fact that the notes leave open is marked "assumed" where it is chosen.
"""

from __future__ import annotations

import uuid
from typing import ClassVar

import orjson
from starlette.responses import PlainTextResponse, Response

from routeproxy.sim.content import end_of_sequence, without_bytes
from routeproxy.sim.wire import Answer, Dialect, Json, Wire, json_response, serde_kind, status_phrase

__all__ = ["WIRES", "Answer", "Dialect", "Json", "Wire", "json_response"]


class VllmWire(Wire):
    """vLLM's OpenAI server (PROTOCOLS §1), nested error envelope of v0.10.1+ with an integer `code`."""

    dialect = Dialect.VLLM
    _types: ClassVar[dict[int, str]] = {
        400: "BadRequestError",
        404: "NotFoundError",
        500: "InternalServerError",
        501: "NotImplementedError",
    }

    def _envelope(self, status: int, message: str, kind: str, param: str | None = None) -> Response:
        return json_response(status, {"error": {"message": message, "type": kind, "param": param, "code": status}})

    def unauthorized(self) -> Response:
        return json_response(401, {"error": "Unauthorized"})

    def error(self, status: int, message: str) -> Response:
        if status == 401:
            return self.unauthorized()
        return self._envelope(status, message, self._types.get(status, status_phrase(status)))

    def _invalid(self, field: str, problem: str) -> Response:
        # FastAPI's RequestValidationError, which vLLM renders as 400 "Bad Request" (§1.3).
        return self._envelope(400, f"1 validation error(s):\n  body.{field}: {problem}", "Bad Request", f"body.{field}")

    def parse(self, content_type: str, raw: bytes) -> Json | Response:
        if content_type.split(";", 1)[0].strip().lower() != "application/json":
            return self._envelope(400, "Unsupported Media Type: Only 'application/json' is allowed", "Bad Request")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return self._envelope(
                400, f"1 validation error(s):\n  body: JSON decode error: {exc}", "Bad Request", "body"
            )
        if not isinstance(body, dict):
            return self._envelope(
                400, "1 validation error(s):\n  body: Input should be a valid dictionary", "Bad Request", "body"
            )
        return body

    def check(self, body: Json) -> Response | None:
        messages = body.get("messages")
        if messages is None:
            return self._invalid("messages", "Field required")
        if not isinstance(messages, list):
            return self._invalid("messages", "Input should be a valid list")
        for field, kind, ok in (
            ("model", "string", (str,)),
            ("stream", "boolean", (bool,)),
            ("stream_options", "dictionary", (dict,)),
            ("max_tokens", "integer", (int,)),
            ("max_completion_tokens", "integer", (int,)),
            ("tools", "list", (list,)),
            ("response_format", "dictionary", (dict,)),
        ):
            value = body.get(field)
            if value is not None and (not isinstance(value, ok) or (kind == "integer" and isinstance(value, bool))):
                return self._invalid(field, f"Input should be a valid {kind}")
        tools = body.get("tools")
        if tools is not None and not tools:
            return self._envelope(400, "`tools` must not be an empty array", "BadRequestError", "tools")
        if body.get("tool_choice") not in (None, "none") and not tools:
            return self._envelope(400, "When using `tool_choice`, `tools` must be set.", "BadRequestError", "tools")
        if body.get("top_logprobs") and not body.get("logprobs"):
            return self._envelope(
                400, "when using `top_logprobs`, `logprobs` must be set to true.", "BadRequestError", "top_logprobs"
            )
        if body.get("stream_options") and body.get("stream") is not True:
            return self._envelope(400, "Stream options can only be defined when `stream=True`.", "BadRequestError")
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if limit is not None and limit < 1:
            return self._envelope(400, f"max_tokens must be at least 1, got {limit}.", "BadRequestError", "max_tokens")
        model = body.get("model")
        if model and model != self.served_model:
            return self._envelope(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
        return None

    def check_text(self, body: Json) -> Response | None:
        model = body.get("model")
        if model and model != self.served_model:
            return self._envelope(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
        return super().check_text(body)

    def include_usage(self, body: Json) -> bool:
        # vLLM's StreamOptions.include_usage defaults to True once stream_options is present (§1.4).
        options = body.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage", True) is True

    def answer_id(self, request_id: str | None) -> str:
        return f"chatcmpl-{request_id}" if request_id else f"chatcmpl-{uuid.uuid4().hex}"

    def tool_call_id(self, index: int) -> str:
        return f"chatcmpl-tool-{uuid.uuid4().hex}"

    def token_chunk(self, answer: Answer, position: int, finish_reason: str | None) -> Json:
        chunk = super().token_chunk(answer, position, finish_reason)
        if finish_reason is not None:
            chunk["choices"][0]["stop_reason"] = None
        return chunk

    def stop_chunk(self, answer: Answer) -> Json:
        # vLLM ends a text answer with an empty content delta, a tool call with an empty delta.
        chunk = self._chunk(answer, {} if answer.tool_calls or answer.text else {"content": ""}, answer.finish_reason)
        chunk["choices"][0]["stop_reason"] = None
        return chunk

    def stream_error(self, message: str) -> Json:
        return {"error": {"message": message, "type": "InternalServerError", "param": None, "code": 500}}

    def completion(self, answer: Answer) -> Json:
        payload = super().completion(answer)
        choice = payload["choices"][0]
        if not answer.text:
            choice["message"].setdefault("tool_calls", [])
        choice["stop_reason"] = None
        payload["prompt_logprobs"] = None
        return payload

    def models(self) -> Json:
        card = {
            "id": self.served_model,
            "object": "model",
            "created": 0,
            "owned_by": "vllm",
            "root": self.served_model,
            "parent": None,
            "max_model_len": 131072,
            "permission": [],
        }
        return {"object": "list", "data": [card]}


class TgiWire(Wire):
    """TGI's Messages API, v3.3.x (PROTOCOLS §2): `id` "", role in every delta, axum plain-text rejections."""

    dialect = Dialect.TGI
    fingerprint: ClassVar[str] = "3.3.7-native"
    _kinds: ClassVar[dict[int, str]] = {
        422: "validation",
        424: "generation",
        429: "overloaded",
        500: "incomplete_generation",
        503: "unhealthy",
    }
    # Rust types of ChatRequest fields a client may get wrong (§2.3); a mismatch is a 422 in plain text.
    _types: ClassVar[tuple[tuple[str, str, bool], ...]] = (
        ("model", "a string", True),
        ("stream", "a boolean", False),
        ("stop", "a sequence", True),
        ("max_tokens", "u32", True),
        ("max_completion_tokens", "u32", True),
        ("n", "u32", True),
        ("seed", "u64", True),
        ("top_p", "f32", True),
        ("temperature", "f32", True),
        ("frequency_penalty", "f32", True),
        ("presence_penalty", "f32", True),
        ("logprobs", "a boolean", True),
        ("top_logprobs", "u32", True),
        ("logit_bias", "a sequence", True),
        ("stream_options", "struct StreamOptions", False),
    )

    def guards(self, method: str, path: str) -> bool:
        return method == "POST"  # --api-key covers the POST routes only (§2.1)

    def authorized(self, header: str, key: str) -> bool:
        return header.lower() == f"bearer {key}".lower()

    def unauthorized(self) -> Response:
        return Response(status_code=401)

    def error(self, status: int, message: str) -> Response:
        if status == 401:
            return self.unauthorized()
        return json_response(status, {"error": message, "error_type": self._kinds.get(status, "simulated")})

    def parse(self, content_type: str, raw: bytes) -> Json | Response:
        media = content_type.split(";", 1)[0].strip().lower()
        if not (media == "application/json" or (media.startswith("application/") and media.endswith("+json"))):
            return PlainTextResponse("Expected request with `Content-Type: application/json`", 415)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return PlainTextResponse(f"Failed to parse the request body as JSON: {exc}", 400)
        if not isinstance(body, dict):
            return self._rejected(f"invalid type: {serde_kind(body)}, expected struct ChatRequest")
        return body

    @staticmethod
    def _rejected(problem: str) -> Response:
        return PlainTextResponse(f"Failed to deserialize the JSON body into the target type: {problem}", 422)

    @staticmethod
    def _fits(value: object, expected: str) -> bool:
        if expected == "a string":
            return isinstance(value, str)
        if expected == "a boolean":
            return isinstance(value, bool)
        if expected == "a sequence":
            return isinstance(value, list) and all(isinstance(item, str | int | float) for item in value)
        if expected in ("u32", "u64"):
            return isinstance(value, int) and not isinstance(value, bool) and value >= 0
        if expected == "f32":
            return isinstance(value, int | float) and not isinstance(value, bool)
        return isinstance(value, dict) and isinstance(value.get("include_usage"), bool)

    def check(self, body: Json) -> Response | None:
        messages = body.get("messages")
        if "messages" not in body:
            return self._rejected("missing field `messages`")
        if not isinstance(messages, list):
            return self._rejected(f"messages: invalid type: {serde_kind(messages)}, expected a sequence")
        for field, expected, nullable in self._types:
            if field not in body or (nullable and body[field] is None):
                continue
            value = body[field]
            if not self._fits(value, expected):
                if field == "stream_options" and isinstance(value, dict):
                    return self._rejected("stream_options: missing field `include_usage`")
                return self._rejected(f"{field}: invalid type: {serde_kind(value)}, expected {expected}")
        if body.get("response_format") is not None and body.get("tools") is not None:
            return json_response(422, {"error": "Grammar and tools are mutually exclusive", "error_type": "tool_error"})
        problem = self.in_stream_error(body)
        if problem is not None and body.get("stream") is not True:
            return json_response(422, {"error": problem, "error_type": "validation"})
        return None

    def in_stream_error(self, body: Json) -> str | None:
        # router/src/validation.rs; a streamed request gets these inside the 200 stream (§2.4, §2.5).
        top_p, temperature = body.get("top_p"), body.get("temperature")
        penalty, stop = body.get("frequency_penalty"), body.get("stop") or []
        limit = body.get("max_tokens", body.get("max_completion_tokens"))
        if top_p is not None and not 0.0 < top_p < 1.0:
            problem = "`top_p` must be > 0.0 and < 1.0"
        elif temperature is not None and temperature < 0:
            problem = "`temperature` must be strictly positive"
        elif penalty is not None and not -2.0 <= penalty <= 2.0:
            problem = "`frequency_penalty` must be >= -2.0 and <= 2.0"
        elif limit == 0:
            problem = "`max_new_tokens` must be strictly positive"
        elif len(stop) > 4:
            problem = f"`stop` supports up to 4 stop sequences. Given: {len(stop)}"
        else:
            return None
        return f"Input validation error: {problem}"

    def response_model(self, body: Json) -> str:
        model = body.get("model")
        return model if model and model != "tgi" else self.served_model

    def answer_id(self, request_id: str | None) -> str:
        return ""

    def stream_headers(self) -> dict[str, str]:
        return {
            "content-type": "text/event-stream",
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
            "x-compute-type": "simulated",
        }

    def completion_headers(self, answer: Answer) -> dict[str, str]:
        return {
            "x-compute-type": "simulated",
            "x-prompt-tokens": str(answer.prompt_tokens),
            "x-generated-tokens": str(len(answer.tokens)),
        }

    def _chunk(self, answer: Answer, delta: Json, finish_reason: str | None) -> Json:
        if answer.text:
            chunk = super()._chunk(answer, delta, finish_reason)
            chunk["system_fingerprint"] = self.fingerprint
            return chunk
        return {
            "object": "chat.completion.chunk",
            "id": "",
            "created": answer.created,
            "model": answer.model,
            "system_fingerprint": self.fingerprint,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            "usage": None,
        }

    def opening(self, answer: Answer) -> list[Json]:
        # No role-only chunk: every delta repeats the role (assumed for a tool call's head as well).
        if answer.tool_calls and not answer.text:
            return [self._chunk(answer, {"role": "assistant", **self.tool_call_head(answer)}, None)]
        return []

    def tool_call_id(self, index: int) -> str:
        return str(index)  # assumed: TGI numbers its tool calls

    def delta(self, answer: Answer, token: str) -> Json:
        return {"role": "assistant", **super().delta(answer, token)}

    def stop_chunk(self, answer: Answer) -> Json:
        # The EOS token is special: empty content, but its logprob is sent like any token's (router/src/chat.rs).
        chunk = self._chunk(answer, {"role": "assistant", "content": ""}, answer.finish_reason)
        if answer.logprobs and not answer.text and not answer.tool_calls:
            chunk["choices"][0]["logprobs"] = {"content": [end_of_sequence(answer.logprobs)]}
        return chunk

    def logprobs(self, answer: Answer, start: int, end: int) -> Json | None:
        # TGI's chat entries have no `bytes`; a whole answer ending on EOS lists that token last (router/src/lib.rs).
        found = super().logprobs(answer, start, end)
        if found is None or answer.text:
            return found
        ended = end == len(answer.tokens) and answer.finish_reason == "stop" and bool(answer.logprobs)
        tail = [end_of_sequence(answer.logprobs or ())] if start == 0 and ended else []
        return {"content": [without_bytes(entry) for entry in found["content"]] + tail}

    def usage_chunk(self, answer: Answer) -> Json:
        chunk = self._chunk(answer, {}, None)
        chunk["choices"], chunk["usage"] = [], answer.usage
        return chunk

    def stream_error(self, message: str) -> Json:
        return {"error": {"message": message, "http_status_code": 422}}

    def completion(self, answer: Answer) -> Json:
        payload = super().completion(answer)
        payload["system_fingerprint"] = self.fingerprint
        return payload

    def models(self) -> Json:
        card = {"id": self.served_model, "object": "model", "created": 0, "owned_by": self.served_model}
        return {"object": "list", "data": [card]}

    def health(self, status: int) -> Response:
        if status == 200:
            return Response(status_code=200)
        return json_response(status, {"error": "unhealthy", "error_type": "healthcheck"})


class TgiLegacyWire(TgiWire):
    """TGI before 2.1.0 (axum 0.6): the same shapes, but `data:` is written without a space (§2.5)."""

    dialect = Dialect.TGI_LEGACY
    data_prefix = b"data:"


class HfWire(Wire):
    """The HF Inference Providers router (§3): OpenAI-style chunks and errors; the model id may carry a policy."""

    dialect = Dialect.HF
    _errors: ClassVar[dict[int, tuple[str, str]]] = {
        401: ("invalid_request_error", "invalid_api_key"),
        402: ("insufficient_quota", "insufficient_quota"),
        403: ("permission_error", "forbidden"),
        404: ("not_found_error", "not_found"),
        429: ("rate_limit_error", "rate_limit_exceeded"),
    }

    def guards(self, method: str, path: str) -> bool:
        return path.startswith("/v1") and not (method == "GET" and path == "/v1/models")

    def _envelope(self, status: int, message: str, kind: str, code: str | None, param: str | None = None) -> Response:
        return json_response(status, {"error": {"message": message, "type": kind, "param": param, "code": code}})

    def unauthorized(self) -> Response:
        # Assumed wording: the router's exact 401 text is not in the notes.
        return self.error(401, "Invalid credentials in Authorization header")

    def error(self, status: int, message: str) -> Response:
        default = ("server_error", "server_error") if status >= 500 else ("invalid_request_error", None)
        kind, code = self._errors.get(status, default)
        return self._envelope(status, message, kind, code)

    def check(self, body: Json) -> Response | None:
        model = body.get("model")
        if not isinstance(model, str) or model.partition(":")[0] != self.served_model:
            return self._envelope(
                400,
                f"The requested model '{model}' is not supported by any provider you have enabled.",
                "invalid_request_error",
                "model_not_supported",
                "model",
            )
        if not isinstance(body.get("messages"), list):
            return self._envelope(
                400, "`messages` must be a list of messages", "invalid_request_error", None, "messages"
            )
        return None

    def models(self) -> Json:
        provider = {
            "provider": "routeproxy-simulator",
            "status": "live",
            "context_length": 131072,
            "pricing": {"input": 0.0, "output": 0.0},
            "supports_tools": True,  # the simulator answers tool calls and JSON modes (routeproxy.sim.content)
            "supports_structured_output": True,
            "throughput": self.tokens_per_s,
            "is_model_author": False,
        }
        payload = super().models()
        payload["data"][0]["providers"] = [provider]
        return payload


WIRES: dict[Dialect, type[Wire]] = {
    Dialect.VLLM: VllmWire,
    Dialect.TGI: TgiWire,
    Dialect.TGI_LEGACY: TgiLegacyWire,
    Dialect.HF: HfWire,
}
