"""Cascade mode through the live proxy, against scripted upstreams that answer what each test needs: the small
answer is checked, a weak one is re-asked on the large tier, and the client gets exactly one upstream's bytes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from support import http
from support.chat_upstream import ChatUpstream, Script, completion, serve_tiers, stream_events, words
from support.ports import refused_port
from support.processes import Served, serve
from support.upstreams import ProxyFactory, settings_for
from support.wait import eventually, eventually_async

from routeproxy.api.app import create_app
from routeproxy.errors import ConfigError
from routeproxy.settings import Tier
from routeproxy.sim.threadserver import ThreadedServer
from routeproxy.tasks import spawn

WATER = "Describe the water cycle."
GOOD = words(
    "The water cycle moves water between the oceans, the air and the land. Heat from the sun evaporates water from "
    "seas, lakes and rivers, and plants release more of it through their leaves, a process called transpiration. "
    "The warm, moist air rises and cools; as it cools, the vapour condenses on tiny particles of dust and salt into "
    "droplets, which gather as clouds. When droplets merge and grow heavy enough, they fall as precipitation: rain, "
    "snow, sleet or hail, depending on the temperature of the layers they cross. Some of that water runs off the "
    "surface into streams that feed rivers and finally return to the ocean. Some soaks into the soil, where roots "
    "take it up or it seeps down to recharge aquifers, the groundwater that wells and springs draw on. Snow and ice "
    "can store water for months or centuries in glaciers before melting releases it. Throughout, the total amount of "
    "water stays nearly constant; it only changes state and place, driven by solar energy and gravity."
)
REFUSAL = words("I'm sorry, but I can't help with that request. It is not something I am able to assist with.")
LARGE_ANSWER = words("Evaporation, condensation, precipitation and collection, driven by the sun: " + " ".join(GOOD))
COMPLEX = (
    "Compare the economic policies of Keynes and Hayek in detail, analysing their impact on post-war Europe and the "
    "2008 crisis, step by step."
)


def user(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": text}], **extra}


class Cascade:
    """A proxy in cascade mode between two scripted upstreams."""

    def __init__(self, proxy: ThreadedServer, small: ChatUpstream, large: ChatUpstream, urls: dict[Tier, str]) -> None:
        self.proxy, self.small, self.large = proxy, small, large
        self.small_url, self.large_url = urls[Tier.SMALL], urls[Tier.LARGE]
        self.url = f"{proxy.url}/v1/chat/completions"

    def post(self, body: dict[str, Any]) -> httpx.Response:
        return http.post(self.url, json=body, timeout=30)

    def stream(self, body: dict[str, Any]) -> tuple[httpx.Headers, bytes]:
        with (
            http.client(timeout=30) as client,
            client.stream("POST", self.url, json={**body, "stream": True}) as response,
        ):
            assert response.status_code == 200, response.read()
            return response.headers, b"".join(response.iter_raw())

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = http.get(f"{self.proxy.url}/v1/model-routing/stats", timeout=10).json()
        return stats


CascadeFactory = Callable[..., Cascade]


@pytest.fixture
def cascade(start_proxy: ProxyFactory) -> Iterator[CascadeFactory]:
    servers: list[ThreadedServer] = []

    def start(small: Any, large: Any = None, *, small_url: str | None = None, **overrides: Any) -> Cascade:
        upstreams = {
            Tier.SMALL: small if isinstance(small, ChatUpstream) else ChatUpstream(small, model="small"),
            Tier.LARGE: ChatUpstream(large or Script(LARGE_ANSWER), model="large"),
        }
        urls = serve_tiers(upstreams, servers)
        if small_url is not None:
            urls[Tier.SMALL] = small_url
        settings = {"routing.enabled": True, "routing.mode": "cascade", **overrides}
        proxy = start_proxy(urls, **settings)
        return Cascade(proxy, upstreams[Tier.SMALL], upstreams[Tier.LARGE], urls)

    yield start
    for server in servers:
        server.stop()


# -- non-streamed: the whole small answer is checked before anything is sent --


def test_a_good_small_answer_is_sent_unchanged_and_the_large_tier_is_not_asked(cascade: CascadeFactory) -> None:
    proxy = cascade(Script(GOOD))
    response = proxy.post(user(WATER))
    assert response.status_code == 200
    assert response.content == completion(Script(GOOD), "small", with_logprobs=False)
    headers = response.headers
    assert (headers["x-routeproxy-mode"], headers["x-routeproxy-escalated"]) == ("cascade", "false")
    assert (headers["x-routeproxy-tier"], headers["x-routeproxy-complexity"]) == ("3b", "medium")
    assert headers["x-routeproxy-reason"] == "cascade; check: none"
    assert float(headers["x-routeproxy-check-score"]) < 0.5
    assert len(proxy.small.requests) == 1 and proxy.large.requests == []


@pytest.mark.parametrize(
    ("script", "extra", "reason"),
    [
        (Script(REFUSAL), {}, "refusal"),
        (Script(GOOD[:40], finish_reason="length"), {}, "truncated"),
        (
            Script(words('{"name": "Ada", "description": "' + " ".join(GOOD).replace('"', "'") + '"')),
            {"response_format": {"type": "json_object"}},
            "invalid_json",
        ),
    ],
    ids=["refusal", "truncated", "invalid-json"],
)
def test_a_weak_small_answer_is_replaced_by_the_large_tiers(
    cascade: CascadeFactory, script: Script, extra: dict[str, Any], reason: str
) -> None:
    proxy = cascade(script)
    response = proxy.post(user(WATER, **extra))
    assert response.status_code == 200
    assert response.content == completion(Script(LARGE_ANSWER), "large", with_logprobs=False)
    headers = response.headers
    assert (headers["x-routeproxy-escalated"], headers["x-routeproxy-tier"]) == ("true", "8b")
    assert headers["x-routeproxy-model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert reason in headers["x-routeproxy-reason"].split("; check: ")[1].split(",")
    assert float(headers["x-routeproxy-check-score"]) >= 0.5
    assert len(proxy.small.requests) == len(proxy.large.requests) == 1
    assert proxy.large.requests[0]["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert proxy.large.requests[0]["messages"] == proxy.small.requests[0]["messages"]


def test_valid_json_of_a_good_length_is_kept(cascade: CascadeFactory) -> None:
    text = orjson.dumps({"name": "Ada", "description": " ".join(GOOD)}).decode()
    proxy = cascade(Script(words(text)))
    response = proxy.post(user(WATER, response_format={"type": "json_object"}))
    assert response.headers["x-routeproxy-escalated"] == "false"
    assert orjson.loads(response.json()["choices"][0]["message"]["content"])["name"] == "Ada"


def test_complex_and_pinned_requests_go_to_the_large_tier_unchecked(cascade: CascadeFactory) -> None:
    proxy = cascade(Script(REFUSAL))
    complex_answer = proxy.post(user(COMPLEX))
    pinned = proxy.post({**user(WATER), "model": "meta-llama/Llama-3.2-3B-Instruct"})
    assert complex_answer.headers["x-routeproxy-tier"] == "8b"
    assert pinned.headers["x-routeproxy-tier"] == "3b"  # pinned to the small model: its refusal is what it asked for
    for response in (complex_answer, pinned):
        assert response.headers["x-routeproxy-escalated"] == "false"
        assert "x-routeproxy-check-score" not in response.headers
    assert len(proxy.small.requests) == len(proxy.large.requests) == 1


def test_the_openai_sdk_gets_the_large_answer_for_a_refusal(cascade: CascadeFactory) -> None:
    proxy = cascade(Script(REFUSAL))
    client = openai.OpenAI(base_url=f"{proxy.proxy.url}/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": WATER}])
    assert raw.headers["x-routeproxy-escalated"] == "true"
    assert raw.parse().choices[0].message.content == "".join(LARGE_ANSWER)
    chunks = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": WATER}], stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == "".join(LARGE_ANSWER)


# -- streamed: exactly one upstream's events, byte for byte --


def test_a_released_stream_is_byte_identical_to_the_small_tiers(cascade: CascadeFactory) -> None:
    proxy = cascade(Script(GOOD))  # longer than the default hold of 128 tokens: released mid-answer
    headers, body = proxy.stream(user(WATER))
    assert body == b"".join(stream_events(Script(GOOD), "small", with_logprobs=False, usage=False))
    assert (headers["x-routeproxy-escalated"], headers["x-routeproxy-tier"]) == ("false", "3b")
    assert proxy.large.requests == []


def test_an_escalated_stream_is_the_large_tiers_and_the_small_connection_is_closed(cascade: CascadeFactory) -> None:
    # The small tier refuses, then stalls: only the proxy closing its connection ends that answer.
    proxy = cascade(Script(REFUSAL, stall_after=10), **{"cascade.hold_tokens": 8})
    headers, body = proxy.stream(user(WATER, stream_options={"include_usage": True}))
    assert body == b"".join(stream_events(Script(LARGE_ANSWER), "large", with_logprobs=False, usage=True))
    assert (headers["x-routeproxy-escalated"], headers["x-routeproxy-tier"]) == ("true", "8b")
    assert "refusal" in headers["x-routeproxy-reason"]
    eventually(lambda: proxy.small.disconnects == 1, what="the small upstream saw its connection closed")
    assert proxy.small.completed == 0


def test_hold_ms_releases_a_stalled_stream_with_what_has_arrived(cascade: CascadeFactory) -> None:
    proxy = cascade(Script(GOOD, stall_after=3), **{"cascade.hold_ms": 50})
    with http.client(timeout=30) as client, client.stream("POST", proxy.url, json=user(WATER, stream=True)) as response:
        raw = response.iter_raw()
        first = next(raw)
        # The client has its first bytes while the small answer cannot have ended: it waits for go after 3 tokens.
        assert proxy.small.completed == 0 and not proxy.small.go.is_set()
        assert response.headers["x-routeproxy-escalated"] == "false"
        proxy.small.go.set()
        body = first + b"".join(raw)
    assert body == b"".join(stream_events(Script(GOOD), "small", with_logprobs=False, usage=False))


def test_a_client_leaving_during_the_hold_closes_the_small_request(cascade: CascadeFactory) -> None:
    proxy = cascade(Script(GOOD, stall_after=2), **{"cascade.hold_ms": 600_000})
    request = orjson.dumps(user(WATER, stream=True))
    with socket.create_connection((proxy.proxy.host, proxy.proxy.port)) as client:
        client.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: proxy\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(request)).encode() + b"\r\n\r\n" + request
        )
        eventually(lambda: proxy.small.stalled == 1, what="the small answer is held")
    eventually(lambda: proxy.small.disconnects == 1, what="the small upstream saw the disconnect")
    eventually(lambda: proxy.stats()["disconnects"]["3b"] == 1, what="the disconnect is counted")
    assert proxy.large.requests == []
    assert proxy.stats()["cascade"]["checked"] == 0


# -- fallback: a failing small tier is a fallback, not an escalation --


def test_a_small_tier_that_refuses_connections_is_a_fallback_not_an_escalation(cascade: CascadeFactory) -> None:
    proxy = cascade(Script(GOOD), small_url=f"http://127.0.0.1:{refused_port()}/v1")
    response = proxy.post(user(WATER))
    assert response.content == completion(Script(LARGE_ANSWER), "large", with_logprobs=False)
    headers = response.headers
    assert headers["x-routeproxy-fallback"] == "connect_error"
    assert (headers["x-routeproxy-escalated"], headers["x-routeproxy-tier"]) == ("false", "8b")
    assert "x-routeproxy-check-score" not in headers
    eventually(lambda: proxy.stats()["total_requests"] == 1, what="the request is counted")
    assert proxy.stats()["cascade"]["checked"] == 0


def test_a_small_stream_breaking_during_the_hold_falls_back_to_the_large_tier(cascade: CascadeFactory) -> None:
    proxy = cascade(Script(GOOD, break_after=3))
    headers, body = proxy.stream(user(WATER))
    assert body == b"".join(stream_events(Script(LARGE_ANSWER), "large", with_logprobs=False, usage=False))
    assert headers["x-routeproxy-fallback"] == "broken_response"
    assert (headers["x-routeproxy-escalated"], headers["x-routeproxy-tier"]) == ("false", "8b")
    assert "x-routeproxy-check-score" not in headers
    eventually(lambda: proxy.stats()["total_requests"] == 1, what="the request is counted")
    stats = proxy.stats()
    assert stats["fallbacks"]["8b"] == 1
    assert (stats["cascade"]["checked"], stats["cascade"]["escalated"]) == (0, 0)


def test_a_small_answer_broken_off_mid_body_falls_back_to_the_large_tier(cascade: CascadeFactory) -> None:
    proxy = cascade(Script(GOOD, break_after=0))
    response = proxy.post(user(WATER))
    assert response.content == completion(Script(LARGE_ANSWER), "large", with_logprobs=False)
    assert response.headers["x-routeproxy-fallback"] == "broken_response"
    assert (response.headers["x-routeproxy-escalated"], response.headers["x-routeproxy-tier"]) == ("false", "8b")
    assert "x-routeproxy-check-score" not in response.headers


def test_a_large_tier_failing_after_the_check_leaves_the_client_the_small_answer(cascade: CascadeFactory) -> None:
    proxy = cascade(Script(REFUSAL), Script(LARGE_ANSWER, status=503))
    response = proxy.post(user(WATER))
    assert response.content == completion(Script(REFUSAL), "small", with_logprobs=False)
    assert response.headers["x-routeproxy-fallback"] == "escalation_status_503"
    assert (response.headers["x-routeproxy-escalated"], response.headers["x-routeproxy-tier"]) == ("false", "3b")
    headers, body = proxy.stream(user(WATER))
    assert body == b"".join(stream_events(Script(REFUSAL), "small", with_logprobs=False, usage=False))
    assert headers["x-routeproxy-fallback"] == "escalation_status_503"
    eventually(lambda: proxy.stats()["cascade"]["escalation_failures"] == 2, what="both failures are counted")


# -- logprobs: the one documented body rewrite --

LOW = Script(GOOD, logprobs=[-3.0] * len(GOOD))
HIGH = Script(GOOD, logprobs=[-0.05] * len(GOOD))


def test_logprobs_asked_by_the_proxy_reach_the_check_and_not_the_client(cascade: CascadeFactory) -> None:
    proxy = cascade(ChatUpstream({WATER: LOW, "Describe the water cycle again.": HIGH}, model="small"),
                    **{"cascade.request_logprobs": True})  # fmt: skip
    uncertain = proxy.post(user(WATER))
    assert uncertain.headers["x-routeproxy-escalated"] == "true"
    assert "low_logprobs" in uncertain.headers["x-routeproxy-reason"]
    sure = proxy.post(user("Describe the water cycle again."))
    assert sure.headers["x-routeproxy-escalated"] == "false"
    # What the client gets is what the small tier sends when nobody asks for logprobs.
    assert sure.content == completion(HIGH, "small", with_logprobs=False)
    _, body = proxy.stream(user("Describe the water cycle again."))
    assert body == b"".join(stream_events(HIGH, "small", with_logprobs=False, usage=False))
    assert all(request["logprobs"] is True for request in proxy.small.requests)
    assert proxy.large.requests[0].get("logprobs") is None


@pytest.mark.parametrize("end", [b"\r\r", b"\r\n\r\n", b"\n\r"])
def test_logprobs_asked_by_the_proxy_leave_events_of_any_line_framing(
    cascade: CascadeFactory, scripted: Callable[..., tuple[Any, ThreadedServer]], end: bytes
) -> None:
    """SSE ends a line with CR, LF or CRLF alike; the removal must not depend on which the upstream uses."""
    events = [event.replace(b"\n\n", end) for event in stream_events(HIGH, "small", with_logprobs=True, usage=False)]
    small = scripted([(0.0, event) for event in events])[1]
    proxy = cascade(HIGH, small_url=f"{small.url}/v1", **{"cascade.request_logprobs": True})
    headers, body = proxy.stream(user(WATER))
    assert headers["x-routeproxy-escalated"] == "false"
    sent = [line for line in body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n") if line]
    chunks = [orjson.loads(line.removeprefix(b"data: ")) for line in sent if line != b"data: [DONE]"]
    assert len(chunks) == len(events) - 1
    assert all(choice["logprobs"] is None for chunk in chunks for choice in chunk["choices"])


def test_logprobs_the_client_asked_for_are_kept(cascade: CascadeFactory) -> None:
    proxy = cascade(HIGH, **{"cascade.request_logprobs": True})
    response = proxy.post(user(WATER, logprobs=True))
    assert response.content == completion(HIGH, "small", with_logprobs=True)
    _, body = proxy.stream(user(WATER, logprobs=True))
    assert body == b"".join(stream_events(HIGH, "small", with_logprobs=True, usage=False))


def test_without_request_logprobs_the_small_request_is_the_clients(cascade: CascadeFactory) -> None:
    proxy = cascade(HIGH)
    proxy.post(user(WATER))
    assert "logprobs" not in proxy.small.requests[0]


# -- the books: stats, Prometheus, the log line, explain --


def test_escalations_are_counted_per_complexity_with_what_the_small_tier_spent(cascade: CascadeFactory) -> None:
    proxy = cascade(ChatUpstream({WATER: REFUSAL_SCRIPT, "What is the capital of France?": Script(GOOD)}, model="s"))
    proxy.post(user(WATER))  # medium, escalated
    proxy.stream(user(WATER))  # medium, escalated (the refusal ends within the hold)
    proxy.post(user("What is the capital of France?"))  # simple, kept
    eventually(lambda: proxy.stats()["total_requests"] == 3, what="all three are counted")
    stats = proxy.stats()
    cascade_stats = stats["cascade"]
    assert cascade_stats["routing_mode"] == "cascade"
    assert (cascade_stats["checked"], cascade_stats["escalated"], cascade_stats["escalated_pct"]) == (3, 2, 66.7)
    assert cascade_stats["by_complexity"]["medium"] == {"checked": 2, "escalated": 2, "escalated_pct": 100.0}
    assert cascade_stats["by_complexity"]["simple"] == {"checked": 1, "escalated": 0, "escalated_pct": 0.0}
    spent = cascade_stats["small_tier_on_escalated"]
    # Non-stream: the small tier's usage; stream: the content tokens seen before the decision.
    assert (spent["prompt_tokens"], spent["completion_tokens"]) == (11, 2 * len(REFUSAL))
    assert cascade_stats["answered_by_small_pct"] == 33.3
    assert stats["model_distribution"]["8b"]["count"] == 2
    # Each escalated request costs a large one plus a small one: 1 x 0.375 + 2 x 1.375 against 3 x 1.
    assert stats["estimated_cost_savings_pct"] == round((3 - 0.375 - 2 * 1.375) / 3 * 100, 1)
    metrics = http.get(f"{proxy.proxy.url}/metrics", timeout=10).text
    assert 'routeproxy_cascade_escalations_total{complexity="medium"} 2.0' in metrics
    assert 'routeproxy_cascade_checked_total{complexity="simple"} 1.0' in metrics
    assert f'routeproxy_cascade_small_tokens_total{{type="completion"}} {2 * len(REFUSAL)}.0' in metrics
    assert "routeproxy_cascade_added_latency_seconds_count 2.0" in metrics
    assert "routeproxy_cascade_hold_seconds_count 1.0" in metrics
    assert "routeproxy_cascade_mode 1.0" in metrics


REFUSAL_SCRIPT = Script(REFUSAL)


def test_feedback_on_escalated_answers_lands_on_the_large_tier_and_the_ab_view_says_cascade(
    cascade: CascadeFactory,
) -> None:
    proxy = cascade(ChatUpstream({WATER: REFUSAL_SCRIPT, "Describe the water cycle again.": Script(GOOD)}, model="s"))
    escalated = proxy.post(user(WATER))
    kept = proxy.post(user("Describe the water cycle again."))
    assert (escalated.headers["x-routeproxy-escalated"], kept.headers["x-routeproxy-escalated"]) == ("true", "false")
    feedback = f"{proxy.proxy.url}/v1/model-routing/feedback"
    for response, thumbs in ((escalated, "up"), (kept, "down")):
        rated = http.post(feedback, json={"request_id": response.headers["x-request-id"], "thumbs": thumbs})
        assert rated.status_code == 200, rated.text
    eventually(lambda: proxy.stats()["ab_analysis"]["feedback"]["received"] == 2, what="both ratings are counted")
    ab = proxy.stats()["ab_analysis"]
    assert (ab["tiers"]["8b"]["feedback_count"], ab["tiers"]["8b"]["mean_score"]) == (1, 1.0)  # the escalated answer
    assert (ab["tiers"]["3b"]["feedback_count"], ab["tiers"]["3b"]["mean_score"]) == (1, 0.0)  # the kept one
    assert ab["cascade"] == {
        "comparison": "cascade", "checked": 2, "escalated": 1, "escalated_pct": 50.0, "kept_on": "3b",
        "escalated_to": "8b",
    }  # fmt: skip
    # Kept and escalated answers are different prompts, not a random split: no verdict for a rollout to act on.
    assert ab["verdict"] == "insufficient_data" and "cascade mode" in ab["reason"]


def test_explain_runs_the_same_check_on_a_given_answer(cascade: CascadeFactory) -> None:
    proxy = cascade(Script(GOOD))
    url = f"{proxy.proxy.url}/v1/model-routing/explain"
    answer = http.post(url, json={**user(WATER), "small_answer": "".join(REFUSAL)}, timeout=10).json()
    assert (answer["routing_mode"], answer["cascade"]["small_first"]) == ("cascade", True)
    assert answer["check"]["escalate"] is True and "refusal" in answer["check"]["reasons"]
    whole = orjson.loads(completion(Script(GOOD), "small", with_logprobs=False))
    assert http.post(url, json={**user(WATER), "small_answer": whole}, timeout=10).json()["check"]["escalate"] is False
    bad = http.post(url, json={**user(WATER), "small_answer": 3}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "small_answer"


def test_routing_mode_switches_at_runtime_and_bad_values_get_a_400(cascade: CascadeFactory) -> None:
    admin = {"server.admin_loopback_without_token": True}
    proxy = cascade(Script(REFUSAL), **{"routing.mode": "classify", **admin})
    config = f"{proxy.proxy.url}/v1/model-routing/config"
    assert "x-routeproxy-mode" not in proxy.post(user(WATER)).headers  # classify mode: headers as before
    changed = http.put(config, json={"routing_mode": "cascade"}, timeout=10).json()
    assert (changed["routing_mode"], changed["configured"]["routing_mode"]) == ("cascade", "classify")
    assert proxy.post(user(WATER)).headers["x-routeproxy-escalated"] == "true"
    bad = http.put(config, json={"routing_mode": "escalate"}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "routing_mode"


def test_routing_mode_is_shared_by_replicas_through_redis(
    cascade: CascadeFactory, start_proxy: ProxyFactory, redis_server: Any
) -> None:
    shared = {"counters.redis_url": redis_server.url, "server.admin_loopback_without_token": True}
    proxy = cascade(Script(REFUSAL), **{"routing.mode": "classify", **shared})
    other = start_proxy(
        {Tier.SMALL: proxy.small_url, Tier.LARGE: proxy.large_url}, **{"routing.enabled": True, **shared}
    )
    http.put(f"{proxy.proxy.url}/v1/model-routing/config", json={"routing_mode": "cascade"}, timeout=10)

    def other_is_cascading() -> bool:
        response = http.post(f"{other.url}/v1/chat/completions", json=user(WATER), timeout=10)
        return response.headers.get("x-routeproxy-escalated") == "true"

    eventually(other_is_cascading, what="the other replica switched to cascade mode", tries=300)


# -- offline and online agree --

AGREEMENT = {
    "Describe the water cycle.": (Script(GOOD), {}),
    "Describe the water cycle, please.": (Script(REFUSAL), {}),
    "Describe the water cycle in short.": (Script(words("Water evaporates, condenses and falls as rain.")), {}),
    "Describe the water cycle to me.": (Script(GOOD[:60], finish_reason="length"), {}),
    "Describe the water cycle as JSON.": (
        Script(words('{"summary": "' + " ".join(GOOD[:30]))),
        {"response_format": {"type": "json_object"}},
    ),
}


def test_classify_answers_decides_as_the_proxy_does(cascade: CascadeFactory, tmp_path: Any) -> None:
    upstream = ChatUpstream({prompt: script for prompt, (script, _) in AGREEMENT.items()}, model="small")
    proxy = cascade(upstream)
    online = {}
    for prompt, (_, extra) in AGREEMENT.items():
        whole = proxy.post(user(prompt, **extra)).headers
        headers, _ = proxy.stream(user(prompt, **extra))
        online[prompt] = (whole["x-routeproxy-escalated"] == "true", float(whole["x-routeproxy-check-score"]))
        assert headers["x-routeproxy-escalated"] == whole["x-routeproxy-escalated"], prompt
    rows = tmp_path / "answers.jsonl"
    rows.write_text(
        "".join(
            orjson.dumps(
                {
                    "id": prompt,
                    "messages": [{"role": "user", "content": prompt}],
                    "small_answer": script.text,
                    "finish_reason": script.finish_reason,
                    **extra,
                }
            ).decode()
            + "\n"
            for prompt, (script, extra) in AGREEMENT.items()
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "routeproxy", "classify", "--answers", str(rows)],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    offline = {line["id"]: (line["escalate"], line["score"]) for line in map(orjson.loads, done.stdout.splitlines())}
    assert set(offline) == set(online)
    for prompt, (escalate, score) in offline.items():
        assert online[prompt] == (escalate, pytest.approx(score, abs=5e-5)), prompt
    assert {escalate for escalate, _ in offline.values()} == {True, False}  # both outcomes are exercised


# -- drain: SIGTERM lets held streams finish --


def test_sigterm_lets_streams_held_for_the_check_finish(served: list[Served]) -> None:
    proxy = serve("--simulate", "--speed", "1000", env={"ROUTEPROXY_ROUTING_MODE": "cascade"})
    served.append(proxy)
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "stream": True,
    }
    slow = {"x-sim-tokens": "30", "x-sim-token-ms": "40"}  # each answer takes about 1.2 s, all of it inside the hold

    async def scenario() -> list[bytes]:
        async with http.async_client(timeout=20) as client:

            async def one() -> bytes:
                async with client.stream("POST", f"{proxy.url}/v1/chat/completions", json=body, headers=slow) as r:
                    assert r.headers["x-routeproxy-mode"] == "cascade"
                    return b"".join([chunk async for chunk in r.aiter_raw()])

            tasks = [spawn(one()) for _ in range(5)]

            async def all_held() -> bool:
                return bool((await client.get(f"{proxy.url}/readyz")).json()["checks"]["inflight"] == 5)

            await eventually_async(all_held, what="the five streams are in flight together")
            os.kill(proxy.process.pid, signal.SIGTERM)
            return await asyncio.gather(*tasks)

    bodies = asyncio.run(scenario())
    assert all(raw.endswith(b"data: [DONE]\n\n") for raw in bodies)
    assert proxy.process.wait(timeout=20) == 0


def test_a_bad_check_rule_set_fails_at_start(tmp_path: Any) -> None:
    broken = tmp_path / "checks.yaml"
    broken.write_text("threshold: 2\n")
    urls = {tier: "http://127.0.0.1:9/v1" for tier in Tier}
    with pytest.raises(ConfigError, match="threshold"):
        create_app(settings_for(urls, **{"cascade.rules": str(broken)}))
