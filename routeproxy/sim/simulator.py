"""A simulated OpenAI-compatible upstream: a load-testing and demo tool, and the proxy tests' upstream.

It is NOT a model. It answers ``POST /v1/chat/completions`` with deterministic filler words (chosen by a
blake2b hash of the messages) at a configurable pace, in the wire dialect of vLLM, TGI (current or < 2.1.0)
or the Hugging Face router (see ``routeproxy.sim.dialects`` and /work/shared/PROTOCOLS.md). Every response is
labelled with the header ``x-simulator: routeproxy`` (and ``x-simulator-speed``) so it can never pass for a real
model.

Pacing: the first token is sent ``ttft_s`` after the request, then one token every ``1/tokens_per_s``; an
answer that ends naturally gets a final "stop" chunk one token later. ``speed`` divides every delay
(``keepalive_s`` is an idle timeout on the wall clock and is not divided).

Fault controls, read from request headers so that they pass through a proxy:

    x-sim-status: N        answer status N (400-599) in the dialect's error shape, before any body byte
    x-sim-error-after: N   stream: after N content chunks send the dialect's in-stream error event, then [DONE]
    x-sim-die-after: N     stream: after N content chunks drop the connection mid-body; non-stream: send
                           the headers and half the JSON body, then drop
    x-sim-tokens: N        the answer has N tokens (max_tokens still caps it)
    x-sim-ttft-ms: N       time to first token for this request, in ms (not divided by speed)
    x-sim-token-ms: N      time between tokens for this request, in ms (not divided by speed)
    x-sim-hang: 1          never answer; wait until the client goes away (counted as a disconnect)
    x-sim-answer: TEXT     answer with this text (a refusal, say) instead of filler words, JSON or a tool call
    x-sim-logprob: X       every token's logprob is X (<= 0), for answers that must look (un)sure

Weak answers (``SimProfile.weak_share`` in ``routeproxy.sim.profile``, ``routeproxy simulate --weak-share``): on that
share of prompts, chosen by a hash of the messages, the answer is a short refusal instead, as a small model gives on
prompts beyond it. It lets the cascade's answer check (routeproxy.cascade.check) see weak answers from a simulated small
tier.

Observability: ``GET /_sim/requests`` (the last 100 requests: method, path, lowercased headers, parsed JSON
body or null), ``DELETE /_sim/requests``, and ``GET /_sim/stats`` (requests, and open, completed and disconnected
streams as ``routeproxy.sim.streams`` counts them). The ``/_sim`` routes are not recorded, need no key and ignore
fault headers.

This module decides each answer and when its events are due; ``routeproxy.sim.streams`` sends them and counts how
each answer ends.
"""

from __future__ import annotations

import random
import time

import orjson
from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from routeproxy.routing.route import stable_draw
from routeproxy.sim import pooling
from routeproxy.sim.content import (
    ToolCall,
    chosen_tool,
    filler,
    json_text,
    logprob_entries,
    prompt_values,
    seeded,
    split_tokens,
    tool_call,
    words_of,
)
from routeproxy.sim.dialects import WIRES, Answer, Json, Wire, json_response
from routeproxy.sim.faults import BadFault, Faults
from routeproxy.sim.profile import SimProfile
from routeproxy.sim.responses import ResponsesApi
from routeproxy.sim.streams import (
    Outcome,
    Plan,
    SimStats,
    SimStream,
    Ticket,
    paced,
    sleep_unless_disconnect,
    truncated,
    until_disconnect,
)
from routeproxy.sim.wire import Dialect

__all__ = ["WEAK_ANSWER", "create_simulator_app", "weak_prompt"]

WEAK_ANSWER = "I'm sorry, but I can't help with that."  # what a weak small tier says (weak_share)


def weak_prompt(asked: object, share: float) -> bool:
    """Whether a small tier answering ``share`` of prompts weakly answers these messages (or prompt) with
    ``WEAK_ANSWER``: a hash of them, so the same prompt always gets the same kind of answer."""
    return bool(share) and stable_draw(f"weak:{orjson.dumps(asked).decode()}") < share


class _Label:
    """Pure ASGI middleware: every response says it comes from the simulator, and how much faster than its default
    pace it runs (a proxy in front counts both, so its stats can say their figures are simulated)."""

    def __init__(self, app: ASGIApp, speed: float = 1.0) -> None:
        self.app = app
        self.speed = f"{speed:g}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def labelled(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.append("x-simulator", "routeproxy")
                headers.append("x-simulator-speed", self.speed)
            await send(message)

        await self.app(scope, receive, labelled)


def _prompt_tokens(body: Json) -> int:
    """A rough count: a quarter of the characters, plus 3 per chat message; token ids count as themselves."""
    messages, prompt = body.get("messages"), body.get("prompt")
    if isinstance(messages, list):
        size = sum(
            len(message["content"])
            for message in messages
            if isinstance(message, dict) and isinstance(message.get("content"), str)
        )
        return 3 * len(messages) + max(1, size // 4)
    items = prompt if isinstance(prompt, list) else [prompt]
    return max(
        1,
        sum(len(item) if isinstance(item, list) else len(item) // 4 if isinstance(item, str) else 1 for item in items),
    )


class _Simulator:
    def __init__(self, profile: SimProfile) -> None:
        self.profile = profile
        self.wire: Wire = WIRES[profile.dialect](profile.model, profile.tokens_per_s)
        self.stats = SimStats()

    def _record(self, request: Request, body: object) -> None:
        self.stats.requests += 1
        self.stats.log.append(
            {"method": request.method, "path": request.url.path, "headers": dict(request.headers), "body": body}
        )

    async def _admit(self, request: Request, body: object) -> Faults | Response:
        """Record the request, then apply the key and the status and hang faults."""
        self._record(request, body)
        key = self.profile.api_key
        guarded = key is not None and self.wire.guards(request.method, request.url.path)
        if guarded and not self.wire.authorized(request.headers.get("authorization", ""), key or ""):
            return self.wire.unauthorized()
        try:
            faults = Faults.from_headers(request.headers)
        except BadFault as exc:
            return PlainTextResponse(f"routeproxy simulator: {exc}", 400)
        if faults.status is not None:
            message = f"Simulated {faults.status} (x-sim-status)"
            return (
                self.wire.health(faults.status)
                if request.url.path == "/health"
                else self.wire.error(faults.status, message)
            )
        if faults.hang:
            ticket = Ticket(self.stats, "")
            await until_disconnect(request.receive)
            ticket.close(Outcome.DISCONNECTED)
            return Response(status_code=499)  # the client is gone; nobody reads this
        return faults

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, text=False)

    async def text_completion(self, request: Request) -> Response:
        return await self._generate(request, text=True)

    async def _admit_body(self, request: Request) -> tuple[Faults, Json] | Response:
        """Read and record the body, apply the faults, then parse it as the dialect does (or its error)."""
        raw = await request.body()
        try:
            recorded: object = orjson.loads(raw)
        except orjson.JSONDecodeError:
            recorded = None
        admitted = await self._admit(request, recorded)
        if isinstance(admitted, Response):
            return admitted
        body = self.wire.parse(request.headers.get("content-type", ""), raw)
        return body if isinstance(body, Response) else (admitted, body)

    async def _generate(self, request: Request, *, text: bool) -> Response:
        admitted = await self._admit_body(request)
        if isinstance(admitted, Response):
            return admitted
        faults, body = admitted
        refusal = self.wire.check_text(body) if text else self.wire.check(body)
        if refusal is not None:
            return refusal
        answer = self._answer(body, request.headers, faults, text=text)
        if answer.id and answer.id in self.stats.running_ids:
            return self.wire.error(400, f"Request id {answer.id} already running.")
        speed = self.profile.speed
        ttft = faults.ttft_s if faults.ttft_s is not None else self.profile.ttft_s / speed
        gap = faults.token_s if faults.token_s is not None else 1 / (self.profile.tokens_per_s * speed)
        ticket = Ticket(self.stats, answer.id)
        if body.get("stream") is True:
            problem = self.wire.in_stream_error(body)
            plan = self._rejected_plan(problem) if problem else self._plan(answer, ttft, gap, faults)
            events = paced(plan, ticket, self.profile.keepalive_s)
            return SimStream(events, ticket, self.wire.stream_headers())
        return await self._complete(request, answer, ticket, ttft, gap, faults)

    def _answer(self, body: Json, headers: Headers, faults: Faults, *, text: bool) -> Answer:
        """Decide the whole answer: text, a tool call or JSON (see ``routeproxy.sim.content``), capped by
        max_tokens, with logprobs when asked for."""
        asked = body.get("prompt") if text else body.get("messages") or []
        natural = faults.tokens if faults.tokens is not None else self.profile.answer_tokens
        rng = seeded(asked)
        tokens = filler(rng, natural)
        calls: tuple[ToolCall, ...] = ()
        function = None if text else chosen_tool(body)
        if function is not None:
            calls = (tool_call(function, rng, self.wire.tool_call_id(0), prompt_values(body)),)
            tokens = split_tokens(calls[0].arguments)
        elif not text and (
            structured := json_text(
                body.get("response_format"), rng, prompt_values(body), asked if isinstance(asked, list) else ()
            )
        ):
            tokens = split_tokens(structured)
        if faults.answer is not None:
            calls, tokens = (), words_of(faults.answer)
        elif weak_prompt(asked, self.profile.weak_share):
            calls, tokens = (), words_of(WEAK_ANSWER)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        count = len(tokens) if limit is None else min(len(tokens), limit)
        answer_id = self.wire.answer_id(headers.get("x-request-id"))
        return Answer(
            id=answer_id.replace("chatcmpl-", "cmpl-", 1) if text else answer_id,
            model=self.wire.response_model(body),
            created=int(time.time()),
            tokens=tokens[:count],
            finish_reason="length" if count < len(tokens) else "tool_calls" if calls else "stop",
            prompt_tokens=_prompt_tokens(body),
            include_usage=self.wire.include_usage(body),
            tool_calls=calls,
            logprobs=self._logprobs(body, tokens[:count], rng, text=text, fixed=faults.logprob),
            text=text,
        )

    @staticmethod
    def _logprobs(
        body: Json, tokens: tuple[str, ...], rng: random.Random, *, text: bool, fixed: float | None
    ) -> tuple[Json, ...] | None:
        # Chat asks with `logprobs: true` (+ `top_logprobs: n`); legacy completions with `logprobs: n`.
        asked = body.get("logprobs")
        if text:
            top = asked if isinstance(asked, int) and not isinstance(asked, bool) else None
        else:
            top_logprobs = body.get("top_logprobs")
            top = (top_logprobs if isinstance(top_logprobs, int) else 0) if asked is True else None
        if top is None:
            return None
        return tuple(logprob_entries(tokens, top, rng, fixed=fixed))

    async def _complete(
        self, request: Request, answer: Answer, ticket: Ticket, ttft: float, gap: float, faults: Faults
    ) -> Response:
        delay = ttft + max(0, len(answer.tokens) - (answer.finish_reason == "length")) * gap
        if not await sleep_unless_disconnect(request.receive, delay):
            ticket.close(Outcome.DISCONNECTED)
            return Response(status_code=499)  # the client is gone; nobody reads this
        payload = orjson.dumps(self.wire.completion(answer))
        headers = {"content-type": "application/json", **self.wire.completion_headers(answer)}
        if faults.die_after is not None:
            headers["content-length"] = str(len(payload))
            return SimStream(truncated(payload[: len(payload) // 2], ticket), ticket, headers)
        ticket.close(Outcome.COMPLETED)
        return Response(payload, headers=headers)

    def _rejected_plan(self, problem: str) -> Plan:
        yield 0.0, self.wire.event(self.wire.stream_error(problem))
        yield 0.0, self.wire.done

    def _plan(self, answer: Answer, ttft: float, gap: float, faults: Faults) -> Plan:
        """The answer's events, each with its offset: a ``Plan``, cut short where a fault says."""
        wire, tokens = self.wire, answer.tokens
        count = len(tokens)
        error_at = None if faults.error_after is None else min(faults.error_after, count)
        die_at = None if faults.die_after is None else min(faults.die_after, count)
        for position in range(count + 1):
            at = ttft + position * gap
            if position == die_at:
                yield at, None
                return
            if position == error_at:
                message = f"Simulated engine error after {position} tokens (x-sim-error-after)"
                yield at, wire.event(wire.stream_error(message))
                yield at, wire.done
                return
            if position == 0:
                for chunk in wire.opening(answer):
                    yield at, wire.event(chunk)
            if position < count:
                last = position == count - 1 and answer.finish_reason == "length"
                yield at, wire.event(wire.token_chunk(answer, position, "length" if last else None))
                continue
            if answer.finish_reason != "length":
                yield at, wire.event(wire.stop_chunk(answer))
            if answer.include_usage:
                yield at, wire.event(wire.usage_chunk(answer))
            yield at, wire.done

    async def pooling(self, request: Request) -> Response:
        """The endpoints that generate nothing (``routeproxy.sim.pooling``), by path."""
        admitted = await self._admit_body(request)
        if isinstance(admitted, Response):
            return admitted
        _, body = admitted
        answer = _POOLING[request.url.path]
        try:
            return json_response(200, answer(body, self.profile.model))
        except ValueError as exc:
            return self.wire.error(400, str(exc))

    async def models(self, request: Request) -> Response:
        admitted = await self._admit(request, None)
        return admitted if isinstance(admitted, Response) else json_response(200, self.wire.models())

    async def health(self, request: Request) -> Response:
        admitted = await self._admit(request, None)
        return admitted if isinstance(admitted, Response) else self.wire.health(200)

    async def recorded(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.stats.log.clear()
            return Response(status_code=204)
        return json_response(200, list(self.stats.log))

    async def stats_view(self, request: Request) -> Response:
        return json_response(200, self.stats.as_json())


_POOLING = {
    "/v1/embeddings": pooling.embeddings,
    "/tokenize": pooling.tokenize,
    "/detokenize": pooling.detokenize,
    "/classify": pooling.classify,
    "/score": pooling.score,
    "/v1/score": pooling.score,
    "/pooling": pooling.pool,
}


def _responses_routes(api: ResponsesApi) -> list[Route]:
    return [
        Route("/v1/responses", api.create, methods=["POST"]),
        Route("/v1/responses/{response_id}", api.retrieve, methods=["GET"]),
        Route("/v1/responses/{response_id}", api.delete, methods=["DELETE"]),
        Route("/v1/responses/{response_id}/input_items", api.input_items, methods=["GET"]),
    ]


def create_simulator_app(profile: SimProfile) -> Starlette:
    """A Starlette app that plays one upstream; serve it with uvicorn or ``ThreadedServer``."""
    sim = _Simulator(profile)
    routes = [
        Route("/v1/chat/completions", sim.chat, methods=["POST"]),
        # vLLM and TGI serve legacy completions too; the HF router serves chat only (§3).
        *([] if profile.dialect is Dialect.HF else [Route("/v1/completions", sim.text_completion, methods=["POST"])]),
        # vLLM also embeds, tokenizes and scores (TGI leaves embeddings to TEI; the HF router serves chat only).
        *(Route(path, sim.pooling, methods=["POST"]) for path in _POOLING if profile.dialect is Dialect.VLLM),
        # vLLM and the HF router serve the Responses API too; TGI has none.
        *(_responses_routes(ResponsesApi(sim)) if profile.dialect in (Dialect.VLLM, Dialect.HF) else []),
        Route("/v1/models", sim.models, methods=["GET"]),
        Route("/health", sim.health, methods=["GET"]),
        Route("/_sim/requests", sim.recorded, methods=["GET", "DELETE"]),
        Route("/_sim/stats", sim.stats_view, methods=["GET"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(_Label, speed=profile.speed)])
