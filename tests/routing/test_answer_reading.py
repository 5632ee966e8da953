"""How the answer check reads text: written sums (routeproxy.cascade.arithmetic), cues at word starts, words."""

from __future__ import annotations

import re

import pytest

from routeproxy.cascade.arithmetic import without_code_blocks, wrong_sums
from routeproxy.cascade.prose import _count_at_word_start, _words

TOLERANCE = 0.001


@pytest.mark.parametrize(
    ("text", "wrong"),
    [
        ("So 12 + 5 * 3 = 39 pounds in all.", 1),  # 27: * before +
        ("So 12 + 5 * 3 = 27 pounds in all.", 0),
        ("15 x 8 = 121", 1),  # one off: more than rounding allows
        ("15 \u00d7 8 = 120 and 10 \u00f7 4 = 2.5", 0),
        ("Total: $320 + $32 = $352, or 1,000 * 3 = 3,000.", 0),
        ("10 / 3 = 3.33, about 10/3 = 3.3, or 10 / 3 = 3", 0),  # rounded to the digits shown
        ("10 / 3 = 3.4", 1),
        ("1 / 3 = 33% of it; 0.25 * 100 = 25%", 0),
        ("1 / 3 = 34%", 1),
        ("7 * (3 + 5) = 63", 1),  # brackets: 56
        ("165 / (5 + 6) * 6 = 90", 0),
        ("He removes 7 / 1/2 = 14 toys.", 0),  # 1/2 written tight is one fraction
        ("2x + 3 = 7, a + 2 + 3 = 10, x^2 + 1 = 5", 0),  # algebra: variables, powers
        ("3 + 4 = 7 - x and 1 + 1 = 2 + 3 = 5", 0),  # chained: not a plain sum
        ("From 12:30 + 2 = 14:30, and 9 + 3 = 12:00", 0),  # clock times
        ("24 / 26 = 0, remainder 24; 207 \u00f7 26 = 7 R 21", 0),  # division with a remainder
        ("Cost = 25,920 / 864,000 = 0.03 per km", 0),  # a chain: the digit group 920 is not where a sum starts
        ("$3,650 x 10% = $3,650 x 0.10 = $365", 0),
        ("11,600 - (4,000 + 4,800) = 11,600 - 8,800 = 2,800 pounds", 0),
        ("Run `2 * 3 = 7` or\n```\nassert 2 * 3 = 7\n```", 0),  # code
        ("Step one: 2 * 3 = 7. Step two: 6 + 1 = 8.", 2),
    ],
)
def test_a_written_sum_is_wrong_only_when_its_result_is_off_by_more_than_rounding(text: str, wrong: int) -> None:
    assert wrong_sums(text, TOLERANCE) == wrong


def test_the_tolerance_allows_approximate_figures() -> None:
    # 22/7 is 3.142857: pi's digits are off by 0.04 %, more than rounding and within a tolerance of 0.1 %
    assert wrong_sums("22 / 7 = 3.14159", 0.0001) == 1
    assert wrong_sums("22 / 7 = 3.14159", TOLERANCE) == 0


def test_code_fences_are_cut_out_and_an_unclosed_one_runs_to_the_end() -> None:
    assert without_code_blocks("a ```x``` b ```y").split() == ["a", "b"]
    assert without_code_blocks("no fences") == "no fences"


@pytest.mark.parametrize(
    "text",
    [
        "perhaps, impossibly, perhaps_ perhaps",
        "xperhaps perhaps. (perhaps) _perhaps",
        "",
        "perhaps",
        "i think i thinking you think i think",
    ],
)
def test_counting_cues_at_a_word_start_equals_a_leading_word_boundary(text: str) -> None:
    for body in ("perhaps", "i think", "possibly"):
        expected = sum(1 for _ in re.finditer(rf"\b{body}", text))
        assert _count_at_word_start(re.compile(body), text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "plain ascii, with punctuation: it's 12.5% (a_b) -- done!",
        "caf\u00e9 na\u00efve \u2014 don\u2019t \u00fcber",
        "",
        "```x = 1```",
    ],
)
def test_the_words_are_the_runs_of_word_characters_on_ascii_and_unicode_text(text: str) -> None:
    assert _words(text) == re.findall(r"\w+", text)
