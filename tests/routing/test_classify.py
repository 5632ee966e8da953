from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from routeproxy.errors import ConfigError
from routeproxy.routing.classify import Classifier, Complexity, load_rules

GENERAL = Classifier(load_rules("general"))
POULTRY = Classifier(load_rules("poultry"))


def ask(text: str, **body: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **body}


def signal_names(classifier: Classifier, body: dict[str, Any]) -> set[str]:
    return {signal.name for signal in classifier.classify(body).signals}


@pytest.mark.parametrize(
    ("classifier", "text", "query_type", "entities", "expected"),
    [
        (
            POULTRY,
            "What is the weight of Ross 308 at 21 days?",
            "genetics_performance",
            {"breed": "Ross 308", "age_days": 21},
            Complexity.SIMPLE,
        ),
        (
            GENERAL,
            "What is the weight of Ross 308 at 21 days?",
            "genetics_performance",
            {"breed": "Ross 308", "age_days": 21},
            Complexity.SIMPLE,
        ),
        (POULTRY, "What is the weight of Ross 308 at 21 days?", None, None, Complexity.SIMPLE),
        (
            POULTRY,
            "Compare Ross 308 vs Cobb 500 at 21 and 28 days",
            "comparative",
            {"breed": "Ross 308, Cobb 500", "age_days": "21, 28"},
            Complexity.COMPLEX,
        ),
        (
            GENERAL,
            "Compare Ross 308 vs Cobb 500 at 21 and 28 days",
            "comparative",
            {"breed": "Ross 308, Cobb 500", "age_days": "21, 28"},
            Complexity.COMPLEX,
        ),
        (POULTRY, "Compare Ross 308 vs Cobb 500 at 21 and 28 days", None, None, Complexity.COMPLEX),
        (GENERAL, "Compare Ross 308 vs Cobb 500 at 21 and 28 days", None, None, Complexity.COMPLEX),
        (
            GENERAL,
            "Weight at day 21?",
            "metric_query",
            {"breed": ["Ross 308", "Cobb 500"], "age_days": 21},
            Complexity.COMPLEX,
        ),
        (GENERAL, "Weight at day 21?", "diagnostic_synthesis", None, Complexity.COMPLEX),
    ],
)
def test_seed_examples_classify_as_the_seed_says(
    classifier: Classifier,
    text: str,
    query_type: str | None,
    entities: dict[str, Any] | None,
    expected: Complexity,
) -> None:
    result = classifier.classify(ask(text), query_type=query_type, entities=entities)
    assert result.complexity is expected, result
    assert result.query == text


def test_simple_hint_needs_breed_and_age() -> None:
    with_both = GENERAL.classify(
        ask("Weight?"), query_type="genetics_performance", entities={"breed": "Ross 308", "age_days": 21}
    )
    breed_only = GENERAL.classify(ask("Weight?"), query_type="genetics_performance", entities={"breed": "Ross 308"})
    assert "hint_query_type" in {signal.name for signal in with_both.signals}
    assert "hint_query_type" not in {signal.name for signal in breed_only.signals}


@pytest.mark.parametrize(
    ("text", "fires"),
    [
        ("I painted a canvas for the exhibition", False),
        ("Canvas bags are sold here", False),
        ("Compare the two offers for me", True),
        ("Is Python vs Go faster here", True),
        ("What is the difference between a duck and a goose", True),
        ("Differentiate this", False),
        ("comparable products", False),
    ],
)
def test_comparison_words_match_whole_words_only(text: str, fires: bool) -> None:
    assert ("comparison" in signal_names(GENERAL, ask(text))) is fires


def test_text_parts_are_joined_and_images_counted() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare these"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "text", "text": "two pictures"},
                ],
            }
        ]
    }
    result = GENERAL.classify(body)
    assert result.query == "Compare these\ntwo pictures"
    assert {"comparison", "non_text_parts"} <= {signal.name for signal in result.signals}


def test_the_last_user_message_is_the_query() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "second"},
        ]
    }
    assert GENERAL.classify(body).query == "second"


WEIRD_BODIES: list[Any] = [
    {},
    {"messages": None},
    {"messages": "hello"},
    {"messages": [None, 1, "x", []]},
    {"messages": [{"role": "user"}]},
    {"messages": [{"role": "user", "content": None}]},
    {"messages": [{"role": "user", "content": 42}]},
    {"messages": [{"role": "user", "content": [None, 3, {"type": "text"}, {"type": "text", "text": 5}]}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
    {"messages": [{"role": None, "content": "x"}, {"role": "system", "content": {"a": 1}}]},
    {"messages": [{"role": "user", "content": "{count} {0} %s \\ \x00 ```"}], "tools": "yes"},
    {"messages": [], "response_format": "json", "tools": [{}], "functions": None},
    {"messages": [{"role": "user", "content": "a" * 300_000}]},
]


@pytest.mark.parametrize("body", WEIRD_BODIES)
@pytest.mark.parametrize("classifier", [GENERAL, POULTRY])
def test_odd_request_shapes_never_raise(classifier: Classifier, body: Any) -> None:
    result = classifier.classify(body, query_type=["not", "a", "str"], entities="nope")  # type: ignore[arg-type]
    assert 0.0 <= result.score <= 1.0
    assert isinstance(result.query, str)


def test_a_non_mapping_body_does_not_raise() -> None:
    assert GENERAL.classify([]).query == ""  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "hi",
        "Compare A vs B vs C versus D, the difference between all of them, step by step, why? " * 50,
        "Write a poem about the sea",
    ],
)
@pytest.mark.parametrize("query_type", [None, "comparative", "genetics_performance"])
def test_score_stays_in_unit_interval(text: str, query_type: str | None) -> None:
    result = POULTRY.classify(ask(text), query_type=query_type, entities={"breed": "Ross 308, Cobb 500"})
    assert 0.0 <= result.score <= 1.0


@pytest.mark.parametrize(
    ("text", "signal"),
    [
        ("Write a python function that reverses a linked list", "code"),
        ("Solve the equation 3x + 5 = 20 and explain why", "reasoning"),
        ("Is it morally wrong to lie to a friend?", "judgement"),
        ("Write a short poem about autumn", "creative"),
        ("Tom has 5 apples, gives 2 to Ann and then buys 7 more. How many does he have?", "multi_step"),
    ],
)
def test_signals_are_named(text: str, signal: str) -> None:
    result = GENERAL.classify(ask(text))
    assert signal in {item.name for item in result.signals}
    assert all(item.name and isinstance(item.weight, float) for item in result.signals)


def test_poultry_lexicon_finds_two_breeds() -> None:
    result = POULTRY.classify(ask("How does Ross 308 perform against Cobb 500 on a wheat diet?"))
    assert result.complexity is Complexity.COMPLEX
    breeds = [signal for signal in result.signals if signal.name == "several_breed"]
    assert breeds and breeds[0].detail == "cobb 500, ross 308"


def test_one_breed_written_as_a_longer_phrase_is_one_breed() -> None:
    assert "several_breed" not in signal_names(POULTRY, ask("Ross 308 weight at day 35"))


def test_long_conversation_raises_the_score() -> None:
    turn = [{"role": "user", "content": "And then?"}, {"role": "assistant", "content": "Then this."}]
    short = GENERAL.classify({"messages": turn[:1]})
    long = GENERAL.classify({"messages": turn * 8 + turn[:1]})
    assert long.score > short.score
    assert "long_conversation" in {signal.name for signal in long.signals}


def test_reasoning_prompt_scores_above_a_greeting() -> None:
    hard = GENERAL.classify(ask("Prove that the square root of 2 is irrational, step by step."))
    easy = GENERAL.classify(ask("hello, thanks!"))
    assert hard.score > easy.score


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("medium", "complex_", "expected"),
    [(0.9, 0.95, Complexity.SIMPLE), (0.1, 0.95, Complexity.MEDIUM), (0.05, 0.1, Complexity.COMPLEX)],
)
def test_thresholds_from_yaml_change_the_class(
    tmp_path: Path, medium: float, complex_: float, expected: Complexity
) -> None:
    rules = load_rules(write(tmp_path, f"extends: general\nthresholds: {{medium: {medium}, complex: {complex_}}}\n"))
    assert Classifier(rules).classify(ask("Why is the sky blue?")).complexity is expected


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("thresholds: {medium: 2}\n", "thresholds.medium = 2"),
        ("thresholds: {medium: 0.8, complex: 0.5}\n", "thresholds.medium = 0.8"),
        ("keywords: {comparison: {terms: [vs], weight: lots}}\n", "keywords.comparison.weight = 'lots'"),
        ("keywords: {comparison: {terms: []}}\n", "keywords.comparison.terms = ()"),
        ("keywords: {x: {terms: [a, no]}}\n", "keywords.x.terms"),
        ("patterns: {p: {regex: '(unclosed', weight: 1}}\n", "patterns.p.regex = '(unclosed'"),
        ("patterns: {p: {regex: 'a*', weight: 1}}\n", "patterns.p.regex = 'a*'"),
        ("structure: {tools: yes}\n", "structure.tools = True"),
        ("scan: {head_chars: 0}\n", "scan.head_chars = 0"),
        ("colour: blue\n", "colour = 'blue'"),
        (
            "hints: {query_types: {comparative: {weight: 1, requires: [wings]}}}\n",
            "hints.query_types.comparative.requires = 'wings'",
        ),
        ("extends: 42\n", "extends = 42"),
        ("- a list\n", "mapping"),
    ],
)
def test_bad_rule_files_name_the_key_and_value(tmp_path: Path, text: str, names: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_rules(write(tmp_path, text))
    assert names in str(caught.value)


def test_unknown_built_in_rule_set_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no-such-domain"):
        load_rules("no-such-domain")


def test_poultry_extends_general_rather_than_copying() -> None:
    general, poultry = load_rules("general"), load_rules("poultry")
    assert poultry.bias == general.bias
    assert {keyword.name for keyword in general.keywords} < {keyword.name for keyword in poultry.keywords}
    assert not general.entities and {entity.name for entity in poultry.entities} == {"breed", "age", "metric"}
