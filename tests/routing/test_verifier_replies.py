"""The verifier's reading of each scoring endpoint's response, in the shapes vLLM (and a chat judge) send."""

from __future__ import annotations

import math
from typing import Any

import pytest

from routeproxy.cascade.verifier import (
    LIMIT,
    VerifierError,
    classify_probability,
    doubt,
    pooled_reward,
    score_probability,
    yes_probability,
)

USAGE = {"prompt_tokens": 12, "total_tokens": 12, "completion_tokens": 0, "prompt_tokens_details": None}
CLASSIFY = {"id": "classify-1", "object": "list", "created": 1, "model": "rm", "usage": USAGE,
            "data": [{"index": 0, "label": "good", "probs": [0.25, 0.75], "num_classes": 2}]}  # fmt: skip
SCORE = {"id": "embd-1", "object": "list", "created": 1, "model": "ce", "usage": USAGE,
         "data": [{"index": 0, "object": "score", "score": 0.125}]}  # fmt: skip


def pooling(data: Any) -> dict[str, Any]:
    return {"id": "pool-1", "object": "list", "created": 1, "model": "rm", "usage": USAGE,
            "data": [{"index": 0, "object": "pooling", "data": data}]}  # fmt: skip


def judge(first: dict[str, Any], tops: list[dict[str, Any]] | None, content: str = "Yes") -> dict[str, Any]:
    logprobs = None if tops is None else {"content": [{**first, "top_logprobs": tops}]}
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": logprobs}
    return {"object": "chat.completion", "choices": [{**choice, "finish_reason": "length"}]}


def test_classify_reads_the_good_class() -> None:
    assert classify_probability(CLASSIFY, -1) == 0.75
    assert classify_probability(CLASSIFY, 0) == 0.25
    one_label = {**CLASSIFY, "data": [{"index": 0, "label": None, "probs": [0.9], "num_classes": 1}]}
    assert classify_probability(one_label, -1) == 0.9
    with pytest.raises(VerifierError):
        classify_probability(CLASSIFY, 2)


def test_score_and_pooling() -> None:
    assert score_probability(SCORE) == 0.125
    assert pooled_reward(pooling([1.5])) == 1.5
    assert pooled_reward(pooling(-0.5)) == -0.5
    assert pooled_reward(pooling([[0.1], [0.2], [2.5]])) == 2.5  # per-token rewards: the last is the sequence's
    for bad in ({"data": []}, {"object": "error"}, pooling(["x"]), pooling([])):
        with pytest.raises(VerifierError):
            pooled_reward(bad)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        # vLLM: entries with bytes; the tokens as the tokenizer spells them
        (judge({"token": "Yes", "logprob": -0.1, "bytes": [89, 101, 115]},
               [{"token": "Yes", "logprob": -0.1, "bytes": [89, 101, 115]},
                {"token": "No", "logprob": -2.4, "bytes": [78, 111]}]),
         math.exp(-0.1) / (math.exp(-0.1) + math.exp(-2.4))),
        # TGI: no bytes; case and spaces do not matter, and "yes" counted twice adds up
        (judge({"token": " no", "logprob": -0.2}, [{"token": " no", "logprob": -0.2}, {"token": "Yes", "logprob": -2.0},
                                                    {"token": " yes", "logprob": -3.0}], content=" no"),
         (math.exp(-2.0) + math.exp(-3.0)) / (math.exp(-2.0) + math.exp(-3.0) + math.exp(-0.2))),
        (judge({"token": "Yes", "logprob": -0.01}, []), 1.0),  # top_logprobs not sent: the chosen token
        (judge({}, None, content="No."), 0.0),  # no logprobs at all: the text
    ],
    ids=["vllm", "tgi", "chosen-only", "text-only"],
)  # fmt: skip
def test_a_judges_yes_probability(reply: dict[str, Any], expected: float) -> None:
    assert yes_probability(reply) == pytest.approx(expected)


def test_a_judge_that_says_neither_is_an_error() -> None:
    with pytest.raises(VerifierError):
        yes_probability(judge({"token": "Maybe", "logprob": -0.1}, [{"token": "Maybe", "logprob": -0.1}], "Maybe"))


def test_doubt_is_the_logit_of_a_bad_answer_clamped() -> None:
    assert doubt(0.5) == 0.0
    assert doubt(0.9) == pytest.approx(math.log(0.1 / 0.9))
    assert (doubt(1.0), doubt(0.0), doubt(1e-12)) == (-LIMIT, LIMIT, LIMIT)
