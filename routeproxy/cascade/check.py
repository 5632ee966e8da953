"""The cascade's answer check: does the small tier's answer look weak enough to re-ask the large tier?

Pure and cheap (no model call, no I/O): the check reads only the request body and what the answer carries, so it
runs on every cascade request, on a whole answer or on the prefix of a stream the proxy holds. Each signal that
fires adds its weight (a logit) to ``bias``; the logistic function turns the sum into a score in (0, 1), higher =
more need for the large model, and ``score >= threshold`` escalates. Signals, cue lists, weights and the threshold
live in a check rule set (config/checks/*.yaml, see ``load_check_rules``).

A held prefix (``AnswerView.complete`` false) is judged only on what a prefix can show: cues in its text,
repetition, the vocabulary of its first words, its written sums, log-probabilities. Length, truncation, JSON and
tool-call checks wait for the end of the answer; an answer still going at the hold is scored as if it had
``length.unfinished_words`` words.

Bounded: the check reads the first ``MAX_CHECKED_CHARS`` of an answer (and as much of the prompt, its start and
its end), so its time has a ceiling whatever a client sends; every signal has its answer well within that
(length saturates at about 400 words, repetition reads 20,000 characters). A longer answer is judged on that
prefix, as a held one is, except that it has ended: what only the whole can show (valid JSON, a closed code
fence) is not judged.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from routeproxy.cascade.arithmetic import without_code_blocks, wrong_sums
from routeproxy.cascade.rules import CheckRules, Cue, load_check_rules
from routeproxy.wire.parse import last_user_text

__all__ = ["AnswerCheck", "AnswerView", "CheckRules", "StreamAnswer", "answer_from_body", "check_answer"]
__all__ += ["CHECK_INLINE_CHARS", "MAX_CHECKED_CHARS"]
__all__ += ["answer_signals", "load_check_rules"]

MAX_CHECKED_CHARS = 65_536
CHECK_INLINE_CHARS = 4096  # a longer answer is checked off the event loop (wire.offload): up to ~80 ms of work
_NUMBER_WORDS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
_NUMBER_WORDS |= {"eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20}
_COUNT = r"(\d{1,3}|" + "|".join(_NUMBER_WORDS) + r")"
# A length the prompt asks for ("in 300 words", "a 500-word essay", "at least 200 words"), not a limit ("in 1500
# words or less", "up to 300 words") nor a count inside a word problem ("200 words a page").
_ASKED_WORDS = re.compile(
    r"\b(?:at least|minimum of|an?|in|of|about|around|approximately)\s+(\d{2,4})[ -]words?\b"
    r"(?!\s*(?:or (?:less|fewer)|max|at most|per\b|a page|each))",
    re.IGNORECASE,
)
# "list 10 ...", "give me five examples", "name three ...", "10 tips", "top 5"
_ASKED_ITEM_VERBS = ("list", "give", "name", "provide", "suggest", "top")
_ASKED_ITEMS = re.compile(
    r"\b(?:list|give(?: me)?|name|provide|suggest|top)\s+(?:me\s+)?(?:the\s+)?"
    + _COUNT
    + r"\b(?!\s*(?:words?|characters?|sentences?|paragraphs?|lines?|minutes?|hours?|days?|years?|%|percent))",
    re.IGNORECASE,
)
_LIST_ITEM = re.compile(r"^\s*(?:[-*\u2022]|\d{1,3}[.)]|#{1,6} )\s*\S", re.MULTILINE)
_WORD = re.compile(r"\w+")
# every byte that is not an ASCII letter, digit or underscore -> space
_ASCII_WORD_BYTES = bytes(byte if (chr(byte).isalnum() and byte < 128) or byte == 95 else 32 for byte in range(256))


@dataclass(frozen=True, slots=True)
class AnswerView:
    """What the check sees of the small tier's answer (choice 0): the whole of it, or a held prefix."""

    text: str
    complete: bool  # the answer ended (a finish_reason came, or the body is whole); false for a held prefix
    finish_reason: str | None = None
    tool_calls: tuple[Mapping[str, Any], ...] = ()  # OpenAI tool_calls: {"id", "type", "function": {name, arguments}}
    logprobs: tuple[float, ...] = ()  # per content token, from `logprobs.content[*].logprob`
    tokens: int = 0  # content tokens seen (logprob entries, else chunks with content, else usage)


@dataclass(frozen=True, slots=True)
class AnswerCheck:
    score: float  # in (0, 1): higher = more need for the large model
    escalate: bool  # score >= the rule set's threshold
    reasons: tuple[str, ...]  # the signals that pushed the score up, strongest first


def answer_from_body(body: Mapping[str, Any]) -> AnswerView:
    """A whole, non-streamed chat.completion body -> its view (choice 0)."""
    choices = body.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], Mapping) else {}
    message = choice.get("message")
    message = message if isinstance(message, Mapping) else {}
    content = message.get("content")
    calls = message.get("tool_calls")
    logprobs = _token_logprobs(choice.get("logprobs"))
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
        logprobs = _token_logprobs(choice.get("logprobs"))
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

    def view(self) -> AnswerView:
        return AnswerView(
            text="".join(self._parts),
            complete=self.ended,
            finish_reason=self.finish_reason,
            tool_calls=tuple(self._calls[index] for index in sorted(self._calls)),
            logprobs=tuple(self._logprobs),
            tokens=self.tokens,
        )


def check_answer(request_body: Mapping[str, Any], answer: AnswerView, rules: CheckRules) -> AnswerCheck:
    """Score the small tier's answer to this request; ``escalate`` when the score reaches the threshold."""
    fired = answer_signals(request_body, answer, rules)
    logit = rules.bias + sum(weight for _, weight in fired)
    score = 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, logit))))
    reasons = tuple(name for name, weight in sorted(fired, key=lambda item: -item[1]) if weight > 0)
    return AnswerCheck(score=score, escalate=score >= rules.threshold, reasons=reasons)


def answer_signals(request_body: Mapping[str, Any], answer: AnswerView, rules: CheckRules) -> list[tuple[str, float]]:
    """Every signal the check reads, with the logit it adds (0 when it did not fire; negative for a long answer).
    ``check_answer`` sums them; the offline fit (routeproxy.evaluate.refit) rescales them by name."""
    text = answer.text[:MAX_CHECKED_CHARS]
    lowered = text.lower()
    head = lowered[: rules.head_chars]
    tokens = _words(lowered)
    words = len(tokens)
    fired: list[tuple[str, float]] = []
    for cue in rules.cues:
        weight = _cue_weight(cue, head if cue.head_only else lowered)
        if weight:
            fired.append((cue.name, weight))
    prose = _prose_words(lowered, tokens, rules)
    fired.append(("repetitive", _repetition_weight(prose, rules)))
    fired.append(("narrow_vocabulary", _vocabulary_weight(prose, rules)))
    fired.append(("low_logprobs", _logprob_weight(answer.logprobs, rules)))
    if rules.arithmetic_weight and wrong_sums(text, rules.arithmetic_tolerance):
        fired.append(("wrong_arithmetic", rules.arithmetic_weight))
    if answer.complete:
        fired.append(("short", _length_weight(words, rules)))
        fired.extend(_end_checks(request_body, answer, text, words, rules))
    else:
        fired.append(("short", _length_weight(max(words, rules.unfinished_words), rules)))
    return fired


def _cue_weight(cue: Cue, text: str) -> float:
    count = sum(
        _count_at_word_start(part, text) if word_start else sum(1 for _ in part.finditer(text))
        for part, word_start in cue.parts
    )
    weight = 0.0
    for reached, level_weight in cue.levels:
        if count >= reached:
            weight = level_weight
    return weight


def _count_at_word_start(regex: re.Pattern[str], text: str) -> int:
    """What ``finditer`` of ``\\b`` + regex counts: leftmost matches that start at a word boundary, not
    overlapping; a match that does not start at one is retried one character further on."""
    count = 0
    position = 0
    found = regex.search(text, position)
    while found:
        start, end = found.span()
        before = start > 0 and _is_word(text[start - 1])
        at = start < len(text) and _is_word(text[start])
        if before != at:
            count += 1
            position = end if end > start else start + 1
        else:
            position = start + 1
        found = regex.search(text, position) if position <= len(text) else None
    return count


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


def _length_weight(words: int, rules: CheckRules) -> float:
    """Shorter than ``reference_words`` adds up to ``weight`` per e-fold; longer takes off, down to ``floor``."""
    shortfall = math.log(rules.reference_words / max(1, words))
    return rules.length_weight * max(rules.length_floor, min(rules.length_cap, shortfall))


def _words(text: str) -> list[str]:
    """``\\w+`` runs: for ASCII text (most answers) by a byte translation and a split, which gives the same words
    four times faster than the regular expression."""
    if text.isascii():
        return text.encode().translate(_ASCII_WORD_BYTES).decode().split()
    return _WORD.findall(text)


def _prose_words(lowered: str, words: list[str], rules: CheckRules) -> list[str]:
    """The words of the answer's first ``repetition.scan_chars`` outside code blocks (code repeats itself
    legitimately); ``words``, those of the whole answer, are reused when there is nothing to leave out."""
    if len(lowered) <= rules.repetition_scan_chars and "```" not in lowered:
        return words
    return _words(without_code_blocks(lowered[: rules.repetition_scan_chars]))


def _vocabulary_weight(tokens: list[str], rules: CheckRules) -> float:
    """Type-token ratio of the first ``window`` words: ``weight`` per tenth it falls below ``below``. A weak answer
    circles round a few words; the window is fixed, because the ratio falls with length in any text, and a shorter
    answer is not judged (the length signal covers it)."""
    window = rules.vocabulary_window
    if not rules.vocabulary_weight or len(tokens) < window:
        return 0.0
    ratio = len(set(tokens[:window])) / window
    return rules.vocabulary_weight * max(0.0, rules.vocabulary_below - ratio) * 10


def _repetition_weight(tokens: list[str], rules: CheckRules) -> float:
    """Share of word trigrams that repeat an earlier one: loops and degeneration, not ordinary phrasing."""
    if len(tokens) < rules.repetition_min_words:
        return 0.0
    trigrams = list(zip(tokens, tokens[1:], tokens[2:], strict=False))
    repeated = 1.0 - len(set(trigrams)) / len(trigrams)
    weight = 0.0
    for share, share_weight in rules.repetition_levels:
        if repeated >= share:
            weight = share_weight
    return weight


def _logprob_weight(logprobs: tuple[float, ...], rules: CheckRules) -> float:
    """Gupta et al. (ICLR 2024): low quantiles of the per-token log-probabilities mark an uncertain answer."""
    if len(logprobs) < rules.logprob_min_tokens:
        return 0.0
    ordered = sorted(logprobs)
    total = 0.0
    for term in rules.logprob_terms:
        value = (
            sum(ordered) / len(ordered) if term.quantile is None else ordered[int(term.quantile * (len(ordered) - 1))]
        )
        total += term.weight * max(0.0, min(term.cap, term.center - value))
    return total


def _end_checks(
    request: Mapping[str, Any], answer: AnswerView, text: str, words: int, rules: CheckRules
) -> Iterable[tuple[str, float]]:
    """``text``: the part of the answer the check reads (all of it unless it is past ``MAX_CHECKED_CHARS``)."""
    whole = len(text) == len(answer.text)
    if answer.finish_reason == "length":
        yield "truncated", rules.truncated_weight
    elif whole and text.count("```") % 2:
        yield "unclosed_code", rules.unclosed_code_weight
    prompt = _bounded(last_user_text(request.get("messages")))
    lowered = prompt.lower()
    # each pattern needs one of these words: a substring test skips the slower scan of a long prompt
    asked = [int(found) for found in _ASKED_WORDS.findall(prompt)] if "word" in lowered else []
    if asked and words < rules.short_of_request_share * min(asked):
        yield "short_of_request", rules.short_of_request_weight
    listing = any(verb in lowered for verb in _ASKED_ITEM_VERBS)
    items = [_count_of(found) for found in _ASKED_ITEMS.findall(prompt)] if listing else []
    if items and len(_LIST_ITEM.findall(text)) < min(items) and words < rules.reference_words:
        yield "short_of_request", rules.short_of_request_weight
    if whole and _wants_json(request) and not answer.tool_calls and not _is_json_object(text):
        yield "invalid_json", rules.invalid_json_weight
    yield from _tool_call_checks(request, answer, rules)


def _tool_call_checks(request: Mapping[str, Any], answer: AnswerView, rules: CheckRules) -> Iterable[tuple[str, float]]:
    tools = request.get("tools")
    known = {
        tool["function"].get("name")
        for tool in (tools if isinstance(tools, list) else ())
        if isinstance(tool, Mapping) and isinstance(tool.get("function"), Mapping)
    }
    choice = request.get("tool_choice")
    if known and not answer.tool_calls and (choice == "required" or isinstance(choice, Mapping)):
        yield "missing_tool_call", rules.missing_tool_call_weight
    for call in answer.tool_calls:
        function = call.get("function")
        function = function if isinstance(function, Mapping) else {}
        if function.get("name") not in known:
            yield "unknown_tool", rules.unknown_tool_weight
        arguments = function.get("arguments")
        if isinstance(arguments, str) and len(arguments) > MAX_CHECKED_CHARS:
            continue  # not judged: past what the check reads
        if not (isinstance(arguments, str) and _is_json_object(arguments)):
            yield "bad_tool_arguments", rules.bad_tool_arguments_weight


def _bounded(prompt: str) -> str:
    """The prompt as the check reads it: whole, or its start and its end (where instructions are written)."""
    if len(prompt) <= MAX_CHECKED_CHARS:
        return prompt
    half = MAX_CHECKED_CHARS // 2
    return prompt[:half] + "\n" + prompt[-half:]


def _wants_json(request: Mapping[str, Any]) -> bool:
    response_format = request.get("response_format")
    return isinstance(response_format, Mapping) and response_format.get("type") in ("json_object", "json_schema")


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _count_of(found: str) -> int:
    return int(found) if found.isdigit() else _NUMBER_WORDS[found.lower()]


def _finish_reason(choice: Mapping[str, Any]) -> str | None:
    reason = choice.get("finish_reason")
    return reason if isinstance(reason, str) and reason else None


def _token_logprobs(logprobs: Any) -> tuple[float, ...]:
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    if not isinstance(content, list):
        return ()
    return tuple(
        float(entry["logprob"])
        for entry in content
        if isinstance(entry, Mapping)
        and isinstance(entry.get("logprob"), (int, float))
        and not isinstance(entry.get("logprob"), bool)
    )
