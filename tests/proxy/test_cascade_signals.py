"""The answer check's plug-in signals through the live proxy: a verifier (a scoring model on loopback, scripted, or
the simulator's vLLM pooling endpoints) read under its deadline, weighted by the rule set (0 as shipped), counted
in the stats and Prometheus; and every checked decision's signals recorded with it in Redis, numbers only."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from support import http
from support.chat_upstream import ChatUpstream, Script, words
from support.scorer import Scorer
from support.upstreams import ProxyFactory, fast_profile, settings_for
from support.wait import eventually

from routeproxy.api.app import create_app
from routeproxy.errors import ConfigError
from routeproxy.settings import Tier
from routeproxy.settings.files import shipped_or_path
from routeproxy.sim.simulator import create_simulator_app
from routeproxy.sim.threadserver import ThreadedServer

WATER = "Describe the water cycle."
GOOD = (
    "The water cycle moves water between the oceans, the air and the land. Heat from the sun evaporates water from "
    "seas, lakes and rivers, and plants release more of it through their leaves. The warm, moist air rises and "
    "cools; the vapour condenses on tiny particles into droplets, which gather as clouds. When droplets grow heavy "
    "enough they fall as rain, snow, sleet or hail. Some water runs off into streams that feed rivers and return to "
    "the ocean; some soaks into the soil, where roots take it up or it recharges the groundwater that wells draw on. "
    "Snow and ice store water for months or centuries in glaciers before melting releases it again."
)
SORRY = "I apologize for the long answer. " + GOOD  # the rules keep it; the simulated scorer calls it weak


def rules_with_verifier(tmp_path: Path, weight: float) -> str:
    text = shipped_or_path("checks", "general", "check rule set").read_text()
    assert "verifier:\n" in text
    path = tmp_path / "weighted.yaml"
    path.write_text(text.replace("  weight: 0.0\n\nanswer_end:", f"  weight: {weight}\n\nanswer_end:"))
    return str(path)


Start = Callable[..., ThreadedServer]


@pytest.fixture
def cascade(start_proxy: ProxyFactory) -> Iterator[Start]:
    servers: list[ThreadedServer] = []

    def start(verifier_url: str, kind: str = "classify", answer: str = GOOD, **overrides: Any) -> ThreadedServer:
        small = ThreadedServer(ChatUpstream(Script(words(answer)), model="small")).start()
        large = ThreadedServer(ChatUpstream(Script(words("The large answer.")), model="large")).start()
        servers.extend((small, large))
        settings = {
            "routing.enabled": True,
            "routing.mode": "cascade",
            "cascade.verifier.kind": kind,
            "cascade.verifier.url": verifier_url,
            **overrides,
        }
        return start_proxy({Tier.SMALL: f"{small.url}/v1", Tier.LARGE: f"{large.url}/v1"}, **settings)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def scorer() -> Iterator[tuple[Scorer, ThreadedServer]]:
    model = Scorer()
    server = ThreadedServer(model).start()
    yield model, server
    model.stall.clear()
    server.stop()


def ask(proxy: ThreadedServer, *, stream: bool = False, **extra: Any) -> dict[str, str]:
    body = {"model": "auto", "messages": [{"role": "user", "content": WATER}], "stream": stream, **extra}
    with http.client(timeout=30) as client, client.stream("POST", f"{proxy.url}/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, r.read()
        r.read()
        return dict(r.headers)


def stats(proxy: ThreadedServer) -> dict[str, Any]:
    cascade: dict[str, Any] = http.get(f"{proxy.url}/v1/model-routing/stats", timeout=10).json()["cascade"]
    return cascade


ENDPOINTS = {"classify": "/classify", "score": "/score", "pooling": "/pooling", "judge": "/v1/chat/completions"}


@pytest.mark.parametrize("kind", list(ENDPOINTS))
def test_a_weighted_verifier_escalates_the_answers_it_doubts_and_keeps_the_others(
    cascade: Start, scorer: tuple[Scorer, ThreadedServer], tmp_path: Path, kind: str
) -> None:
    model, server = scorer
    proxy = cascade(f"{server.url}{ENDPOINTS[kind]}", kind, **{"cascade.rules": rules_with_verifier(tmp_path, 1.5)})
    model.good = 0.95
    for stream in (False, True):
        kept = ask(proxy, stream=stream)
        assert kept["x-routeproxy-escalated"] == "false"
    model.good = 0.03
    for stream in (False, True):
        doubted = ask(proxy, stream=stream)
        assert doubted["x-routeproxy-escalated"] == "true"
        assert doubted["x-routeproxy-reason"].split("check: ")[1].split(",")[0] == "verifier"
    # What it was sent: the question and the small answer, in the kind's request shape.
    path, body = model.requests[-1]
    assert path == ENDPOINTS[kind]
    sent = orjson.dumps(body).decode()
    assert WATER in sent and "The water cycle moves water" in sent
    eventually(lambda: stats(proxy)["checked"] == 4, what="the four checks are counted")
    verifier = stats(proxy)["signals"]["verifier"]
    assert verifier["calls"] == {"ok": 4, "timeout": 0, "error": 0, "skipped": 0}
    assert verifier["latency_ms"]["avg"] >= 0
    metrics = http.get(f"{proxy.url}/metrics", timeout=10).text
    assert 'routeproxy_cascade_signal_calls_total{outcome="ok",signal="verifier"} 4.0' in metrics
    assert 'routeproxy_cascade_signal_seconds_count{signal="verifier"} 4.0' in metrics


def test_as_shipped_the_verifier_is_read_and_recorded_but_weighs_nothing(
    cascade: Start, scorer: tuple[Scorer, ThreadedServer], redis_server: Any
) -> None:
    model, server = scorer
    model.good = 0.03
    proxy = cascade(f"{server.url}/classify", **{"counters.redis_url": redis_server.url})
    headers = ask(proxy)
    assert headers["x-routeproxy-escalated"] == "false"  # weight 0: the rules alone decide
    assert len(model.requests) == 1
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    key = "{routeproxy}:decision:" + headers["x-request-id"]
    record = eventually(lambda: client.hget(key, "check"), what="the decision's check record reaches Redis")
    check = orjson.loads(record)
    assert check["rules"] == "general" and check["escalate"] is False and check["explored"] is False
    assert check["score"] == pytest.approx(float(headers["x-routeproxy-check-score"]), abs=1e-4)
    assert check["activations"]["verifier"] == pytest.approx(3.4761, abs=1e-3)  # logit(0.97)
    assert set(check["activations"]) <= {"verifier", "short", "repetitive", "narrow_vocabulary"}
    assert "water" not in record.lower()  # numbers and signal names only, never the answer's text


def test_past_its_deadline_the_verifier_is_abandoned_and_the_rules_decide(
    cascade: Start, scorer: tuple[Scorer, ThreadedServer], tmp_path: Path
) -> None:
    model, server = scorer
    model.stall.set()
    proxy = cascade(
        f"{server.url}/classify",
        **{"cascade.rules": rules_with_verifier(tmp_path, 5.0), "cascade.verifier.deadline_ms": 100},
    )
    for stream in (False, True):
        assert ask(proxy, stream=stream)["x-routeproxy-escalated"] == "false"
    eventually(lambda: model.cancelled == 2, what="the scorer saw both calls abandoned (connections closed)")
    eventually(lambda: stats(proxy)["checked"] == 2, what="both checks are counted")
    assert stats(proxy)["signals"]["verifier"]["calls"] == {"ok": 0, "timeout": 2, "error": 0, "skipped": 0}
    model.stall.clear()
    model.status = 500
    assert ask(proxy)["x-routeproxy-escalated"] == "false"
    eventually(lambda: stats(proxy)["signals"]["verifier"]["calls"]["error"] == 1, what="the failure is counted")


def test_structured_answers_are_not_sent_to_the_verifier(cascade: Start, scorer: tuple[Scorer, ThreadedServer]) -> None:
    model, server = scorer
    proxy = cascade(f"{server.url}/classify", answer='{"answer": "evaporation, condensation, precipitation"}')
    assert ask(proxy, response_format={"type": "json_object"})["x-routeproxy-escalated"] == "false"
    assert model.requests == []
    eventually(lambda: stats(proxy)["signals"]["verifier"]["calls"]["skipped"] == 1, what="the skip is counted")


@pytest.mark.parametrize(("kind", "path"), [("classify", "/classify"), ("score", "/v1/score"), ("pooling", "/pooling")])
def test_the_simulators_vllm_scoring_endpoints_as_the_verifier(
    cascade: Start, tmp_path: Path, kind: str, path: str
) -> None:
    scoring = ThreadedServer(create_simulator_app(fast_profile(Tier.SMALL))).start()
    try:
        rules = rules_with_verifier(tmp_path, 1.5)
        for answer, escalated in ((GOOD, "false"), (SORRY, "true")):
            proxy = cascade(f"{scoring.url}{path}", kind, answer=answer, **{"cascade.rules": rules})
            headers = ask(proxy)
            assert headers["x-routeproxy-escalated"] == escalated, (answer[:20], headers["x-routeproxy-reason"])
    finally:
        scoring.stop()


def test_a_verifier_kind_without_a_url_fails_at_start() -> None:
    urls = {tier: "http://127.0.0.1:9/v1" for tier in Tier}
    with pytest.raises(ConfigError, match=r"cascade\.verifier\.url"):
        create_app(settings_for(urls, **{"cascade.verifier.kind": "judge"}))


def test_explored_answers_are_kept_marked_and_counted(start_proxy: ProxyFactory, redis_server: Any) -> None:
    refusal = ThreadedServer(ChatUpstream(Script(words("I'm sorry, but I can't help with that.")), model="s")).start()
    large = ThreadedServer(ChatUpstream(Script(words("The large answer.")), model="large")).start()
    try:
        proxy = start_proxy(
            {Tier.SMALL: f"{refusal.url}/v1", Tier.LARGE: f"{large.url}/v1"},
            **{"routing.enabled": True, "routing.mode": "cascade", "cascade.explore_share": 1.0,
               "counters.redis_url": redis_server.url},
        )  # fmt: skip
        headers = ask(proxy)
        assert headers["x-routeproxy-escalated"] == "false" and headers["x-routeproxy-tier"] == "3b"
        assert headers["x-routeproxy-reason"].endswith("; explored")
        assert float(headers["x-routeproxy-check-score"]) >= 0.5
        eventually(lambda: stats(proxy)["explored"] == 1, what="the explored answer is counted")
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        key = "{routeproxy}:decision:" + headers["x-request-id"]
        record = orjson.loads(eventually(lambda: client.hget(key, "check"), what="the record reaches Redis"))
        assert (record["escalate"], record["explored"]) == (True, True)
        assert "routeproxy_cascade_explored_total 1.0" in http.get(f"{proxy.url}/metrics", timeout=10).text
    finally:
        refusal.stop()
        large.stop()
