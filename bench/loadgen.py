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
import gc
import json
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
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

    port: int
    prompt: str
    api: Literal["sse", "openai"] = "sse"
    ca_file: str | None = None  # TLS, for the openai api straight to the upstream
    concurrency: int = 1
    requests: int = 1
    ramp_seconds: float = 0.0
    deadline_seconds: float = 60.0


@dataclass
class Outcome:
    """What came back. Times are in seconds; ``errors`` counts failed requests."""

    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    chunks: int = 0  # text deltas received, from every request
    ttfb: list[float] = field(default_factory=list)  # send to first delta
    latencies: list[float] = field(default_factory=list)  # rate scenarios only
    connections: int = 0
    seconds: float = 0.0


class Failure(Exception):
    """A request that got an answer, but the wrong one."""


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
        else:
            for choice in json.loads(data)["choices"]:
                if text := choice["delta"].get("content"):
                    self.pieces.append((now, text))


def request_bytes(load: Load) -> bytes:
    host = f"Host: 127.0.0.1:{load.port}\r\n"
    if load.api == "sse":
        return (
            f"GET /completionChat?prompt={quote(load.prompt)} HTTP/1.1\r\n{host}"
            "Accept: text/event-stream\r\n\r\n"
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


async def read_response(
    reader: asyncio.StreamReader, sink: Callable[[bytes], None]
) -> bool:
    """Read one response, passing its body to ``sink``; True if the connection lives."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *lines = head.split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    if status != "200":
        raise Failure(f"HTTP {status}")
    headers = {
        name.strip().lower(): value.strip().lower()
        for name, _, value in (line.partition(":") for line in lines if line)
    }
    alive = version == "HTTP/1.1" and headers.get("connection") != "close"
    if "chunked" in headers.get("transfer-encoding", ""):
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            sink((await reader.readexactly(size + 2))[:-2])
        await reader.readuntil(b"\r\n")  # the empty trailer
    elif "content-length" in headers:
        sink(await reader.readexactly(int(headers["content-length"])))
    else:
        while data := await reader.read(1 << 16):
            sink(data)
        alive = False
    return alive


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
    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    try:
        for _ in range(count):
            events = Events(load.api)
            try:
                if streams is None:
                    async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                        streams = await asyncio.open_connection(
                            "127.0.0.1",
                            load.port,
                            ssl=context,
                            limit=1 << 20,
                        )
                    outcome.connections += 1
                reader, writer = streams
                sent = time.time()
                writer.write(request)
                alive = await read_response(reader, events.feed)
            except (OSError, TimeoutError, Failure, ValueError) as exc:
                outcome.errors[str(exc) if isinstance(exc, Failure) else repr(exc)] += 1
                alive = False
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                outcome.errors["body cut short"] += 1
                alive = False
            else:
                record(load.prompt, events, sent, outcome)
            finally:
                outcome.chunks += len(events.pieces)
                if events.pieces:
                    outcome.ttfb.append(events.pieces[0][0] - sent)
                if timed:
                    outcome.latencies += scenario.latencies(events.pieces)
            if not alive and streams is not None:
                streams[1].close()
                streams = None
    finally:
        if streams is not None:
            streams[1].close()


def record(prompt: str, events: Events, sent: float, outcome: Outcome) -> None:
    text = "".join(piece for _, piece in events.pieces)
    if not events.done:
        outcome.errors["no [DONE]"] += 1
    elif not scenario.is_correct(prompt, text):
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
                load.ramp_seconds * i / load.concurrency,
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
