"""Pure: a chat request (+ the seed's optional hints) -> Classification(complexity, score, signals).

The score in [0, 1] says how much the request needs the large model; thresholds from the rule set turn it
into SIMPLE / MEDIUM / COMPLEX. Keyword lists, lexicons, weights and thresholds come from YAML rule sets
(config/domains/*.yaml), never from code.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from routeproxy.routing.rules import Levels, Rules
from routeproxy.routing.rules import load_rules as _load_rules

__all__ = ["Classification", "Classifier", "Complexity", "Rules", "Signal", "load_rules"]


class Complexity(enum.StrEnum):
    SIMPLE = "simple"
    MEDIUM = "medium"
    COMPLEX = "complex"


@dataclass(frozen=True, slots=True)
class Signal:
    """One named reason, e.g. Signal("comparison", "vs", 0.6): what fired, on what, and its weight."""

    name: str
    detail: str
    weight: float

    def __str__(self) -> str:
        return f"{self.name}:{self.detail}" if self.detail else self.name


@dataclass(frozen=True, slots=True)
class Classification:
    complexity: Complexity
    score: float
    signals: tuple[Signal, ...]
    query: str  # the text classified (the last user message), used for the A/B hash and log previews


_TOKEN = re.compile(r"[a-z0-9]+")
_SEVERAL_SPLIT = re.compile(r"\s*(?:[,;/&+]|\band\b|\bvs\b\.?|\bversus\b)\s*", re.IGNORECASE)
_MAX_LOGIT = 40.0  # keeps math.exp in range whatever the weights add up to

# What a word of the lexicon table points at: (keyword signal index or -1, entity kind index or -1, the term).
_Target = tuple[int, int, str]


@dataclass(frozen=True, slots=True)
class _Request:
    """The parts of a chat request the rules look at; odd shapes have already become empty values."""

    query: str
    messages: int
    system_chars: int
    non_text_parts: int
    tools: bool
    response_format: bool


class Classifier:
    """Scores a chat request with one rule set; all regexes and lexicon tables are built here, once.

    Only the first ``scan.head_chars`` and last ``scan.tail_chars`` characters of the user message are
    scanned for words and patterns, so a 1 MB message costs about as much as a 20 KB one; its full length
    still counts for the length signal.
    """

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self._words: dict[str, list[tuple[tuple[str, ...], _Target]]] = {}
        for index, keyword in enumerate(rules.keywords):
            for term in keyword.terms:
                self._add_term(term, (index, -1, term))
        for index, entity in enumerate(rules.entities):
            for term in entity.terms:
                self._add_term(term, (-1, index, term.lower()))
        # One compiled expression per pattern: measured, a few literal-led expressions scanned one after the
        # other beat one alternation of them all (which loses the engine's literal-prefix shortcuts).
        self._patterns = tuple((pattern, re.compile(pattern.regex, re.MULTILINE)) for pattern in rules.patterns)
        self._entity_patterns = tuple(
            (entity.name, re.compile(regex, re.MULTILINE)) for entity in rules.entities for regex in entity.patterns
        )
        self._query_types = {name.lower(): hint for name, hint in rules.query_types.items()}

    def _add_term(self, term: str, target: _Target) -> None:
        tokens = _TOKEN.findall(term.lower())
        if tokens:
            entries = self._words.setdefault(tokens[0], [])
            entries.append((tuple(tokens[1:]), target))
            entries.sort(key=lambda entry: -len(entry[0]))

    def classify(
        self,
        body: Mapping[str, Any],
        *,
        query_type: str | None = None,
        entities: Mapping[str, Any] | None = None,
    ) -> Classification:
        request = _read_request(body)
        rules = self.rules
        signals: list[Signal] = []
        found = self._scan(_scanned(request.query, rules.scan_head_chars, rules.scan_tail_chars), signals)

        shape = rules.structure
        chars = len(request.query)
        if weight := _level(chars, shape.prompt_chars):
            signals.append(Signal("long_prompt", f"{chars} chars", weight))
        if weight := _level(request.messages, shape.messages):
            signals.append(Signal("long_conversation", f"{request.messages} messages", weight))
        if weight := _level(request.system_chars, shape.system_chars):
            signals.append(Signal("system_prompt", f"{request.system_chars} chars", weight))
        if request.tools and shape.tools:
            signals.append(Signal("tools", "", shape.tools))
        if request.response_format and shape.response_format:
            signals.append(Signal("response_format", "", shape.response_format))
        if request.non_text_parts and shape.non_text_parts:
            signals.append(Signal("non_text_parts", str(request.non_text_parts), shape.non_text_parts))

        hinted = self._hints(query_type, entities, found, signals)
        if (
            rules.lookup_requires
            and rules.lookup_weight
            and not hinted
            and all(len(found.get(kind, ())) == 1 for kind in rules.lookup_requires)
        ):
            detail = ", ".join(next(iter(found[kind])) for kind in rules.lookup_requires)
            signals.append(Signal("lookup", detail, rules.lookup_weight))

        logit = rules.bias + sum(signal.weight for signal in signals)
        score = 1.0 / (1.0 + math.exp(-max(-_MAX_LOGIT, min(_MAX_LOGIT, logit))))
        if score >= rules.complex_threshold:
            complexity = Complexity.COMPLEX
        elif score >= rules.medium_threshold:
            complexity = Complexity.MEDIUM
        else:
            complexity = Complexity.SIMPLE
        return Classification(complexity, score, tuple(signals), request.query)

    def _scan(self, text: str, signals: list[Signal]) -> dict[str, set[str]]:
        """Keyword and pattern signals into ``signals``; returns the distinct entities found, by kind."""
        rules = self.rules
        keyword_hits = [0] * len(rules.keywords)
        keyword_first = [""] * len(rules.keywords)
        found: dict[str, set[str]] = {}
        words = self._words
        tokens = _TOKEN.findall(text)
        resume = 0  # a matched phrase consumes its words: "Ross 308" is one breed, not "Ross" and "Ross 308"
        for position, token in enumerate(tokens):
            if position < resume:
                continue
            entries = words.get(token)
            if entries is None:
                continue
            for rest, (keyword_index, entity_index, term) in entries:  # longest phrase first
                if rest and tuple(tokens[position + 1 : position + 1 + len(rest)]) != rest:
                    continue
                resume = position + 1 + len(rest)
                if keyword_index >= 0:
                    keyword_hits[keyword_index] += 1
                    keyword_first[keyword_index] = keyword_first[keyword_index] or term
                else:
                    found.setdefault(rules.entities[entity_index].name, set()).add(term)
                break
        for entity_name, regex in self._entity_patterns:
            for match in regex.findall(text):
                found.setdefault(entity_name, set()).add(" ".join(match.split()))
        for index, keyword in enumerate(rules.keywords):
            if keyword_hits[index] and (weight := _level(keyword_hits[index], keyword.levels)):
                signals.append(Signal(keyword.name, keyword_first[index], weight))
        for pattern, regex in self._patterns:
            count = len(regex.findall(text))
            if count and (weight := _level(count, pattern.levels)):
                signals.append(Signal(pattern.name, f"{count} matches", weight))
        for entity in rules.entities:
            values = found.get(entity.name, set())
            if len(values) >= 2 and entity.several_weight:
                detail = ", ".join(sorted(values)[:4])
                signals.append(Signal(f"several_{entity.name}", detail, entity.several_weight))
        return found

    def _hints(
        self,
        query_type: Any,
        entities: Any,
        found: Mapping[str, set[str]],
        signals: list[Signal],
    ) -> bool:
        """The seed's hints as signals; True when one fired (a hint outranks the lookup heuristic)."""
        rules = self.rules
        hinted = False
        present = set(found)
        if isinstance(entities, Mapping):
            for kind, keys in rules.entity_keys.items():
                values = [_hint_values(entities.get(key)) for key in keys if key in entities]
                count = max((len(value) for value in values), default=0)
                if count:
                    present.add(kind)
                if kind in rules.several_keys and count >= 2 and rules.several_hint_weight:
                    signals.append(Signal(f"hint_several_{kind}", str(count), rules.several_hint_weight))
                    hinted = True
        if isinstance(query_type, str):
            hint = self._query_types.get(query_type.strip().lower())
            if hint is not None and hint.weight and all(kind in present for kind in hint.requires):
                signals.append(Signal("hint_query_type", query_type.strip(), hint.weight))
                hinted = True
        return hinted


def load_rules(name_or_path: str) -> Rules:
    """A built-in rule set by name ("general", "poultry") or a rules YAML file by path."""
    return _load_rules(name_or_path)


def _hint_values(value: Any) -> list[str]:
    """The distinct values of one `entities` hint field: "Ross 308, Cobb 500" and lists both count as two."""
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, (list, tuple)):
        return [text for item in value for text in _hint_values(item)]
    if isinstance(value, (int, float)):
        return [str(value)]
    if isinstance(value, str):
        return [part for part in _SEVERAL_SPLIT.split(value) if part.strip()]
    return []


def _level(count: int, levels: Levels) -> float:
    """The weight of the highest level ``count`` reaches (0 below the first)."""
    weight = 0.0
    for reached, level_weight in levels:
        if count < reached:
            break
        weight = level_weight
    return weight


def _scanned(text: str, head: int, tail: int) -> str:
    if len(text) > head + tail:
        text = text[:head] + "\n" + (text[-tail:] if tail else "")
    return text.lower()


def _read_request(body: Any) -> _Request:
    messages = body.get("messages") if isinstance(body, Mapping) else None
    if not isinstance(messages, list):
        messages = []
    query = ""
    non_text = 0
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            query, non_text = _message_text(message.get("content"))
            break
    system_chars = 0
    counted = 0
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        if message.get("role") in ("system", "developer"):
            system_chars += len(_message_text(message.get("content"))[0])
        else:
            counted += 1
    tools = isinstance(body, Mapping) and bool(body.get("tools") or body.get("functions"))
    response_format = body.get("response_format") if isinstance(body, Mapping) else None
    structured = isinstance(response_format, Mapping) and response_format.get("type") in (
        "json_object",
        "json_schema",
    )
    return _Request(query, counted, system_chars, non_text, tools, structured)


def _message_text(content: Any) -> tuple[str, int]:
    """(text, number of non-text parts) of one message's content: a string or a list of parts."""
    if isinstance(content, str):
        return content, 0
    if not isinstance(content, list):
        return "", 0
    texts = []
    non_text = 0
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, Mapping) and part.get("type") in ("text", "input_text"):
            text = part.get("text")
            if isinstance(text, str):
                texts.append(text)
        else:
            non_text += 1
    return "\n".join(texts), non_text
