"""The keep-alive clock starts with the request, under real servers.

With a silent upstream, the headers and the first ``: keep-alive`` reach the client
one ``STREAM_KEEPALIVE_SECONDS`` after the request, not two: a proxy with a
first-byte limit (Heroku's router: 30 s) must never cut a default stream. Then one
keep-alive per interval. That holds too for an upstream that holds back its status
line and headers, and a client that leaves meanwhile cancels the upstream request.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest

from tests.conftest import LONG_KEEPALIVE_SECONDS, ServerPool
from tests.fake_upstream import Done, FakeUpstream, Script, Sleep, Text
from tests.servers import DJANGO_GUNICORN, FLASK_DEV, FLASK_GUNICORN, Server, ServerKind

KEEPALIVE = b": keep-alive\n\n"


def arrivals(
    port: int, path: str, until: bytes, limit: float
) -> list[tuple[float, bytes]]:
    """Each read of the raw response with its time since the request was sent."""
    received: list[tuple[float, bytes]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        sent = time.monotonic()
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        while until not in b"".join(data for _, data in received):
            data = sock.recv(65536)
            if not data:
                break
            received.append((time.monotonic() - sent, data))
    return received


# The clock's two relays (gevent, threads) under both apps; each is asked at once,
# since each check mostly waits out its intervals.
CLOCK_SERVERS = [FLASK_GUNICORN, DJANGO_GUNICORN, FLASK_DEV]
GEVENT_SERVERS = [
    pytest.param(FLASK_GUNICORN, id="flask-gunicorn"),
    pytest.param(DJANGO_GUNICORN, id="django-gunicorn"),
]


def answered_one_interval_in(
    server: Server, script: Script, limit_intervals: float
) -> list[tuple[float, bytes]]:
    """Ask for ``script``'s answer, which starts after two silent intervals: the
    headers come one interval after the request, with two keep-alives in all."""
    interval = LONG_KEEPALIVE_SECONDS
    path = f"/completionChat?prompt={quote(script.marker)}"
    received = arrivals(
        server.port, path, b"data: hi", limit=interval * limit_intervals
    )
    first_at, first = received[0]
    assert first.startswith(b"HTTP/1.1 200"), first
    assert interval * 0.9 <= first_at < interval * 1.6, received
    body = b"".join(data for _, data in received)
    assert body.count(KEEPALIVE) == 2, body
    return received


def on_each_clock_server(pool: ServerPool, check: Callable[[Server], None]) -> None:
    """``check`` each server of ``CLOCK_SERVERS`` at the same time."""
    servers = [pool.get(kind, "long-keepalive") for kind in CLOCK_SERVERS]

    def named_check(server: Server) -> None:
        try:
            check(server)
        except AssertionError as error:
            raise AssertionError(f"{server.name}: {error}") from error

    with ThreadPoolExecutor(len(servers)) as threads:
        list(threads.map(named_check, servers))


def test_the_first_keepalive_comes_one_interval_after_the_request(
    pool: ServerPool, upstream: FakeUpstream
) -> None:
    interval = LONG_KEEPALIVE_SECONDS

    def check(server: Server) -> None:
        script = upstream.script(Sleep(interval * 2.3), Text("hi"), Done())
        received = answered_one_interval_in(server, script, 5)
        first_at = received[0][0]
        # The first keep-alive comes with the headers (or right after them), the
        # second one interval later.
        keepalive_times = [at for at, data in received if KEEPALIVE in data]
        assert keepalive_times[0] < interval * 1.6, received
        second = keepalive_times[-1] if len(keepalive_times) > 1 else None
        assert second is not None and interval * 0.7 <= second - first_at, received

    on_each_clock_server(pool, check)


def test_an_upstream_slow_to_send_its_headers_still_gets_the_first_keepalive_in_time(
    pool: ServerPool, upstream: FakeUpstream
) -> None:
    interval = LONG_KEEPALIVE_SECONDS

    def check(server: Server) -> None:
        script = upstream.script(Text("hi"), Done(), headers_delay=interval * 2.5)
        answered_one_interval_in(server, script, 6)

    on_each_clock_server(pool, check)


@pytest.mark.parametrize("leave_after", [0.25, 1.5], ids=["before", "after-keepalive"])
@pytest.mark.parametrize("kind", GEVENT_SERVERS)
def test_a_client_that_leaves_while_the_upstream_holds_its_headers_cancels_it(
    pool: ServerPool, upstream: FakeUpstream, kind: ServerKind, leave_after: float
) -> None:
    """Before the first byte (the server still waits for output) or after the first
    keep-alive: either way the upstream sees the request dropped within a second."""
    server = pool.get(kind, "long-keepalive")
    interval = LONG_KEEPALIVE_SECONDS
    script = upstream.script(Text("hi"), Done(), headers_delay=interval * 4)
    path = f"/completionChat?prompt={quote(script.marker)}"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        request = script.wait_for_request()
        if leave_after > 1:
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # the first keep-alive
        leave_at = request.received_at + interval * leave_after
        time.sleep(max(0.0, leave_at - time.monotonic()))
    left_at = time.monotonic()
    script.wait_disconnected(timeout=interval * 3)
    disconnected_at = script.requests[0].disconnected_at
    assert disconnected_at is not None and disconnected_at - left_at < 1.0
    assert len(script.requests) == 1, "a cancelled request is not retried"
