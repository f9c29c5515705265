"""Self-tests for the fake OpenAI upstream: the other suites trust its wire bytes."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.fake_upstream import (
    Abort,
    Done,
    ErrorEvent,
    FakeUpstream,
    Forever,
    Hangup,
    Raw,
    Sleep,
    Text,
    Usage,
)

CHAT = "/v1/chat/completions"


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


def port(fake: FakeUpstream) -> int:
    p = urlsplit(fake.base_url).port
    assert p is not None
    return p


def body(marker: str, stream: bool = True, **extra: Any) -> bytes:
    messages = [{"role": "user", "content": f"hi {marker} ✨"}]
    payload = {"model": "gpt-test", "stream": stream, "messages": messages, **extra}
    return json.dumps(payload).encode()


def post(conn: http.client.HTTPConnection, path: str, data: bytes) -> Any:
    conn.request("POST", path, data, {"Content-Type": "application/json"})
    return conn.getresponse()


def raw_request(fake: FakeUpstream, data: bytes, path: str = CHAT) -> socket.socket:
    """A bare socket with a request sent, for reading chunk framing or hanging up."""
    sock = socket.create_connection(("127.0.0.1", port(fake)), timeout=5)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n"
    sock.sendall(head.encode() + data)
    return sock


def read_until(sock: socket.socket, needle: bytes) -> bytes:
    got = b""
    deadline = time.monotonic() + 5
    while needle not in got and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    assert needle in got, got
    return got


def test_chat_stream_bytes(fake: FakeUpstream) -> None:
    s = fake.script(Text("Hel"), Text("lo 😀\n"), Usage(3, 2), Done())
    conn = http.client.HTTPConnection("127.0.0.1", port(fake), timeout=5)
    resp = post(conn, CHAT, body(s.marker))
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "text/event-stream; charset=utf-8"
    assert resp.getheader("Transfer-Encoding") == "chunked"
    head = (
        'data: {"id":"chatcmpl-fake","object":"chat.completion.chunk",'
        '"created":1700000000,"model":"gpt-test","choices":'
    )
    expected = (
        head
        + '[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}\n\n'
        + head
        + '[{"index":0,"delta":{"content":"lo 😀\\n"},"finish_reason":null}]}'
        + "\n\n"
        + head
        + '[],"usage":{"prompt_tokens":3,"completion_tokens":2,'
        '"total_tokens":5}}\n\n'
        "data: [DONE]\n\n"
    ).encode()
    assert resp.read() == expected
    conn.close()
    rec = s.wait_for_request()
    assert (rec.method, rec.path, rec.marker) == ("POST", CHAT, s.marker)
    assert rec.json["model"] == "gpt-test" and rec.headers["content-type"]
    assert rec.events_sent == 4 and rec.disconnected_at is None
    assert rec.finished_at is not None and rec.finished_at >= rec.received_at


def test_each_step_is_one_chunk_and_raw_is_verbatim(fake: FakeUpstream) -> None:
    s = fake.script(Raw(b"data: \xf0\x9f"), Raw(b"\x98\x80\n\n"), ErrorEvent("boom"))
    sock = raw_request(fake, body(s.marker))
    with sock:
        got = read_until(sock, b"\r\n0\r\n\r\n")
    assert got.split(b"\r\n\r\n", 1)[1] == (
        b"8\r\ndata: \xf0\x9f\r\n4\r\n\x98\x80\n\n\r\n"
        b'3a\r\ndata: {"error":{"message":"boom","type":"server_error"}}\n\n\r\n'
        b"0\r\n\r\n"
    )


def test_responses_and_completions_formats(fake: FakeUpstream) -> None:
    s = fake.script(Text("a"), Usage(1, 2), Done())
    conn = http.client.HTTPConnection("127.0.0.1", port(fake), timeout=5)
    text = post(conn, "/v1/responses", body(s.marker)).read().decode()
    events = [block.split("\n") for block in text.strip().split("\n\n")]
    assert [e[0] for e in events] == [
        "event: response.created",
        "event: response.output_text.delta",
        "event: response.completed",
    ]
    done = json.loads(events[2][1].removeprefix("data: "))
    assert done["sequence_number"] == 2 and done["response"]["usage"] == {
        "input_tokens": 1,
        "output_tokens": 2,
        "total_tokens": 3,
    }
    text = post(conn, "/v1/completions", body(s.marker)).read().decode()
    assert '"object":"text_completion"' in text and '"text":"a"' in text
    plain = json.loads(post(conn, CHAT, body(s.marker, stream=False)).read())
    assert plain["choices"][0]["message"]["content"] == "a"
    assert post(conn, "/v1/nope", b"{}").status == 404
    conn.close()


def test_error_status_script(fake: FakeUpstream) -> None:
    error = {
        "error": {
            "message": "Rate limit reached",
            "type": "requests",
            "code": "rate_limit_exceeded",
        }
    }
    s = fake.script(
        status=429, headers={"Retry-After": "7", "retry-after-ms": "10"}, body=error
    )
    conn = http.client.HTTPConnection("127.0.0.1", port(fake), timeout=5)
    resp = post(conn, CHAT, body(s.marker))
    assert resp.status == 429 and resp.getheader("Retry-After") == "7"
    assert resp.getheader("retry-after-ms") == "10"
    assert json.loads(resp.read()) == error
    conn.close()
    assert s.wait_for_request().finished_at is not None


def test_close_during_sleep_is_seen_quickly(fake: FakeUpstream) -> None:
    s = fake.script(Text("a"), Sleep(10), Done())
    sock = raw_request(fake, body(s.marker))
    read_until(sock, b"[{")
    time.sleep(0.2)
    closed_at = time.monotonic()
    sock.close()
    assert 0.15 < s.wait_disconnected(timeout=2) < 2
    rec = s.requests[0]
    assert rec.disconnected_at is not None and rec.disconnected_at - closed_at < 0.5
    assert rec.finished_at is None and rec.events_sent == 1


def test_forever_until_client_leaves(fake: FakeUpstream) -> None:
    s = fake.script(Forever("tick ", interval=0.02))
    sock = raw_request(fake, body(s.marker))
    read_until(sock, b"tick ")
    time.sleep(0.1)
    sock.close()
    assert s.wait_disconnected(timeout=2) < 0.5
    assert s.requests[0].events_sent >= 2 and s.requests[0].finished_at is None
    fake.wait_open_connections(0)


def test_abort_resets_connection(fake: FakeUpstream) -> None:
    s = fake.script(Text("a"), Abort())
    conn = http.client.HTTPConnection("127.0.0.1", port(fake), timeout=5)
    resp = post(conn, CHAT, body(s.marker))
    with pytest.raises((http.client.IncompleteRead, ConnectionResetError)):
        resp.read()
    conn.close()
    fake.wait_open_connections(0)


def test_tls_with_ca_file() -> None:
    with FakeUpstream(tls=True) as fake:
        assert fake.base_url.startswith("https://127.0.0.1:") and fake.ca_file
        ctx = ssl.create_default_context(cafile=fake.ca_file)
        conn = http.client.HTTPSConnection(
            "127.0.0.1", port(fake), timeout=5, context=ctx
        )
        assert b'"content":"Hello"' in post(conn, CHAT, body("no-marker")).read()
        s = fake.script(Text("x"), Sleep(10))
        resp = post(conn, CHAT, body(s.marker))
        assert b'"content":"x"' in resp.fp.readline() + resp.fp.readline()
        conn.close()
        assert s.wait_disconnected(timeout=2) < 2
        assert fake.default_script.requests[0].marker is None


def test_keep_alive_and_connection_counts(fake: FakeUpstream) -> None:
    s = fake.script(Text("a"), Done())
    conn = http.client.HTTPConnection("127.0.0.1", port(fake), timeout=5)
    for _ in range(2):
        assert post(conn, CHAT, body(s.marker)).read().endswith(b"data: [DONE]\n\n")
    assert (fake.open_connections, fake.connections_total) == (1, 1)
    other = http.client.HTTPConnection("127.0.0.1", port(fake), timeout=5)
    post(other, CHAT, body(s.marker)).read()
    assert (fake.open_connections, fake.connections_total) == (2, 2)
    conn.close()
    other.close()
    fake.wait_open_connections(0)
    assert len(s.requests) == 3 and len(fake.requests) == 3


def test_close_does_not_hang_with_streams_in_flight() -> None:
    fake = FakeUpstream()
    s = fake.script(Forever(interval=0.01))
    sock = raw_request(fake, body(s.marker))
    idle = socket.create_connection(("127.0.0.1", port(fake)), timeout=5)
    with sock, idle:
        read_until(sock, b"tick")
        started = time.monotonic()
        fake.close()
        assert time.monotonic() - started < 3
        assert fake.open_connections == 0


def test_hangup_sends_what_came_before_then_ends_without_the_last_chunk(
    fake: FakeUpstream,
) -> None:
    s = fake.script(Text("a"), Hangup(), Text("never"))
    with raw_request(fake, body(s.marker)) as sock:
        got = read_until(sock, b"[{")
        while data := sock.recv(65536):  # a FIN, not a reset: reads end cleanly
            got += data
    assert b'"content":"a"' in got and b"never" not in got
    assert not got.endswith(b"0\r\n\r\n")
    fake.wait_open_connections(0)


def test_then_answers_the_next_request_and_the_last_script_repeats(
    fake: FakeUpstream,
) -> None:
    s = fake.script(status=503, then=fake.script(Text("ok"), Done()))
    conn = http.client.HTTPConnection("127.0.0.1", port(fake), timeout=5)
    statuses = []
    for _ in range(3):
        resp = post(conn, CHAT, body(s.marker))
        resp.read()
        statuses.append(resp.status)
    conn.close()
    assert statuses == [503, 200, 200]
    assert len(s.requests) == 3
