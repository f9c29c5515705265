"""Lifecycle promises: a client that leaves stops the model; nothing is left behind.

The fake upstream records when our server closed its connection; the time from the
test's own close to that moment is what the contract bounds (one second).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from urllib.parse import quote

import pytest

from tests.client import get_chat, parse_sse, post_json, texts
from tests.conftest import KEEPALIVE_SECONDS, ServerPool
from tests.fake_upstream import (
    Abort,
    Done,
    FakeUpstream,
    Forever,
    Script,
    Sleep,
    Text,
    Usage,
)
from tests.servers import (
    DJANGO_GUNICORN,
    FLASK_GUNICORN,
    FLASK_GUNICORN_SHORT_TIMEOUT,
    Server,
    ServerKind,
)

CANCEL_BOUND_SECONDS = 1.0


def open_stream(server: Server, method: str, path: str, prompt: str) -> socket.socket:
    """Send a request on a raw socket and read until the first text arrives."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    if method == "GET":
        head = f"GET {path}?prompt={quote(prompt)} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        sock.sendall(head.encode())
    else:
        body = json.dumps({"prompt": prompt, "message": prompt}).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
    received = b""
    while b"tick" not in received and b"first" not in received:
        data = sock.recv(65536)
        assert data, f"the server closed the stream early: {received!r}"
        received += data
    return sock


def close_and_time(sock: socket.socket, script: Script) -> float:
    """Close the client socket; seconds until the upstream saw its request closed."""
    record = script.requests[-1]
    closed_at = time.monotonic()
    sock.close()
    deadline = closed_at + 15
    while record.disconnected_at is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert record.disconnected_at is not None, "the upstream was never closed"
    return record.disconnected_at - closed_at


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/completionChat"),
        ("GET", "/completion"),
        ("POST", "/completions/chat"),
        ("POST", "/api/stream"),
    ],
)
def test_client_disconnect_closes_the_upstream_within_a_second(
    server: Server, fake: FakeUpstream, method: str, path: str
) -> None:
    script = fake.script(Forever("tick ", interval=0.05, limit_seconds=30))
    sock = open_stream(server, method, path, f"go {script.marker}")
    elapsed = close_and_time(sock, script)
    assert elapsed <= CANCEL_BOUND_SECONDS
    record = script.requests[-1]
    assert record.finished_at is None  # the upstream never ran to its end


def test_client_disconnect_while_the_upstream_is_silent(
    server: Server, fake: FakeUpstream
) -> None:
    """gunicorn+gevent and flask run notice at once; runserver at a keep-alive write."""
    script = fake.script(Text("first"), Sleep(30), Text("never"), Done())
    sock = open_stream(server, "GET", "/completionChat", f"think {script.marker}")
    elapsed = close_and_time(sock, script)
    if server.kind.name == "django-runserver":
        # A write to a closed socket succeeds once (the peer answers with RST); the
        # next keep-alive write fails.
        assert elapsed <= 2 * KEEPALIVE_SECONDS + CANCEL_BOUND_SECONDS
    else:
        assert elapsed <= CANCEL_BOUND_SECONDS


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _settle(measure, target: int, timeout: float = 5.0) -> int:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    value = measure()
    while value > target and time.monotonic() < deadline:
        time.sleep(0.05)
        value = measure()
    return value


def test_finished_failed_and_cancelled_streams_leave_nothing_behind(
    server: Server, fake: FakeUpstream
) -> None:
    pid = server.worker_pid()
    warm = fake.script(Text("warm"), Done())
    get_chat(server, f"w {warm.marker}")
    time.sleep(0.3)
    fds, threads = _fd_count(pid), _thread_count(pid)
    upstream_open = fake.open_connections

    finished = fake.script(Text("a"), Done())
    failed = fake.script(Text("a"), Sleep(0.3), Abort())
    cancelled = fake.script(Forever(limit_seconds=30))
    silent = fake.script(Text("first"), Sleep(30))
    for _ in range(3):
        assert get_chat(server, f"f {finished.marker}")[0] == 200
        answer = post_json(
            server, "/completions/chat", {"prompt": f"x {failed.marker}"}
        )
        assert answer[0] == 200, answer
        close_and_time(
            open_stream(server, "POST", "/api/stream", f"c {cancelled.marker}"),
            cancelled,
        )
        close_and_time(
            open_stream(server, "GET", "/completionChat", f"s {silent.marker}"), silent
        )

    # Pooled keep-alive connections may stay open: at most one more than before.
    assert (
        _settle(lambda: fake.open_connections, upstream_open + 1) <= upstream_open + 1
    )
    assert _settle(lambda: _fd_count(pid), fds + 1) <= fds + 1
    assert _settle(lambda: _thread_count(pid), threads) <= threads


SEQUENTIAL_REQUESTS = 100
MAX_NEW_UPSTREAM_CONNECTIONS = 3


@pytest.mark.parametrize("path", ["/completionChat", "/api/stream"])
def test_sequential_streams_reuse_upstream_connections(
    server: Server, fake: FakeUpstream, path: str
) -> None:
    """A finished stream hands its connection back: no TCP+TLS handshake per answer."""
    script = fake.script(Text("pooled"), Usage(1, 1), Done())
    get_chat(server, f"warm {script.marker}", path)  # the pool's first connection
    opened_before = fake.connections_total
    for _ in range(SEQUENTIAL_REQUESTS):
        if path == "/api/stream":
            response = post_json(server, path, {"message": f"r {script.marker}"})
            assert response[:1] + response[2:] == (200, b"pooled")
        else:
            response = get_chat(server, f"r {script.marker}", path)
            assert response[0] == 200 and texts(parse_sse(response[2])) == ["pooled"]
    opened = fake.connections_total - opened_before
    assert opened <= MAX_NEW_UPSTREAM_CONNECTIONS


@pytest.mark.parametrize(
    ("kind", "config", "streams"),
    [
        (FLASK_GUNICORN, "crowd", 1000),
        (DJANGO_GUNICORN, "crowd", 1000),
        (FLASK_GUNICORN, "tls-crowd", 200),
        (DJANGO_GUNICORN, "tls-crowd", 200),
    ],
    ids=[
        "flask-gunicorn",
        "django-gunicorn",
        "flask-gunicorn-tls",
        "django-gunicorn-tls",
    ],
)
def test_one_gevent_worker_serves_many_concurrent_streams(
    pool: ServerPool,
    kind: ServerKind,
    config: str,
    streams: int,
) -> None:
    """The contract's 1,000 streams per worker (200 over TLS: the fake's handshakes
    are the bottleneck there), every one with the exact bytes."""
    server = pool.get(kind, config)
    fake = pool.upstream(config)
    # Paced like a model, but slowly: the point is a thousand streams open at once,
    # not throughput (which `make bench` measures); 20k chunks/s would saturate the
    # worker.
    deltas = [f"word{i} " for i in range(8)] + ["multi\nline 🎉"]
    steps = []
    for delta in deltas:
        steps += [Text(delta), Sleep(0.25)]
    script = fake.script(*steps, Done())
    expected = (
        b"".join(
            b"".join(b"data: " + line.encode() + b"\n" for line in d.split("\n"))
            + b"\n"
            for d in deltas
        )
        + b"data: [DONE]\n\n"
    )
    paths = [
        f"/completionChat?prompt=n{i}+{quote(script.marker)}" for i in range(streams)
    ]
    bodies = asyncio.run(_fetch_all(server.port, paths))
    wrong = [b for b in bodies if b != expected]
    assert not wrong, f"{len(wrong)} of {streams} streams wrong, e.g. {wrong[0]!r}"
    assert len(script.requests) == streams


async def _fetch_all(port: int, paths: list[str]) -> list[bytes | BaseException]:
    """Every path at once, from one thread: a thousand client threads would starve
    the fake upstream in this same process and make the clients the bottleneck."""

    async def fetch(path: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            # HTTP/1.0: the body ends when the server closes, no chunks to decode.
            writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            head, _, body = (await reader.read()).partition(b"\r\n\r\n")
        finally:
            writer.close()
            await writer.wait_closed()
        assert head.split(b" ", 2)[1] == b"200", head
        # Under this load the fake upstream may pause past the keep-alive interval:
        # the comments it then earns are part of a correct body.
        return body.replace(b": keep-alive\n\n", b"")

    tasks = [asyncio.wait_for(fetch(path), 90) for path in paths]
    return await asyncio.gather(*tasks, return_exceptions=True)


def test_no_stream_is_cut_by_the_worker_timeout(
    pool: ServerPool, upstream: FakeUpstream
) -> None:
    server = pool.get(FLASK_GUNICORN_SHORT_TIMEOUT)
    script = upstream.script(
        Text("a"), Sleep(1.5), Text("b"), Sleep(1.5), Text("c"), Done()
    )
    status, _, body = get_chat(server, f"long {script.marker}", timeout=30)
    assert status == 200
    assert texts(parse_sse(body)) == ["a", "b", "c"]
    assert "WORKER TIMEOUT" not in server.log()
