"""Check rule sets for the cascade's answer check: YAML -> frozen, validated ``CheckRules``.

A check rule set is a YAML file (config/checks/*.yaml; a name such as ``general`` means the shipped file, anything
else is a path). Every key is checked like the classifier's rule sets: a bad one raises ``ConfigError`` naming the
key path and the value.

Each signal the check reads has an *activation* (the logit it adds per unit of weight: 1 when a cue or a fault
fires, the e-folds an answer is short by, the nats a logprob statistic falls below its centre...) and a weight,
read from this file; ``weights`` maps every signal name to its weight, and the check adds ``weight * activation``
to ``bias`` (see routeproxy.cascade.check). A signal with levels (a counting cue, repetition) takes the weight of
its highest level; a lower level reached gives the activation ``level weight / that weight``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from routeproxy.errors import ConfigError
from routeproxy.routing.rules import Levels, _named, _Reader
from routeproxy.settings.files import read_yaml_tree, shipped_or_path

# Faults judged once the answer has ended (``answer_end``); the structural ones are read by routeproxy.cascade.structure
END_FAULTS = (
    "truncated",
    "unclosed_code",
    "invalid_json",
    "json_schema_mismatch",
    "unknown_tool",
    "bad_tool_arguments",
    "tool_arguments_schema",
    "tool_choice_ignored",
    "missing_tool_call",
)
# Signals the check computes itself (a cue may not take one of these names)
BUILT_IN = ("short", "short_of_request", "repetitive", "narrow_vocabulary", "wrong_arithmetic", "verifier", *END_FAULTS)
LOGPROB_PREFIX = "logprobs_"  # a logprobs term's signal is named logprobs_<term>


@dataclass(frozen=True, slots=True)
class Cue:
    """Phrases in the answer (regular expressions over the lower-cased text); fires on the number of matches."""

    name: str
    regex: re.Pattern[str]
    levels: Levels
    head_only: bool  # look only at the first ``scan.head_chars`` of the answer (where refusals are)
    # What is counted: each pattern on its own, as (compiled pattern, starts at a word boundary). A pattern that
    # begins with \b is compiled without it and its matches are counted only at a word boundary
    # (routeproxy.cascade.prose): a leading \b, or alternatives that start differently, stop Python's re from
    # skipping ahead to where a match can start, which makes the scan of a long answer 5-15 times slower.
    parts: tuple[tuple[re.Pattern[str], bool], ...] = ()


@dataclass(frozen=True, slots=True)
class LogprobTerm:
    name: str
    quantile: float | None  # None: the mean log-probability; 0: the lowest
    center: float  # adds weight per nat the statistic falls below this
    weight: float
    cap: float  # at most this many nats count


@dataclass(frozen=True, slots=True)
class CheckRules:
    name: str
    source: str
    bias: float
    threshold: float  # score >= this -> escalate
    head_chars: int
    cues: tuple[Cue, ...]
    reference_words: int
    length_cap: float
    length_floor: float
    unfinished_words: int  # a held prefix still going counts at least this many words...
    unfinished_words_per_token: float  # ...and at least this many per token seen
    short_question_words: int  # reference_words for a short factual question (0: not used)
    short_of_request_share: float
    repetition_min_words: int
    repetition_scan_chars: int
    repetition_levels: tuple[tuple[float, float], ...]  # (share of repeated trigrams reached, weight), ascending
    vocabulary_window: int  # type-token ratio of this many first words (outside code)
    vocabulary_below: float
    logprob_min_tokens: int
    logprob_terms: tuple[LogprobTerm, ...]
    arithmetic_tolerance: float
    weights: Mapping[str, float] = field(default_factory=dict)  # signal name -> weight (see the module docstring)

    def weight(self, name: str) -> float:
        return self.weights.get(name, 0.0)


def top_weight(levels: tuple[tuple[Any, float], ...]) -> float:
    """The weight of a signal with levels: its highest level's."""
    return levels[-1][1] if levels else 0.0


def level_activation(levels: tuple[tuple[Any, float], ...], reached_weight: float) -> float:
    top = top_weight(levels)
    return reached_weight / top if top else 0.0


def check_rules_path(name_or_path: str) -> Path:
    """A built-in name ("general") -> its shipped file; anything else is a file path."""
    return shipped_or_path("checks", name_or_path, "check rule set")


def load_check_rules(name_or_path: str) -> CheckRules:
    path = check_rules_path(name_or_path)
    tree = read_yaml_tree(path, "check rule set")
    if not isinstance(tree, dict):
        raise ConfigError(f"check rule set {path} must hold a mapping at the top level")
    return _build(tree, name=path.stem, source=str(path))


def _cues(top: _Reader) -> list[Cue]:
    cues = []
    for cue_name, reader in _named(top, "cues"):
        if cue_name in BUILT_IN or cue_name.startswith(LOGPROB_PREFIX):
            reader.fail(reader.path, cue_name, "a built-in signal has this name: choose another")
        patterns = reader.regexes("patterns")
        if not patterns:
            reader.fail(reader.key("patterns"), patterns, "expected at least one pattern")
        where = reader.get("where", "anywhere")
        if where not in ("head", "anywhere"):
            reader.fail(reader.key("where"), where, "expected head or anywhere")
        joined = re.compile("|".join(f"(?:{regex})" for regex in patterns), re.MULTILINE)
        parts = tuple(
            (re.compile(regex[2:], re.MULTILINE), True)
            if regex.startswith("\\b")
            else (re.compile(regex, re.MULTILINE), False)
            for regex in patterns
        )
        cues.append(Cue(cue_name, joined, reader.levels(), where == "head", parts))
        reader.done()
    return cues


def _repetition_levels(repetition: _Reader) -> list[tuple[float, float]]:
    raw_levels = repetition.get("levels", {})
    if not isinstance(raw_levels, dict):
        repetition.fail(repetition.key("levels"), raw_levels, "expected a mapping of share to weight")
    levels = []
    for share, weight in raw_levels.items():
        for value, low, high in ((share, 0.0, 1.0), (weight, -100.0, 100.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                repetition.fail(f"{repetition.key('levels')}.{share}", value, f"expected a number from {low} to {high}")
        levels.append((float(share), float(weight)))
    return sorted(levels)


def _logprob_terms(logprobs: _Reader) -> list[LogprobTerm]:
    terms = []
    for term_name, reader in _named(logprobs, "terms"):
        quantile = reader.get("quantile", "mean")
        if quantile == "min":
            quantile = 0
        if quantile != "mean" and (
            isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0 <= quantile <= 1
        ):
            reader.fail(reader.key("quantile"), quantile, f"{term_name}: expected mean, min or a number from 0 to 1")
        terms.append(
            LogprobTerm(
                name=term_name,
                quantile=None if quantile == "mean" else float(quantile),
                center=reader.number("center", -1.0, -100.0, 0.0),
                weight=reader.number("weight", 0.0),
                cap=reader.number("cap", 5.0, 0.0, 100.0),
            )
        )
        reader.done()
    return terms


def _build(tree: dict[str, Any], *, name: str, source: str) -> CheckRules:
    top = _Reader(tree, "", source)
    scan = top.child("scan")
    head_chars = scan.whole("head_chars", 600, 1, 1_000_000)
    scan.done()
    cues = _cues(top)
    weights: dict[str, float] = {cue.name: top_weight(cue.levels) for cue in cues}

    length = top.child("length")
    reference = length.whole("reference_words", 150, 1, 100_000)
    weights["short"] = length.number("weight", 0.5, 0.0, 10.0)
    length_cap, length_floor = length.number("cap", 3.0, 0.0, 20.0), length.number("floor", -1.0, -20.0, 0.0)
    unfinished = length.whole("unfinished_words", reference, 1, 100_000)
    per_token = length.number("unfinished_words_per_token", 0.0, 0.0, 100.0)
    short_question = length.whole("short_question_words", 0, 0, 100_000)
    asked = length.child("short_of_request")
    asked_share = asked.number("share", 0.5, 0.0, 1.0)
    weights["short_of_request"] = asked.number("weight", 0.0)
    asked.done()
    length.done()

    repetition = top.child("repetition")
    rep_min_words = repetition.whole("min_words", 12, 3, 1_000_000)
    rep_scan = repetition.whole("scan_chars", 20_000, 100, 10_000_000)
    rep_levels = _repetition_levels(repetition)
    weights["repetitive"] = top_weight(tuple(rep_levels))
    repetition.done()

    vocabulary = top.child("vocabulary")
    window = vocabulary.whole("window", 80, 10, 100_000)
    below = vocabulary.number("below", 0.6, 0.0, 1.0)
    weights["narrow_vocabulary"] = vocabulary.number("weight", 0.0)
    vocabulary.done()

    logprobs = top.child("logprobs")
    min_tokens = logprobs.whole("min_tokens", 8, 1, 1_000_000)
    terms = _logprob_terms(logprobs)
    weights |= {LOGPROB_PREFIX + term.name: term.weight for term in terms}
    logprobs.done()

    arithmetic = top.child("arithmetic")
    weights["wrong_arithmetic"] = arithmetic.number("weight", 0.0)
    tolerance = arithmetic.number("tolerance", 0.001, 0.0, 1.0)
    arithmetic.done()

    verifier = top.child("verifier")
    weights["verifier"] = verifier.number("weight", 0.0)
    verifier.done()

    ends = top.child("answer_end")
    weights |= {key: ends.number(key, 0.0) for key in END_FAULTS}
    ends.done()

    rules = CheckRules(
        name=str(top.get("name", name)),
        source=source,
        bias=top.number("bias", 0.0),
        threshold=top.number("threshold", 0.5, 0.0, 1.0),
        head_chars=head_chars,
        cues=tuple(cues),
        reference_words=reference,
        length_cap=length_cap,
        length_floor=length_floor,
        unfinished_words=unfinished,
        unfinished_words_per_token=per_token,
        short_question_words=short_question,
        short_of_request_share=asked_share,
        repetition_min_words=rep_min_words,
        repetition_scan_chars=rep_scan,
        repetition_levels=tuple(rep_levels),
        vocabulary_window=window,
        vocabulary_below=below,
        logprob_min_tokens=min_tokens,
        logprob_terms=tuple(terms),
        arithmetic_tolerance=tolerance,
        weights=weights,
    )
    top.get("description")
    top.done()
    return rules
