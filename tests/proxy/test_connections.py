"""How connections end: an early answer every client reads, HTTP/1.0 streams, idle keep-alive connections."""

from __future__ import annotations

import urllib.error
import urllib.request

import httpx
import openai
import orjson
import pytest
from support.sockets import raw, read_until_closed
from support.upstreams import ProxyFactory

from routeproxy.settings import Tier, load_settings
from routeproxy.sim.threadserver import ThreadedServer

WAIT_S = 30.0  # the most a client here waits for an answer: an 11 MiB upload on a busy machine, far below it


def upstreams(simulators: dict[Tier, ThreadedServer]) -> dict[Tier, str]:
    return {tier: f"{server.url}/v1" for tier, server in simulators.items()}


def over_the_limit_body() -> bytes:
    """A chat body over the default 10 MiB limit (11 MiB): a client sending it takes many round trips."""
    content = "x" * (11 * 1024 * 1024)
    return orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": content}]})


def test_a_client_that_sends_its_whole_body_before_reading_gets_the_413(proxy: ThreadedServer) -> None:
    """urllib sends `Connection: close` and writes the whole body before it reads: the proxy must keep reading
    (and dropping) the body after its 413, or the kernel's reset destroys the 413 before urllib reads it."""
    request = urllib.request.Request(
        f"{proxy.url}/v1/chat/completions", data=over_the_limit_body(), headers={"content-type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=WAIT_S)
    with caught.value as answer:
        assert answer.code == 413
        assert answer.headers["connection"] == "close"
        assert orjson.loads(answer.read())["error"]["code"] == "payload_too_large"


def test_the_openai_sdk_gets_the_413_of_a_body_over_the_limit(proxy: ThreadedServer) -> None:
    content = "x" * (11 * 1024 * 1024)
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0, timeout=WAIT_S)
    with client, pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": content}])
    assert caught.value.status_code == 413
    assert caught.value.code == "payload_too_large"


def test_a_refusal_before_the_body_is_read_reaches_a_client_still_sending(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    """A 401 (no client key) is decided before the body is read: the same lingering close applies."""
    proxy = start_proxy(upstreams(simulators), **{"server.api_keys": "sk-right"})
    body = orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": "x" * (4 * 1024 * 1024)}]})
    request = urllib.request.Request(
        f"{proxy.url}/v1/chat/completions", data=body, headers={"content-type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=WAIT_S)
    with caught.value as answer:
        assert answer.code == 401


def test_an_http_1_0_client_gets_a_stream_delimited_by_the_close(proxy: ThreadedServer) -> None:
    """HTTP/1.0 has no chunked coding (RFC 9112 section 6.1): the stream's bytes come as they are, then the close."""
    body = orjson.dumps({"model": "auto", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    head = b"POST /v1/chat/completions HTTP/1.0\r\nhost: x\r\ncontent-type: application/json\r\n"
    with raw(proxy.port, WAIT_S) as sock:
        sock.sendall(head + b"content-length: %d\r\n\r\n" % len(body) + body)
        response = read_until_closed(sock)
    status_head, _, payload = response.partition(b"\r\n\r\n")
    lines = status_head.lower().split(b"\r\n")
    assert lines[0].startswith(b"http/1.1 200")
    assert not any(line.startswith((b"transfer-encoding", b"content-length")) for line in lines)
    assert b"connection: close" in lines
    events = [event for event in payload.split(b"\n\n") if event]
    assert events[-1] == b"data: [DONE]"
    assert all(event.startswith(b"data: ") for event in events)
    chunk = orjson.loads(events[0].removeprefix(b"data: "))
    assert chunk["object"] == "chat.completion.chunk"


def test_an_http_1_0_client_still_gets_whole_answers_with_their_length(proxy: ThreadedServer) -> None:
    body = orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": "hi"}]})
    head = b"POST /v1/chat/completions HTTP/1.0\r\nhost: x\r\ncontent-type: application/json\r\n"
    with raw(proxy.port, WAIT_S) as sock:
        sock.sendall(head + b"content-length: %d\r\n\r\n" % len(body) + body)
        response = read_until_closed(sock)
    status_head, _, payload = response.partition(b"\r\n\r\n")
    length = [line for line in status_head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
    assert length == [b"content-length: %d" % len(payload)]
    assert orjson.loads(payload)["object"] == "chat.completion"


def test_idle_connections_are_kept_longer_than_clients_keep_them() -> None:
    """A client that reuses a connection idle for about as long as the proxy keeps it races the proxy's close
    (a POST that lost that race is not retried): the proxy must keep idle connections longer than the pools in
    front of it do, httpx's (the openai SDK's) included."""
    default = load_settings(environ={}).server.keepalive_timeout
    assert default > httpx.Limits(max_connections=1).keepalive_expiry  # type: ignore[operator]
    assert default > 60.0  # the idle timeout of AWS load balancers and nginx's upstream keep-alive pools


def test_the_proxy_closes_a_connection_idle_past_its_keepalive_timeout(
    simulators: dict[Tier, ThreadedServer], start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(upstreams(simulators), **{"server.keepalive_timeout": 0.2})
    with raw(proxy.port, WAIT_S) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        answered = sock.recv(65536)
        assert answered.startswith(b"HTTP/1.1 200")
        # Idle now: the proxy closes the connection once its keep-alive timeout has passed (recv returns b"").
        sock.settimeout(WAIT_S)
        assert read_until_closed(sock) == b""
