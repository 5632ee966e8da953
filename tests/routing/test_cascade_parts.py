"""The cascade's pure parts: the logprobs rewrite, the headers that report the check, the runtime mode, the stats."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from routeproxy.cascade.check import AnswerCheck
from routeproxy.cascade.exchange import decorate
from routeproxy.counters.stats import (
    Outcome,
    Snapshot,
    format_stats_table,
    outcome_fields,
    render_ab_cascade,
    render_cascade,
    render_stats,
)
from routeproxy.routing.classify import Complexity
from routeproxy.settings import RoutingMode, Tier
from routeproxy.settings.runtime import RuntimeConfig, merge_runtime, parse_runtime
from routeproxy.wire.relay import CascadeOutcome
from routeproxy.wire.sse import event_payloads, parse_event, strip_logprobs_body, strip_logprobs_events

LABELS = {Tier.SMALL: "3b", Tier.LARGE: "8b"}
LOGPROBS = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]}


def chunk(logprobs: object) -> bytes:
    return orjson.dumps({"choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": logprobs}]})


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        (b"data: " + chunk(LOGPROBS) + b"\n\n", b"data: " + chunk(None) + b"\n\n"),
        (b"data: " + chunk(LOGPROBS) + b"\r\n\r\n", b"data: " + chunk(None) + b"\r\n\r\n"),
        (b"data: " + chunk(None) + b"\n\ndata: [DONE]\n\n", b"data: " + chunk(None) + b"\n\ndata: [DONE]\n\n"),
        (b': "logprobs" in a comment\n\n', b': "logprobs" in a comment\n\n'),
        (b'data: {"logprobs": broken\n\n', b'data: {"logprobs": broken\n\n'),
        (b"data: " + chunk(LOGPROBS) + b"\r\r", b"data: " + chunk(None) + b"\r\r"),
        (
            b"data: " + chunk(LOGPROBS) + b"\r\rdata: " + chunk(LOGPROBS) + b"\r\rdata: [DONE]\r\r",
            b"data: " + chunk(None) + b"\r\rdata: " + chunk(None) + b"\r\rdata: [DONE]\r\r",
        ),
        (
            b"data: " + chunk(LOGPROBS) + b"\r\n\ndata: " + chunk(LOGPROBS) + b"\n\rdata: " + chunk(LOGPROBS) + b"\r\r",
            b"data: " + chunk(None) + b"\r\n\ndata: " + chunk(None) + b"\n\rdata: " + chunk(None) + b"\r\r",
        ),
    ],
    ids=["lf", "crlf", "none-to-strip", "comment", "not-json", "cr", "cr-several", "mixed"],
)
def test_strip_logprobs_events_nulls_them_and_leaves_every_other_byte(events: bytes, expected: bytes) -> None:
    assert strip_logprobs_events(events) == expected


def test_strip_logprobs_body_nulls_them_like_an_unasked_upstream() -> None:
    body = orjson.dumps({"id": "x", "choices": [{"index": 0, "message": {"content": "Hi"}, "logprobs": LOGPROBS}]})
    unasked = orjson.dumps({"id": "x", "choices": [{"index": 0, "message": {"content": "Hi"}, "logprobs": None}]})
    assert strip_logprobs_body(body) == unasked
    assert strip_logprobs_body(unasked) is unasked


def test_event_payloads_and_parse_event() -> None:
    events = b'data: {"a": 1}\n\n: keep-alive\n\ndata: [DONE]\n\n'
    payloads = list(event_payloads(events))
    assert payloads == [b'{"a": 1}', b"[DONE]"]
    assert [parse_event(payload) for payload in payloads] == [{"a": 1}, None]


@pytest.mark.parametrize(
    ("reasons", "escalated", "reason", "flag"),
    [
        (("refusal", "short"), True, b"cascade; check: refusal,short", b"true"),
        ((), False, b"cascade; check: none", b"false"),
    ],
)
def test_decorate_reports_the_check_in_the_headers(
    reasons: tuple[str, ...], escalated: bool, reason: bytes, flag: bytes
) -> None:
    headers = [(b"x-routeproxy-reason", b"cascade"), (b"x-routeproxy-escalated", b"false"), (b"x-request-id", b"r")]
    out = dict(decorate(headers, AnswerCheck(0.73219, escalated, reasons), escalated=escalated))
    assert out == {
        b"x-routeproxy-reason": reason,
        b"x-routeproxy-escalated": flag,
        b"x-request-id": b"r",
        b"x-routeproxy-check-score": b"0.7322",
    }


@pytest.mark.parametrize(
    ("raw", "mode"),
    [({"routing_mode": "cascade"}, RoutingMode.CASCADE), ({"routing_mode": " Classify "}, RoutingMode.CLASSIFY),
     ({"routing_mode": "sometimes"}, None), ({}, None)],
)  # fmt: skip
def test_parse_runtime_reads_the_shared_routing_mode(raw: dict[str, str], mode: RoutingMode | None) -> None:
    assert parse_runtime(raw).routing_mode is mode


def test_a_runtime_change_keeps_the_mode_it_does_not_name() -> None:
    current = RuntimeConfig(routing_mode=RoutingMode.CASCADE)
    assert merge_runtime(current, RuntimeConfig(ab_test_ratio=0.3)).routing_mode is RoutingMode.CASCADE


def test_stats_cascade_block_on_a_hand_computed_case() -> None:
    def outcome(tier: Tier, cascade: CascadeOutcome | None, complexity: Complexity = Complexity.MEDIUM) -> Outcome:
        return Outcome(tier, complexity, 200, 1000.0, None, False, cascade=cascade)

    escalated = CascadeOutcome(True, small_ms=400.0, added_ms=420.0, small_prompt_tokens=10, small_completion_tokens=8)
    outcomes = [
        outcome(Tier.LARGE, escalated),
        outcome(Tier.LARGE, escalated, Complexity.SIMPLE),
        outcome(Tier.SMALL, CascadeOutcome(False, hold_ms=900.0)),
        outcome(Tier.SMALL, CascadeOutcome(False, escalation_failed=True)),
        outcome(Tier.LARGE, None, Complexity.COMPLEX),
    ]
    counts: dict[str, int] = {}
    for one in outcomes:
        for name, increment in outcome_fields(one, LABELS):
            counts[name] = counts.get(name, 0) + increment
    snapshot = Snapshot(counts, 0, datetime.now(UTC), ("a",), "memory")
    stats = render_stats(
        snapshot,
        ab_test_ratio=0.5,
        routing_enabled=True,
        baseline_latency_ms=4500,
        relative_cost={Tier.SMALL: 0.375, Tier.LARGE: 1.0},
        labels=LABELS,
    )
    cascade = render_cascade(snapshot, "cascade", LABELS)
    assert (cascade["checked"], cascade["escalated"], cascade["escalated_pct"]) == (4, 2, 50.0)
    assert cascade["by_complexity"]["medium"] == {"checked": 3, "escalated": 1, "escalated_pct": 33.3}
    assert cascade["by_complexity"]["complex"] == {"checked": 0, "escalated": 0, "escalated_pct": 0.0}
    assert (cascade["escalation_failures"], cascade["answered_by_small_pct"]) == (1, 40.0)
    assert cascade["small_tier_on_escalated"] == {
        "time_ms_sum": 800, "avg_time_ms": 400, "prompt_tokens": 20, "completion_tokens": 16,
    }  # fmt: skip
    assert cascade["added_latency_ms"]["avg"] == 420 and 300 <= cascade["added_latency_ms"]["p50"] <= 500
    assert cascade["hold_ms"]["avg"] == 900
    # 2 x 0.375 + 3 x 1 + 2 escalated x 0.375 = 4.5 against 5 x 1: 10 % saved.
    assert stats["estimated_cost_savings_pct"] == 10.0
    assert "cascade: 4 checked, 2 escalated (50.0%)" in format_stats_table({**stats, "cascade": cascade})
    # Three MEDIUM requests, all checked: the A/B view's MEDIUM tiers are the kept and the escalated answers.
    assert render_ab_cascade(snapshot, LABELS) == {
        "comparison": "cascade", "checked": 3, "escalated": 1, "escalated_pct": 33.3, "kept_on": "3b",
        "escalated_to": "8b",
    }  # fmt: skip
