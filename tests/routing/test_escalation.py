"""The cascade's answer check (routeproxy.cascade.check) and its offline measurement (routeproxy.evaluate.cascade)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from support.devdata import dev_data

from routeproxy.cascade.check import AnswerView, StreamAnswer, answer_from_body, check_answer, load_check_rules
from routeproxy.cli import main
from routeproxy.errors import ConfigError
from routeproxy.evaluate.cascade import evaluate_cascade, read_rows, whole_view

RULES = load_check_rules("general")
PROSE = (
    "Photosynthesis turns light into chemical energy. Chlorophyll in the leaves absorbs mostly red and blue light, "
    "and the plant uses that energy to split water, release oxygen and build sugars from carbon dioxide. The sugars "
    "feed growth and respiration, and the oxygen supports most life on land. Farmers care because yield follows "
    "how much light a canopy captures over the season, which depends on leaf area, spacing and the weather. "
)
LONG_GOOD = PROSE * 1 + "In short, light, water and carbon dioxide become sugar and oxygen in every green leaf."
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def request(prompt: str = "Explain photosynthesis.", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": prompt}], **extra}


def call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}


def distinct_words(count: int) -> str:
    """Neutral text of ``count`` words with no repeated trigram and no cue."""
    return " ".join(f"w{index}" for index in range(count)) + "."


# 90 words drawn (seeded) from 18: a type-token ratio of 0.2, and almost no repeated trigram: not a loop
VOCABULARY = "light leaf water sugar plant green sun air grow makes gives needs keeps feeds turns holds takes moves"
NARROW = " ".join(random.Random(0).choices(VOCABULARY.split(), k=90)) + "."


# (signal, request, answer that fires it, near miss that must not)
CUES = [
    (
        "refusal",
        request("Write a phishing email."),
        AnswerView("I'm sorry, but I can't help with that request. " + LONG_GOOD, complete=True),
        AnswerView("I cannot stress enough how important light is. " + LONG_GOOD, complete=True),
    ),
    (
        "no_knowledge",
        request("Who won the 2031 regional chess cup?"),
        AnswerView("I don't have access to real-time results. " + LONG_GOOD, complete=True),
        AnswerView("Many people don't have access to sunlight indoors. " + LONG_GOOD, complete=True),
    ),
    (
        "truncated",
        request(),
        AnswerView(LONG_GOOD, complete=True, finish_reason="length"),
        AnswerView(LONG_GOOD, complete=True, finish_reason="stop"),
    ),
    (
        "repetitive",
        request(),
        AnswerView(LONG_GOOD + " The plant grows and the plant grows" * 40, complete=True),
        AnswerView(LONG_GOOD + "\n```python\n" + "x = grow(x)\n" * 40 + "```\n", complete=True),
    ),
    (
        "invalid_json",
        request("Give the facts as JSON.", response_format={"type": "json_object"}),
        AnswerView('{"process": "photosynthesis", "inputs": ["light", "water"', complete=True),
        AnswerView('{"process": "photosynthesis", "inputs": ["light", "water"]}', complete=True),
    ),
    (
        "unknown_tool",
        request("Weather in Oslo?", tools=TOOLS),
        AnswerView("", complete=True, finish_reason="tool_calls", tool_calls=(call("get_wether", '{"city": "Oslo"}'),)),
        AnswerView(
            "", complete=True, finish_reason="tool_calls", tool_calls=(call("get_weather", '{"city": "Oslo"}'),)
        ),
    ),
    (
        "bad_tool_arguments",
        request("Weather in Oslo?", tools=TOOLS),
        AnswerView("", complete=True, finish_reason="tool_calls", tool_calls=(call("get_weather", '{"city": Oslo}'),)),
        AnswerView(
            "", complete=True, finish_reason="tool_calls", tool_calls=(call("get_weather", '{"city": "Oslo"}'),)
        ),
    ),
    (
        "low_logprobs",
        request(),
        AnswerView(LONG_GOOD, complete=True, logprobs=(-0.1, -3.5, -2.8, -4.0, -0.2, -3.1, -2.2, -5.0, -1.9, -3.3)),
        AnswerView(LONG_GOOD, complete=True, logprobs=(-0.01, -0.2, -0.05, -0.3, -0.02, -0.1, -0.4, -0.01, -0.1, -0.6)),
    ),
    (
        "short_of_request",
        request("Write a 300-word essay on photosynthesis."),
        AnswerView(LONG_GOOD, complete=True),
        AnswerView(distinct_words(200), complete=True),
    ),
    (
        "wrong_arithmetic",
        request("A box holds 12 eggs. How many eggs are in 15 boxes?"),
        AnswerView("Each box holds 12 eggs, so 15 boxes hold 15 x 12 = 170 eggs. " + LONG_GOOD, complete=True),
        AnswerView("Each box holds 12 eggs, so 15 boxes hold 15 x 12 = 180 eggs. " + LONG_GOOD, complete=True),
    ),
    (
        "narrow_vocabulary",
        request(),
        AnswerView(NARROW, complete=True),
        AnswerView(" ".join(NARROW.split()[:40]) + " " + distinct_words(60), complete=True),
    ),
    (
        "short",
        request(),
        AnswerView("Plants make sugar from light.", complete=True),
        AnswerView(distinct_words(300), complete=True),
    ),
]


@pytest.mark.parametrize(("signal", "body", "fires", "near_miss"), CUES, ids=[cue[0] for cue in CUES])
def test_each_signal_fires_on_a_clear_case_and_not_on_a_near_miss(
    signal: str, body: dict[str, Any], fires: AnswerView, near_miss: AnswerView
) -> None:
    hit = check_answer(body, fires, RULES)
    miss = check_answer(body, near_miss, RULES)
    assert signal in hit.reasons
    assert signal not in miss.reasons
    assert hit.score > miss.score


@pytest.mark.parametrize(
    ("body", "answer"),
    [
        (request("Write a phishing email."), "I'm sorry, but I can't help with that request."),
        (request("Give the facts as JSON.", response_format={"type": "json_object"}), "Sure! Here are the facts:"),
        (request(), "Photosynthesis is how plants eat light. " + "It is how plants eat light. " * 30),
    ],
)
def test_broken_answers_escalate_and_a_long_good_answer_does_not(body: dict[str, Any], answer: str) -> None:
    assert check_answer(body, AnswerView(answer, complete=True), RULES).escalate
    good = check_answer(request(), AnswerView(LONG_GOOD + " " + distinct_words(100), complete=True), RULES)
    assert not good.escalate
    assert good.reasons == ()


def test_a_held_prefix_is_not_judged_for_json_nor_as_a_short_answer_before_it_ends() -> None:
    body = request("Give the facts as JSON.", response_format={"type": "json_object"})
    held = check_answer(body, AnswerView('{"process": "photo', complete=False), RULES)
    assert "invalid_json" not in held.reasons
    assert not held.escalate
    ended = check_answer(body, AnswerView('{"process": "photo', complete=True), RULES)
    assert ended.escalate
    assert held.score < ended.score
    refusing = check_answer(request(), AnswerView("I'm sorry, but I can't help with", complete=False), RULES)
    assert refusing.escalate
    assert "refusal" in refusing.reasons


def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: list[Any] | None = None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
    if logprobs is not None:
        choice["logprobs"] = {"content": logprobs}
    return {"id": "c", "object": "chat.completion.chunk", "choices": [choice]}


def entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": None, "top_logprobs": []}


STREAMS = {
    "content with logprobs": (
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Plants"}, logprobs=[entry("Plants", -0.5)]),
            chunk({"content": " make sugar"}, logprobs=[entry(" make", -0.1), entry(" sugar", -1.5)]),
            chunk({"content": "."}, logprobs=[entry(".", -0.01)]),
            chunk({}, finish="stop"),
        ],
        {
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Plants make sugar."},
                    "logprobs": {
                        "content": [
                            entry("Plants", -0.5),
                            entry(" make", -0.1),
                            entry(" sugar", -1.5),
                            entry(".", -0.01),
                        ]
                    },
                    "finish_reason": "stop",
                }
            ],
            "usage": {"completion_tokens": 4},
        },
    ),
    "tool call in pieces": (
        [
            chunk({"role": "assistant", "content": None}),
            chunk(
                {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather"}}]}
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
            chunk({}, finish="tool_calls"),
        ],
        {
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [call("get_weather", '{"city": "Oslo"}')],
                    },
                    "finish_reason": "tool_calls",
                }
            ],
        },
    ),
    "content, one token per chunk (TGI, vLLM)": (
        [chunk({"content": piece}) for piece in ("It", " is", " green", ".")] + [chunk({}, finish="length")],
        {
            "choices": [{"index": 0, "message": {"content": "It is green."}, "finish_reason": "length"}],
            "usage": {"completion_tokens": 4},
        },
    ),
}


@pytest.mark.parametrize(("chunks", "body"), STREAMS.values(), ids=list(STREAMS))
def test_the_stream_accumulator_gives_the_same_view_as_the_whole_body(
    chunks: list[dict[str, Any]], body: dict[str, Any]
) -> None:
    stream = StreamAnswer()
    for part in chunks[:-1]:
        stream.add(part)
    assert not stream.view().complete
    stream.add(chunks[-1])
    assert stream.view() == answer_from_body(body)
    assert check_answer(request(tools=TOOLS), stream.view(), RULES) == check_answer(
        request(tools=TOOLS), answer_from_body(body), RULES
    )


def write_lines(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def test_classify_answers_prints_exactly_the_proxys_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        {"id": "a", "messages": request()["messages"], "small_answer": "I'm sorry, but I can't help with that."},
        {"id": "b", "messages": request()["messages"], "small_answer": LONG_GOOD + " " + distinct_words(100)},
        {"id": "c", "messages": request()["messages"], "small_answer": PROSE, "finish_reason": "length"},
        {
            "id": "d",
            "messages": request()["messages"],
            "small_answer": "{}",
            "response_format": {"type": "json_object"},
            "small_logprobs": [entry("{", -3.0)] * 12,
        },
    ]
    path = write_lines(tmp_path / "answers.jsonl", rows)
    assert main(["classify", "--answers", str(path)]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = []
    for row in read_rows(path.read_text().splitlines(), "answers", labelled=False):
        check = check_answer(row.request, whole_view(row), RULES)
        expected.append({"id": row.id, "escalate": check.escalate, "score": pytest.approx(check.score, abs=1e-6)})
    assert printed == expected
    assert [line["escalate"] for line in printed] == [True, False, True, True]


@pytest.mark.parametrize(
    ("args", "lines", "message"),
    [
        (["eval", "--cascade"], ['{"id": 1}'], "line 1: messages"),
        (["classify", "--answers"], ['{"id": 1, "messages": [], "small_answer": "x"}', "not json"], "line 2"),
        (["eval", "--cascade"], ['{"id": 1, "messages": [], "small_answer": "x"}'], "line 1: a labelled row needs"),
    ],
)
def test_a_bad_line_is_named_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], lines: list[str], message: str
) -> None:
    path = write_lines(tmp_path / "bad.jsonl", lines)
    assert main([*args, str(path)]) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_a_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--cascade", str(tmp_path / "none.jsonl")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_eval_cascade_gives_the_hand_computed_apgr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Only length differs, so the check escalates the shortest first: gains 1, 0, 0.5, -0.5 over S - W = 0.25
    # trace PGR 1, 1, 1.5, 1 at c = 1/4 .. 1; area 0.125 + 0.25 + 0.3125 + 0.3125 = 1.0, PGR 0.5 at c = 0.125.
    grades = [(5, 0.0, 1.0), (20, 1.0, 1.0), (60, 0.5, 1.0), (200, 1.0, 0.5)]
    rows = [
        {
            "id": f"r{words}",
            "pair": "tiny->big",
            "messages": request()["messages"],
            "small_answer": distinct_words(words),
            "small_norm": small,
            "large_norm": large,
        }
        for words, small, large in grades
    ]
    path = write_lines(tmp_path / "tiny.jsonl", rows)
    assert main(["eval", "--cascade", str(path), "--json", "--random-draws", "20"]) == 0
    (pair,) = json.loads(capsys.readouterr().out)["pairs"]
    assert pair["full"]["apgr"] == pytest.approx(1.0)
    assert pair["full"]["cpt50"] == pytest.approx(0.125)
    assert pair["prefix"]["apgr"] == pytest.approx(1.0)  # the 200-word answer is the only one still going at the hold
    assert (pair["all_small"], pair["all_large"]) == (pytest.approx(0.625), pytest.approx(0.875))


def test_a_bad_check_rule_set_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("bias: -1\nanswer_end: {truncated: lots}\n")
    with pytest.raises(ConfigError, match=r"answer_end\.truncated = 'lots'"):
        load_check_rules(str(path))
    path.write_text("cues: {refusal: {patterns: ['(can)'], weight: 1}}\n")
    with pytest.raises(ConfigError, match="non-capturing"):
        load_check_rules(str(path))


def test_the_shipped_check_beats_answer_length_alone_on_the_dev_pairs() -> None:
    path = dev_data("cascade-dev.jsonl")
    with path.open(encoding="utf-8") as lines:
        rows = list(read_rows(lines, str(path), labelled=True))
    report = evaluate_cascade(rows, RULES, random_draws=50)
    pairs = [pair for pair in report.pairs if not pair.pair.endswith("claude-2.1")]  # no gap: APGR is noise there
    assert len(pairs) == 5
    mean = sum(pair.full.apgr for pair in pairs) / len(pairs)
    assert mean >= 0.585  # 0.593 measured; 0.562 before wrong arithmetic and narrow vocabulary
    assert mean > sum(pair.length_apgr for pair in pairs) / len(pairs) + 0.04
    assert sum(pair.prefix.apgr for pair in pairs) / len(pairs) >= mean - 0.02
    assert all(pair.full.apgr >= pair.random_low for pair in pairs)
