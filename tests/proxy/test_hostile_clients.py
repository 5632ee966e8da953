"""Slow and hostile clients on raw sockets: they get a bounded answer and cannot lock other clients out."""

from __future__ import annotations

import contextlib
import select
import time
from collections.abc import Callable, Iterator

import orjson
import pytest
from support import http
from support.sockets import raw, read_what_comes
from support.upstreams import ProxyFactory, ScriptedUpstream, fast_profile, settings_for

from routeproxy.api.app import create_app
from routeproxy.api.server import GuardedHttpToolsProtocol
from routeproxy.settings import Tier
from routeproxy.sim.simulator import create_simulator_app
from routeproxy.sim.threadserver import ThreadedServer

SIMPLE = [{"role": "user", "content": "Write a haiku about rain"}]
CHAT_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
WAIT_S = 10.0  # the most any test here waits for an answer; the limits under test are well below it


def upstreams(simulators: dict[Tier, ThreadedServer]) -> dict[Tier, str]:
    return {tier: f"{server.url}/v1" for tier, server in simulators.items()}


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[Tier, ThreadedServer]]:
    """One pair of simulated upstreams for this module (each test here starts its own proxy, or shares one)."""
    servers = {tier: ThreadedServer(create_simulator_app(fast_profile(tier))).start() for tier in Tier}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="module")
def limited(sims: dict[Tier, ThreadedServer]) -> Iterator[ThreadedServer]:
    """A proxy with short deadlines and a small body limit, served with the protocol `routeproxy serve` uses."""
    limits = {"server.header_timeout": 0.3, "server.body_timeout": 0.5, "server.max_body_bytes": 4096}
    app = create_app(settings_for(upstreams(sims), **limits))
    with ThreadedServer(app, http=GuardedHttpToolsProtocol) as server:
        yield server


def status_and_error(response: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), response[:200]
    return int(head.split()[1]), orjson.loads(body)["error"]


@pytest.mark.parametrize(
    "sent",
    [b"", CHAT_HEAD, b"POST /v1/chat/com"],
    ids=["nothing", "head-without-end", "half-a-request-line"],
)
def test_a_request_head_that_does_not_arrive_in_time_gets_408_and_the_connection_closes(
    limited: ThreadedServer, sent: bytes
) -> None:
    with raw(limited.port, WAIT_S) as sock:
        sock.sendall(sent)
        status, error = status_and_error(read_what_comes(sock))
    assert status == 408
    assert error["code"] == "header_timeout"


@pytest.mark.parametrize(
    ("extra_headers", "code"),
    [
        (b"".join(b"x-flood-%d: 1\r\n" % index for index in range(101)), "too_many_headers"),
        (b"x-big: " + b"a" * 40_000 + b"\r\n", "request_header_too_large"),
    ],
    ids=["101-header-lines", "40-kb-header"],
)
def test_header_floods_get_431_and_the_proxy_keeps_serving(
    limited: ThreadedServer, extra_headers: bytes, code: str
) -> None:
    with raw(limited.port, WAIT_S) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n" + extra_headers + b"\r\n")
        status, error = status_and_error(read_what_comes(sock))
    assert status == 431
    assert error["code"] == code
    within = http.get(f"{limited.url}/healthz", headers={f"x-ok-{index}": "1" for index in range(90)})
    assert within.status_code == 200


def test_slow_bodies_hold_no_concurrency_slot(sims: dict[Tier, ThreadedServer], start_proxy: ProxyFactory) -> None:
    """Three clients trickling their bodies, against a limit of two: a whole request still gets through."""
    proxy = start_proxy(upstreams(sims), **{"server.max_concurrent_requests": 2})
    with contextlib.ExitStack() as stack:
        for _ in range(3):
            sock = stack.enter_context(raw(proxy.port, WAIT_S))
            sock.sendall(CHAT_HEAD + b"content-length: 1000\r\n\r\n" + b'{"model": "au')
        # Each trickling body has reached the app (its head is complete); none of them may hold a slot.
        response = http.post(
            f"{proxy.url}/v1/chat/completions", json={"model": "auto", "messages": SIMPLE}, timeout=WAIT_S
        )
        assert response.status_code == 200
        assert http.get(f"{proxy.url}/readyz").json()["checks"]["inflight"] == 0


def test_a_body_that_does_not_arrive_in_time_gets_408(limited: ThreadedServer) -> None:
    with raw(limited.port, WAIT_S) as sock:
        sock.sendall(CHAT_HEAD + b"content-length: 1000\r\n\r\n" + b'{"model": "au')
        status, error = status_and_error(read_what_comes(sock))
    assert status == 408
    assert error["code"] == "body_timeout"


def test_a_413_reaches_a_client_still_sending_and_the_drain_is_bounded(limited: ThreadedServer) -> None:
    """The client keeps sending its (declared 1 GB) body after the 413 was sent, as curl or an SDK does: it reads
    the 413 rather than a reset, and the proxy stops reading the rest once the body deadline has passed."""
    received = b""
    closed = False
    with raw(limited.port, WAIT_S) as sock:
        sock.sendall(CHAT_HEAD + b"content-length: 1000000000\r\n\r\n")
        deadline = time.monotonic() + WAIT_S
        while not closed and time.monotonic() < deadline:
            try:
                sock.sendall(b"x" * 16384)
                readable, _, _ = select.select([sock], [], [], 0.02)  # poll for the answer between sends
                if readable:
                    chunk = sock.recv(65536)
                    received += chunk
                    closed = not chunk
            except OSError:  # the proxy closed the connection while we were still sending
                closed = True
    status, error = status_and_error(received)
    assert status == 413
    assert error["code"] == "payload_too_large"
    assert closed


def test_headers_named_in_connection_are_not_forwarded(
    limited: ThreadedServer, sims: dict[Tier, ThreadedServer]
) -> None:
    http.post(
        f"{limited.url}/v1/chat/completions",
        json={"model": "auto", "messages": SIMPLE},
        headers={"connection": "keep-alive, X-Hop-Secret", "x-hop-secret": "for-the-first-hop-only", "x-kept": "1"},
    )
    received = http.get(f"{sims[Tier.LARGE].url}/_sim/requests").json()[-1]["headers"]
    assert "x-hop-secret" not in received
    assert received["x-kept"] == "1"


@pytest.mark.parametrize("stream", [False, True])
def test_headers_the_upstream_names_in_connection_do_not_reach_the_client(
    scripted: Callable[..., tuple[ScriptedUpstream, ThreadedServer]], start_proxy: ProxyFactory, stream: bool
) -> None:
    """RFC 9110 section 7.6.1, the other way: what the upstream's Connection header names is for its hop only."""
    body = b'data: {"choices": []}\n\ndata: [DONE]\n\n' if stream else b'{"choices": []}'
    content_type = b"text/event-stream" if stream else b"application/json"
    headers = [(b"connection", b"X-Upstream-Hop"), (b"x-upstream-hop", b"internal"), (b"x-kept", b"1")]
    servers = {tier: scripted([(0.0, body)], content_type=content_type, headers=headers)[1] for tier in Tier}
    proxy = start_proxy({tier: f"{server.url}/v1" for tier, server in servers.items()})
    response = http.post(f"{proxy.url}/v1/chat/completions", json={"model": "auto", "messages": SIMPLE})
    assert response.status_code == 200
    assert "x-upstream-hop" not in response.headers
    assert response.headers["x-kept"] == "1"


def test_json_nested_past_what_the_serializer_handles_is_400(limited: ThreadedServer) -> None:
    nested = b'{"model":"auto","messages":[{"role":"user","content":"hi"}],"metadata":' + b"[" * 300 + b"]" * 300
    response = http.post(
        f"{limited.url}/v1/chat/completions", content=nested + b"}", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "nested more than 254 levels" in response.json()["error"]["message"]


def test_client_strings_are_never_echoed_unbounded(
    sims: dict[Tier, ThreadedServer], start_proxy: ProxyFactory, capfd: pytest.CaptureFixture[str]
) -> None:
    proxy = start_proxy(upstreams(sims), **{"server.admin_token": "admin-token-1234567890"})
    huge = "m" * 5_000_000
    with http.client(base_url=proxy.url, timeout=WAIT_S) as client:
        unknown_model = client.post("/v1/chat/completions", json={"model": huge, "messages": SIMPLE})
        bad_setting = client.put(
            "/v1/model-routing/config",
            json={"k" * 60_000: 1},
            headers={"authorization": "Bearer admin-token-1234567890"},
        )
        bad_part = client.post(
            "/v1/chat/completions",
            json={"model": "auto", "messages": [{"role": "user", "content": [{"type": huge}]}]},
        )
        bad_type = client.post("/v1/chat/completions", content=b"{}", headers={"content-type": "text/" + "t" * 20_000})
        missing_path = client.get("/" + "p" * 20_000)
    assert unknown_model.status_code == 404
    assert bad_setting.status_code == bad_part.status_code == 400
    assert bad_type.status_code == 415
    assert missing_path.status_code == 404
    for response in (unknown_model, bad_setting, bad_part, bad_type, missing_path):
        assert len(response.content) < 1000, response.content[:300]
    logged = capfd.readouterr()
    assert "request_rejected" in logged.out + logged.err
    assert max(len(line) for line in (logged.out + logged.err).splitlines()) < 2000
