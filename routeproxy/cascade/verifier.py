"""The verifier signal: an optional call to a scoring model the operator runs, for the small tier -> large tier pair.

Four kinds (``cascade.verifier.kind``), each one POST to ``cascade.verifier.url`` (the endpoint's full URL):
- ``classify``: vLLM's ``/classify`` with a reward or quality classifier, chat form
  ``{"model", "messages": [user, assistant answer]}`` -> ``data[0].probs``; P(good) is the probability of class
  ``cascade.verifier.good_label`` (-1: the last; a one-label model's single probability).
- ``score``: vLLM's ``/score`` with a cross-encoder, ``{"model", "text_1": question, "text_2": answer}`` ->
  ``data[0].score``, taken as P(good).
- ``pooling``: vLLM's ``/pooling`` with a reward model, chat form -> ``data[0].data`` (a number or a list of them:
  its last); the reward ``r`` gives the activation ``-r`` (a higher reward, less need to escalate).
- ``judge``: a yes/no question to any OpenAI-compatible chat model (the small tier itself: AutoMix-style
  self-verification, Aggarwal et al., NeurIPS 2024), ``max_tokens: 1`` with ``logprobs`` and ``top_logprobs: 5``;
  P(good) = P("yes") / (P("yes") + P("no")) over the top tokens (the one-pass "P(True)" reading of Kadavath et al.,
  2022, instead of AutoMix's sampled verdicts).
The activation is logit(1 - P(good)), clamped to [-8, 8]: positive when the verifier doubts the answer. It runs under
``cascade.verifier.deadline_ms``; past it the rules decide alone (routeproxy.cascade.signals). A structured answer
(tool calls, JSON asked for) is judged by its structure and not sent. The answer sent is cut to ``MAX_CHARS``.

The client: its own aiohttp session (the upstream pool's header policy and fallback do not apply to this call).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from routeproxy.cascade.signals import Signal
from routeproxy.cascade.structure import requested_structure
from routeproxy.cascade.view import AnswerView
from routeproxy.errors import ConfigError
from routeproxy.settings import VerifierConfig
from routeproxy.wire.parse import last_user_text

KINDS = ("classify", "score", "pooling", "judge")
MAX_CHARS = 8000  # of the question and of the answer sent to the verifier
LIMIT = 8.0  # activations are clamped to [-LIMIT, LIMIT]
JUDGE_SYSTEM = (
    "You check answers. Read the user's question and the assistant's answer, and reply with one word: Yes if the "
    "answer is correct, complete and helpful, No if it is wrong, incomplete, evasive or a refusal."
)
JUDGE_USER = "Question:\n{question}\n\nAnswer:\n{answer}\n\nIs this answer correct, complete and helpful? Yes or No."


class VerifierError(ValueError):
    """The verifier answered something that is not its kind's response."""


class Verifier(Signal):
    name = "verifier"

    def __init__(self, config: VerifierConfig) -> None:
        if config.kind not in KINDS:
            raise ConfigError(f"cascade.verifier.kind = {config.kind!r}: expected one of {', '.join(KINDS)}")
        if config.url is None:
            raise ConfigError(f"cascade.verifier.kind = {config.kind!r} needs cascade.verifier.url")
        self.config = config
        self.url = config.url
        self.deadline_s = config.deadline_ms / 1000
        self._session: aiohttp.ClientSession | None = None

    def applies(self, request: Mapping[str, Any], answer: AnswerView) -> bool:
        return not requested_structure(request).structured(answer)

    async def measure(self, request: Mapping[str, Any], answer: AnswerView) -> dict[str, float]:
        question = last_user_text(request.get("messages"))[:MAX_CHARS]
        text = answer.text[:MAX_CHARS]
        reply = await self._post(self._body(question, text))
        kind = self.config.kind
        if kind == "pooling":
            return {self.name: _clamp(-pooled_reward(reply))}
        good = classify_probability(reply, self.config.good_label) if kind == "classify" else 0.0
        if kind == "score":
            good = score_probability(reply)
        elif kind == "judge":
            good = yes_probability(reply)
        return {self.name: doubt(good)}

    def _body(self, question: str, answer: str) -> dict[str, Any]:
        model = {"model": self.config.model} if self.config.model else {}
        chat = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        if self.config.kind == "score":
            return {**model, "text_1": question, "text_2": answer}
        if self.config.kind == "judge":
            prompt = JUDGE_USER.format(question=question, answer=answer)
            messages = [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}]
            return {**model, "messages": messages, "max_tokens": 1, "temperature": 0, "logprobs": True,
                    "top_logprobs": 5}  # fmt: skip
        return {**model, "messages": chat}

    async def _post(self, body: dict[str, Any]) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100),
                timeout=aiohttp.ClientTimeout(total=None),  # the deadline bounds the call (routeproxy.cascade.signals)
                raise_for_status=False,
            )
        headers = {"content-type": "application/json"}
        if self.config.api_key:
            headers["authorization"] = f"Bearer {self.config.api_key}"
        async with self._session.post(self.url, data=orjson.dumps(body), headers=headers) as response:
            raw = await response.read()
            if response.status != 200:
                raise VerifierError(f"status {response.status}: {raw[:200]!r}")
        return orjson.loads(raw)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def open_signals(config: VerifierConfig) -> tuple[Signal, ...]:
    """The plug-in signals the settings configure (none unless ``cascade.verifier.kind`` is set)."""
    return () if config.kind == "none" else (Verifier(config),)


def doubt(good: float) -> float:
    """logit(1 - P(good)), clamped: 0 at even odds, +LIMIT for a sure no."""
    bad = min(1.0, max(0.0, 1.0 - good))
    if bad in (0.0, 1.0):
        return LIMIT if bad else -LIMIT
    return _clamp(math.log(bad / (1.0 - bad)))


def _clamp(value: float) -> float:
    return max(-LIMIT, min(LIMIT, value))


def _first(reply: Any) -> Mapping[str, Any]:
    data = reply.get("data") if isinstance(reply, Mapping) else None
    if not isinstance(data, list) or not data or not isinstance(data[0], Mapping):
        raise VerifierError("expected data[0] in the response")
    return data[0]


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise VerifierError(f"{what}: expected a number, not {value!r}")
    return float(value)


def classify_probability(reply: Any, label: int) -> float:
    """vLLM's /classify: ``data[0].probs[label]``."""
    probs = _first(reply).get("probs")
    if not isinstance(probs, list) or not probs or not -len(probs) <= label < len(probs):
        raise VerifierError(f"expected probs with a class {label}")
    return _number(probs[label], "probs")


def score_probability(reply: Any) -> float:
    """vLLM's /score: ``data[0].score`` (a cross-encoder's, in 0..1)."""
    return _number(_first(reply).get("score"), "score")


def pooled_reward(reply: Any) -> float:
    """vLLM's /pooling: ``data[0].data``, a number or (nested) lists of them; the last is the sequence's reward."""
    value = _first(reply).get("data")
    while isinstance(value, list) and value:
        value = value[-1]
    return _number(value, "data")


def yes_probability(reply: Any) -> float:
    """A judge's one-token answer: P(yes) / (P(yes) + P(no)) over its top logprobs (case and spaces aside); the
    answer's own text when no logprobs came."""
    choices = reply.get("choices") if isinstance(reply, Mapping) else None
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], Mapping) else {}
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    yes = no = 0.0
    if isinstance(content, list) and content and isinstance(content[0], Mapping):
        first = content[0]
        tops = first.get("top_logprobs") or [first]
        for top in tops if isinstance(tops, list) else ():
            token = str(top.get("token", "")).strip().lower() if isinstance(top, Mapping) else ""
            logprob = top.get("logprob") if isinstance(top, Mapping) else None
            if token in ("yes", "no") and isinstance(logprob, (int, float)) and not isinstance(logprob, bool):
                share = math.exp(max(-100.0, min(0.0, float(logprob))))
                yes, no = (yes + share, no) if token == "yes" else (yes, no + share)
    if yes + no > 0:
        return yes / (yes + no)
    message = choice.get("message")
    text = str(message.get("content") or "").strip().lower() if isinstance(message, Mapping) else ""
    if text.startswith("yes"):
        return 1.0
    if text.startswith("no"):
        return 0.0
    raise VerifierError("the judge answered neither yes nor no")
