"""The upstream HTTP/1.1 client on the wire: raw servers on loopback that answer exactly what each test says."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from routeproxy import http1

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_server() -> Iterator[Callable[[Handler], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> str:
        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ssl_context)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}/v1"

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    return head + await reader.readexactly(length)


def pool_for(url: str, **options: float) -> http1.Pool:
    return http1.Pool(url, connect_timeout=options.get("connect_timeout", 2.0), keepalive_expiry=4.0)


async def body_of(pool: http1.Pool, connection: http1.Connection) -> bytes:
    parts = []
    while chunk := await connection.read():
        parts.append(chunk)
    pool.release(connection)
    return b"".join(parts)


async def test_keep_alive_reuses_one_connection_and_sends_the_request_as_given(raw_server) -> None:  # type: ignore[no-untyped-def]
    seen: list[bytes] = []
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        for _ in range(3):
            seen.append(await read_request(reader))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()
        writer.close()

    pool = pool_for(await raw_server(handler))
    for _ in range(3):
        connection = await pool.request(b"/chat/completions", [(b"x-test", b"1")], b'{"a":1}')
        assert connection.status == 200
        assert await body_of(pool, connection) == b"{}"
    assert connections == 1
    assert seen[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:")
    assert b"\r\ncontent-length: 7\r\nx-test: 1\r\n\r\n" in seen[0]
    assert seen[0].endswith(b'{"a":1}')
    pool.close()


async def test_a_stale_keep_alive_connection_is_retried_on_a_fresh_one(raw_server) -> None:  # type: ignore[no-untyped-def]
    calls = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        calls += 1
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        if calls == 1:
            # Read the second request on this connection, then hang up without answering: a server closing an
            # idle connection just as the client reuses it.
            await read_request(reader)
        writer.close()

    pool = pool_for(await raw_server(handler))
    first = await pool.request(b"/chat/completions", [], b"{}")
    assert await body_of(pool, first) == b"ok"
    second = await pool.request(b"/chat/completions", [], b"{}")
    assert await body_of(pool, second) == b"ok"
    assert calls == 2
    pool.close()


async def test_chunked_bodies_arrive_as_sent_and_an_eof_delimited_body_ends_at_close(raw_server) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        if b"x-kind: chunked" in request:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            for event in (b"data: 1\n\n", b"data: 2\n\n"):
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                await asyncio.sleep(0.05)
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    pool = pool_for(await raw_server(handler))
    connection = await pool.request(b"/chat/completions", [(b"x-kind", b"chunked")], b"{}")
    assert [await connection.read(), await connection.read(), await connection.read()] == [
        b"data: 1\n\n",
        b"data: 2\n\n",
        b"",
    ]
    pool.release(connection)
    connection = await pool.request(b"/chat/completions", [], b"{}")
    assert await body_of(pool, connection) == b"until the end"
    assert not connection.reusable()
    pool.close()


async def test_an_interim_100_continue_is_skipped(raw_server) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 4\r\nx-a: b\r\n\r\ndone")
        await writer.drain()
        writer.close()

    pool = pool_for(await raw_server(handler))
    connection = await pool.request(b"/chat/completions", [], b"{}")
    assert connection.status == 201
    assert connection.headers == [(b"content-length", b"4"), (b"x-a", b"b")]
    assert await body_of(pool, connection) == b"done"
    pool.close()


@pytest.mark.parametrize(
    ("answer", "fails_at"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", "headers"),
        (b"", "headers"),  # closed without a byte, on a new connection: nothing to retry
        (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort", "body"),
    ],
)
async def test_broken_answers_raise_instead_of_hanging(raw_server, answer: bytes, fails_at: str) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()

    pool = pool_for(await raw_server(handler))
    async with asyncio.timeout(5):
        if fails_at == "headers":
            with pytest.raises(http1.BrokenResponse):
                await pool.request(b"/chat/completions", [], b"{}")
        else:
            connection = await pool.request(b"/chat/completions", [], b"{}")
            with pytest.raises(http1.BrokenResponse):
                await body_of(pool, connection)
    pool.close()


async def test_refused_and_unanswered_connections() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(http1.ConnectFailed):
        await pool_for(f"http://127.0.0.1:{port}/v1").request(b"/chat/completions", [], b"{}")


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_upstreams_are_verified(
    raw_server, tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    cert, key = tls_files
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecret")
        await writer.drain()
        writer.close()

    url = await raw_server(handler, server_context)
    with pytest.raises(http1.ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):  # an unknown CA is refused
        await pool_for(url).request(b"/chat/completions", [], b"{}")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust it, as a corporate CA would be trusted
    pool = pool_for(url)
    connection = await pool.request(b"/chat/completions", [], b"{}")
    assert await body_of(pool, connection) == b"secret"
    pool.close()
