"""The answer check's reading of prose: length for what was asked, cue phrases, loops, vocabulary, written sums.

Each function returns activations (signal name -> the logit it adds per unit of weight; see
routeproxy.cascade.rules). A held prefix (``AnswerView.complete`` false) is judged only on what a prefix can show:
cues in its text, loops, the vocabulary of its first words, its written sums; length counts a prefix still going
as at least as long as a finished answer of the tokens it already has (``length.unfinished_words`` and
``length.unfinished_words_per_token``); the end checks wait for the end.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

from routeproxy.cascade.arithmetic import without_code_blocks, wrong_sums
from routeproxy.cascade.rules import CheckRules, Cue, level_activation
from routeproxy.cascade.view import AnswerView
from routeproxy.wire.parse import last_user_text

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
# A short question asking for a fact ("What is the capital of France?"), not for a text ("Why ...", "Explain ...")
_SHORT_QUESTION = re.compile(
    r"^\s*(?:what|who|whom|whose|when|where|which|how (?:many|much|old|long|far|tall|big)|is|are|was|were|does|do|"
    r"did|can|could|will|would|should|has|have)\b[^\n]*\?\s*$",
    re.IGNORECASE,
)
_TASK_WORDS = re.compile(
    r"\b(?:explain|describe|why|write|list|compare|summari[sz]e|steps?|essay|code|program|examples?|details?|"
    r"differences?|pros|cons|advantages|analy[sz]e|elaborate)\b",
    re.IGNORECASE,
)
_SHORT_QUESTION_WORDS = 15
_WORD = re.compile(r"\w+")
# every byte that is not an ASCII letter, digit or underscore -> space
_ASCII_WORD_BYTES = bytes(byte if (chr(byte).isalnum() and byte < 128) or byte == 95 else 32 for byte in range(256))


def prose_activations(request: Mapping[str, Any], answer: AnswerView, rules: CheckRules) -> dict[str, float]:
    text = answer.text
    lowered = text.lower()
    head = lowered[: rules.head_chars]
    tokens = _words(lowered)
    words = len(tokens)
    found: dict[str, float] = {}
    for cue in rules.cues:
        activation = _cue_activation(cue, head if cue.head_only else lowered)
        if activation:
            found[cue.name] = activation
    prose = _prose_words(lowered, tokens, rules)
    found["repetitive"] = _repetition(prose, rules)
    found["narrow_vocabulary"] = _narrow_vocabulary(prose, rules)
    if rules.weight("wrong_arithmetic") and wrong_sums(text, rules.arithmetic_tolerance):
        found["wrong_arithmetic"] = 1.0
    if answer.complete:
        prompt = bounded_prompt(last_user_text(request.get("messages")))
        reference = rules.reference_words
        if rules.short_question_words and short_question(prompt):
            reference = rules.short_question_words
        found["short"] = _shortfall(words, reference, rules)
        for name in _end_faults(prompt, answer, words, rules):
            found[name] = 1.0
    else:
        found["short"] = _shortfall(max(words, _unfinished_words(answer, rules)), rules.reference_words, rules)
    return found


def bounded_prompt(prompt: str, limit: int = 65_536) -> str:
    """The prompt as the check reads it: whole, or its start and its end (where instructions are written), so the
    check's time has a ceiling whatever a client sends."""
    if len(prompt) <= limit:
        return prompt
    half = limit // 2
    return prompt[:half] + "\n" + prompt[-half:]


def short_question(prompt: str) -> bool:
    """A short question asking for a fact ("What is the capital of France?"): its right answer can be a word."""
    return (
        len(prompt.split()) <= _SHORT_QUESTION_WORDS
        and bool(_SHORT_QUESTION.match(prompt))
        and not _TASK_WORDS.search(prompt)
    )


def _unfinished_words(answer: AnswerView, rules: CheckRules) -> int:
    """The length a held prefix that has not ended is taken to have at least: it is still going after
    ``answer.tokens`` tokens, so it is at least as long as a finished answer of that many tokens."""
    return max(rules.unfinished_words, round(rules.unfinished_words_per_token * answer.tokens))


def _cue_activation(cue: Cue, text: str) -> float:
    count = sum(
        _count_at_word_start(part, text) if word_start else sum(1 for _ in part.finditer(text))
        for part, word_start in cue.parts
    )
    weight = 0.0
    for reached, level_weight in cue.levels:
        if count >= reached:
            weight = level_weight
    return level_activation(cue.levels, weight)


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


def _shortfall(words: int, reference: int, rules: CheckRules) -> float:
    """E-folds shorter than ``reference`` (up to ``cap``); longer is negative, down to ``floor``."""
    return max(rules.length_floor, min(rules.length_cap, math.log(reference / max(1, words))))


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


def _narrow_vocabulary(tokens: list[str], rules: CheckRules) -> float:
    """Type-token ratio of the first ``window`` words: one unit per tenth it falls below ``below``. A weak answer
    circles round a few words; the window is fixed, because the ratio falls with length in any text, and a shorter
    answer is not judged (the length signal covers it)."""
    window = rules.vocabulary_window
    if not rules.weight("narrow_vocabulary") or len(tokens) < window:
        return 0.0
    ratio = len(set(tokens[:window])) / window
    return max(0.0, rules.vocabulary_below - ratio) * 10


def _repetition(tokens: list[str], rules: CheckRules) -> float:
    """Share of word trigrams that repeat an earlier one: loops and degeneration, not ordinary phrasing. Read
    from ``min_words`` on, in a held prefix as in a whole answer, so a loop is caught early in a stream."""
    if len(tokens) < rules.repetition_min_words:
        return 0.0
    trigrams = list(zip(tokens, tokens[1:], tokens[2:], strict=False))
    repeated = 1.0 - len(set(trigrams)) / len(trigrams)
    weight = 0.0
    for share, share_weight in rules.repetition_levels:
        if repeated >= share:
            weight = share_weight
    return level_activation(rules.repetition_levels, weight)


def _end_faults(prompt: str, answer: AnswerView, words: int, rules: CheckRules) -> Iterator[str]:
    if answer.finish_reason == "length":
        yield "truncated"
    elif answer.text.count("```") % 2:
        yield "unclosed_code"
    lowered = prompt.lower()
    # each pattern needs one of these words: a substring test skips the slower scan of a long prompt
    asked = [int(found) for found in _ASKED_WORDS.findall(prompt)] if "word" in lowered else []
    short_of_request = bool(asked) and words < rules.short_of_request_share * min(asked)
    listing = any(verb in lowered for verb in _ASKED_ITEM_VERBS)
    items = [_count_of(found) for found in _ASKED_ITEMS.findall(prompt)] if listing else []
    if items and len(_LIST_ITEM.findall(answer.text)) < min(items) and words < rules.reference_words:
        short_of_request = True
    if short_of_request:
        yield "short_of_request"


def _count_of(found: str) -> int:
    return int(found) if found.isdigit() else _NUMBER_WORDS[found.lower()]
