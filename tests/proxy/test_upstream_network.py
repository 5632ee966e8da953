"""The upstream hop through what sits between the proxy and its upstream: HTTP proxies and TLS (with its own CA)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import http
from support.raw_upstream import RawUpstream, raw_upstream
from support.upstreams import fast_profile, settings_for

from routeproxy.api.app import create_app
from routeproxy.errors import ConfigError
from routeproxy.settings import Tier, load_settings
from routeproxy.sim.simulator import create_simulator_app
from routeproxy.sim.threadserver import ThreadedServer

CHAT = {"model": "auto", "messages": [{"role": "user", "content": "Write a haiku about rain"}]}


def chat(proxy: ThreadedServer) -> httpx.Response:
    return http.post(f"{proxy.url}/v1/chat/completions", json=CHAT, timeout=20)


@contextlib.contextmanager
def proxy_with(upstream_url: str, environ: dict[str, str] | None = None, **overrides: Any) -> Iterator[ThreadedServer]:
    """A routeproxy with both tiers at ``upstream_url``, started with the given environment."""
    settings = settings_for({Tier.SMALL: upstream_url, Tier.LARGE: upstream_url}, environ, **overrides)
    with ThreadedServer(create_app(settings)) as server:
        yield server


# -- HTTP(S)_PROXY / NO_PROXY --


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def forward_proxy(recorder: RawUpstream, conn: socket.socket) -> None:
    """A recording HTTP proxy: absolute-form requests are forwarded, CONNECT opens a tunnel."""
    while request := recorder.read_request(conn):
        method, target, _ = request.split(b"\r\n", 1)[0].split(b" ")
        if method == b"CONNECT":
            host, port = target.rsplit(b":", 1)
            with socket.create_connection((host.decode(), int(port))) as upstream:
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                back = threading.Thread(target=_pipe, args=(upstream, conn), daemon=True)
                back.start()
                _pipe(conn, upstream)
                back.join(10)
            return
        url = httpx.URL(target.decode())
        head, _, body = request.partition(b"\r\n\r\n")
        lines = [line for line in head.split(b"\r\n")[1:] if not line.lower().startswith(b"connection:")]
        forwarded = b"\r\n".join([b"%s %s HTTP/1.1" % (method, url.raw_path), *lines, b"connection: close"])
        with socket.create_connection((url.host, url.port or 80)) as upstream:
            upstream.sendall(forwarded + b"\r\n\r\n" + body)
            while chunk := upstream.recv(65536):
                conn.sendall(chunk)
        return  # the upstream closed after its answer, and so do we


@pytest.fixture
def simulator() -> Iterator[ThreadedServer]:
    with ThreadedServer(create_simulator_app(fast_profile(Tier.LARGE))) as server:
        yield server


def test_http_proxy_from_the_environment_carries_the_request(simulator: ThreadedServer) -> None:
    with raw_upstream(forward_proxy) as recorder:
        environ = {"HTTP_PROXY": f"http://127.0.0.1:{recorder.port}"}
        with proxy_with(f"{simulator.url}/v1", environ) as proxy:
            answer = chat(proxy)
        assert answer.status_code == 200
        assert answer.json()["object"] == "chat.completion"
        request_line = recorder.requests[0].split(b"\r\n")[0]
        assert request_line == f"POST {simulator.url}/v1/chat/completions HTTP/1.1".encode()


def test_no_proxy_sends_the_request_direct(simulator: ThreadedServer) -> None:
    with raw_upstream(forward_proxy) as recorder:
        environ = {"http_proxy": f"http://127.0.0.1:{recorder.port}", "NO_PROXY": "localhost,127.0.0.1"}
        with proxy_with(f"{simulator.url}/v1", environ) as proxy:
            assert chat(proxy).status_code == 200
        assert recorder.requests == []


@pytest.mark.parametrize(
    ("environ", "url", "proxy"),
    [
        ({}, "http://up:8000/v1", None),
        ({"HTTP_PROXY": "http://p:3128"}, "http://up:8000/v1", "http://p:3128"),
        ({"HTTP_PROXY": "http://p:3128"}, "https://up/v1", None),
        ({"HTTPS_PROXY": "http://p:3128"}, "https://up/v1", "http://p:3128"),
        ({"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2"}, "https://up/v1", "http://lower:2"),
        ({"https_proxy": "http://lower:2", "HTTPS_PROXY": "http://upper:1"}, "https://up/v1", "http://lower:2"),
        ({"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "example.com,up"}, "https://up/v1", None),
        ({"HTTPS_PROXY": "http://p:3128", "NO_PROXY": ".hf.co"}, "https://router.hf.co/v1", None),
        ({"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "*"}, "https://up/v1", None),
        ({"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "other"}, "https://up/v1", "http://p:3128"),
    ],
)
def test_the_proxy_for_each_tier_is_read_from_the_environment_once(
    environ: dict[str, str], url: str, proxy: str | None
) -> None:
    settings = load_settings(environ=environ, overrides={"tiers.large.base_url": url})
    assert settings.tiers[Tier.LARGE].proxy == proxy
    assert "3128" not in repr(settings.tiers[Tier.LARGE])  # a proxy URL may carry credentials


# -- TLS, with a CA made for the test --


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by the CA."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("pki")
    files = {name: folder / f"{name}.pem" for name in ("ca", "ca_key", "server", "server_key", "client", "client_key")}
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *key, "-days", "1", "-subj", "/CN=routeproxy test CA",
            "-keyout", files["ca_key"], "-out", files["ca"])  # fmt: skip
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        request, extensions = folder / f"{name}.csr", folder / f"{name}.ext"
        extensions.write_text(extension + "\n")
        openssl("req", *key, "-subj", f"/CN=routeproxy test {name}", "-keyout", files[f"{name}_key"], "-out", request)
        openssl("x509", "-req", "-in", request, "-CA", files["ca"], "-CAkey", files["ca_key"], "-CAcreateserial",
                "-days", "1", "-extfile", extensions, "-out", files[name])  # fmt: skip
    return files


@contextlib.contextmanager
def tls_simulator(pki: dict[str, Path], *, require_client_cert: bool = False) -> Iterator[str]:
    options: dict[str, Any] = {"ssl_certfile": str(pki["server"]), "ssl_keyfile": str(pki["server_key"])}
    if require_client_cert:
        options.update(ssl_ca_certs=str(pki["ca"]), ssl_cert_reqs=ssl.CERT_REQUIRED)
    with ThreadedServer(create_simulator_app(fast_profile(Tier.LARGE)), **options) as server:
        yield f"https://127.0.0.1:{server.port}/v1"


def test_an_upstream_certificate_from_an_unknown_ca_is_refused(pki: dict[str, Path]) -> None:
    with tls_simulator(pki) as url, proxy_with(url) as proxy:
        answer = chat(proxy)
    assert answer.status_code == 502
    error = answer.json()["error"]
    assert error["code"] == "connect_error"
    assert "certificate verify failed" in error["message"]


def test_the_tiers_ca_bundle_trusts_the_upstream(pki: dict[str, Path]) -> None:
    with tls_simulator(pki) as url, proxy_with(url, **{"tiers.large.ca_bundle": str(pki["ca"])}) as proxy:
        assert chat(proxy).status_code == 200


def test_verification_can_be_switched_off_per_tier(pki: dict[str, Path]) -> None:
    with tls_simulator(pki) as url, proxy_with(url, **{"tiers.large.tls_verify": False}) as proxy:
        assert chat(proxy).status_code == 200


def test_mutual_tls_presents_the_tiers_client_certificate(pki: dict[str, Path]) -> None:
    trusted = {"tiers.large.ca_bundle": str(pki["ca"])}
    client = {"tiers.large.client_cert": str(pki["client"]), "tiers.large.client_key": str(pki["client_key"])}
    with tls_simulator(pki, require_client_cert=True) as url:
        with proxy_with(url, **trusted) as proxy:
            assert chat(proxy).status_code == 502  # no certificate: the upstream hangs up
        with proxy_with(url, **trusted, **client) as proxy:
            assert chat(proxy).status_code == 200


def test_https_through_a_connect_tunnel(pki: dict[str, Path]) -> None:
    with tls_simulator(pki) as url, raw_upstream(forward_proxy) as recorder:
        environ = {"HTTPS_PROXY": f"http://127.0.0.1:{recorder.port}"}
        with proxy_with(url, environ, **{"tiers.large.ca_bundle": str(pki["ca"])}) as proxy:
            assert chat(proxy).status_code == 200
        port = url.split(":")[2].split("/")[0]
        assert recorder.requests[0].startswith(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n".encode())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tiers.small.client_key": "{client_key}"}, "tiers.small.client_key is set without tiers.small.client_cert"),
        ({"tiers.small.ca_bundle": "/nonexistent/ca.pem"}, "tiers.small.ca_bundle = '/nonexistent/ca.pem'"),
        ({"tiers.small.ca_bundle": "{client_key}"}, "tiers.small: cannot load the TLS files"),
    ],
)
def test_bad_tls_files_fail_at_start_naming_the_setting(
    pki: dict[str, Path], overrides: dict[str, str], message: str
) -> None:
    values = {key: value.format(client_key=pki["client_key"]) for key, value in overrides.items()}
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        create_app(load_settings(environ={}, overrides=values))
