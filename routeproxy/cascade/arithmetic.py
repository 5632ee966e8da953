"""The answer's own arithmetic: sums such as ``12 + 5 * 3 = 39`` whose stated result is wrong.

A small model that works a problem out in the open often slips on a step it writes down; the slip is visible
without knowing the problem. Only plain numeric left-hand sides are checked (numbers, brackets, ``+ - * / x``, the
times and division signs,
``\\times``, ``\\cdot``, percentages, ``$`` and thousands separators); anything with a variable, a power or a chained
``=`` is skipped, as are code spans, so algebra and code are not misread. Pure and cheap: one regular expression
pass and a tiny evaluator, no ``eval``.
"""

from __future__ import annotations

import re

_NUMBER = r"\$?\d[\d,]*(?:\.\d+)?%?"
_OPERATOR = r"(?:[-+*/\u00d7\u00f7x]|\\times|\\cdot|\\\*)"
_TERM = rf"\(*\s*{_NUMBER}\s*\)*"
# term (op term)+ = number, not preceded by a variable, more arithmetic, a digit group ("25,920": start at 25) or a
# clock time ("12:30 + 2"); the result must not run on into more arithmetic, a unit glued to it, a variable, a
# clock time or a remainder ("207 / 26 = 7 R 21")
_SUM = re.compile(
    rf"(?<![\w.,^/=+*\-\\:])(?<![=+*/\u00d7\u00f7\-]\s)({_TERM}(?:\s*{_OPERATOR}\s*{_TERM})+)\s*=\s*(-?{_NUMBER})"
    r"(?![\d.,]*\s*(?:[-+*/\u00d7\u00f7^=\\]|\\times|\\cdot|x\s*\$?\d)|[\d.,]*[A-Za-z(:]"
    r"|[\d.,]*,?\s*(?:[Rr]|[Rr]em|[Rr]emainder)\b)"
)
_TOKEN = re.compile(rf"{_NUMBER}|{_OPERATOR}|[()]")
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_OPERATORS = {"x": "*", "\u00d7": "*", "\\times": "*", "\\cdot": "*", "\\*": "*", "\u00f7": "/"}


def wrong_sums(text: str, tolerance: float) -> int:
    """How many of the answer's written sums state a result that is wrong: off by more than rounding to the
    digits it shows (half a unit of its last digit) and by more than ``tolerance`` relative to it."""
    if "=" not in text:
        return 0
    wrong = 0
    prose = _CODE_SPAN.sub(" ", without_code_blocks(text))
    lines = [line for line in prose.splitlines() if "=" in line]  # a sum sits on one line
    for found in (found for line in lines for found in _SUM.finditer(line)):
        right = found.group(2)
        shown = right.replace("$", "").replace(",", "").rstrip("%")
        results = _values(found.group(1))
        if not results:
            continue
        stated = float(shown)
        half_unit = 0.5 * 10.0 ** -(len(shown) - shown.index(".") - 1 if "." in shown else 0)
        # "25%" may state 0.25 (a share) or 25 (the share times 100)
        scales = (1.0, 0.01) if right.endswith("%") else (1.0,)
        if not any(
            abs(value - stated * scale) <= max(half_unit * scale, tolerance * abs(stated * scale))
            for value in results
            for scale in scales
        ):
            wrong += 1
    return wrong


def without_code_blocks(text: str) -> str:
    """The text outside ``` fences (an unclosed fence runs to the end): code repeats itself and computes in its
    own syntax. A split, not a lazy regular expression, which would try the closing fence at every character."""
    return " ".join(text.split("```")[::2]) if "```" in text else text


def _values(expression: str) -> list[float]:
    """The expression's value read the usual way, and with ``a/b`` written without spaces read as one fraction
    ("7 / 1/2" is 3.5 to a parser, 14 to its writer); empty when it cannot be evaluated."""
    tokens = [_OPERATORS.get(token, token) for token in _TOKEN.findall(expression)]
    values = [_Evaluator(tokens).value()]
    tight = re.sub(r"(?<![\d.])(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)(?![\d.])", r"(\1/\2)", expression)
    if tight != expression:
        values.append(_Evaluator([_OPERATORS.get(token, token) for token in _TOKEN.findall(tight)]).value())
    return [value for value in values if value is not None]


class _Evaluator:
    """Recursive descent over number, operator and bracket tokens: sum := product (+|- product)*,
    product := atom (*|/ atom)*, atom := number | ( sum ). None when the tokens do not form one expression."""

    def __init__(self, tokens: list[str]) -> None:
        self._tokens = tokens
        self._at = 0

    def value(self) -> float | None:
        result = self._sum()
        return result if self._at == len(self._tokens) else None

    def _peek(self) -> str:
        return self._tokens[self._at] if self._at < len(self._tokens) else ""

    def _sum(self) -> float | None:
        total = self._product()
        while total is not None and self._peek() in ("+", "-"):
            operator = self._tokens[self._at]
            self._at += 1
            term = self._product()
            total = None if term is None else total + term if operator == "+" else total - term
        return total

    def _product(self) -> float | None:
        total = self._atom()
        while total is not None and self._peek() in ("*", "/"):
            operator = self._tokens[self._at]
            self._at += 1
            factor = self._atom()
            if factor is None or (operator == "/" and factor == 0):
                return None
            total = total * factor if operator == "*" else total / factor
        return total

    def _atom(self) -> float | None:
        token = self._peek()
        self._at += 1
        if token == "(":
            inner = self._sum()
            if self._peek() != ")":
                return None
            self._at += 1
            return inner
        return _number(token) if token and token[0] in "$0123456789" else None


def _number(text: str) -> float | None:
    cleaned = text.replace("$", "").replace(",", "")
    percent = cleaned.endswith("%")
    try:
        value = float(cleaned.rstrip("%"))
    except ValueError:
        return None
    return value / 100 if percent else value
