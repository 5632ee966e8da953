"""What the answer check sees of the small tier's answer: a whole body, or the part of a stream held so far.

``answer_from_body`` reads a non-streamed chat.completion; ``StreamAnswer`` builds the same view from the
``chat.completion.chunk`` events of a stream (OpenAI, vLLM, TGI shapes). When a whole answer arrives inside the
hold, both give the same view, so a streamed answer and the same answer not streamed get the same decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from routeproxy.cascade.logprobs import token_logprobs


@dataclass(frozen=True, slots=True)
class AnswerView:
    """What the check sees of the small tier's answer (choice 0): the whole of it, or a held prefix."""

    text: str
    complete: bool  # the answer ended (a finish_reason came, the stream ended, or the body is whole)
    finish_reason: str | None = None
    tool_calls: tuple[Mapping[str, Any], ...] = ()  # OpenAI tool_calls: {"id", "type", "function": {name, arguments}}
    logprobs: tuple[float, ...] = ()  # per token, from `logprobs.content[*].logprob` (routeproxy.cascade.logprobs)
    tokens: int = 0  # content tokens seen (logprob entries, else chunks with content, else usage)


def answer_from_body(body: Mapping[str, Any]) -> AnswerView:
    """A whole, non-streamed chat.completion body -> its view (choice 0)."""
    choices = body.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], Mapping) else {}
    message = choice.get("message")
    message = message if isinstance(message, Mapping) else {}
    content = message.get("content")
    calls = message.get("tool_calls")
    logprobs = token_logprobs(choice.get("logprobs"))
    usage = body.get("usage")
    used = usage.get("completion_tokens") if isinstance(usage, Mapping) else None
    return AnswerView(
        text=content if isinstance(content, str) else "",
        complete=True,
        finish_reason=_finish_reason(choice),
        tool_calls=tuple(call for call in calls if isinstance(call, Mapping)) if isinstance(calls, list) else (),
        logprobs=logprobs,
        tokens=len(logprobs) or (used if isinstance(used, int) and not isinstance(used, bool) else 0),
    )


class StreamAnswer:
    """Builds the view of a streamed answer from parsed ``chat.completion.chunk`` dicts (OpenAI, vLLM, TGI).

    No I/O: the relay parses each SSE event and calls ``add``; ``view()`` is the answer so far. A content token is
    a logprob entry when the chunk carries them, else one chunk with content (one token per chunk, as vLLM and TGI
    stream).
    """

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._logprobs: list[float] = []
        self._calls: dict[int, dict[str, Any]] = {}
        self.tokens = 0
        self.finish_reason: str | None = None

    @property
    def ended(self) -> bool:
        return self.finish_reason is not None

    def add(self, chunk: Mapping[str, Any]) -> None:
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return
        for choice in choices:
            if isinstance(choice, Mapping) and choice.get("index", 0) == 0:
                self._add_choice(choice)

    def _add_choice(self, choice: Mapping[str, Any]) -> None:
        delta = choice.get("delta")
        delta = delta if isinstance(delta, Mapping) else {}
        content = delta.get("content")
        logprobs = token_logprobs(choice.get("logprobs"))
        if isinstance(content, str) and content:
            self._parts.append(content)
            self.tokens += len(logprobs) or 1
        self._logprobs.extend(logprobs)
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, Mapping):
                self._add_tool_call(call)
        self.finish_reason = _finish_reason(choice) or self.finish_reason

    def _add_tool_call(self, delta: Mapping[str, Any]) -> None:
        index = delta.get("index", len(self._calls))
        call = self._calls.setdefault(index if isinstance(index, int) else len(self._calls), {"function": {}})
        for key in ("id", "type"):
            if isinstance(delta.get(key), str):
                call[key] = delta[key]
        function = delta.get("function")
        if isinstance(function, Mapping):
            for key in ("name", "arguments"):
                if isinstance(function.get(key), str):
                    call["function"][key] = call["function"].get(key, "") + function[key]

    def view(self, *, stream_ended: bool = False) -> AnswerView:
        """The answer so far; ``stream_ended``: the stream is over (``[DONE]`` or its end) though no event carried
        a finish_reason (some servers end so), so this is the whole answer, as its body would be."""
        return AnswerView(
            text="".join(self._parts),
            complete=self.ended or stream_ended,
            finish_reason=self.finish_reason,
            tool_calls=tuple(self._calls[index] for index in sorted(self._calls)),
            logprobs=tuple(self._logprobs),
            tokens=self.tokens,
        )


def _finish_reason(choice: Mapping[str, Any]) -> str | None:
    reason = choice.get("finish_reason")
    return reason if isinstance(reason, str) and reason else None
