"""The cascade's answer check: does the small tier's answer look weak enough to re-ask the large tier?

Pure and cheap (no I/O): the check reads the request body and what the answer carries, so it runs on every cascade
request, on a whole answer or on the prefix of a stream the proxy holds. Every signal gives an activation (the
logit it adds per unit of weight, routeproxy.cascade.rules); ``weight * activation`` summed onto ``bias`` goes
through the logistic function to a score in (0, 1), higher = more need for the large model, and
``score >= threshold`` escalates. Signals, cue lists, weights and the threshold live in a check rule set
(config/checks/*.yaml, see ``load_check_rules``).

Which signals: a structured answer (tool calls, or JSON asked for) is judged by its structure
(routeproxy.cascade.structure), prose by routeproxy.cascade.prose; both by token log-probabilities when the upstream
sends them (routeproxy.cascade.logprobs), and by whatever the plug-in signals measured (``extra``: a verifier's
reading, routeproxy.cascade.signals), which the exchange passes in.

Bounded: the check reads the first ``MAX_CHECKED_CHARS`` of an answer and of each tool call's arguments (and as
much of the prompt, its start and its end), so its time has a ceiling whatever a client sends; every signal has its
answer well within that (length saturates at about 400 words). A longer answer is judged as a held prefix is, on
what a prefix can show: what only the whole can show (valid JSON, arguments against their schema) is not judged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from routeproxy.cascade.logprobs import statistic
from routeproxy.cascade.prose import prose_activations
from routeproxy.cascade.rules import LOGPROB_PREFIX, CheckRules, load_check_rules
from routeproxy.cascade.structure import requested_structure, structure_faults
from routeproxy.cascade.view import AnswerView, StreamAnswer, answer_from_body

__all__ = ["AnswerCheck", "AnswerView", "CheckRules", "StreamAnswer", "answer_from_body", "check_answer"]
__all__ += ["CHECK_INLINE_CHARS", "MAX_CHECKED_CHARS", "answer_activations", "answer_signals", "load_check_rules"]

LOW_LOGPROBS = "low_logprobs"  # the reason every logprobs term reports under
MAX_CHECKED_CHARS = 65_536
CHECK_INLINE_CHARS = 4096  # a longer answer is checked off the event loop (wire.offload): up to ~80 ms of work


@dataclass(frozen=True, slots=True)
class AnswerCheck:
    score: float  # in (0, 1): higher = more need for the large model
    escalate: bool  # score >= the rule set's threshold
    reasons: tuple[str, ...]  # the signals that pushed the score up, strongest first
    activations: Mapping[str, float] = field(default_factory=dict)  # every signal that fired -> its activation


def check_answer(
    request_body: Mapping[str, Any],
    answer: AnswerView,
    rules: CheckRules,
    extra: Mapping[str, float] | None = None,
) -> AnswerCheck:
    """Score the small tier's answer to this request; ``escalate`` when the score reaches the threshold.
    ``extra``: activations the plug-in signals measured (a verifier's), weighted by the rule set like the rest."""
    activations = answer_activations(request_body, answer, rules)
    if extra:
        activations.update(extra)
    logits: dict[str, float] = {}
    for name, activation in activations.items():
        reason = LOW_LOGPROBS if name.startswith(LOGPROB_PREFIX) else name
        logits[reason] = logits.get(reason, 0.0) + rules.weight(name) * activation
    logit = rules.bias + math.fsum(logits.values())
    score = 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, logit))))
    reasons = tuple(name for name, value in sorted(logits.items(), key=lambda item: -item[1]) if value > 0)
    fired = {name: value for name, value in activations.items() if value}
    return AnswerCheck(score=score, escalate=score >= rules.threshold, reasons=reasons, activations=fired)


def answer_activations(request_body: Mapping[str, Any], answer: AnswerView, rules: CheckRules) -> dict[str, float]:
    """Every signal the check computes itself -> its activation (0 when it did not fire)."""
    truncated = answer.complete and answer.finish_reason == "length"
    answer = _bounded(answer)
    structure = requested_structure(request_body)
    found = {name: 1.0 for name in structure_faults(structure, answer)}
    if structure.structured(answer):
        if truncated:
            found["truncated"] = 1.0
    else:
        found |= prose_activations(request_body, answer, rules)
    found |= _logprob_activations(answer.logprobs, rules)
    return found


def answer_signals(request_body: Mapping[str, Any], answer: AnswerView, rules: CheckRules) -> list[tuple[str, float]]:
    """Every signal with the logit it adds at the rule set's weights (0 when it did not fire; negative for a long
    answer). The offline fit (routeproxy.evaluate.refit) rescales them by name."""
    return [
        (name, rules.weight(name) * activation)
        for name, activation in answer_activations(request_body, answer, rules).items()
    ]


def _bounded(answer: AnswerView) -> AnswerView:
    """The answer as the check reads it: whole, or past ``MAX_CHECKED_CHARS`` its prefix, judged as a held one."""
    long_arguments = any(
        len(str((call.get("function") or {}).get("arguments") or "")) > MAX_CHECKED_CHARS for call in answer.tool_calls
    )
    if len(answer.text) <= MAX_CHECKED_CHARS and not long_arguments:
        return answer
    calls = tuple(_bounded_call(call) for call in answer.tool_calls)
    return replace(answer, text=answer.text[:MAX_CHECKED_CHARS], complete=False, tool_calls=calls)


def _bounded_call(call: Mapping[str, Any]) -> Mapping[str, Any]:
    function = call.get("function")
    if not isinstance(function, Mapping) or not isinstance(function.get("arguments"), str):
        return call
    return {**call, "function": {**function, "arguments": function["arguments"][:MAX_CHECKED_CHARS]}}


def _logprob_activations(logprobs: tuple[float, ...], rules: CheckRules) -> dict[str, float]:
    """Gupta et al. (ICLR 2024): the mean and low quantiles of the per-token log-probabilities mark an uncertain
    answer; each term is the nats its statistic falls below its centre, up to its cap."""
    if len(logprobs) < rules.logprob_min_tokens:
        return {}
    return {
        LOGPROB_PREFIX + term.name: max(0.0, min(term.cap, term.center - statistic(logprobs, term.quantile)))
        for term in rules.logprob_terms
    }
