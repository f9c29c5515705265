"""The load generator: many concurrent HTTP/1.1 streams against one target.

Why this shape: it runs in its own process (``bench.run`` calls :func:`run` in a
worker process) so that its CPU is not counted against, or stolen from, the
orchestrator's measurements, and it speaks HTTP/1.1 over raw asyncio streams so
that a thousand streams cost little: a few lines handle chunked, sized and
close-delimited bodies, keep-alive, and SSE events split anywhere.

Two ways to ask: ``api="sse"`` is a browser's ``GET /completionChat?prompt=`` read
as SSE (each ``data`` event a text delta); ``api="openai"`` posts the upstream's
own request (``POST /v1/chat/completions``) and reads OpenAI's chunks, for the
``direct`` and ``relay`` targets. Each request is checked for the exact text and a
final ``[DONE]``; the time of every delta's arrival is kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import math
import re
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, cast
from urllib.parse import quote

from bench import aio, scenario

CONNECT_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Load:
    """What to send: ``requests`` in total, spread over ``concurrency`` connections.

    Each connection sends its share one after another, reusing the connection when
    the server keeps it alive. Connections open evenly over ``ramp_seconds``; at
    ``deadline_seconds`` whatever is unfinished is abandoned.
    """

    def split(self, parts: int) -> list[Load]:
        """The same load as ``parts`` loads for as many processes, interleaved.

        Their connections open alternately over the same ramp, so together they
        send what this load would.
        """
        parts = max(1, min(parts, self.concurrency))
        return [
            dataclasses.replace(
                self,
                concurrency=_share(self.concurrency, parts, part),
                requests=_share(self.requests, parts, part),
                start_seconds=self.ramp_seconds * part / self.concurrency,
            )
            for part in range(parts)
        ]

    port: int
    prompt: str
    api: Literal["sse", "openai"] = "sse"
    ca_file: str | None = None  # TLS, for the openai api straight to the upstream
    concurrency: int = 1
    requests: int = 1
    ramp_seconds: float = 0.0
    deadline_seconds: float = 60.0
    start_seconds: float = 0.0  # when the first connection opens: see split()
    # A resumable answer already under way: each request reads it on from this
    # event (``Last-Event-ID``), expects the text without its first ``skipped``
    # tokens, and times only the tokens the upstream sent after the request.
    last_event_id: str | None = None
    skipped: int = 0


def _share(total: int, parts: int, part: int) -> int:
    """Part ``part`` of ``total`` split as evenly as can be into ``parts``."""
    return total // parts + (part < total % parts)


@dataclass
class Outcome:
    """What came back. Times are in seconds; ``errors`` counts failed requests."""

    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    chunks: int = 0  # text deltas received, from every request
    ttfb: list[float] = field(default_factory=list)  # send to first delta
    # (upstream stamp, client receipt) per token: rate scenarios only
    arrivals: list[tuple[float, float]] = field(default_factory=list)
    connections: int = 0
    seconds: float = 0.0
    first_sent: float = math.inf  # wall-clock time of the first request sent
    last_received: float = 0.0  # and of the last delta received
    all_started: float = 0.0  # when the last request to start got its first delta
    first_ended: float = math.inf  # when the first request to end got its last

    @property
    def latencies(self) -> list[float]:
        """Seconds from upstream send to client receipt, per token."""
        return [received - stamped for stamped, received in self.arrivals]

    def merge(self, other: Outcome) -> None:
        """Add what another load generator process saw of the same load."""
        self.ok += other.ok
        self.errors += other.errors
        self.chunks += other.chunks
        self.ttfb += other.ttfb
        self.arrivals += other.arrivals
        self.connections += other.connections
        self.seconds = max(self.seconds, other.seconds)
        self.first_sent = min(self.first_sent, other.first_sent)
        self.last_received = max(self.last_received, other.last_received)
        self.all_started = max(self.all_started, other.all_started)
        self.first_ended = min(self.first_ended, other.first_ended)

    @property
    def all_open_seconds(self) -> float:
        """How long every request was streaming at once (< 0: never)."""
        return self.first_ended - self.all_started


class Failure(Exception):
    """A request that got an answer, but the wrong one."""


# The fake upstream's content chunks, as the relay passes them on: read without a
# JSON parser, which would cost the client more than the relay spends per chunk.
_CONTENT = re.compile(
    rb'^\{[^{]*"choices":\[\{"index":0,"delta":\{"content":"([^"\\]*)"\}'
)


class Events:
    """Turns body bytes into the answer's text deltas, each with its arrival time."""

    def __init__(self, api: str) -> None:
        self.api = api
        self.rest = b""
        self.name = b""
        self.data: list[bytes] = []
        self.pieces: list[tuple[float, str]] = []
        self.done = False

    def feed(self, body: bytes) -> None:
        now = time.time()
        lines = (self.rest + body).split(b"\n")
        self.rest = lines.pop()
        for line in lines:
            line = line.rstrip(b"\r")
            if not line:
                self.dispatch(now)
            elif line.startswith(b"data:"):
                value = line[5:]
                self.data.append(value[1:] if value.startswith(b" ") else value)
            elif line.startswith(b"event:"):
                self.name = line[6:].strip()

    def dispatch(self, now: float) -> None:
        data, name = b"\n".join(self.data), self.name
        self.data, self.name = [], b""
        if name not in (b"", b"message") or not data:
            return  # usage, keep-alive comments and other named events
        if data == b"[DONE]":
            self.done = True
        elif self.api == "sse":
            self.pieces.append((now, data.decode()))
        elif match := _CONTENT.match(data):
            if match[1]:
                self.pieces.append((now, match[1].decode()))
        else:
            for choice in json.loads(data)["choices"]:
                if text := choice["delta"].get("content"):
                    self.pieces.append((now, text))


def request_bytes(load: Load) -> bytes:
    host = f"Host: 127.0.0.1:{load.port}\r\n"
    if load.api == "sse":
        resume = load.last_event_id
        return (
            f"GET /completionChat?prompt={quote(load.prompt)} HTTP/1.1\r\n{host}"
            "Accept: text/event-stream\r\n"
            + (f"Last-Event-ID: {resume}\r\n" if resume else "")
            + "\r\n"
        ).encode()
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": load.prompt}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\n{host}"
        "Authorization: Bearer sk-bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class Response:
    """Parses one HTTP/1.1 response as its bytes arrive, passing the body on.

    A push parser (fed by :class:`Connection`) rather than awaits on a stream
    reader: two awaits per HTTP chunk made the client, not the server under test,
    the bottleneck at a few thousand streams. Everything that arrived together
    goes to ``sink`` in one call, which stamps it with one arrival time.
    """

    def __init__(self, sink: Callable[[bytes], None]) -> None:
        self.sink = sink
        self.buffer = b""
        self.state = "head"
        self.size = 0  # of the chunk or sized body being read
        self.alive = False  # whether the connection can carry another request
        self.finished = False

    def feed(self, data: bytes) -> None:
        """Parse what has arrived; raises :class:`Failure` or ``ValueError``."""
        self.buffer += data
        body: list[bytes] = []
        while not self.finished and self.step(body):
            pass
        if body:
            self.sink(b"".join(body))

    def step(self, body: list[bytes]) -> bool:
        """Parse one element (head, chunk size, chunk, ...); False if incomplete."""
        buffer = self.buffer
        if self.state == "data":
            if len(buffer) < self.size + 2:
                return False
            body.append(buffer[: self.size])
            self.buffer = buffer[self.size + 2 :]
            self.state = "size"
            return True
        if self.state == "sized":
            if len(buffer) < self.size:
                return False
            body.append(buffer[: self.size])
            self.buffer = buffer[self.size :]
            self.finished = True
            return True
        if self.state == "close":
            body.append(buffer)
            self.buffer = b""
            return False
        end = buffer.find(b"\r\n\r\n" if self.state == "head" else b"\r\n")
        if end < 0:
            return False
        line, self.buffer = buffer[:end], buffer[end + 2 :]
        if self.state == "head":
            self.buffer = self.buffer[2:]
            self.head(line.decode("latin-1"))
        elif self.state == "size":
            self.size = int(line.split(b";")[0], 16)
            self.state = "data" if self.size else "trailer"
        else:  # the trailer: header lines until an empty one
            self.finished = not line
        return True

    def head(self, head: str) -> None:
        status_line, *lines = head.split("\r\n")
        version, status, _ = status_line.split(" ", 2)
        if status != "200":
            raise Failure(f"HTTP {status}")
        headers = {
            name.strip().lower(): value.strip().lower()
            for name, _, value in (line.partition(":") for line in lines if line)
        }
        self.alive = version == "HTTP/1.1" and headers.get("connection") != "close"
        if "chunked" in headers.get("transfer-encoding", ""):
            self.state = "size"
        elif "content-length" in headers:
            self.state, self.size = "sized", int(headers["content-length"])
        else:
            self.state, self.alive = "close", False

    def end_of_input(self) -> None:
        """The connection closed: fine only for a close-delimited body."""
        if self.state == "close":
            self.feed(b"")
            self.finished = True
        elif not self.finished:
            raise Failure("body cut short")


class Connection(asyncio.Protocol):
    """One client connection; :meth:`exchange` sends a request, reads its answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.answered: asyncio.Future[bool] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    async def exchange(self, request: bytes, response: Response) -> bool:
        """Send ``request``; True when the answer ended and the connection lives."""
        assert self.transport is not None
        if self.closed:
            raise Failure("connection closed")
        self.response = response
        self.answered = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        try:
            return await self.answered
        finally:
            self.response = self.answered = None

    def data_received(self, data: bytes) -> None:
        if self.response is None or self.answered is None or self.answered.done():
            return
        try:
            self.response.feed(data)
        except (Failure, ValueError) as exc:
            self.answered.set_exception(exc)
            return
        if self.response.finished:
            self.answered.set_result(self.response.alive)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.response is None or self.answered is None or self.answered.done():
            return
        try:
            self.response.end_of_input()
        except Failure as failure:
            self.answered.set_exception(failure)
        else:
            self.answered.set_result(False)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connection(
    load: Load,
    count: int,
    delay: float,
    outcome: Outcome,
    context: ssl.SSLContext | None,
) -> None:
    """Send ``count`` requests one after another, reconnecting when needed."""
    await asyncio.sleep(delay)
    request = request_bytes(load)
    timed = isinstance(scenario.parse(load.prompt), scenario.Rate)
    loop = asyncio.get_running_loop()
    client: Connection | None = None
    try:
        for _ in range(count):
            events = Events(load.api)
            try:
                if client is None:
                    async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                        _, client = await loop.create_connection(
                            Connection, "127.0.0.1", load.port, ssl=context
                        )
                    outcome.connections += 1
                sent = time.time()
                outcome.first_sent = min(outcome.first_sent, sent)
                alive = await client.exchange(request, Response(events.feed))
            except (OSError, TimeoutError, Failure, ValueError) as exc:
                outcome.errors[str(exc) if isinstance(exc, Failure) else repr(exc)] += 1
                alive = False
            else:
                record(load, events, outcome)
            finally:
                outcome.chunks += len(events.pieces)
                if events.pieces:
                    first, last = events.pieces[0][0], events.pieces[-1][0]
                    outcome.ttfb.append(first - sent)
                    outcome.last_received = max(outcome.last_received, last)
                    outcome.all_started = max(outcome.all_started, first)
                    outcome.first_ended = min(outcome.first_ended, last)
                if timed:
                    since = sent if load.last_event_id else 0.0
                    outcome.arrivals += scenario.arrivals(events.pieces, since)
            if not alive and client is not None:
                client.close()
                client = None
    finally:
        if client is not None:
            client.close()


def record(load: Load, events: Events, outcome: Outcome) -> None:
    text = "".join(piece for _, piece in events.pieces)
    if not events.done:
        outcome.errors["no [DONE]"] += 1
    elif not scenario.is_correct(load.prompt, text, load.skipped):
        outcome.errors["wrong text"] += 1
    else:
        outcome.ok += 1


async def generate(load: Load) -> Outcome:
    outcome = Outcome()
    context = ssl.create_default_context(cafile=load.ca_file) if load.ca_file else None
    per, extra = divmod(load.requests, load.concurrency)
    tasks = [
        asyncio.create_task(
            connection(
                load,
                per + (i < extra),
                load.start_seconds + load.ramp_seconds * i / load.concurrency,
                outcome,
                context,
            )
        )
        for i in range(load.concurrency)
    ]
    start = time.monotonic()
    _, pending = await asyncio.wait(tasks, timeout=load.deadline_seconds)
    outcome.seconds = time.monotonic() - start
    for task in pending:
        task.cancel()
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, Exception):
            raise result  # a bug in this module, not a failed request
    if unfinished := load.requests - outcome.ok - outcome.errors.total():
        outcome.errors[f"unfinished at {load.deadline_seconds:g}s"] += unfinished
    return outcome


def run(load: Load) -> Outcome:
    """Apply ``load`` and wait for it (at most ``deadline_seconds``).

    The cyclic garbage collector is off meanwhile: its passes over the many kept
    arrival times would pause the client and show up as latency of the target.
    Nothing here makes cycles, so reference counting frees everything.
    """
    gc.disable()
    try:
        return aio.run(generate(load))
    finally:
        gc.enable()
