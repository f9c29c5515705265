"""Servers that speak TLS themselves notice a client that leaves, as over plain HTTP.

gunicorn with ``--certfile/--keyfile`` and ``flask run --cert`` hand the app an
``SSLSocket``, which refuses the ``MSG_PEEK`` the client watch uses. The contract
still holds: under gunicorn+gevent, a client that leaves while the upstream is
silent gets the upstream response closed within a second. The keep-alive here is
far longer than that, so only the watch can pass.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import trustme

from tests.conftest import ServerPool
from tests.fake_upstream import Done, FakeUpstream, Sleep, Text
from tests.servers import Server, ServerKind

SILENT_KEEPALIVE = {
    "STREAM_KEEPALIVE_SECONDS": "10",
    "STREAM_UPSTREAM_TIMEOUT_SECONDS": "30",
}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_servers(
    pool: ServerPool, ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    """Flask and Django under gunicorn+gevent, and ``flask run``, serving TLS."""
    folder = tmp_path_factory.mktemp("tls-server")
    cert, key = folder / "cert.pem", folder / "key.pem"
    issued = ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(cert)
    issued.private_key_pem.write_to_path(key)
    gunicorn_tls = ("--certfile", str(cert), "--keyfile", str(key))
    kinds = [
        ServerKind("flask-gunicorn-tls", "flask", True, gunicorn_tls),
        ServerKind("django-gunicorn-tls", "django", True, gunicorn_tls),
        ServerKind(
            "flask-run-tls", "flask", False, ("--cert", str(cert), "--key", str(key))
        ),
    ]
    env = {**pool.env("plain"), **SILENT_KEEPALIVE}
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    servers = {
        kind.name: Server(kind, env, folder / f"{kind.name}.log", tls=trust)
        for kind in kinds
    }
    try:
        for server in servers.values():
            server.start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.mark.parametrize(
    "name", ["flask-gunicorn-tls", "django-gunicorn-tls", "flask-run-tls"]
)
def test_a_tls_client_that_leaves_during_silence_closes_the_upstream_within_a_second(
    tls_servers: dict[str, Server], upstream: FakeUpstream, ca: trustme.CA, name: str
) -> None:
    server = tls_servers[name]
    script = upstream.script(Text("thinking"), Sleep(20), Done())
    assert server.tls is not None
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with server.tls.wrap_socket(raw, server_hostname="127.0.0.1") as client:
        path = f"/completionChat?prompt={quote(script.marker)}"
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        received = b""
        while b"data: thinking" not in received:
            data = client.recv(65536)
            assert data, received
            received += data
        assert received.startswith(b"HTTP/1.1 200"), received
    closed_at = time.monotonic()
    script.wait_disconnected(timeout=15)
    [request] = script.requests
    assert request.disconnected_at is not None
    assert request.disconnected_at - closed_at < 1.0, server.log()[-2000:]
    assert "Traceback" not in server.log(), server.log()[-2000:]
