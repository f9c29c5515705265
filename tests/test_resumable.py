"""CONTRACT.md's "Resumable streams", sentence by sentence, over real HTTP.

The servers run with ``STREAM_RESUMABLE=1`` (``tests/conftest.py``): "resumable"
keeps each answer's log in the process's memory (``flask run`` and ``runserver``),
"resumable-redis" in one Redis shared by the Flask and the Django gunicorn+gevent
masters, so an answer started on one is resumed or stopped on the other, as on two
machines. The fake upstream records every request and when our server hung up:
"calls no model", "one upstream request" and "stopped within a second" are counted
and timed there.

Streams are read on raw sockets in HTTP/1.0: the body is the bytes the server
wrote, with no chunked framing, so "byte for byte" means what it says, and a test
drops a client by closing its socket mid-answer.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from shared.resumable import Answers, MemoryStore
from shared.streaming import sse_frames
from tests.client import error_of, parse_sse, texts
from tests.conftest import (
    ACCESS_TOKEN,
    GRACE,
    RESUMABLE_KEEPALIVE_SECONDS,
    RESUME_ABANDON_SECONDS,
    RESUME_TTL_SECONDS,
    ServerPool,
)
from tests.fake_upstream import (
    Done,
    ErrorEvent,
    FakeUpstream,
    Finish,
    Flood,
    Forever,
    Reasoning,
    RecordedRequest,
    Script,
    Sleep,
    Step,
    Text,
    Usage,
)
from tests.servers import (
    DJANGO_DEV,
    DJANGO_GUNICORN,
    FLASK_DEV,
    FLASK_GUNICORN,
    Server,
    ServerKind,
)
from tests.test_lifecycle import CANCEL_BOUND_SECONDS, close_and_time

CHAT_ROUTES = ["/completionChat", "/completions/chat", "/api/chat"]
GRACEFUL_TIMEOUT_SECONDS = float(GRACE["GRACEFUL_TIMEOUT"])
STREAM_LOST_BOUND_SECONDS = 10.0
READ_SECONDS = 20.0  # the longest a test reads one response
ID_LINE = re.compile(rb"id: ([^\n]*)\n")
BEARER = {"Authorization": f"Bearer {ACCESS_TOKEN}"}
SLOW_DELTAS = [f"w{i} " for i in range(8)]


@pytest.fixture
def flask_redis(pool: ServerPool) -> Server:
    """The Flask gunicorn+gevent master of the pair that shares one Redis."""
    return pool.get(FLASK_GUNICORN, "resumable-redis")


@pytest.fixture
def django_redis(pool: ServerPool) -> Server:
    """The Django gunicorn+gevent master of the pair that shares one Redis."""
    return pool.get(DJANGO_GUNICORN, "resumable-redis")


_opened: list[socket.socket] = []  # closed after each test, passed or failed


@pytest.fixture(autouse=True)
def close_readers() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


MEMORY_KINDS = [
    pytest.param(FLASK_DEV, id="flask-run"),
    pytest.param(DJANGO_DEV, id="runserver"),
]


# --- A streaming client on a raw socket -----------------------------------------------


@dataclass
class Reader:
    """One request whose answer is read as it comes. In HTTP/1.0 the body ends when
    the server closes; Werkzeug's server chunks it even so, and the chunks are
    undone here: ``body`` is what the application wrote."""

    sock: socket.socket
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes = b""
    _unread: bytes = b""  # received, not yet a whole chunk
    _ended: bool = False  # the last chunk came
    # Keep-alives would keep a reader waiting for an event that never comes forever.
    deadline: float = field(default_factory=lambda: time.monotonic() + READ_SECONDS)

    def events(self) -> list[bytes]:
        """The complete events received so far, keep-alive comments left out."""
        return events_in(self.body)

    def read_events(self, count: int) -> list[bytes]:
        """Read until at least ``count`` events have arrived."""
        return self.read_until(lambda: len(self.events()) >= count)

    def read_until(self, done: Callable[[], bool]) -> list[bytes]:
        while not done():
            more = self._receive()
            assert more or done(), f"the answer ended early: {self.body!r}"
        return self.events()

    def read_to(self, marker: bytes) -> list[bytes]:
        """Read until ``marker`` has arrived."""
        return self.read_until(lambda: marker in self.body)

    def read_to_end(self) -> bytes:
        while self._receive():
            pass
        self.sock.close()
        return self.body

    def close(self) -> None:
        self.sock.close()

    def _receive(self) -> bool:
        """Read what the socket has; False at the end of the body."""
        assert time.monotonic() < self.deadline, f"still reading: {self.body[-300:]!r}"
        return not self._ended and self.take(self.sock.recv(65536))

    def take(self, data: bytes) -> bool:
        """Add received bytes to the body; False at its end."""
        if self.headers.get("transfer-encoding") != "chunked":
            self.body += data
            return bool(data)
        assert data, f"the chunked body was cut: {self.body[-200:]!r}"
        self._unread += data
        while (line_end := self._unread.find(b"\r\n")) >= 0:
            size = int(self._unread[:line_end].split(b";")[0], 16)
            chunk_end = line_end + 2 + size
            if len(self._unread) < chunk_end + 2:
                break
            if size == 0:
                self._ended = True
                return False
            self.body += self._unread[line_end + 2 : chunk_end]
            self._unread = self._unread[chunk_end + 2 :]
        return True


def open_reader(
    server: Server,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Reader:
    """Send a request; return once the response's head has arrived."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    _opened.append(sock)
    fields = {"Host": f"127.0.0.1:{server.port}", **(headers or {})}
    if body is not None:
        fields = {"Content-Type": "application/json", **fields}
        fields["Content-Length"] = str(len(body))
    head = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    sock.sendall(f"{method} {path} HTTP/1.0\r\n{head}\r\n".encode() + (body or b""))
    received = b""
    while b"\r\n\r\n" not in received:
        data = sock.recv(65536)
        assert data, f"no response head: {received!r}"
        received += data
    head_bytes, _, rest = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    header_pairs = (line.split(":", 1) for line in header_lines)
    response_headers = {name.lower(): value.strip() for name, value in header_pairs}
    reader = Reader(sock, int(status_line.split()[1]), response_headers)
    if rest:
        reader.take(rest)
    return reader


def events_in(body: bytes) -> list[bytes]:
    """The complete events of an SSE body, each with its blank line, comments out."""
    *complete, _partial = body.split(b"\n\n")
    return [frame + b"\n\n" for frame in complete if not frame.startswith(b":")]


def comments_in(body: bytes) -> list[bytes]:
    """The comment lines of an SSE body (keep-alives)."""
    return [frame for frame in body.split(b"\n\n") if frame.startswith(b":")]


# --- Requests of the resumable routes -------------------------------------------------


def use_chat_body(script: Script, chat_id: str = "chat-1") -> dict[str, Any]:
    """What ``useChat`` posts: one user message, answered with ``script``."""
    user = {
        "id": "user-1",
        "role": "user",
        "parts": [{"type": "text", "text": f"go {script.marker}"}],
    }
    return {"id": chat_id, "messages": [user], "trigger": "submit-message"}


def start(
    server: Server,
    route: str,
    script: Script,
    headers: dict[str, str] | None = None,
    chat_id: str = "chat-1",
) -> Reader:
    """Start an answer on ``route``: GET with ``?prompt=``, POST with its JSON."""
    if route == "/completionChat":
        path = f"{route}?prompt={quote(f'go {script.marker}')}"
        return open_reader(server, "GET", path, headers=headers)
    payload: dict[str, Any] = {"prompt": f"go {script.marker}"}
    if route == "/api/chat":
        payload = use_chat_body(script, chat_id)
    return open_reader(server, "POST", route, json.dumps(payload).encode(), headers)


def resume(
    server: Server,
    route: str,
    last_event_id: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Reader:
    """Ask ``route`` for what follows ``last_event_id``; a POST's body is not needed."""
    headers = {"Last-Event-ID": last_event_id, **(headers or {})}
    if route == "/completionChat":
        return open_reader(server, "GET", route, headers=headers, timeout=timeout)
    return open_reader(server, "POST", route, body, headers, timeout)


def answer_of(reader: Reader) -> str:
    """The answer's id: ``X-Stream-Id``, and the ``ANSWER`` of the first event."""
    assert reader.status == 200, reader.body
    answer = reader.headers["x-stream-id"]
    first = reader.read_events(1)[0]
    assert first.startswith(f"id: {answer}.0\n".encode()), first
    return answer


def check_ids(events: list[bytes], answer: str, first: int = 0) -> None:
    """Every event starts with ``id: ANSWER.N``, N counting on from ``first``, and
    has no other id line."""
    for number, event in enumerate(events, first):
        assert event.startswith(f"id: {answer}.{number}\n".encode()), (number, event)
        assert len(ID_LINE.findall(event)) == 1, event


def expected_events(answer: str, deltas: list[str]) -> list[bytes]:
    """The events of an answer of one-line text ``deltas``, ``[DONE]`` last."""
    frames = [f"data: {delta}\n\n" for delta in deltas] + ["data: [DONE]\n\n"]
    return [f"id: {answer}.{n}\n{frame}".encode() for n, frame in enumerate(frames)]


def error_in(event: bytes) -> dict[str, str]:
    """The data of an ``event: error``, as a conforming parser reads it."""
    (parsed,) = parse_sse(event)
    assert parsed.event == "error", event
    data: dict[str, str] = json.loads(parsed.data)
    assert set(data) == {"message", "type"}, data
    return data


def ui_part(event: bytes) -> dict[str, Any]:
    """The part of a UI message stream's event (``[DONE]`` as a part of that type)."""
    (parsed,) = parse_sse(event)
    if parsed.data == "[DONE]":
        return {"type": "[DONE]"}
    part: dict[str, Any] = json.loads(parsed.data)
    return part


def slow_script(upstream: FakeUpstream) -> Script:
    """Eight one-line deltas over about a second: long enough to leave mid-answer."""
    steps: list[Step] = []
    for delta in SLOW_DELTAS:
        steps += [Text(delta), Sleep(0.15)]
    return upstream.script(*steps, Done())


def wait_for_hangup(record: RecordedRequest, timeout: float) -> float:
    """When our server closed its upstream request (``time.monotonic()``)."""
    deadline = time.monotonic() + timeout
    while record.disconnected_at is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert record.disconnected_at is not None, f"the upstream was open {timeout}s on"
    return record.disconnected_at


def wait_for_end(record: RecordedRequest, timeout: float = 10.0) -> None:
    """Wait until the upstream ran its script to the end (or was hung up on)."""
    deadline = time.monotonic() + timeout
    while record.finished_at is None and record.disconnected_at is None:
        assert time.monotonic() < deadline, "the upstream request never ended"
        time.sleep(0.01)


def not_found(response: tuple[int, Any, bytes]) -> None:
    """The brief's 404: JSON ``{"error": {"type": "not_found", ...}}``."""
    assert response[0] == 404, response
    assert error_of(response)["type"] == "not_found"


# --- Ids: every event names its answer and its place ----------------------------------


@pytest.mark.parametrize("route", CHAT_ROUTES)
@pytest.mark.parametrize(
    ("kind", "config"),
    [
        pytest.param(FLASK_DEV, "resumable", id="flask-run-memory"),
        pytest.param(DJANGO_GUNICORN, "resumable-redis", id="django-gunicorn-redis"),
    ],
)
def test_every_event_of_a_chat_route_carries_its_answer_id(
    pool: ServerPool, upstream: FakeUpstream, kind: ServerKind, config: str, route: str
) -> None:
    """Named events, text split over lines, ``[DONE]`` and an error after the first
    byte all start with ``id: ANSWER.N``; keep-alive comments carry none."""
    server = pool.get(kind, config)
    script = upstream.script(
        Reasoning("think"),
        Text("one\ntwo"),
        Sleep(RESUMABLE_KEEPALIVE_SECONDS * 2.5),
        Text("three"),
        Finish("stop"),
        Usage(3, 4),
        Done(),
    )
    reader = start(server, route, script)
    answer = answer_of(reader)
    body = reader.read_to_end()
    events = events_in(body)
    check_ids(events, answer)
    assert comments_in(body) and set(comments_in(body)) == {b": keep-alive"}
    assert events[-1].endswith(b"\ndata: [DONE]\n\n")
    if route != "/api/chat":
        # Without the comments: httpx-sse dispatches an empty event at a comment's
        # blank line once an id was seen (a conforming parser dispatches nothing).
        parsed = parse_sse(b"".join(events))
        assert texts(parsed) == ["one\ntwo", "three"]
        kinds = ["reasoning", "message", "message", "finish", "usage", "message"]
        assert [e.event for e in parsed] == kinds
        assert [e.id for e in parsed] == [f"{answer}.{n}" for n in range(len(parsed))]
    check_unguessable(answer)

    failing = upstream.script(Text("cut"), ErrorEvent("the model failed"))
    reader = start(server, route, failing)
    second = answer_of(reader)
    events = events_in(reader.read_to_end())
    check_ids(events, second)
    assert second != answer
    if route == "/api/chat":
        assert ui_part(events[-2])["type"] == "error"
        assert ui_part(events[-1]) == {"type": "[DONE]"}
    else:
        assert error_in(events[-1])["type"]


def check_unguessable(answer: str) -> None:
    """URL-safe, and at least 128 bits in the alphabet it is written in."""
    assert re.fullmatch(r"[A-Za-z0-9_-]+", answer), answer
    if re.fullmatch(r"[0-9a-f]+", answer):
        alphabet = 16
    elif re.fullmatch(r"[0-9a-z]+", answer):
        alphabet = 36
    else:
        alphabet = 64
    assert len(answer) * math.log2(alphabet) >= 128, answer


# --- Resuming after a drop ------------------------------------------------------------


def drop_mid_answer(server: Server, route: str, script: Script) -> tuple[str, int]:
    """Start an answer, read its first events, leave; its id and the last event read."""
    reader = start(server, route, script)
    answer = answer_of(reader)
    events = reader.read_events(3)
    reader.close()
    check_ids(events, answer)
    assert events == expected_events(answer, SLOW_DELTAS)[: len(events)]
    assert_sse_headers(reader, answer)
    return answer, len(events) - 1


def assert_sse_headers(reader: Reader, answer: str) -> None:
    """The contract's SSE headers, and the answer's id."""
    for name, value in {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
        "x-stream-id": answer,
    }.items():
        assert reader.headers.get(name) == value, (name, reader.headers)
    assert "content-length" not in reader.headers


def test_an_answer_dropped_on_one_master_resumes_on_another_byte_for_byte(
    upstream: FakeUpstream, flask_redis: Server, django_redis: Server
) -> None:
    """Two gunicorn masters, one Redis: the events after N are the bytes the first
    connection would have read next, and the model was asked once."""
    script = slow_script(upstream)
    answer, last_read = drop_mid_answer(flask_redis, "/completions/chat", script)
    other = upstream.script(Text("never"), Done())
    body = json.dumps({"prompt": f"not read {other.marker}"}).encode()
    reader = resume(django_redis, "/completions/chat", f"{answer}.{last_read}", body)
    assert reader.status == 200, reader.body
    assert_sse_headers(reader, answer)
    rest = events_in(reader.read_to_end())
    assert rest == expected_events(answer, SLOW_DELTAS)[last_read + 1 :]
    record = script.wait_for_request()
    wait_for_end(record)
    assert record.disconnected_at is None  # the drop did not cancel the answer
    assert len(script.requests) == 1
    assert other.requests == []


@pytest.mark.parametrize("kind", MEMORY_KINDS)
def test_memory_mode_resumes_after_a_drop(
    pool: ServerPool, upstream: FakeUpstream, kind: ServerKind
) -> None:
    server = pool.get(kind, "resumable")
    script = slow_script(upstream)
    answer, last_read = drop_mid_answer(server, "/completionChat", script)
    reader = resume(server, "/completionChat", f"{answer}.{last_read}")
    rest = events_in(reader.read_to_end())
    assert rest == expected_events(answer, SLOW_DELTAS)[last_read + 1 :]
    wait_for_end(script.requests[0])
    assert script.requests[0].disconnected_at is None
    assert len(script.requests) == 1


def test_a_long_fast_answer_resumes_from_its_middle_on_another_master(
    upstream: FakeUpstream, flask_redis: Server, django_redis: Server
) -> None:
    """Events logged many at a time, lines split, non-ASCII: every one keeps its
    place, and a resume from the middle gets the rest, byte for byte."""
    script = upstream.script(
        Text("first\nline é🎉"), Flood("many ", 400), Text("\n\nlast"), Done()
    )
    reader = start(django_redis, "/completionChat", script)
    answer = answer_of(reader)
    events = events_in(reader.read_to_end())
    check_ids(events, answer)
    assert events[0] == f"id: {answer}.0\ndata: first\ndata: line é🎉\n\n".encode()
    assert events[-2] == f"id: {answer}.401\ndata: \ndata: \ndata: last\n\n".encode()
    middle = len(events) // 2
    status, _, body = flask_redis.request(
        "GET", "/completionChat", headers={"Last-Event-ID": f"{answer}.{middle}"}
    )
    assert (status, events_in(body)) == (200, events[middle + 1 :])
    assert len(script.requests) == 1


def test_errors_before_the_first_byte_are_still_json_with_no_answer_id(
    upstream: FakeUpstream, django_redis: Server
) -> None:
    """Resumable or not, a request refused, or an upstream refusing before any
    output, is answered with the contract's status and JSON, and no answer id."""
    error = {"message": "context too long", "type": "invalid_request_error"}
    failing = upstream.script(status=400, body={"error": error})  # never retried
    for route in CHAT_ROUTES:
        reader = start(django_redis, route, failing)
        body = reader.read_to_end()
        assert reader.status == 400, body
        assert "x-stream-id" not in reader.headers
        assert json.loads(body)["error"]["type"]
    status, headers, body = django_redis.request("GET", "/completionChat?prompt=")
    assert status == 400 and "X-Stream-Id" not in headers, body


def test_after_the_last_event_a_resume_is_204(
    upstream: FakeUpstream, flask_redis: Server, django_redis: Server
) -> None:
    """What ends an ``EventSource``'s reconnect loop, header or query parameter."""
    script = upstream.script(Text("a"), Text("b"), Done())
    reader = start(flask_redis, "/completionChat", script)
    answer = answer_of(reader)
    events = events_in(reader.read_to_end())
    last = len(events) - 1
    assert events == expected_events(answer, ["a", "b"])
    for server in (flask_redis, django_redis):
        status, _, body = server.request(
            "GET", "/completionChat", headers={"Last-Event-ID": f"{answer}.{last}"}
        )
        assert (status, body) == (204, b"")
        status, _, body = server.request(
            "GET", f"/completionChat?lastEventId={answer}.{last}"
        )
        assert (status, body) == (204, b"")
        one_before = f"/completionChat?lastEventId={answer}.{last - 1}"
        status, _, body = server.request("GET", one_before)
        assert (status, events_in(body)) == (200, events[last:])
    assert len(script.requests) == 1


def test_an_unknown_or_malformed_answer_id_is_404_and_calls_no_model(
    upstream: FakeUpstream, django_redis: Server
) -> None:
    known = upstream.script(Text("a"), Done())
    reader = start(django_redis, "/completionChat", known)
    answer = answer_of(reader)
    reader.read_to_end()
    script = upstream.script(Text("never"), Done())
    unknown = uuid.uuid4().hex + uuid.uuid4().hex
    ids = [f"{unknown}.0", answer, f"{answer}.", f"{answer}.x", f"{answer}.0.1", "."]
    for last_event_id in ids:
        for route in CHAT_ROUTES:
            prompt = quote(f"go {script.marker}")
            headers = {"Last-Event-ID": last_event_id}
            if route == "/completionChat":
                response = django_redis.request(
                    "GET", f"{route}?prompt={prompt}", headers=headers
                )
            else:
                payload = {"prompt": f"go {script.marker}"}
                if route == "/api/chat":
                    payload = use_chat_body(script)
                response = django_redis.request(
                    "POST",
                    route,
                    json.dumps(payload).encode(),
                    {"Content-Type": "application/json", **headers},
                )
            assert response[0] == 404, (last_event_id, route, response)
            not_found(response)
    not_found(django_redis.request("DELETE", f"/streams/{unknown}"))
    assert script.requests == []


def test_an_expired_answer_is_404(
    upstream: FakeUpstream, flask_redis: Server, django_redis: Server
) -> None:
    """Kept ``STREAM_RESUME_TTL_SECONDS`` after its end, then gone."""
    script = upstream.script(Text("a"), Text("b"), Done())
    reader = start(django_redis, "/completionChat", script)
    answer = answer_of(reader)
    events = events_in(reader.read_to_end())
    ended_at = time.monotonic()
    status, _, body = flask_redis.request(
        "GET", "/completionChat", headers={"Last-Event-ID": f"{answer}.0"}
    )
    assert (status, events_in(body)) == (200, events[1:])
    time.sleep(max(0.0, ended_at + RESUME_TTL_SECONDS + 1.5 - time.monotonic()))
    for server in (flask_redis, django_redis):
        not_found(
            server.request(
                "GET", "/completionChat", headers={"Last-Event-ID": f"{answer}.0"}
            )
        )
    assert len(script.requests) == 1


# --- Stopping: DELETE, and answers nobody reads ---------------------------------------


def test_delete_from_another_master_stops_the_answer_within_a_second(
    upstream: FakeUpstream, flask_redis: Server, django_redis: Server
) -> None:
    script = upstream.script(Forever("tick ", interval=0.05, limit_seconds=30))
    reader = start(django_redis, "/completionChat", script)
    answer = answer_of(reader)
    reader.read_events(3)
    deleted_at = time.monotonic()
    status, _, body = flask_redis.request("DELETE", f"/streams/{answer}")
    assert (status, body) == (204, b"")
    hangup = wait_for_hangup(script.requests[0], timeout=5)
    assert hangup - deleted_at <= CANCEL_BOUND_SECONDS
    reader.read_to(b"event: error")
    assert time.monotonic() - deleted_at <= CANCEL_BOUND_SECONDS
    events = events_in(reader.read_to_end())
    check_ids(events, answer)
    assert error_in(events[-1])["type"] == "stopped"
    assert b"[DONE]" not in reader.body
    # The log ends the same for a reader who comes later, on either master.
    status, _, body = flask_redis.request(
        "GET", "/completionChat", headers={"Last-Event-ID": f"{answer}.0"}
    )
    assert (status, events_in(body)) == (200, events[1:])
    assert len(script.requests) == 1


def test_an_answer_nobody_reads_is_stopped_after_the_abandon_time(
    upstream: FakeUpstream, flask_redis: Server, django_redis: Server
) -> None:
    """A reader on another master keeps it going past the abandon time after its
    first client left; once the last reader leaves, it is stopped
    ``STREAM_RESUME_ABANDON_SECONDS`` later, within a second."""
    script = upstream.script(Forever("tick ", interval=0.05, limit_seconds=30))
    first = start(flask_redis, "/completionChat", script)
    answer = answer_of(first)
    reader = resume(django_redis, "/completionChat", f"{answer}.0")
    first.close()
    read_until = time.monotonic() + RESUME_ABANDON_SECONDS + 0.5
    reader.read_until(lambda: time.monotonic() > read_until)
    assert script.requests[0].disconnected_at is None
    left_at = time.monotonic()
    reader.close()
    hangup = wait_for_hangup(script.requests[0], RESUME_ABANDON_SECONDS + 5)
    assert RESUME_ABANDON_SECONDS - 0.2 <= hangup - left_at
    assert hangup - left_at <= RESUME_ABANDON_SECONDS + CANCEL_BOUND_SECONDS
    # Its log ends with the stop, for whoever comes back.
    status, _, body = django_redis.request(
        "GET", "/completionChat", headers={"Last-Event-ID": f"{answer}.0"}
    )
    assert status == 200
    events = events_in(body)
    check_ids(events, answer, first=1)
    assert error_in(events[-1])["type"]
    assert b"[DONE]" not in body


# --- useChat: resuming a chat, stopping an answer -------------------------------------


def test_use_chat_resume_is_204_when_idle_and_the_whole_answer_in_progress(
    upstream: FakeUpstream, flask_redis: Server, django_redis: Server
) -> None:
    chat_id = f"chat-{uuid.uuid4().hex}"
    path = f"/api/chat/{chat_id}/stream"
    status, _, body = flask_redis.request("GET", path)
    assert (status, body) == (204, b"")
    script = slow_script(upstream)
    first = start(django_redis, "/api/chat", script, chat_id=chat_id)
    answer = answer_of(first)
    first.read_events(3)
    second = open_reader(flask_redis, "GET", path)
    assert second.status == 200, second.body
    assert second.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert second.headers["x-stream-id"] == answer
    whole = events_in(first.read_to_end())
    assert events_in(second.read_to_end()) == whole
    check_ids(whole, answer)
    assert ui_part(whole[0])["type"] == "start"
    assert ui_part(whole[-1]) == {"type": "[DONE]"}
    for server in (flask_redis, django_redis):  # ended: nothing in progress
        status, _, body = server.request("GET", path)
        assert (status, body) == (204, b"")
    assert len(script.requests) == 1


def test_stopping_a_use_chat_answer_ends_it_with_abort_then_done(
    upstream: FakeUpstream, flask_redis: Server, django_redis: Server
) -> None:
    script = upstream.script(Forever("tick ", interval=0.05, limit_seconds=30))
    reader = start(flask_redis, "/api/chat", script)
    answer = answer_of(reader)
    reader.read_events(4)
    deleted_at = time.monotonic()
    assert django_redis.request("DELETE", f"/streams/{answer}")[0] == 204
    assert wait_for_hangup(script.requests[0], 5) - deleted_at <= CANCEL_BOUND_SECONDS
    events = events_in(reader.read_to_end())
    check_ids(events, answer)
    assert ui_part(events[-2]) == {"type": "abort"}
    assert ui_part(events[-1]) == {"type": "[DONE]"}
    # POST /api/chat with Last-Event-ID and an empty body: the same log, from there.
    later = resume(django_redis, "/api/chat", f"{answer}.0")
    assert later.status == 200, later.body
    assert later.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert events_in(later.read_to_end()) == events[1:]
    last = resume(flask_redis, "/api/chat", f"{answer}.{len(events) - 1}")
    assert (last.status, last.read_to_end()) == (204, b"")
    assert len(script.requests) == 1


# --- Raw text: never resumable --------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        pytest.param(DJANGO_DEV, "resumable", id="runserver-memory"),
        pytest.param(FLASK_GUNICORN, "resumable-redis", id="flask-gunicorn-redis"),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/completion"), ("POST", "/api/stream")]
)
def test_raw_text_and_completion_are_not_resumable_and_a_disconnect_cancels(
    pool: ServerPool,
    upstream: FakeUpstream,
    kind: ServerKind,
    config: str,
    method: str,
    path: str,
) -> None:
    server = pool.get(kind, config)
    script = upstream.script(Forever("tick ", interval=0.05, limit_seconds=30))
    prompt = f"go {script.marker}"
    if method == "GET":
        reader = open_reader(server, method, f"{path}?prompt={quote(prompt)}")
    else:
        body = json.dumps({"message": prompt}).encode()
        reader = open_reader(server, method, path, body)
    assert reader.status == 200, reader.body
    reader.read_until(lambda: reader.body.count(b"tick") >= 3)
    assert "x-stream-id" not in reader.headers
    assert not re.search(rb"(^|\n)id:", reader.body), reader.body
    elapsed = close_and_time(reader.sock, script)
    bound = CANCEL_BOUND_SECONDS
    if kind is DJANGO_DEV:  # noticed at a write: the ticks come every 0.05 s
        bound += 2 * RESUMABLE_KEEPALIVE_SECONDS
    assert elapsed <= bound
    assert script.requests[0].finished_at is None


# --- Who may resume, follow and stop --------------------------------------------------


def test_resuming_following_and_stopping_are_guarded_like_streaming(
    pool: ServerPool, upstream: FakeUpstream
) -> None:
    """Cross-site is 403 and a missing token 401 on every way into an answer, and a
    refused DELETE leaves it running."""
    server = pool.get(DJANGO_DEV, "resumable-guarded")
    script = upstream.script(Forever("tick ", interval=0.05, limit_seconds=30))
    reader = start(server, "/completionChat", script, headers=BEARER)
    answer = answer_of(reader)
    chat = upstream.script(Forever("tock ", interval=0.05, limit_seconds=30))
    chat_id = f"chat-{uuid.uuid4().hex}"
    chat_reader = start(server, "/api/chat", chat, BEARER, chat_id)
    chat_answer = answer_of(chat_reader)
    json_body = {"Content-Type": "application/json"}
    after_first = {"Last-Event-ID": f"{answer}.0"}
    resumes = [
        ("GET", "/completionChat", after_first),
        ("GET", f"/completionChat?lastEventId={answer}.0", {}),
        ("POST", "/api/chat", {"Last-Event-ID": f"{chat_answer}.0", **json_body}),
        ("GET", f"/api/chat/{chat_id}/stream", {}),
    ]
    requests = [
        *resumes,
        ("POST", "/completions/chat", {**after_first, **json_body}),
        ("DELETE", f"/streams/{answer}", {}),
    ]
    refusals = [
        ({}, 401),
        ({**BEARER, "Sec-Fetch-Site": "cross-site"}, 403),
        ({**BEARER, "Origin": "http://evil.example"}, 403),
    ]
    for method, path, headers in requests:
        for extra, status in refusals:
            body = b"" if method == "POST" else None
            response = server.request(method, path, body, {**headers, **extra})
            assert response[0] == status, (method, path, extra, response)
            assert ACCESS_TOKEN.encode() not in response[2]
    reader.read_events(len(reader.events()) + 2)  # the refused DELETE stopped nothing
    assert script.requests[0].disconnected_at is None
    for method, path, headers in resumes:
        body = b"" if method == "POST" else None
        allowed = open_reader(server, method, path, body, {**headers, **BEARER})
        assert allowed.status == 200, (path, allowed.body)
        allowed.read_events(1)
        allowed.close()
    for stopped, answer_id in [(reader, answer), (chat_reader, chat_answer)]:
        response = server.request("DELETE", f"/streams/{answer_id}", headers=BEARER)
        assert response[0] == 204, response
        stopped.read_to_end()
    assert error_in(events_in(reader.body)[-1])["type"] == "stopped"


# --- A producer that dies, or leaves ------------------------------------------------


def test_a_killed_producer_gives_its_readers_stream_lost_within_10s(
    upstream: FakeUpstream, flask_redis: Server, django_redis: Server
) -> None:
    """SIGKILL to the worker producing the answer (a child of a master this session
    started): a reader on the other master that was there, and one that comes just
    after the death, each get ``stream_lost`` within 10 s; nobody waits forever."""
    script = upstream.script(Forever("tick ", interval=0.05, limit_seconds=30))
    producer = start(django_redis, "/completionChat", script)
    answer = answer_of(producer)
    follower = resume(flask_redis, "/completionChat", f"{answer}.0", timeout=30)
    assert follower.status == 200, follower.body
    follower.read_events(2)
    os.kill(_worker_of(django_redis), signal.SIGKILL)
    killed_at = time.monotonic()
    producer.close()
    latecomer = resume(flask_redis, "/completionChat", f"{answer}.0", timeout=30)
    assert latecomer.status == 200, latecomer.body
    for reader in (follower, latecomer):
        reader.read_to(b"event: error")
        assert time.monotonic() - killed_at <= STREAM_LOST_BOUND_SECONDS
        reader.read_to_end()
    events = events_in(follower.body)
    check_ids(events, answer, first=1)
    assert error_in(events[-1])["type"] == "stream_lost"
    assert b"[DONE]" not in follower.body
    assert events_in(latecomer.body) == events


def test_a_worker_shutting_down_finishes_its_answers_or_ends_them_in_time(
    upstream: FakeUpstream, flask_redis: Server, django_redis: Server
) -> None:
    """SIGTERM to the producing worker, as its master sends on a redeploy: its
    answers run on for the graceful timeout (a short one ends whole), and one still
    running shortly before it ends with ``server_shutdown`` in its log, which its
    readers on another master read (not ``stream_lost``); its upstream is closed."""
    short = upstream.script(Text("quick"), Sleep(1.0), Text(" and whole"), Done())
    long = upstream.script(Forever("tick ", interval=0.05, limit_seconds=30))
    short_answer, answer = (
        _left_behind(flask_redis, script) for script in (short, long)
    )
    follower = resume(django_redis, "/completionChat", f"{answer}.0")
    follower.read_events(2)
    os.kill(_worker_of(flask_redis), signal.SIGTERM)
    stopping_at = time.monotonic()
    follower.read_events(5)  # the answer runs on
    follower.read_to(b"event: error")
    ended_after = time.monotonic() - stopping_at
    assert 0.5 <= ended_after <= GRACEFUL_TIMEOUT_SECONDS, ended_after
    hung_up_after = wait_for_hangup(long.requests[0], 5) - stopping_at
    assert hung_up_after <= GRACEFUL_TIMEOUT_SECONDS, hung_up_after
    events = events_in(follower.read_to_end())
    assert error_in(events[-1])["type"] == "server_shutdown"
    check_ids(events, answer, first=1)
    rest = resume(django_redis, "/completionChat", f"{short_answer}.0")
    assert b"data: [DONE]" in events_in(rest.read_to_end())[-1]


def _left_behind(server: Server, script: Script) -> str:
    """Start an answer and leave: no request of the worker waits for it."""
    reader = start(server, "/completionChat", script)
    answer = answer_of(reader)
    reader.close()
    return answer


def _worker_of(server: Server) -> int:
    """The PID of the gunicorn worker of a master this session started."""
    worker = server.worker_pid()
    assert server.process is not None
    assert _parent_of(worker) == server.process.pid
    return worker


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[1])


# --- In process --------------------------------------------------------------------


class _FailingStore(MemoryStore):
    """A log that fails after its first batch, as Redis does when it goes away."""

    def __init__(self) -> None:
        super().__init__(ttl_seconds=60)
        self.batches = 0

    def append(self, answer: Any, frames: list[bytes], *, end: bool) -> bool:
        self.batches += 1
        if self.batches > 1:
            raise ConnectionError("Redis went away")
        return super().append(answer, frames, end=end)


def test_a_log_that_fails_still_ends_the_answer_for_its_readers() -> None:
    """Whatever happens, a reader is not left waiting: the answer ends with an error
    here (elsewhere its heartbeat stops, and readers get ``stream_lost``)."""
    answers = Answers(_FailingStore(), abandon_seconds=60, keepalive_seconds=0.2)
    body = sse_frames(iter([{"choices": [{"delta": {"content": w}}]} for w in "abc"]))
    streamed = answers.start(body, encoding="sse")
    received = b"".join(streamed.body)  # ends: no wait for an event that never comes
    assert received.count(b"data: a") == 1
    assert received.endswith(b'"type": "server_error"}\n\n'), received
