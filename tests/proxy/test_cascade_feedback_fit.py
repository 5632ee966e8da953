"""Weights from the operator's own feedback: decisions made by the live proxy (in cascade mode, a verifier read at
weight 0), rated through the feedback endpoint, read back from Redis by `routeproxy eval --cascade --feedback`,
which fits the weights with cross-validation, holds out the end of the period, and writes a rule set to review."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support import http
from support.chat_upstream import ChatUpstream, Script, words
from support.scorer import Scorer
from support.upstreams import ProxyFactory
from support.wait import eventually

from routeproxy.cascade.check import load_check_rules
from routeproxy.cli import main
from routeproxy.settings import Tier
from routeproxy.sim.threadserver import ThreadedServer

ANSWER = (
    "Water moves between the oceans, the air and the land. The sun warms seas and lakes, water evaporates, the vapour "
    "rises and cools into clouds, and rain or snow brings it back down. Rivers carry it to the sea, soil stores some, "
    "and plants return part of it to the air through their leaves. Glaciers hold water for a long time before they "
    "melt. Answer {index}."
)
REFUSAL = "I'm sorry, but I can't help with that request."
COUNT = 60


def prompt(index: int) -> str:
    return f"Describe the water cycle, part {index}."


def weak(index: int) -> bool:
    """Which answers the operator's users rate down: every third, which the rules cannot tell from the others."""
    return index % 3 == 0


def test_the_fit_learns_a_signal_shipped_at_weight_zero_from_the_operators_feedback(
    start_proxy: ProxyFactory, redis_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scripts = {prompt(index): Script(words(ANSWER.format(index=index))) for index in range(COUNT)}
    scripts |= {prompt(index): Script(words(REFUSAL)) for index in range(COUNT, COUNT + 10)}
    small = ThreadedServer(ChatUpstream(scripts, model="small")).start()
    large = ThreadedServer(ChatUpstream(Script(words("The large answer.")), model="large")).start()
    # The operator's scoring model agrees with the users (it doubts the answers they rate down).
    scorer = Scorer(rate=lambda sent: 0.2 if any(f"Answer {i}." in sent for i in range(0, COUNT, 3)) else 0.8)
    scoring = ThreadedServer(scorer).start()
    try:
        proxy = start_proxy(
            {Tier.SMALL: f"{small.url}/v1", Tier.LARGE: f"{large.url}/v1"},
            **{"routing.enabled": True, "routing.mode": "cascade", "counters.redis_url": redis_server.url,
               "cascade.verifier.kind": "classify", "cascade.verifier.url": f"{scoring.url}/classify"},
        )  # fmt: skip
        for index in range(COUNT + 10):
            body = {"model": "auto", "messages": [{"role": "user", "content": prompt(index)}]}
            response = http.post(f"{proxy.url}/v1/chat/completions", json=body, timeout=30)
            assert response.headers["x-routeproxy-escalated"] == ("true" if index >= COUNT else "false")
            thumbs = "down" if index < COUNT and weak(index) else "up"
            rating = {"request_id": response.headers["x-request-id"], "thumbs": thumbs}
            rated = http.post(f"{proxy.url}/v1/model-routing/feedback", json=rating, timeout=10)
            assert rated.status_code == 200, rated.text

        def all_rated() -> bool:
            stats = http.get(f"{proxy.url}/v1/model-routing/stats", timeout=10).json()
            return bool(stats["ab_analysis"]["feedback"]["received"] == COUNT + 10)

        eventually(all_rated, what="every rating is counted")
    finally:
        small.stop()
        large.stop()
        scoring.stop()

    capsys.readouterr()  # the proxy's log lines
    export, written = tmp_path / "rows.jsonl", tmp_path / "fitted.yaml"
    args = ["eval", "--cascade", "--feedback", redis_server.url, "--export", str(export), "--write", str(written)]
    assert main([*args, "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)
    assert fit["rows"] == COUNT + 10 and fit["holdout_rows"] == 14
    assert fit["covers"] == "kept answers only"
    assert fit["large_mean"] == 1.0  # the escalated answers (the large tier's) were all rated up
    assert fit["cv"]["accepted"] and fit["cv"]["after"] > fit["cv"]["before"]
    old, new = fit["changed"]["verifier"]
    assert old == 0.0 and new > 0.0
    holdout = fit["holdout"]
    assert holdout["after"]["value"] > holdout["before"]["value"]
    assert holdout["difference"]["low"] > 0  # its whole band is above zero
    rules = load_check_rules(str(written))
    assert rules.weight("verifier") == new and rules.threshold == fit["threshold"]
    assert written.read_text().startswith("# Fitted by `routeproxy eval --cascade --feedback`")

    # The exported rows give the same fit without Redis; the text report says what it covers.
    rows = [json.loads(line) for line in export.read_text().splitlines()]
    assert len(rows) == COUNT + 10 and all("water" not in json.dumps(row).lower() for row in rows)
    assert main(["eval", "--cascade", "--feedback", str(export), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == fit
    assert main(["eval", "--cascade", "--feedback", str(export)]) == 0
    report = capsys.readouterr().out
    assert "covers kept answers only" in report and "verifier 0 -> " in report


def test_feedback_fit_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"request_id": "a", "at": 1, "rating": 2, "check": {"activations": {}}}\n')
    assert main(["eval", "--cascade", "--feedback", str(bad)]) == 1
    assert "line 1: rating 2.0: expected 0 to 1" in capsys.readouterr().err
    assert main(["eval", "--cascade", "--feedback", "redis://127.0.0.1:9/0"]) == 1
    assert "cannot read decisions from redis://127.0.0.1:9/0" in capsys.readouterr().err
    assert main(["eval", "--cascade"]) == 2
    assert "--feedback" in capsys.readouterr().err
