"""Rule sets for the classifier: YAML -> frozen, validated ``Rules``.

A rule set is a YAML file (config/domains/*.yaml). ``extends: <name or path>`` starts from another rule set:
mappings are merged key by key, any other value (a number, a list of terms) replaces the parent's. Every key
is checked; a bad one raises ``ConfigError`` naming the key path and the value.

Weights are logits: the classifier adds the weights of the signals that fired to ``bias`` and squashes the
sum with the logistic function into a score in (0, 1). A count-based signal has ``levels`` (count reached ->
weight, the highest level reached applies) or ``weight`` as shorthand for ``levels: {1: weight}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routeproxy.errors import ConfigError
from routeproxy.settings.files import read_yaml_tree, shipped_or_path

Levels = tuple[tuple[int, float], ...]  # (count reached, weight), ascending by count


@dataclass(frozen=True, slots=True)
class KeywordSignal:
    """Whole-word terms or phrases (case-insensitive); fires on the number of occurrences."""

    name: str
    terms: tuple[str, ...]
    levels: Levels


@dataclass(frozen=True, slots=True)
class PatternSignal:
    """A regular expression over the lower-cased text (^ and $ match at line ends); counts matches."""

    name: str
    regex: str
    levels: Levels


@dataclass(frozen=True, slots=True)
class EntityKind:
    """A lexicon of one kind of entity (breeds, ages...); ``several_weight`` fires on two or more distinct."""

    name: str
    terms: tuple[str, ...]
    patterns: tuple[str, ...]
    several_weight: float


@dataclass(frozen=True, slots=True)
class QueryTypeHint:
    weight: float
    requires: tuple[str, ...]  # entity kinds that must be present (in the hint entities or in the text)


@dataclass(frozen=True, slots=True)
class Structure:
    prompt_chars: Levels
    messages: Levels
    system_chars: Levels
    tools: float
    response_format: float
    non_text_parts: float


@dataclass(frozen=True, slots=True)
class Rules:
    name: str
    source: str
    bias: float
    medium_threshold: float  # score >= this -> MEDIUM
    complex_threshold: float  # score >= this -> COMPLEX
    scan_head_chars: int
    scan_tail_chars: int
    keywords: tuple[KeywordSignal, ...]
    patterns: tuple[PatternSignal, ...]
    entities: tuple[EntityKind, ...]
    lookup_requires: tuple[str, ...]  # one of each of these entity kinds and no more: a single-fact lookup
    lookup_weight: float
    structure: Structure
    query_types: Mapping[str, QueryTypeHint]
    entity_keys: Mapping[str, tuple[str, ...]]  # entity kind -> keys of the `entities` hint that carry it
    several_keys: tuple[str, ...]  # entity kinds whose hint holding several values is a comparison
    several_hint_weight: float


def rules_path(name_or_path: str) -> Path:
    """A built-in name ("general", "poultry") -> its shipped file; anything else is a file path."""
    return shipped_or_path("domains", name_or_path, "rule set")


def load_rules(name_or_path: str) -> Rules:
    path = rules_path(name_or_path)
    tree = _read_tree(path, seen=())
    return _build(tree, name=path.stem, source=str(path))


def _read_tree(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if path.resolve() in seen:
        raise ConfigError(f"{path}: extends = {path.stem!r} makes a cycle")
    tree = read_yaml_tree(path, "rule set")
    if not isinstance(tree, dict):
        raise ConfigError(f"rule set {path} must hold a mapping at the top level")
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(f"{path}: extends = {parent!r}: expected a rule set name or path")
    parent_path = rules_path(parent.strip())
    if not parent_path.is_absolute() and not re.fullmatch(r"[A-Za-z0-9_-]+", parent.strip()):
        parent_path = path.parent / parent_path
    return _merge(_read_tree(parent_path, (*seen, path.resolve())), tree)


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class _Reader:
    """Typed access to one mapping of the tree; every error names the full key path and the value."""

    def __init__(self, tree: Any, path: str, source: str) -> None:
        self.path = path
        self.source = source
        if tree is None:
            tree = {}
        if not isinstance(tree, Mapping):
            self.fail(path, tree, "expected a mapping")
        self.tree: Mapping[str, Any] = tree
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, key: str, value: Any, why: str) -> None:
        raise ConfigError(f"{self.source}: {key} = {value!r}: {why}")

    def get(self, name: str, default: Any = None) -> Any:
        self.used.add(name)
        return self.tree.get(name, default)

    def child(self, name: str) -> _Reader:
        return _Reader(self.get(name), self.key(name), self.source)

    def number(self, name: str, default: float, low: float = -100.0, high: float = 100.0) -> float:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            self.fail(self.key(name), value, f"expected a number from {low} to {high}")
        return float(value)

    def whole(self, name: str, default: int, low: int, high: int) -> int:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(self.key(name), value, f"expected a whole number from {low} to {high}")
        return int(value)

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.get(name, [])
        if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
            self.fail(self.key(name), value, "expected a list of non-empty strings")
        return tuple(item.strip() for item in value)

    def regexes(self, name: str) -> tuple[str, ...]:
        found = self.strings(name)
        for index, regex in enumerate(found):
            _check_regex(self, f"{self.key(name)}[{index}]", regex)
        return found

    def levels(self) -> Levels:
        """`weight: w` or `levels: {count: weight, ...}`."""
        if "levels" in self.tree:
            raw = self.get("levels")
            if not isinstance(raw, Mapping) or not raw:
                self.fail(self.key("levels"), raw, "expected a mapping of count to weight")
            pairs = []
            for count, weight in raw.items():
                if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                    self.fail(self.key("levels"), count, "expected counts that are whole numbers of 1 or more")
                if isinstance(weight, bool) or not isinstance(weight, (int, float)) or abs(weight) > 100:
                    self.fail(f"{self.key('levels')}.{count}", weight, "expected a number from -100 to 100")
                pairs.append((count, float(weight)))
            return tuple(sorted(pairs))
        return ((1, self.number("weight", 0.0)),)

    def done(self) -> None:
        unknown = sorted(set(self.tree) - self.used)
        if unknown:
            self.fail(self.key(str(unknown[0])), self.tree[unknown[0]], "unknown key")


def _check_regex(reader: _Reader, key: str, regex: str) -> None:
    try:
        # Checked as it will be used: inside a group of the classifier's combined expression.
        compiled = re.compile(f"(?:{regex})", re.MULTILINE)
    except re.error as exc:
        reader.fail(key, regex, f"not a valid regular expression: {exc}")
        return
    if compiled.groups:
        reader.fail(key, regex, "use non-capturing groups (?:...) only")
    if compiled.match(""):
        reader.fail(key, regex, "must not match the empty string")


def _levels_of(reader: _Reader, name: str) -> Levels:
    section = reader.child(name)
    levels = section.levels()
    section.done()
    return levels


def _named(reader: _Reader, name: str) -> list[tuple[str, _Reader]]:
    section = reader.child(name)
    out = []
    for key in section.tree:
        if not isinstance(key, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", key):
            section.fail(section.key(str(key)), key, "expected a lower-case name such as multi_step")
        out.append((key, section.child(key)))
    section.done()
    return out


def _build(tree: Mapping[str, Any], *, name: str, source: str) -> Rules:
    top = _Reader(tree, "", source)
    thresholds = top.child("thresholds")
    medium = thresholds.number("medium", 0.4, 0.0, 1.0)
    complex_ = thresholds.number("complex", 0.6, 0.0, 1.0)
    if medium > complex_:
        thresholds.fail("thresholds.medium", medium, f"must not be above thresholds.complex ({complex_})")
    thresholds.done()
    scan = top.child("scan")
    head = scan.whole("head_chars", 16_384, 1, 10_000_000)
    tail = scan.whole("tail_chars", 4_096, 0, 10_000_000)
    scan.done()

    keywords = []
    for signal, reader in _named(top, "keywords"):
        terms = reader.strings("terms")
        if not terms:
            reader.fail(reader.key("terms"), terms, "expected at least one term")
        keywords.append(KeywordSignal(signal, terms, reader.levels()))
        reader.done()
    patterns = []
    for signal, reader in _named(top, "patterns"):
        regex = reader.get("regex")
        if not isinstance(regex, str) or not regex:
            reader.fail(reader.key("regex"), regex, "expected a regular expression")
        _check_regex(reader, reader.key("regex"), regex)
        patterns.append(PatternSignal(signal, regex, reader.levels()))
        reader.done()
    entities = []
    for kind, reader in _named(top, "entities"):
        entity = EntityKind(
            kind, reader.strings("terms"), reader.regexes("patterns"), reader.number("several_weight", 0.0)
        )
        if not entity.terms and not entity.patterns:
            reader.fail(reader.key("terms"), [], "an entity kind needs terms or patterns")
        entities.append(entity)
        reader.done()
    kinds = {entity.name for entity in entities}

    lookup = top.child("lookup")
    lookup_requires = lookup.strings("requires")
    for kind in lookup_requires:
        if kind not in kinds:
            lookup.fail(lookup.key("requires"), kind, f"not an entity kind of this rule set ({sorted(kinds)})")
    lookup_weight = lookup.number("weight", 0.0)
    lookup.done()

    shape = top.child("structure")
    structure = Structure(
        prompt_chars=_levels_of(shape, "prompt_chars"),
        messages=_levels_of(shape, "messages"),
        system_chars=_levels_of(shape, "system_chars"),
        tools=shape.number("tools", 0.0),
        response_format=shape.number("response_format", 0.0),
        non_text_parts=shape.number("non_text_parts", 0.0),
    )
    shape.done()

    hints = top.child("hints")
    entity_keys = {}
    for kind, reader in _named(hints, "entity_keys"):
        entity_keys[kind] = reader.strings("keys")
        reader.done()
    query_types = {}
    for query_type, reader in _named(hints, "query_types"):
        requires = reader.strings("requires")
        for kind in requires:
            if kind not in entity_keys and kind not in kinds:
                reader.fail(reader.key("requires"), kind, "not a kind named in hints.entity_keys or entities")
        query_types[query_type] = QueryTypeHint(reader.number("weight", 0.0), requires)
        reader.done()
    several = hints.child("several")
    several_keys = several.strings("kinds")
    for kind in several_keys:
        if kind not in entity_keys:
            several.fail(several.key("kinds"), kind, "not a kind named in hints.entity_keys")
    several_weight = several.number("weight", 0.0)
    several.done()
    hints.done()

    rules = Rules(
        name=str(top.get("name", name)),
        source=source,
        bias=top.number("bias", 0.0),
        medium_threshold=medium,
        complex_threshold=complex_,
        scan_head_chars=head,
        scan_tail_chars=tail,
        keywords=tuple(keywords),
        patterns=tuple(patterns),
        entities=tuple(entities),
        lookup_requires=lookup_requires,
        lookup_weight=lookup_weight,
        structure=structure,
        query_types=query_types,
        entity_keys=entity_keys,
        several_keys=several_keys,
        several_hint_weight=several_weight,
    )
    top.get("description")
    top.done()
    return rules
