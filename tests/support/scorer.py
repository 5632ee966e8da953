"""A scripted scoring model on loopback for the cascade's verifier: answers vLLM's /classify, /score and /pooling,
and a judge's /v1/chat/completions, with what the test sets; it can stall (until the client leaves) or fail."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from support.upstreams import read_request_body, serve_lifespan


class Scorer:
    def __init__(self, good: float = 0.9, rate: Callable[[str], float] | None = None) -> None:
        self.good = good  # P(good answer) it reports
        self.rate = rate  # when set: P(good) from the text it was sent instead
        self.status = 200
        self.stall = threading.Event()  # set: every request waits until the client goes away
        self.requests: list[tuple[str, dict[str, Any]]] = []  # (path, body)
        self.cancelled = 0  # requests whose client left while they stalled

    def reply(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        good = self.good if self.rate is None else self.rate(orjson.dumps(body).decode())
        usage = {"prompt_tokens": 9, "total_tokens": 9, "completion_tokens": 0, "prompt_tokens_details": None}
        head = {"object": "list", "created": 1, "model": "scorer", "usage": usage}
        if path.endswith("/classify"):
            item = {"index": 0, "label": "good" if good > 0.5 else "bad", "probs": [1 - good, good], "num_classes": 2}
            return {"id": "classify-1", **head, "data": [item]}
        if path.endswith("/score"):
            return {"id": "embd-1", **head, "data": [{"index": 0, "object": "score", "score": good}]}
        if path.endswith("/pooling"):
            return {"id": "pool-1", **head, "data": [{"index": 0, "object": "pooling", "data": [4 * good - 2]}]}
        # a judge: TGI's chat shape, its one token with the top alternatives (no `bytes`)
        yes, no = {"token": "Yes", "logprob": _log(good)}, {"token": "No", "logprob": _log(1 - good)}
        first = max(yes, no, key=lambda entry: entry["logprob"])
        tops = sorted([yes, no, {"token": " yes", "logprob": -9.0}], key=lambda entry: -entry["logprob"])
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": first["token"]},
            "logprobs": {"content": [{"token": first["token"], "logprob": first["logprob"], "top_logprobs": tops}]},
            "finish_reason": "length",
        }
        return {"object": "chat.completion", "id": "", "created": 1, "model": "judge", "choices": [choice],
                "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}}  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        body = orjson.loads(await read_request_body(receive))
        self.requests.append((scope["path"], body))
        if self.stall.is_set():  # the headers, then nothing until the client goes away
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            )
            message = await receive()
            while message["type"] != "http.disconnect":  # receive() waits: the body was read, so this is the end
                message = await receive()
            self.cancelled += 1
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        payload = orjson.dumps(self.reply(scope["path"], body) if self.status == 200 else {"error": "scripted failure"})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload, "more_body": False})


def _log(probability: float) -> float:
    return math.log(max(1e-9, probability))
