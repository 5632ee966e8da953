"""Check rule sets for the cascade's answer check: YAML -> frozen, validated ``CheckRules``.

A check rule set is a YAML file (config/checks/*.yaml; a name such as ``general`` means the shipped file, anything
else is a path). Every key is checked like the classifier's rule sets: a bad one raises ``ConfigError`` naming the
key path and the value. Weights are logits added to ``bias`` (see routeproxy.cascade.check).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routeproxy.errors import ConfigError
from routeproxy.routing.rules import Levels, _named, _Reader
from routeproxy.settings.files import read_yaml_tree, shipped_or_path


@dataclass(frozen=True, slots=True)
class Cue:
    """Phrases in the answer (regular expressions over the lower-cased text); fires on the number of matches."""

    name: str
    regex: re.Pattern[str]
    levels: Levels
    head_only: bool  # look only at the first ``scan.head_chars`` of the answer (where refusals are)
    # What is counted: each pattern on its own, as (compiled pattern, starts at a word boundary). A pattern that
    # begins with \b is compiled without it and its matches are counted only at a word boundary
    # (routeproxy.cascade.check): a leading \b, or alternatives that start differently, stop Python's re from
    # skipping ahead to where a match can start, which makes the scan of a long answer 5-15 times slower.
    parts: tuple[tuple[re.Pattern[str], bool], ...] = ()


@dataclass(frozen=True, slots=True)
class LogprobTerm:
    quantile: float | None  # None: the mean log-probability
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
    length_weight: float
    reference_words: int
    length_cap: float
    length_floor: float
    unfinished_words: int
    short_of_request_share: float
    short_of_request_weight: float
    repetition_min_words: int
    repetition_scan_chars: int
    repetition_levels: tuple[tuple[float, float], ...]  # (share of repeated trigrams reached, weight), ascending
    vocabulary_window: int  # type-token ratio of this many first words (outside code)
    vocabulary_below: float
    vocabulary_weight: float  # per tenth the ratio falls below ``vocabulary_below``
    logprob_min_tokens: int
    logprob_terms: tuple[LogprobTerm, ...]
    arithmetic_weight: float  # the answer states a sum whose result is wrong (routeproxy.cascade.arithmetic)
    arithmetic_tolerance: float
    truncated_weight: float
    unclosed_code_weight: float
    invalid_json_weight: float
    unknown_tool_weight: float
    bad_tool_arguments_weight: float
    missing_tool_call_weight: float


def check_rules_path(name_or_path: str) -> Path:
    """A built-in name ("general") -> its shipped file; anything else is a file path."""
    return shipped_or_path("checks", name_or_path, "check rule set")


def load_check_rules(name_or_path: str) -> CheckRules:
    path = check_rules_path(name_or_path)
    tree = read_yaml_tree(path, "check rule set")
    if not isinstance(tree, dict):
        raise ConfigError(f"check rule set {path} must hold a mapping at the top level")
    return _build(tree, name=path.stem, source=str(path))


def _build(tree: dict[str, Any], *, name: str, source: str) -> CheckRules:
    top = _Reader(tree, "", source)
    scan = top.child("scan")
    head_chars = scan.whole("head_chars", 600, 1, 1_000_000)
    scan.done()

    cues = []
    for cue_name, reader in _named(top, "cues"):
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

    length = top.child("length")
    reference = length.whole("reference_words", 150, 1, 100_000)
    length_values = (
        length.number("weight", 0.5, 0.0, 10.0),
        length.number("cap", 3.0, 0.0, 20.0),
        length.number("floor", -1.0, -20.0, 0.0),
        length.whole("unfinished_words", reference, 1, 100_000),
    )
    asked = length.child("short_of_request")
    asked_share = asked.number("share", 0.5, 0.0, 1.0)
    asked_weight = asked.number("weight", 0.0)
    asked.done()
    length.done()

    repetition = top.child("repetition")
    rep_min_words = repetition.whole("min_words", 40, 3, 1_000_000)
    rep_scan = repetition.whole("scan_chars", 20_000, 100, 10_000_000)
    raw_levels = repetition.get("levels", {})
    if not isinstance(raw_levels, dict):
        repetition.fail(repetition.key("levels"), raw_levels, "expected a mapping of share to weight")
    rep_levels = []
    for share, weight in raw_levels.items():
        for value, low, high in ((share, 0.0, 1.0), (weight, -100.0, 100.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                repetition.fail(f"{repetition.key('levels')}.{share}", value, f"expected a number from {low} to {high}")
        rep_levels.append((float(share), float(weight)))
    repetition.done()

    vocabulary = top.child("vocabulary")
    vocabulary_values = (
        vocabulary.whole("window", 80, 10, 100_000),
        vocabulary.number("below", 0.6, 0.0, 1.0),
        vocabulary.number("weight", 0.0),
    )
    vocabulary.done()

    logprobs = top.child("logprobs")
    min_tokens = logprobs.whole("min_tokens", 8, 1, 1_000_000)
    terms = []
    for term_name, reader in _named(logprobs, "terms"):
        quantile = reader.get("quantile", "mean")
        if quantile != "mean" and (
            isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0 <= quantile <= 1
        ):
            reader.fail(reader.key("quantile"), quantile, f"{term_name}: expected mean or a number from 0 to 1")
        terms.append(
            LogprobTerm(
                quantile=None if quantile == "mean" else float(quantile),
                center=reader.number("center", -1.0, -100.0, 0.0),
                weight=reader.number("weight", 0.0),
                cap=reader.number("cap", 5.0, 0.0, 100.0),
            )
        )
        reader.done()
    logprobs.done()

    arithmetic = top.child("arithmetic")
    arithmetic_values = (arithmetic.number("weight", 0.0), arithmetic.number("tolerance", 0.001, 0.0, 1.0))
    arithmetic.done()

    ends = top.child("answer_end")
    end_weights = {
        key: ends.number(key, 0.0)
        for key in (
            "truncated",
            "unclosed_code",
            "invalid_json",
            "unknown_tool",
            "bad_tool_arguments",
            "missing_tool_call",
        )
    }
    ends.done()

    rules = CheckRules(
        name=str(top.get("name", name)),
        source=source,
        bias=top.number("bias", 0.0),
        threshold=top.number("threshold", 0.5, 0.0, 1.0),
        head_chars=head_chars,
        cues=tuple(cues),
        length_weight=length_values[0],
        reference_words=reference,
        length_cap=length_values[1],
        length_floor=length_values[2],
        unfinished_words=length_values[3],
        short_of_request_share=asked_share,
        short_of_request_weight=asked_weight,
        repetition_min_words=rep_min_words,
        repetition_scan_chars=rep_scan,
        repetition_levels=tuple(sorted(rep_levels)),
        vocabulary_window=vocabulary_values[0],
        vocabulary_below=vocabulary_values[1],
        vocabulary_weight=vocabulary_values[2],
        logprob_min_tokens=min_tokens,
        logprob_terms=tuple(terms),
        arithmetic_weight=arithmetic_values[0],
        arithmetic_tolerance=arithmetic_values[1],
        truncated_weight=end_weights["truncated"],
        unclosed_code_weight=end_weights["unclosed_code"],
        invalid_json_weight=end_weights["invalid_json"],
        unknown_tool_weight=end_weights["unknown_tool"],
        bad_tool_arguments_weight=end_weights["bad_tool_arguments"],
        missing_tool_call_weight=end_weights["missing_tool_call"],
    )
    top.get("description")
    top.done()
    return rules
