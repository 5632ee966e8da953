"""The upstream hop on the wire: upstreams that misbehave on purpose, behind a real proxy on loopback."""

from __future__ import annotations

import socket
import threading
from typing import Any

import httpx
import orjson
import pytest
from support import http
from support.raw_upstream import RawUpstream, raw_upstream, reset, response, wait_for
from support.upstreams import ProxyFactory

from routeproxy.settings import Tier

CHAT = {"model": "auto", "messages": [{"role": "user", "content": "Write a haiku about rain"}]}
ANSWER = orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion", "choices": []})


def both_tiers(url: str) -> dict[Tier, str]:
    return {Tier.SMALL: url, Tier.LARGE: url}


def chat(proxy_url: str, **changes: Any) -> httpx.Response:
    return http.post(f"{proxy_url}/v1/chat/completions", json={**CHAT, **changes}, timeout=20)


def events_of(body: bytes) -> list[bytes]:
    return [event for event in body.split(b"\n\n") if event]


# -- never sent twice --


def test_a_request_the_upstream_may_have_started_is_not_sent_again(start_proxy: ProxyFactory) -> None:
    def handler(upstream: RawUpstream, conn: socket.socket) -> None:
        upstream.read_request(conn)
        conn.sendall(response(ANSWER))  # the first request on each connection is answered, kept alive
        if upstream.read_request(conn):
            conn.close()  # the second one is read, then the connection dropped without an answer

    with raw_upstream(handler) as upstream:
        proxy = start_proxy(both_tiers(upstream.url))
        assert chat(proxy.url).status_code == 200
        second = chat(proxy.url)
        assert second.status_code == 502
        assert second.json()["error"]["code"] == "protocol_error"
        assert len(upstream.requests) == 2  # one each: the dropped request was not posted again


def test_a_pooled_connection_closed_while_idle_is_replaced_before_writing(start_proxy: ProxyFactory) -> None:
    def handler(upstream: RawUpstream, conn: socket.socket) -> None:
        upstream.read_request(conn)
        conn.sendall(response(ANSWER))  # no `connection: close`: the proxy pools it, then we close it
        conn.shutdown(socket.SHUT_WR)
        upstream.read_request(conn)  # EOF: the proxy closed its end when it saw ours

    with raw_upstream(handler) as upstream:
        proxy = start_proxy(both_tiers(upstream.url))
        assert chat(proxy.url).status_code == 200
        wait_for(lambda: upstream.closed_by_peer == 1, "the proxy to close the connection the upstream ended")
        assert chat(proxy.url).status_code == 200
        assert (len(upstream.requests), upstream.connections) == (2, 2)


# -- truncated answers --


@pytest.mark.parametrize("framing", ["close-delimited", "chunked", "content-length"])
def test_a_non_stream_body_cut_by_a_reset_is_a_502(start_proxy: ProxyFactory, framing: str) -> None:
    def handler(upstream: RawUpstream, conn: socket.socket) -> None:
        upstream.read_request(conn)
        if framing == "content-length":
            conn.sendall(response(ANSWER)[:-8])
        elif framing == "chunked":
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
            conn.sendall(b"8\r\n" + ANSWER[:8] + b"\r\n")
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n" + ANSWER[:8])
        reset(conn)

    with raw_upstream(handler) as upstream:
        proxy = start_proxy(both_tiers(upstream.url))
        answer = chat(proxy.url)
        assert answer.status_code == 502
        assert answer.json()["error"]["code"] in {"broken_response", "protocol_error"}


@pytest.mark.parametrize("framing", ["close-delimited", "chunked"])
def test_a_stream_cut_by_a_reset_ends_with_the_error_event(start_proxy: ProxyFactory, framing: str) -> None:
    first = b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'
    client_has_first = threading.Event()

    def handler(upstream: RawUpstream, conn: socket.socket) -> None:
        upstream.read_request(conn)
        if framing == "chunked":
            head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            conn.sendall(head + b"%x\r\n%s\r\n" % (len(first), first))
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n" + first)
        client_has_first.wait(10)
        reset(conn)

    with raw_upstream(handler) as upstream:
        proxy = start_proxy(both_tiers(upstream.url))
        with (
            http.client(timeout=20) as client,
            client.stream("POST", f"{proxy.url}/v1/chat/completions", json={**CHAT, "stream": True}) as stream,
        ):
            assert stream.status_code == 200
            chunks = stream.iter_raw()
            assert next(chunks) == first
            client_has_first.set()
            rest = b"".join(chunks)
        events = events_of(rest)
        assert len(events) == 1
        assert orjson.loads(events[0].removeprefix(b"data: "))["error"]["code"] == "broken_response"


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_a_body_far_past_the_read_buffer_is_relayed_byte_exact(start_proxy: ProxyFactory, framing: str) -> None:
    # 3,000 events of ~700 bytes (2 MB) in one write: the proxy's reader pauses the socket past its high-water
    # mark (twice aiohttp's 64 KiB read buffer) and must resume it each time the relay takes the buffer.
    events = [b'data: {"n":%d,"pad":"%s"}\n\n' % (i, b"x" * 680) for i in range(3000)]
    body = b"".join(events)

    def handler(upstream: RawUpstream, conn: socket.socket) -> None:
        upstream.read_request(conn)
        if framing == "chunked":
            head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            conn.sendall(head + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n")
        else:
            conn.sendall(response(body, content_type=b"text/event-stream"))

    with raw_upstream(handler) as upstream:
        proxy = start_proxy(both_tiers(upstream.url))
        with (
            http.client(timeout=20) as client,
            client.stream("POST", f"{proxy.url}/v1/chat/completions", json={**CHAT, "stream": True}) as stream,
        ):
            assert stream.status_code == 200
            assert b"".join(stream.iter_raw()) == body


def test_a_large_chunked_answer_ends_when_its_last_chunk_comes(start_proxy: ProxyFactory) -> None:
    """9 MB in one write, the last chunk with it, the connection kept open: the reader pauses the parser past its
    high-water mark, and must let it finish the body when it resumes (aiohttp resumes it with an empty read), or
    the answer waits for a close that never comes. Four requests on one kept-alive connection."""
    content = b"x" * 9_000_000
    answer = b'{"id": "chatcmpl-1", "object": "chat.completion", "choices": [], "pad": "' + content + b'"}'
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"

    def handler(upstream: RawUpstream, conn: socket.socket) -> None:
        while upstream.read_request(conn):
            conn.sendall(head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(answer), answer))

    with raw_upstream(handler) as upstream:
        proxy = start_proxy(both_tiers(upstream.url))
        for _ in range(4):
            answered = chat(proxy.url)
            assert answered.status_code == 200
            assert answered.content == answer
        assert upstream.connections == 1


@pytest.mark.parametrize("extra", ["garbage", "a whole response", "a response written later"])
def test_bytes_after_a_content_length_body_are_dropped(start_proxy: ProxyFactory, extra: str) -> None:
    forged = response(b'{"forged":true}')
    client_has_answer = threading.Event()

    def handler(upstream: RawUpstream, conn: socket.socket) -> None:
        while upstream.read_request(conn):
            if extra == "a response written later":
                conn.sendall(response(ANSWER))
                client_has_answer.wait(10)
                conn.sendall(forged)  # to a connection idle in the proxy's pool
            else:
                conn.sendall(response(ANSWER, extra=b"GARBAGE" if extra == "garbage" else forged))

    with raw_upstream(handler) as upstream:
        proxy = start_proxy(both_tiers(upstream.url))
        first = chat(proxy.url)
        assert (first.status_code, first.content) == (200, ANSWER)
        client_has_answer.set()
        # The connection that carried the extra bytes is closed, never asked again.
        wait_for(lambda: upstream.closed_by_peer == 1, "the proxy to close the desynchronised connection")
        second = chat(proxy.url)
        assert (second.status_code, second.content) == (200, ANSWER)
        assert (len(upstream.requests), upstream.connections) == (2, 2)


def test_a_mixed_case_event_stream_media_type_is_streamed(scripted: Any, start_proxy: ProxyFactory) -> None:
    events = [b'data: {"n":1}\n\n', b"data: [DONE]\n\n"]
    _, upstream = scripted([(0, event) for event in events], content_type=b"Text/Event-Stream; charset=UTF-8")
    proxy = start_proxy(both_tiers(f"{upstream.url}/v1"))
    answer = chat(proxy.url, stream=True)
    assert answer.content == b"".join(events)
    assert "content-length" not in answer.headers  # relayed as a stream, not read whole
    assert answer.headers.get_list("x-accel-buffering") == ["no"]
    stats = http.get(f"{proxy.url}/v1/model-routing/stats").json()
    assert stats["streams"]["8b"] == 1


def test_an_sse_event_ending_in_lf_crlf_is_passed_on_at_once(start_proxy: ProxyFactory) -> None:
    first, last = b'data: {"n":1}\n\r\n', b"data: [DONE]\r\n\r\n"
    client_has_first = threading.Event()

    def handler(upstream: RawUpstream, conn: socket.socket) -> None:
        upstream.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n" + first)
        client_has_first.wait(10)
        conn.sendall(last)
        conn.close()

    with raw_upstream(handler) as upstream:
        proxy = start_proxy(both_tiers(upstream.url))
        with (
            http.client(timeout=20) as client,
            client.stream("POST", f"{proxy.url}/v1/chat/completions", json={**CHAT, "stream": True}) as stream,
        ):
            chunks = stream.iter_raw()
            got_first = next(chunks)
            client_has_first.set()
            rest = b"".join(chunks)
        assert (got_first, rest) == (first, last)


def test_a_partial_event_over_the_cap_ends_the_stream_with_an_error_event(start_proxy: ProxyFactory) -> None:
    def handler(upstream: RawUpstream, conn: socket.socket) -> None:
        upstream.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        conn.sendall(b'data: {"n":1}\n\n' + b'data: {"text":"' + b"x" * 4096)
        upstream.read_request(conn)  # returns when the proxy closes the connection

    with raw_upstream(handler) as upstream:
        proxy = start_proxy(both_tiers(upstream.url), **{"tiers.large.max_event_bytes": 1024})
        answer = chat(proxy.url, stream=True)
        events = events_of(answer.content)
        assert events[0] == b'data: {"n":1}'
        error = orjson.loads(events[1].removeprefix(b"data: "))["error"]
        assert error["code"] == "event_too_large"
        assert "tiers.large.max_event_bytes" in error["message"]
        assert len(events) == 2
        wait_for(lambda: upstream.closed_by_peer == 1, "the proxy to close the upstream connection")


def test_a_non_stream_body_over_the_cap_is_a_502_in_openai_envelope(start_proxy: ProxyFactory) -> None:
    def handler(upstream: RawUpstream, conn: socket.socket) -> None:
        while upstream.read_request(conn):
            conn.sendall(response(b'{"text":"' + b"x" * 4096 + b'"}'))

    with raw_upstream(handler) as upstream:
        proxy = start_proxy(both_tiers(upstream.url), **{"tiers.large.max_response_bytes": 1024})
        answer = chat(proxy.url)
        assert answer.status_code == 502
        error = answer.json()["error"]
        assert (error["type"], error["code"]) == ("upstream_error", "response_too_large")
        assert "tiers.large.max_response_bytes" in error["message"]


def test_x_accel_buffering_from_the_upstream_is_kept_not_doubled(scripted: Any, start_proxy: ProxyFactory) -> None:
    _, upstream = scripted([(0, b"data: [DONE]\n\n")], headers=[(b"x-accel-buffering", b"yes")])
    proxy = start_proxy(both_tiers(f"{upstream.url}/v1"))
    assert chat(proxy.url, stream=True).headers.get_list("x-accel-buffering") == ["yes"]


def test_cookies_an_upstream_sets_never_reach_another_request(scripted: Any, start_proxy: ProxyFactory) -> None:
    recorder, upstream = scripted(
        [(0, ANSWER)], content_type=b"application/json", headers=[(b"set-cookie", b"session=alice; Path=/")]
    )
    proxy = start_proxy(both_tiers(f"{upstream.url}/v1"))
    assert chat(proxy.url).status_code == 200
    assert chat(proxy.url).status_code == 200
    assert [b"cookie" in request["headers"] for request in recorder.requests] == [False, False]


# -- addressing --


def test_a_query_string_in_the_base_url_reaches_the_upstream(start_proxy: ProxyFactory) -> None:
    def handler(upstream: RawUpstream, conn: socket.socket) -> None:
        while upstream.read_request(conn):
            conn.sendall(response(ANSWER))

    with raw_upstream(handler) as upstream:
        proxy = start_proxy(both_tiers(upstream.url + "?api-version=2024-10-21"))
        assert chat(proxy.url).status_code == 200
        assert upstream.requests[0].startswith(b"POST /v1/chat/completions?api-version=2024-10-21 HTTP/1.1\r\n")


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback (::1) to serve on")
def test_an_ipv6_literal_upstream_gets_a_bracketed_host_header(start_proxy: ProxyFactory) -> None:
    def handler(upstream: RawUpstream, conn: socket.socket) -> None:
        while upstream.read_request(conn):
            conn.sendall(response(ANSWER))

    with raw_upstream(handler, host="::1") as upstream:
        proxy = start_proxy(both_tiers(upstream.url))
        assert chat(proxy.url).status_code == 200
        head = upstream.requests[0].split(b"\r\n\r\n")[0].lower()
        assert f"\r\nhost: [::1]:{upstream.port}\r\n".encode() in head + b"\r\n"


# -- connection limits --


def test_past_the_connection_limit_a_request_waits_then_gets_503_with_retry_after(start_proxy: ProxyFactory) -> None:
    release = threading.Event()

    def handler(upstream: RawUpstream, conn: socket.socket) -> None:
        while upstream.read_request(conn):
            release.wait(10)
            conn.sendall(response(ANSWER))

    with raw_upstream(handler) as upstream:
        proxy = start_proxy(
            both_tiers(upstream.url), **{"tiers.large.max_connections": 1, "tiers.large.pool_timeout": 0.2}
        )
        first: list[httpx.Response] = []
        holder = threading.Thread(target=lambda: first.append(chat(proxy.url)))
        holder.start()
        wait_for(lambda: len(upstream.requests) == 1, "the first request to take the only connection")
        refused = chat(proxy.url)
        release.set()
        holder.join(10)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("upstream_busy", "pool_timeout")
        assert first[0].status_code == 200
        assert len(upstream.requests) == 1  # the refused request never reached the upstream
        assert chat(proxy.url).status_code == 200  # the connection is free again
