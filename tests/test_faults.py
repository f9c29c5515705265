"""Faults under gunicorn+gevent: a storm of disconnects, stalled readers, SIGTERM.

Each test runs against both apps. What the worker holds is counted from outside: the
fake upstream's open connections and the worker's sockets to it, ``/proc/PID/fd``,
``VmRSS``, and the worker's live greenlets (through the probe that
``tests/gunicorn_probe.py`` adds to the project's gunicorn config).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from shared.streaming import (
    StreamError,
    UpstreamFailed,
    end_open_streams,
    sse_frames,
    text_stream,
)
from tests.client import parse_sse, texts
from tests.conftest import FAKE_API_KEY, KEEPALIVE_SECONDS, ServerPool
from tests.fake_upstream import (
    Done,
    FakeUpstream,
    Flood,
    Forever,
    Script,
    Sleep,
    Text,
    Usage,
)
from tests.servers import DJANGO_GUNICORN, FLASK_GUNICORN, Server, ServerKind, free_port

APPS = [
    pytest.param(FLASK_GUNICORN, id="flask"),
    pytest.param(DJANGO_GUNICORN, id="django"),
]
ROUTES = [  # method, path, the JSON key or query parameter of the prompt
    ("GET", "/completionChat", "prompt"),
    ("POST", "/completions/chat", "prompt"),
    ("POST", "/api/stream", "message"),
]
SHUTDOWN_ERROR = {"message": "The server is shutting down.", "type": "server_shutdown"}


def _env(upstream: FakeUpstream, **extra: str) -> dict[str, str]:
    """A server's environment against the plain fake upstream.

    The upstream timeout keeps its default (60 s): a leaked upstream read must
    outlast the test, not be ended by a read timeout that hides the leak.
    """
    return {
        "OPENAI_API_KEY": FAKE_API_KEY,
        "OPENAI_BASE_URL": upstream.base_url,
        "STREAM_KEEPALIVE_SECONDS": str(KEEPALIVE_SECONDS),
        **extra,
    }


def _request(method: str, path: str, key: str, prompt: str, more: str = "") -> bytes:
    """An HTTP/1.1 request for ``prompt``; ``more`` adds header lines."""
    if method == "GET":
        target = f"{path}?{key}={quote(prompt)}"
        return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{more}\r\n".encode()
    body = json.dumps({key: prompt}).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{more}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_until(
    reader: asyncio.StreamReader, received: bytes, done: Callable[[bytes], bool]
) -> bytes:
    while not done(received):
        data = await reader.read(65536)
        if not data:
            raise AssertionError(f"the server ended the stream early: {received!r}")
        received += data
    return received


# --- What a worker holds -----------------------------------------------------------


def probe(port: int) -> dict[str, Any]:
    """The worker's live greenlets and open fds, as its probe counts them."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        line = sock.makefile("rb").readline()
    counts: dict[str, Any] = json.loads(line)
    return counts


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def sockets_to(pid: int, upstream: FakeUpstream) -> int:
    """The worker's TCP sockets whose peer is the fake upstream (in any state)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    peer = f"0100007F:{urlsplit(upstream.base_url).port:04X}"  # 127.0.0.1, as /proc
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for f in map(str.split, lines) if f[2] == peer and f[9] in inodes)


def wait_for(excess: Callable[[], dict[str, int]], timeout: float) -> dict[str, int]:
    """Poll ``excess`` until none of its counts is positive; the positive ones left."""
    deadline = time.monotonic() + timeout
    while True:
        left = {name: n for name, n in excess().items() if n > 0}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


# --- 1. A storm of disconnects -------------------------------------------------------

STORM_STREAMS = 1000
STORM_CONCURRENCY = 200
STORM_SEED = 20261123
MODES = ["before-headers", "after-headers", "mid-stream", "silent"]
# The modes that wait for the upstream's output before they leave.
OUTPUT_READERS = {"mid-stream", "silent"}
# A leak outlasts this: the fake's silences last 30 s, the upstream timeout 60 s.
SETTLE_SECONDS = 10.0
PROBE_CONFIG = "tests/gunicorn_probe.py"


@pytest.fixture(scope="module", params=APPS)
def probed(
    request: pytest.FixtureRequest,
    upstream: FakeUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Server, int]]:
    """The app under gunicorn+gevent with the probe in its worker; the probe's port."""
    app: ServerKind = request.param
    kind = ServerKind(f"{app.name}-probed", app.framework, True, config=PROBE_CONFIG)
    probe_port = free_port()
    env = _env(upstream, GUNICORN_PROBE_PORT=str(probe_port))
    log = tmp_path_factory.mktemp("faults") / f"{kind.name}.log"
    with Server(kind, env, log) as server:
        yield server, probe_port


async def _leave(port: int, request: bytes, mode: str, rng: random.Random) -> None:
    """Open one stream and leave at the point ``mode`` names, by FIN or RST."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        received = b""
        if mode == "before-headers":  # the upstream's first output is 1.5 s away
            await asyncio.sleep(rng.choice([0.0, rng.uniform(0.0, 0.4)]))
        elif mode == "after-headers":
            received = await _read_until(reader, received, lambda r: b"\r\n\r\n" in r)
        elif mode == "mid-stream":
            ticks = rng.randint(1, 8)
            received = await _read_until(
                reader, received, lambda r: r.count(b"tick") >= ticks
            )
        else:  # silent: "first", then nothing for 30 s
            received = await _read_until(reader, received, lambda r: b"first" in r)
            await asyncio.sleep(rng.uniform(0.0, 0.3))
        assert not received or received.startswith(b"HTTP/1.1 200 "), received[:200]
    finally:
        if rng.random() < 0.5:  # linger 0: close() sends RST instead of FIN
            sock = writer.get_extra_info("socket")
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        writer.close()
        await writer.wait_closed()


async def _storm(port: int, jobs: list[tuple[bytes, str, random.Random]]) -> None:
    """Every job, ``STORM_CONCURRENCY`` at a time, from one thread (a thread per
    client would starve the fake upstream, which runs in this process too)."""
    gate = asyncio.Semaphore(STORM_CONCURRENCY)

    async def one(request: bytes, mode: str, rng: random.Random) -> None:
        async with gate:
            await asyncio.wait_for(_leave(port, request, mode, rng), 30)

    results = await asyncio.gather(*(one(*job) for job in jobs), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    assert not failed, f"{len(failed)} clients failed, e.g. {failed[0]!r}"


def test_a_thousand_disconnects_at_random_points_leave_nothing_behind(
    probed: tuple[Server, int], upstream: FakeUpstream
) -> None:
    """1,000 clients leave at random points (before the headers, right after them,
    mid-stream, while the upstream is silent; by FIN or RST), 200 at a time, on all
    three streaming routes. Afterwards every upstream request they made was closed
    before its end, and the worker holds no more upstream connections, fds or
    greenlets than before.

    "Before" is measured after a warm-up and may include idle pooled connections:
    a cancelled stream never returns its connection to the pool, so nothing may be
    added to them.
    """
    server, probe_port = probed
    pid = server.worker_pid()
    warm = upstream.script(Text("warm"), Done())
    for _ in range(3):
        path = f"/completionChat?prompt={quote(warm.marker)}"
        assert server.request("GET", path)[0] == 200
    time.sleep(0.3)  # the warm-up's connection closes are seen asynchronously
    fds, held = fd_count(pid), sockets_to(pid, upstream)
    greenlets = int(probe(probe_port)["greenlets"])
    upstream_open = upstream.open_connections

    forever = (Text("first"), Forever(interval=0.05, limit_seconds=30))
    scripts: dict[str, Script] = {
        "before-headers": upstream.script(Sleep(1.5), Text("late"), Done()),
        "after-headers": upstream.script(*forever),
        "mid-stream": upstream.script(*forever),
        "silent": upstream.script(Text("first"), Sleep(30), Text("never"), Done()),
    }
    rng = random.Random(STORM_SEED)
    jobs = []
    for i in range(STORM_STREAMS):
        mode, (method, path, key) = rng.choice(MODES), rng.choice(ROUTES)
        request = _request(method, path, key, f"storm {i} {scripts[mode].marker}")
        jobs.append((request, mode, random.Random(rng.random())))
    asyncio.run(_storm(server.port, jobs))

    # Every client that read the upstream's output reached it. One that leaves before
    # the headers, or right after them, may not: an RST may reach the worker before
    # it reads the request, and the headers go out with the first keep-alive when
    # the upstream has not answered within its interval (as on a loaded machine).
    records = [r for s in scripts.values() for r in s.requests]
    read_output = {i for i, (_, mode, _) in enumerate(jobs) if mode in OUTPUT_READERS}
    reached = {
        int(n) for r in records for n in re.findall(r"storm (\d+) ", repr(r.json))
    }
    assert not read_output - reached, "output read from requests never sent"

    def left_behind() -> dict[str, int]:
        return {
            "upstream requests not closed": sum(
                r.disconnected_at is None and r.finished_at is None for r in records
            ),
            "upstream requests run to their end": sum(
                r.finished_at is not None for r in records
            ),
            "upstream's open connections": upstream.open_connections - upstream_open,
            "worker's sockets to the upstream": sockets_to(pid, upstream) - held,
            "worker's fds": fd_count(pid) - fds,
            "worker's greenlets": int(probe(probe_port)["greenlets"]) - greenlets,
        }

    leftovers = wait_for(left_behind, SETTLE_SECONDS)
    assert not leftovers, f"more than before: {leftovers}; {probe(probe_port)}"


# --- 2. Clients that stop reading ---------------------------------------------------

STALLED_CLIENTS = 100
FLOOD_DELTA = "word " * 1600  # 8,000 characters per event
FLOOD_EVENTS = 20_000  # 160 MB per answer: 16 GB for all of them, were it buffered
CLIENT_RCVBUF = 4096
# What each stalled stream may cost the worker: with the queue bounded by reads
# alone (up to 64 KiB each), it was about 8 MiB.
MAX_RSS_KIB_PER_STALLED_STREAM = 2048
STALL_SECONDS = 20.0  # until the upstream stops sending; about 2 s here


def _stall(server: Server, request: bytes) -> socket.socket:
    """Open a stream with a small receive buffer, read its first bytes, then stop."""
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(request)
        head = sock.recv(1024)
        assert head.startswith(b"HTTP/1.1 200 "), head
    except BaseException:
        sock.close()
        raise
    return sock


@pytest.mark.parametrize("kind", APPS)
def test_clients_that_stop_reading_hold_back_the_upstream_not_memory(
    pool: ServerPool, upstream: FakeUpstream, kind: ServerKind
) -> None:
    """100 clients stop reading a long answer that the upstream sends as fast as it
    can. The worker's memory stays bounded because it stops reading the upstream
    (which then stalls far short of the answer), other streams still flow, and
    closing the stalled clients closes their upstream requests."""
    server = pool.get(kind)
    pid = server.worker_pid()
    flood = upstream.script(Flood(FLOOD_DELTA, FLOOD_EVENTS), Done())
    rss_before, held_before = rss_kib(pid), sockets_to(pid, upstream)
    upstream_open = upstream.open_connections

    def check_memory() -> None:  # at every step: a regression could eat the machine
        growth = rss_kib(pid) - rss_before
        limit = STALLED_CLIENTS * MAX_RSS_KIB_PER_STALLED_STREAM
        assert growth <= limit, f"the worker grew by {growth} KiB, over {limit}"

    stalled: list[socket.socket] = []
    try:
        for i in range(STALLED_CLIENTS):  # half SSE, half raw text
            method, path, key = ROUTES[0] if i % 2 else ROUTES[2]
            request = _request(method, path, key, f"stall {i} {flood.marker}")
            stalled.append(_stall(server, request))
            check_memory()

        # Wait until the upstream stops sending: nothing more for half a second.
        deadline, sent, last = time.monotonic() + STALL_SECONDS, -1, 0
        while sent != last and time.monotonic() < deadline:
            check_memory()
            last, sent = sent, sum(r.events_sent for r in flood.requests)
            time.sleep(0.5)
        assert sent == last, f"the upstream kept sending: {last} then {sent} events"
        per_stream = [r.events_sent for r in flood.requests]
        assert len(per_stream) == STALLED_CLIENTS
        assert max(per_stream) < FLOOD_EVENTS // 5, per_stream
        check_memory()

        # Meanwhile other streams through the same worker flow, short or long.
        short = upstream.script(Text("still"), Text(" flowing"), Usage(2, 2), Done())
        started = time.monotonic()
        status, _, body = server.request(
            "GET", f"/completionChat?prompt={quote(short.marker)}", timeout=10
        )
        assert (status, texts(parse_sse(body))) == (200, ["still", " flowing"])
        assert time.monotonic() - started < 2.0
        long = upstream.script(Flood(FLOOD_DELTA, 1000), Done())
        started = time.monotonic()
        status, _, body = server.request(
            "POST",
            "/api/stream",
            json.dumps({"message": long.marker}).encode(),
            {"Content-Type": "application/json"},
            timeout=20,
        )
        assert status == 200 and body == FLOOD_DELTA.encode() * 1000
        assert time.monotonic() - started < 10.0
    finally:
        for sock in stalled:
            sock.close()

    def left_behind() -> dict[str, int]:
        return {
            "upstream requests not closed": sum(
                r.disconnected_at is None and r.finished_at is None
                for r in flood.requests
            ),
            "upstream requests run to their end": sum(
                r.finished_at is not None for r in flood.requests
            ),
            # The two streams that ended normally may have pooled their connections.
            "upstream's open connections": upstream.open_connections
            - upstream_open
            - 2,
            "worker's sockets to the upstream": sockets_to(pid, upstream)
            - held_before
            - 2,
        }

    leftovers = wait_for(left_behind, 5.0)
    assert not leftovers, f"after the stalled clients left: {leftovers}"


# --- 3. SIGTERM with streams open ---------------------------------------------------

GRACEFUL_TIMEOUT = 4.0  # gunicorn.conf.py ends the streams still open 2 s before


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """The data of a chunked body, and whether it ended with its final chunk.

    AssertionError if it ends inside a chunk: the server wrote half of one.
    """
    data, pos = b"", 0
    while pos < len(body):
        line_end = body.find(b"\r\n", pos)
        assert line_end >= 0, f"cut inside a chunk-size line: {body[pos:]!r}"
        size = int(body[pos:line_end], 16)
        if size == 0:
            assert body[line_end:] == b"\r\n\r\n", body[line_end:]
            return data, True
        start, end = line_end + 2, line_end + 2 + size
        assert body[end : end + 2] == b"\r\n", f"cut inside a chunk: {body[start:]!r}"
        data, pos = data + body[start:end], end + 2
    return data, False


@dataclass
class Stream:
    """One stream of the shutdown test: its request and what came back."""

    name: str
    path: str
    request: bytes
    opened_when: bytes  # seen in the response once the stream is under way
    received: bytes = b""
    ended_after: float = 0.0  # seconds from the signal to the end of the response
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(self.request)
            if self.opened_when:
                self.received = await _read_until(
                    reader, b"", lambda r: self.opened_when in r
                )
            self.opened.set()
            while data := await reader.read(65536):
                self.received += data
            self.ended_after = time.monotonic()
        finally:
            writer.close()
            await writer.wait_closed()

    def response(self) -> tuple[int, bytes, bool]:
        """Status, body data (dechunked), and whether the body was complete."""
        head, _, body = self.received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 "), f"{self.name}: {self.received!r}"
        status = int(head.split(b" ", 2)[1])
        if b"transfer-encoding: chunked" not in head.lower():
            return status, body, True
        data, complete = dechunk(body)
        return status, data, complete


async def _sigterm_with_streams_open(
    server: Server, streams: list[Stream], pending: Script
) -> None:
    """Open ``streams``, SIGTERM gunicorn's master (the process this test started),
    read every stream to its end; ``ended_after`` counts from the signal."""
    assert server.process is not None
    tasks = [
        asyncio.ensure_future(asyncio.wait_for(s.run(server.port), 30)) for s in streams
    ]
    await asyncio.wait_for(asyncio.gather(*(s.opened.wait() for s in streams)), 10)
    while not pending.requests:  # its upstream request is under way
        await asyncio.sleep(0.05)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    await asyncio.gather(*tasks)
    for stream in streams:
        stream.ended_after -= signalled


@pytest.mark.parametrize("kind", APPS)
def test_sigterm_lets_streams_finish_or_ends_them_with_an_error_event(
    kind: ServerKind, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """On SIGTERM with streams open on every route: those that end within the
    graceful timeout end normally; the longer ones, silent or not, end with a whole
    ``event: error`` before the worker is killed (raw text: cut off between chunks,
    without the final one); one still waiting for its first output gets a 503. No
    body ends halfway through a chunk or frame, and every upstream is closed."""
    env = _env(upstream, GRACEFUL_TIMEOUT=str(int(GRACEFUL_TIMEOUT)))
    server = Server(kind, env, tmp_path / "server.log").start()
    short = upstream.script(
        Text("short"), Sleep(0.5), Text(" answer"), Usage(3, 2), Done()
    )
    endless = upstream.script(Text("long"), Forever(interval=0.1, limit_seconds=30))
    silent = upstream.script(Text("long"), Sleep(30), Text("never"), Done())
    pending = upstream.script(Sleep(30), Text("never"), Done())
    close = "Connection: close\r\n"  # the end of a body is the end of the connection
    streams = [
        Stream(name, path, _request(method, path, key, f"{name} {s.marker}", close), at)
        for name, s, at in [
            ("short", short, b"short"),
            ("endless", endless, b"long"),
            ("silent", silent, b"long"),
            ("pending", pending, b""),  # raw text: no headers before the first output
        ]
        for method, path, key in ROUTES
        if name != "pending" or path == "/api/stream"
    ]
    try:
        asyncio.run(_sigterm_with_streams_open(server, streams, pending))
        assert server.process is not None
        server.process.wait(GRACEFUL_TIMEOUT + 5)
    finally:
        server.stop()

    for stream in streams:
        status, data, complete = stream.response()
        where = f"{stream.name} {stream.path}: {stream.ended_after:.2f}s {data[-99:]!r}"
        sse = stream.path != "/api/stream"
        if stream.name == "short":
            assert stream.ended_after < GRACEFUL_TIMEOUT / 2, where
            assert (status, complete) == (200, True), where
            if sse:
                events = parse_sse(data)
                assert texts(events) == ["short", " answer"], where
                assert events[-1].data == "[DONE]", where
            else:
                assert data == b"short answer", where
            continue
        if stream.name == "pending":
            error = json.loads(data)["error"]
            assert (status, complete, error) == (503, True, SHUTDOWN_ERROR), where
        elif sse:
            assert (status, complete) == (200, True), where
            assert data.endswith(b"\n\n"), where
            events = parse_sse(data)
            assert (events[-1].event, json.loads(events[-1].data)) == (
                "error",
                SHUTDOWN_ERROR,
            ), where
            assert "[DONE]" not in [e.data for e in events], where
        else:  # cut off without the final chunk: the client sees the failure
            assert (status, complete) == (200, False), where
            assert data.startswith(b"long") and b"never" not in data, where
        # Ended by the server, before the master's SIGKILL, but not at once.
        assert GRACEFUL_TIMEOUT / 4 < stream.ended_after < GRACEFUL_TIMEOUT, where
    for script in (endless, silent, pending):
        for record in script.requests:
            assert record.disconnected_at is not None, script.marker
            assert record.finished_at is None, script.marker


# --- The core's part, in this process ------------------------------------------------

SHUTDOWN_FRAME = b"event: error\ndata: " + json.dumps(SHUTDOWN_ERROR).encode() + b"\n\n"


class ChatUpstream:
    """Chat chunks as dicts: ``first``, then ``then`` every 20 ms (or silence when it
    is None) until ``close()``, which is recorded, like an SDK stream's."""

    def __init__(self, first: str | None, then: str | None) -> None:
        self.first, self.then = first, then
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[dict[str, object]]:
        if self.first is not None:
            yield _chat(self.first)
        while not self.closed.wait(0.02):
            if self.then is not None:
                yield _chat(self.then)

    def close(self) -> None:
        self.closed.set()


def _chat(text: str) -> dict[str, object]:
    return {"choices": [{"index": 0, "delta": {"content": text}}]}


def _rest(frames: Iterator[bytes], seconds: float = 2.0) -> bytes:
    """The rest of a body, which must end within ``seconds``."""
    deadline, received = time.monotonic() + seconds, b""
    for frame in frames:
        received += frame
        assert time.monotonic() < deadline, f"the stream goes on: {received[-99:]!r}"
    return received


# Without gevent the relay's reader is a thread, which nothing can wake while it
# waits inside a silent iterator (a real upstream is a socket, which the relay shuts
# down): only an upstream that still sends sees its close() from the relay here.
@pytest.mark.parametrize("then", ["tick", None], ids=["sending", "silent"])
def test_end_open_streams_ends_an_sse_stream_with_a_whole_error_event(
    then: str | None,
) -> None:
    upstream = ChatUpstream("first", then)
    body = sse_frames(upstream, keepalive_seconds=0.05)
    frames = iter(body)
    try:
        assert next(frames) == b"data: first\n\n"
        assert end_open_streams() >= 1
        rest = _rest(frames)
    finally:
        body.close()  # type: ignore[attr-defined]
        closed = upstream.closed.wait(2 if then else 0)
        upstream.close()  # ends the reader thread
    assert rest.endswith(SHUTDOWN_FRAME) and b"[DONE]" not in rest
    assert closed or then is None


def test_end_open_streams_cuts_a_raw_text_stream_off() -> None:
    upstream = ChatUpstream("first", "tick")
    body = text_stream(upstream)
    frames = iter(body)
    try:
        assert next(frames) == b"first"
        end_open_streams()
        with pytest.raises(UpstreamFailed, match="The server is shutting down."):
            _rest(frames)
    finally:
        body.close()  # type: ignore[attr-defined]
        closed = upstream.closed.wait(2)
        upstream.close()
    assert closed


def test_end_open_streams_answers_503_to_a_stream_before_its_first_output() -> None:
    upstream = ChatUpstream(None, None)  # silent from the start
    timer = threading.Timer(0.2, end_open_streams)
    timer.start()
    try:
        with pytest.raises(StreamError) as raised:
            body = sse_frames(upstream, keepalive_seconds=3)
            body.close()  # type: ignore[attr-defined]
    finally:
        timer.join()
        upstream.close()
    error = json.loads(raised.value.body())["error"]
    assert (raised.value.status, error) == (503, SHUTDOWN_ERROR)


class FastRawUpstream:
    """Raw SSE reads of 64 KiB each, as fast as they are taken; counts them."""

    READ = b"".join(
        b"data: " + json.dumps(_chat("x" * 8000)).encode() + b"\n\n" for _ in range(8)
    )

    def __init__(self) -> None:
        self.reads = 0
        self.closed = threading.Event()

    def iter_bytes(self) -> Iterator[bytes]:
        while not self.closed.is_set():
            self.reads += 1
            yield self.READ

    def __iter__(self) -> Iterator[bytes]:
        return self.iter_bytes()

    def close(self) -> None:
        self.closed.set()


def test_a_stalled_stream_queues_a_bounded_amount_of_text_not_of_reads() -> None:
    """Each read here carries 64,000 characters: the queue is full after the first
    one (the writer holds another), not after ``_QUEUE_SIZE`` of them."""
    upstream = FastRawUpstream()
    body = sse_frames(upstream)
    try:
        time.sleep(0.2)  # nobody reads the body
        assert upstream.reads <= 4
    finally:
        body.close()  # type: ignore[attr-defined]
    assert upstream.closed.wait(2)
