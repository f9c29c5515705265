"""A fake OpenAI Chat Completions endpoint that is never the bottleneck.

Why a fake: the bench measures the servers in between, so the model must answer
instantly, deterministically and cheaply, on 127.0.0.1. It speaks the wire format
of ``POST /v1/chat/completions`` with ``stream: true`` as OpenAI does (one
``chat.completion.chunk`` JSON object per SSE event, each in its own HTTP chunk of a
chunked HTTP/1.1 response on a keep-alive connection, a usage chunk with empty
``choices`` when ``stream_options.include_usage`` is set, then ``data: [DONE]``),
over plain HTTP and over TLS (a ``trustme`` CA written to ``--ca-file``).

Why fast: ``full:N`` answers are encoded once and written in one block; ``rate``
answers reuse a pre-encoded chunk template. The prompt picks the scenario (see
``bench.scenario``). ``GET /stats`` reports how many connections each listener has
accepted, which shows whether a server reuses its upstream connections.

``python -m bench.upstream --port P --tls-port Q --ca-file ca.pem``
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import heapq
import itertools
import json
import ssl
import time
from typing import Any

import trustme

from bench import aio, scenario

CREATED = 1_700_000_000
MODEL = "gpt-4o-mini-2024-07-18"
IDLE_SECONDS = 60.0  # a keep-alive connection with no new request is closed
MAX_BODY = 1 << 20
_MARK = "\x00"  # stands for the delta's text in the chunk template
HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream; charset=utf-8\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Connection: keep-alive\r\n"
    b"x-request-id: req_bench\r\n"
    b"openai-processing-ms: 1\r\n\r\n"
)
DONE = b"data: [DONE]\n\n"
LAST_CHUNK = b"0\r\n\r\n"

# Connections per listener that carried a completion request (not just /stats).
accepted = {"plain": 0, "tls": 0}


def _event(choices: list[dict[str, Any]], null_usage: bool, **extra: Any) -> bytes:
    """One ``chat.completion.chunk`` as the SSE event OpenAI sends (compact JSON).

    With ``include_usage``, OpenAI adds ``"usage": null`` to every content chunk.
    """
    chunk: dict[str, Any] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
        "choices": choices,
    }
    if null_usage:
        chunk["usage"] = None
    chunk.update(extra)
    return b"data: %s\n\n" % json.dumps(chunk, separators=(",", ":")).encode()


def _delta(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "index": 0,
        "delta": delta,
        "logprobs": None,
        "finish_reason": finish_reason,
    }


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Answer:
    """The pre-encoded pieces of one answer: opening, per-token template, ending."""

    def __init__(self, tokens: int, usage: bool) -> None:
        self.opening = http_chunk(
            _event(
                [_delta({"role": "assistant", "content": "", "refusal": None})], usage
            )
        )
        template = _event([_delta({"content": _MARK})], usage).decode()
        self._prefix, self._suffix = template.split(json.dumps(_MARK))
        ending = [_event([_delta({}, "stop")], usage)]
        if usage:
            counts = {
                "prompt_tokens": 9,
                "completion_tokens": tokens,
                "total_tokens": 9 + tokens,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            }
            ending.append(_event([], False, usage=counts))
        ending.append(DONE)
        self.ending = b"".join(map(http_chunk, ending)) + LAST_CHUNK

    def token(self, text: str) -> bytes:
        """One content delta as its own HTTP chunk."""
        return http_chunk((self._prefix + json.dumps(text) + self._suffix).encode())


@functools.lru_cache(maxsize=64)
def full_body(tokens: int, usage: bool) -> bytes:
    """A whole ``full:N`` answer, head to last chunk, encoded once."""
    answer = Answer(tokens, usage)
    body = [answer.token(scenario.full_token(i)) for i in range(tokens)]
    return HEAD + answer.opening + b"".join(body) + answer.ending


class Paced:
    """One ``rate`` answer being written, a token each time the pacer calls it."""

    def __init__(
        self,
        writer: asyncio.StreamWriter,
        rate: scenario.Rate,
        usage: bool,
        start: float,
    ) -> None:
        self.writer = writer
        self.rate = rate
        self.answer = Answer(rate.tokens, usage)
        self.start = start
        self.index = 0
        self.finished = asyncio.get_running_loop().create_future()

    @property
    def due(self) -> float:
        return self.start + self.index / self.rate.per_second

    def send(self) -> bool:
        """Write the next token, stamped with the time it is written; True if more."""
        if self.writer.is_closing():
            self.finished.set_result(None)
            return False
        if self.index < self.rate.tokens:
            stamp = scenario.rate_token(self.index, time.time())
            self.writer.write(self.answer.token(stamp))
            self.index += 1
        if self.index < self.rate.tokens:
            return True
        self.writer.write(self.answer.ending)
        self.finished.set_result(None)
        return False


class Pacer:
    """Writes the tokens of every ``rate`` answer from one loop, as they fall due.

    Why one loop: a sleeping task per answer cost a timer, a future and a task
    step per token, which made this process, not the server under test, the
    bottleneck at a few thousand streams. A token is written at most ``TICK``
    late, and stamped when it is written, so lateness never counts as latency.
    """

    TICK = 0.001

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, Paced]] = []
        self.order = itertools.count()  # breaks ties between equal times
        self.task: asyncio.Task[None] | None = None

    def add(self, paced: Paced) -> None:
        heapq.heappush(self.heap, (paced.due, next(self.order), paced))
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.heap:
                now = loop.time()
                while self.heap and self.heap[0][0] <= now:
                    paced = heapq.heappop(self.heap)[2]
                    if paced.send():
                        heapq.heappush(self.heap, (paced.due, next(self.order), paced))
                if self.heap:
                    await asyncio.sleep(max(self.heap[0][0] - loop.time(), self.TICK))
        finally:
            self.task = None


pacer = Pacer()


async def send_rate(
    writer: asyncio.StreamWriter, rate: scenario.Rate, usage: bool
) -> None:
    """Token ``i`` at ``start + i / rate``, stamped with the time it is written."""
    paced = Paced(writer, rate, usage, asyncio.get_running_loop().time())
    writer.write(HEAD + paced.answer.opening)
    pacer.add(paced)
    await paced.finished
    await writer.drain()


def simple_response(status: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return (
        b"HTTP/1.1 %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (status.encode(), len(data), data)
    )


def error(status: str, message: str) -> bytes:
    return simple_response(
        status, {"error": {"message": message, "type": "invalid_request_error"}}
    )


async def answer(writer: asyncio.StreamWriter, target: str, body: bytes) -> None:
    """Answer one request: a streamed completion, the stats, or an error."""
    if target == "/stats":
        writer.write(simple_response("200 OK", accepted))
        return
    if target != "/v1/chat/completions":
        writer.write(error("404 Not Found", f"no route {target}"))
        return
    try:
        params = json.loads(body)
        prompt = params["messages"][-1]["content"]
        wanted = scenario.parse(prompt)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        writer.write(error("400 Bad Request", str(exc)))
        return
    usage = bool((params.get("stream_options") or {}).get("include_usage"))
    if isinstance(wanted, scenario.Full):
        writer.write(full_body(wanted.tokens, usage))
    else:
        await send_rate(writer, wanted, usage)


async def serve_connection(
    listener: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Requests one after another on a keep-alive connection, until it closes."""
    counted = False
    try:
        while True:
            async with asyncio.timeout(IDLE_SECONDS):
                head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, target, version = request_line.split(" ")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines if line)
            }
            length = int(headers.get("content-length", 0))
            if length > MAX_BODY or "transfer-encoding" in headers:
                writer.write(error("400 Bad Request", "send a Content-Length body"))
                break
            async with asyncio.timeout(IDLE_SECONDS):
                body = await reader.readexactly(length)
            path = target.partition("?")[0]
            if not counted and path != "/stats":
                accepted[listener] += 1
                counted = True
            await answer(writer, path, body)
            await writer.drain()
            if version != "HTTP/1.1" or headers.get("connection") == "close":
                break
    except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError):
        pass  # the client left, timed out or spoke something else: just close
    finally:
        writer.close()


async def main(port: int, tls_port: int, ca_file: str) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(ca_file)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    plain = await asyncio.start_server(
        functools.partial(serve_connection, "plain"), "127.0.0.1", port, backlog=4096
    )
    tls = await asyncio.start_server(
        functools.partial(serve_connection, "tls"),
        "127.0.0.1",
        tls_port,
        ssl=context,
        backlog=4096,
    )
    async with plain, tls:
        await asyncio.gather(plain.serve_forever(), tls.serve_forever())


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-port", type=int, required=True)
    parser.add_argument("--ca-file", required=True)
    args = parser.parse_args()
    aio.run(main(args.port, args.tls_port, args.ca_file))


if __name__ == "__main__":
    cli()
