"""No request holds the event loop: while the heaviest request a client may send is being handled, /healthz
keeps answering.

The one wall-clock bound here, ``BOUND_S``, is generous on purpose. With the work off the loop, the longest the
loop waits is one C call that cannot be interrupted (one ``orjson.loads`` of a body at the JSON token cap, about
60 ms) or one switch of the interpreter between threads (5 ms); 1 s leaves more than ten times that for a
machine busy with other work. Before, these requests held the loop for 2 to 30 s: the answer check on a long
answer of sums, a walk in Python over every value of the body, the check of every content part.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest
from support import http
from support.upstreams import ProxyFactory, ScriptedUpstream

from routeproxy.settings import Tier
from routeproxy.sim.threadserver import ThreadedServer

BOUND_S = 1.0
MAX_BODY = 10 * 1024 * 1024  # server.max_body_bytes by default
SUMS = "12 + 34 = 47. "  # the answer check's costliest text: a written sum every 14 characters
CLIENT_TIMEOUT_S = 120.0  # long enough to measure a stalled loop rather than give up on it

Scripted = Callable[..., tuple[ScriptedUpstream, ThreadedServer]]


def explain_with_a_long_answer() -> tuple[str, bytes]:
    answer = SUMS * ((MAX_BODY - 1024) // len(SUMS))
    body = {"model": "auto", "messages": [{"role": "user", "content": "Add them up."}], "small_answer": answer}
    return "/v1/model-routing/explain", orjson.dumps(body)


def chat_with_many_small_values() -> tuple[str, bytes]:
    """10 MiB of `{}`: 3.5 million objects."""
    head = b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "metadata": ['
    return "/v1/chat/completions", head + b"{}," * ((MAX_BODY - 1024) // 3) + b"{}]}"


def chat_with_many_content_parts() -> tuple[str, bytes]:
    parts = [{"type": "text", "text": "x"}] * 300_000
    return "/v1/chat/completions", orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": parts}]})


def health_while(url: str, heavy: Callable[[], httpx.Response]) -> tuple[list[float], list[httpx.Response]]:
    """/healthz's answer times while ``heavy`` runs three times in a row (on another thread), and its answers."""
    latencies: list[float] = []
    with ThreadPoolExecutor(1) as pool, http.client(timeout=CLIENT_TIMEOUT_S) as client:
        running = pool.submit(lambda: [heavy() for _ in range(3)])
        while not running.done():
            started = time.monotonic()
            assert client.get(f"{url}/healthz").status_code == 200
            latencies.append(time.monotonic() - started)
        return latencies, running.result()


def post(url: str, path: str, body: bytes) -> Callable[[], httpx.Response]:
    def send() -> httpx.Response:
        headers = {"content-type": "application/json"}
        return http.post(f"{url}{path}", content=body, headers=headers, timeout=CLIENT_TIMEOUT_S)

    return send


@pytest.mark.slow
@pytest.mark.parametrize(
    ("request_of", "status"),
    [(explain_with_a_long_answer, 200), (chat_with_many_small_values, 413), (chat_with_many_content_parts, 413)],
    ids=["explain-long-answer", "chat-many-values", "chat-many-parts"],
)
def test_health_answers_while_the_heaviest_request_is_handled(
    proxy: ThreadedServer, request_of: Callable[[], tuple[str, bytes]], status: int
) -> None:
    path, body = request_of()
    assert len(body) <= MAX_BODY  # allowed in size: the proxy must take it (or refuse it) without stalling
    latencies, answers = health_while(proxy.url, post(proxy.url, path, body))
    assert [answer.status_code for answer in answers] == [status] * 3
    assert len(latencies) >= 3  # /healthz was asked while the heavy requests were in the proxy
    assert max(latencies) < BOUND_S, f"/healthz waited {max(latencies):.2f} s"


@pytest.mark.slow
def test_health_answers_while_the_cascade_checks_a_long_small_answer(
    scripted: Scripted, start_proxy: ProxyFactory
) -> None:
    """A client can ask the small tier for a very long answer; checking it must not hold the loop."""
    content = SUMS * ((8 * 1024 * 1024) // len(SUMS))
    answer = {
        "id": "x",
        "object": "chat.completion",
        "model": "small",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    }
    small = scripted([(0.0, orjson.dumps(answer))], content_type=b"application/json")[1]
    large = scripted([(0.0, orjson.dumps({**answer, "model": "large"}))], content_type=b"application/json")[1]
    proxy = start_proxy(
        {Tier.SMALL: f"{small.url}/v1", Tier.LARGE: f"{large.url}/v1"},
        **{"routing.enabled": True, "routing.mode": "cascade", "routing.ab_test_ratio": 1.0},
    )
    body = orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": "Add up the numbers 12 and 34."}]})
    latencies, answers = health_while(proxy.url, post(proxy.url, "/v1/chat/completions", body))
    assert [answer.status_code for answer in answers] == [200] * 3
    assert all(answer.headers["x-routeproxy-mode"] == "cascade" for answer in answers)
    assert len(latencies) >= 3
    assert max(latencies) < BOUND_S, f"/healthz waited {max(latencies):.2f} s"
