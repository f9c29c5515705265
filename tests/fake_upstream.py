"""A scriptable fake of OpenAI's streaming API: a real HTTP(S) server on 127.0.0.1.

Why a real server: the apps under test run as separate processes using the real
``openai`` client, so the honest seam is the network. Give them
``OPENAI_BASE_URL=fake.base_url`` (and ``SSL_CERT_FILE=fake.ca_file`` for TLS) and
connection pooling, chunked framing, TLS and disconnect propagation all run as in
production. A test registers a ``Script`` and puts ``script.marker`` in its prompt;
each step goes out as one flushed chunk, so tests control byte boundaries, timing
and failures, and the fake records when the client hung up (did we cancel?).
"""

from __future__ import annotations

import itertools
import json
import select
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer
from typing import Any

import trustme

CREATED = 1700000000
ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/responses": "responses",
}
_marker_ids = itertools.count(1)  # process-wide, so markers never collide
# A name that never resolves, in the TLS certificate too: only a proxy that sends
# every request to the fake (``tests.forward_proxy``) reaches it.
PROXY_ONLY_HOST = "upstream.proxy-test.invalid"
# In an error body or an ``ErrorEvent``'s message: replaced by the token of the
# Authorization header received, as an upstream that quotes the key it was sent.
RECEIVED_KEY = "<<received key>>"


@dataclass(frozen=True)
class Text:
    """A content delta, formatted for the endpoint that was called."""

    delta: str


@dataclass(frozen=True)
class Refusal:
    """A refusal: chat's ``delta.refusal``, Responses' ``response.refusal.delta``."""

    delta: str


@dataclass(frozen=True)
class Reasoning:
    """A reasoning model's thinking. Chat: ``delta.<field>``, where ``field`` is
    ``reasoning_content`` (DeepSeek, older vLLM) or ``reasoning`` (vLLM, Ollama,
    OpenRouter). Responses: ``response.reasoning_summary_text.delta`` (``summary``)
    or ``response.reasoning_text.delta`` (raw thinking, as vLLM sends it)."""

    delta: str
    field: str = "reasoning_content"
    summary: bool = True


@dataclass(frozen=True)
class ToolCallFragment:
    """Chat only: one ``delta.tool_calls`` fragment, with only the parts given
    (``index=None`` leaves the index out, as some providers do)."""

    index: int | None
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class FunctionCall:
    """A whole tool call, in each API's shape. Chat: two ``delta.tool_calls``
    fragments at the next index (id and name with the first half of the arguments,
    then the rest). Responses: ``response.output_item.added``, the arguments in two
    ``response.function_call_arguments.delta`` events, ``.done``, and
    ``response.output_item.done``; ``Done()`` then lists the call in the
    ``response.completed`` output, as OpenAI does."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Finish:
    """Chat/completions: a chunk with ``finish_reason``; Responses: the end of the
    answer, ``response.incomplete`` with this ``incomplete_details.reason`` (and the
    usage) unless the reason is ``stop`` (then ``Done()`` is the way)."""

    reason: str = "stop"


@dataclass(frozen=True)
class Usage:
    """Token usage: its own chunk (chat/completions) or in ``response.completed``."""

    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Done:
    """The end marker: ``data: [DONE]`` or the ``response.completed`` event."""


@dataclass(frozen=True)
class Raw:
    """Bytes written verbatim as one chunk (provider quirks, split UTF-8, bad JSON).

    ``Raw(b"")`` is skipped: an empty chunk would end the chunked body.
    """

    data: bytes


@dataclass(frozen=True)
class Sleep:
    """Silence, while watching for the client closing the connection."""

    seconds: float


@dataclass(frozen=True)
class Hold:
    """No text until the test sets ``until`` (or ``limit_seconds`` pass), only an SSE
    comment every tenth of a second (the client's read timeout must not fire), while
    watching for the client closing the connection: the answer is still running at
    whatever the test does meanwhile, however slow the machine."""

    until: threading.Event
    limit_seconds: float = 10


@dataclass(frozen=True)
class Abort:
    """Reset the TCP connection mid-response (RST, no terminating chunk).

    A RST makes the peer's kernel drop bytes it has not read yet; put a short
    ``Sleep`` before it if the client must see the preceding steps first.
    """


@dataclass(frozen=True)
class Hangup:
    """Close the connection mid-response with a FIN: no RST, no terminating chunk.

    An abrupt but orderly close (a proxy or server that gave up): every byte sent
    before it arrives, and the body is still cut short.
    """


@dataclass(frozen=True)
class Forever:
    """``Text(delta)`` every ``interval`` until the client leaves (or the limit)."""

    delta: str = "tick "
    interval: float = 0.05
    limit_seconds: float = 60


@dataclass(frozen=True)
class Flood:
    """``Text(delta)`` ``count`` times, with no pause: a long answer sent as fast as
    the client reads it. A client that stops reading blocks the fake's writes."""

    delta: str
    count: int


@dataclass(frozen=True)
class ErrorEvent:
    """An in-stream error, as OpenAI sends when generation fails midway."""

    message: str
    type: str = "server_error"


Step = (
    Text
    | Reasoning
    | Refusal
    | ToolCallFragment
    | FunctionCall
    | Finish
    | Usage
    | Done
    | Raw
    | Sleep
    | Hold
    | Abort
    | Hangup
    | Forever
    | Flood
    | ErrorEvent
)
DEFAULT_STEPS: tuple[Step, ...] = (Text("Hello"), Text(" world"), Usage(5, 2), Done())


@dataclass
class RecordedRequest:
    """What arrived and how serving it ended (times are ``time.monotonic()``)."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    marker: str | None
    received_at: float
    finished_at: float | None = None
    disconnected_at: float | None = None
    events_sent: int = 0
    last_write_at: float = 0.0  # last successful write, else received_at

    def __post_init__(self) -> None:
        self.last_write_at = self.last_write_at or self.received_at


@dataclass(eq=False)
class Script:
    """Steps (or an error status) played anew for each request carrying ``marker``."""

    _cond: threading.Condition = field(repr=False)
    marker: str
    steps: tuple[Step, ...]
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    headers_delay: float = 0.0
    unanswered: Hangup | Abort | None = None  # close this way, without an answer
    # No chunked framing: ``Connection: close``, and the body ends with the connection.
    close_delimited: bool = False
    requests: list[RecordedRequest] = field(default_factory=list)
    # Played instead for the next request with this marker (the SDK's retry); the
    # last script of the chain answers every request after that.
    then: Script | None = None

    def wait_for_request(self, timeout: float = 5.0) -> RecordedRequest:
        """The first request that matched; AssertionError if none within timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.requests, timeout):
                raise AssertionError(f"no request for {self.marker!r} in {timeout}s")
            return self.requests[0]

    def wait_disconnected(self, timeout: float = 5.0) -> float:
        """Seconds from the last write to the client hanging up (first such request)."""

        def gone() -> RecordedRequest | None:
            done = (r for r in self.requests if r.disconnected_at is not None)
            return next(done, None)

        with self._cond:
            rec = self._cond.wait_for(gone, timeout)
        if rec is None or rec.disconnected_at is None:
            raise AssertionError(f"no disconnect for {self.marker!r} in {timeout}s")
        return rec.disconnected_at - rec.last_write_at


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _tokens(u: Usage | None, prompt: str, completion: str) -> dict[str, int] | None:
    if u is None:
        return None
    total = u.prompt_tokens + u.completion_tokens
    return {
        prompt: u.prompt_tokens,
        completion: u.completion_tokens,
        "total_tokens": total,
    }


class _Encoder:
    """Turns steps into one endpoint's wire format (ids, sequence numbers, usage)."""

    def __init__(self, kind: str, model: str, received_key: str = "") -> None:
        self.kind, self.model, self.seq = kind, model, 0
        self.received_key = received_key
        self.usage: Usage | None = None
        self.calls: list[dict[str, Any]] = []  # FunctionCall items sent so far
        chat = kind == "chat"
        self.head: dict[str, Any] = {
            "id": "chatcmpl-fake" if chat else "cmpl-fake",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": CREATED,
            "model": model,
        }

    def sse(self, obj: Any, event: str | None = None) -> bytes:
        head = f"event: {event}\n" if event else ""
        return f"{head}data: {_dumps(obj)}\n\n".encode()

    def event(self, name: str, **fields: Any) -> bytes:
        self.seq += 1
        return self.sse({"type": name, "sequence_number": self.seq, **fields}, name)

    def response(self, status: str) -> dict[str, Any]:
        return {
            "id": "resp_fake",
            "object": "response",
            "status": status,
            "model": self.model,
            "output": [],
        }

    def created(self) -> bytes:
        return self.sse(
            {
                "type": "response.created",
                "sequence_number": 0,
                "response": self.response("in_progress"),
            },
            "response.created",
        )

    def chat_delta(self, delta: dict[str, Any]) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": None}
        return self.sse({**self.head, "choices": [choice]})

    def fragment(self, step: ToolCallFragment) -> bytes:
        call: dict[str, Any] = {"type": "function", "function": {}}
        if step.index is not None:
            call["index"] = step.index
        if step.id is not None:
            call["id"] = step.id
        if step.name is not None:
            call["function"]["name"] = step.name
        call["function"]["arguments"] = step.arguments
        return self.chat_delta({"tool_calls": [call]})

    def function_call(self, step: FunctionCall) -> bytes:
        index, half = len(self.calls), len(step.arguments) // 2
        head, rest = step.arguments[:half], step.arguments[half:]
        item = {
            "type": "function_call",
            "id": f"fc_{step.call_id}",
            "call_id": step.call_id,
            "name": step.name,
            "arguments": "",
            "status": "in_progress",
        }
        whole = {**item, "arguments": step.arguments, "status": "completed"}
        self.calls.append(whole)
        if self.kind == "chat":
            first = ToolCallFragment(index, step.call_id, step.name, head)
            return self.fragment(first) + self.fragment(
                ToolCallFragment(index, None, None, rest)
            )
        # Output 0 is the message of Text steps.
        at = {"output_index": index + 1}
        where = {"item_id": item["id"], **at}
        return b"".join(
            [
                self.event("response.output_item.added", **at, item=item),
                self.event(
                    "response.function_call_arguments.delta", **where, delta=head
                ),
                self.event(
                    "response.function_call_arguments.delta", **where, delta=rest
                ),
                self.event(
                    "response.function_call_arguments.done",
                    **where,
                    arguments=step.arguments,
                ),
                self.event("response.output_item.done", **at, item=whole),
            ]
        )

    def encode(self, step: Step) -> bytes:
        match step, self.kind:
            case Raw(data), _:
                return data
            case Reasoning(delta, _, summary), "responses":
                kind = "reasoning_summary_text" if summary else "reasoning_text"
                extra = {"summary_index": 0} if summary else {"content_index": 0}
                return self.event(
                    f"response.{kind}.delta",
                    item_id="rs_fake",
                    output_index=0,
                    **extra,
                    delta=delta,
                )
            case Reasoning(delta, field), "chat":
                return self.chat_delta({field: delta})
            case ToolCallFragment(), "chat":
                return self.fragment(step)
            case FunctionCall(), "chat" | "responses":
                return self.function_call(step)
            case ErrorEvent(message, kind), _:
                message = message.replace(RECEIVED_KEY, self.received_key)
                return self.sse({"error": {"message": message, "type": kind}})
            case Refusal(delta), "responses":
                return self.event(
                    "response.refusal.delta",
                    item_id="msg_fake",
                    output_index=0,
                    content_index=0,
                    delta=delta,
                )
            case Refusal(delta), _:
                choice = {
                    "index": 0,
                    "delta": {"refusal": delta},
                    "finish_reason": None,
                }
                return self.sse({**self.head, "choices": [choice]})
            case Finish(reason), "responses":
                usage = _tokens(self.usage, "input_tokens", "output_tokens")
                details = {"reason": reason}
                final = {
                    **self.response("incomplete"),
                    "incomplete_details": details,
                    "usage": usage,
                }
                return self.event("response.incomplete", response=final)
            case Finish(reason), "chat":
                choice = {"index": 0, "delta": {}, "finish_reason": reason}
                return self.sse({**self.head, "choices": [choice]})
            case Finish(reason), _:
                choice = {"index": 0, "text": "", "finish_reason": reason}
                return self.sse({**self.head, "choices": [choice]})
            case Text(delta), "responses":
                return self.event(
                    "response.output_text.delta",
                    item_id="msg_fake",
                    output_index=0,
                    content_index=0,
                    delta=delta,
                )
            case Text(delta), "chat":
                choice = {
                    "index": 0,
                    "delta": {"content": delta},
                    "finish_reason": None,
                }
                return self.sse({**self.head, "choices": [choice]})
            case Text(delta), _:
                choice = {
                    "index": 0,
                    "text": delta,
                    "finish_reason": None,
                    "logprobs": None,
                }
                return self.sse({**self.head, "choices": [choice]})
            case Usage(), "responses":
                self.usage = step
                return b""
            case Usage(), _:
                usage = _tokens(step, "prompt_tokens", "completion_tokens")
                return self.sse({**self.head, "choices": [], "usage": usage})
            case Done(), "responses":
                usage = _tokens(self.usage, "input_tokens", "output_tokens")
                final = {**self.response("completed"), "usage": usage}
                final["output"] = list(self.calls)
                return self.event("response.completed", response=final)
            case Done(), _:
                return b"data: [DONE]\n\n"
        raise TypeError(f"not an emitting step: {step!r}")

    def completion(self, steps: tuple[Step, ...]) -> dict[str, Any]:
        """A non-streaming body (a convenience): Text steps joined, first Usage."""
        text = "".join(s.delta for s in steps if isinstance(s, Text))
        usage = next((s for s in steps if isinstance(s, Usage)), None)
        if self.kind == "responses":
            part = {"type": "output_text", "text": text, "annotations": []}
            item = {
                "type": "message",
                "id": "msg_fake",
                "status": "completed",
                "role": "assistant",
                "content": [part],
            }
            return {
                **self.response("completed"),
                "output": [item],
                "output_text": text,
                "usage": _tokens(usage, "input_tokens", "output_tokens"),
            }
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        if self.kind == "chat":
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice.update(text=text, logprobs=None)
        return {
            **self.head,
            "object": self.head["object"].removesuffix(".chunk"),
            "choices": [choice],
            "usage": _tokens(usage, "prompt_tokens", "completion_tokens"),
        }


class _Handler(BaseHTTPRequestHandler):
    """One keep-alive connection; plays the matching script for each request."""

    protocol_version = "HTTP/1.1"
    timeout = 30.0  # idle keep-alive and stuck writes end here, never hang a test
    chunked = True  # the framing of the stream being sent (see Script.close_delimited)
    server: _Server

    def setup(self) -> None:
        # Each step goes out at once, as from a real API server; with Nagle, a step
        # would wait for the client's (delayed) ACK of the one before.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(self.request, ssl.SSLSocket):  # here, not in the accept loop
            self.request.settimeout(10.0)
            self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def do_POST(self) -> None:
        fake, self.watching = self.server.fake, True
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = None
        script, path = fake._match(body), self.path.split("?")[0]
        headers = {k.lower(): v for k, v in self.headers.items()}
        marker, now = script.marker or None, time.monotonic()
        rec = RecordedRequest(self.command, path, headers, payload, marker, now)
        script = fake._record(rec, script)  # the retry's script, if it has its own
        if isinstance(script.unanswered, Abort):  # crashed on the request: a RST
            self._abort()
            return
        if isinstance(script.unanswered, Hangup):  # gave up on it: a FIN
            self._hangup()
            return
        kind = ENDPOINTS.get(path) if self.command == "POST" else None
        params = payload if isinstance(payload, dict) else {}
        received_key = headers.get("authorization", "").rpartition(" ")[2]
        model = str(params.get("model", "fake-model"))
        enc = _Encoder(kind or "chat", model, received_key)
        if script.headers_delay and not self._wait(rec, script.headers_delay):
            return  # the client gave up before the status line: a hung upstream
        if kind is None:
            error = {
                "message": f"Unknown request URL: {self.command} {path}",
                "type": "invalid_request_error",
            }
            self._send_json(rec, 404, {"error": error}, {})
        elif script.status != 200 or script.body is not None:  # 200: not a stream
            default = {"error": {"message": "fake error", "type": "server_error"}}
            error_body = default if script.body is None else script.body
            quoted = _dumps(error_body).replace(RECEIVED_KEY, received_key)
            self._send_json(rec, script.status, quoted.encode(), script.headers)
        elif not params.get("stream"):
            self._send_json(rec, 200, enc.completion(script.steps), script.headers)
        else:
            self._stream(rec, enc, script)

    do_GET = do_PUT = do_PATCH = do_DELETE = do_POST

    def _head(
        self, status: int, base: dict[str, str], extra: Mapping[str, str]
    ) -> None:
        self.send_response(status)
        merged = {k.lower(): (k, v) for k, v in [*base.items(), *extra.items()]}
        for key, value in merged.values():  # script headers override ours
            self.send_header(key, value)
        self.end_headers()

    def _send_json(
        self, rec: RecordedRequest, status: int, obj: Any, extra: Mapping[str, str]
    ) -> None:
        data = obj if isinstance(obj, bytes) else _dumps(obj).encode()
        base = {"Content-Type": "application/json", "Content-Length": str(len(data))}

        def send() -> None:
            self._head(status, base, extra)
            self.wfile.write(data)

        self._finish(rec, send)

    def _finish(self, rec: RecordedRequest, send: Callable[[], object]) -> None:
        """Send the last bytes, marking ``finished_at`` first: a client holding the
        whole response must never see it unset."""
        self.server.fake._update(rec, finished_at=time.monotonic())
        try:
            send()
        except OSError:
            self.server.fake._update(rec, finished_at=None)
            self._gone(rec)

    def _stream(self, rec: RecordedRequest, enc: _Encoder, script: Script) -> None:
        """Play the steps, each one chunk; stop early if the client goes away."""
        self.chunked = not script.close_delimited
        base = {
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
        }
        base.update(
            {"Transfer-Encoding": "chunked"}
            if self.chunked
            else {"Connection": "close"}
        )
        try:
            self._head(200, base, script.headers)
        except OSError:
            self._gone(rec)
            return
        if enc.kind == "responses" and not self._write(rec, enc.created(), step=False):
            return
        for step in script.steps:
            if isinstance(step, Abort):
                self._abort()
                return
            if isinstance(step, Hangup):
                self._hangup()
                return
            if isinstance(step, Sleep):
                ok = self._wait(rec, step.seconds)
            elif isinstance(step, Hold):
                ok = self._hold(rec, step)
            elif isinstance(step, Forever):
                ok = self._forever(rec, enc, step)
            elif isinstance(step, Flood):
                texts = (enc.encode(Text(step.delta)) for _ in range(step.count))
                ok = all(self._write(rec, data) for data in texts)
            else:
                data = enc.encode(step)
                ok = not data or self._write(rec, data)  # b"" would end the body
            if not ok:
                return
        if not self.chunked:  # the end of the body is the end of the connection
            self.server.fake._update(rec, finished_at=time.monotonic())
            self._hangup()
            return
        self._finish(rec, lambda: self.wfile.write(b"0\r\n\r\n"))

    def _write(self, rec: RecordedRequest, data: bytes, step: bool = True) -> bool:
        """Send ``data`` as one chunk, right away; False if the client is gone."""
        try:
            if self.chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                self.wfile.write(data)
        except OSError:
            return self._gone(rec)
        self.server.fake._update(
            rec, last_write_at=time.monotonic(), events_sent=rec.events_sent + int(step)
        )
        return True

    def _forever(self, rec: RecordedRequest, enc: _Encoder, step: Forever) -> bool:
        deadline = time.monotonic() + step.limit_seconds
        while (left := deadline - time.monotonic()) > 0:
            if not (
                self._write(rec, enc.encode(Text(step.delta)))
                and self._wait(rec, min(step.interval, left))
            ):
                return False
        return True

    def _wait(self, rec: RecordedRequest, seconds: float) -> bool:
        """Stay silent for ``seconds``; False if the client left or we are closing."""
        deadline = time.monotonic() + seconds
        # Long slices: a thousand streams' threads polling every few ms would starve
        # the test process. ``close()`` shuts the sockets down, which wakes the poll.
        while (left := deadline - time.monotonic()) > 0:
            if self.server.fake._stopping.is_set() or self._hung_up(min(left, 1.0)):
                return self._gone(rec)
        return True

    def _hold(self, rec: RecordedRequest, step: Hold) -> bool:
        """Hold the answer until ``step.until`` is set; False if the client left."""
        deadline = time.monotonic() + step.limit_seconds
        while not step.until.is_set() and time.monotonic() < deadline:
            held = self._write(rec, b": held\n\n", step=False)
            if not (held and self._wait(rec, 0.1)):
                return False
        return True

    def _hung_up(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for EOF or a reset, without eating request bytes."""
        sock = self.request
        if not self.watching:
            time.sleep(timeout)
            return False
        try:
            poller = select.poll()  # not select(): it fails on descriptors >= 1024
            poller.register(sock, select.POLLIN)
            if not poller.poll(timeout * 1000):
                return False
            if isinstance(sock, ssl.SSLSocket):  # can't peek through TLS; read
                sock.settimeout(0.05)
                try:
                    data = sock.recv(4096)
                finally:
                    sock.settimeout(self.timeout)
            else:
                data = sock.recv(1, socket.MSG_PEEK)
        except (TimeoutError, ssl.SSLWantReadError):
            return False
        except OSError:
            return True
        if data:  # the client sent bytes mid-response: stop watching, don't spin
            self.watching = False
            if isinstance(sock, ssl.SSLSocket):  # we ate them: no further requests
                self.close_connection = True
        return not data

    def _gone(self, rec: RecordedRequest) -> bool:
        """The client went away (or we are closing): drop the connection."""
        self.close_connection = True
        if not self.server.fake._stopping.is_set():
            self.server.fake._update(rec, disconnected_at=time.monotonic())
        return False

    def _hangup(self) -> None:
        self.close_connection = True
        try:
            self.request.shutdown(socket.SHUT_WR)  # FIN now; the server closes later
        except OSError:
            pass

    def _abort(self) -> None:
        self.close_connection = True
        linger = struct.pack("ii", 1, 0)  # on, 0 s: close() sends RST, not FIN
        try:
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            self.rfile.close()  # drop makefile's fd reference so close() is real
            self.request.close()
        except OSError:
            pass


class _Server(ThreadingHTTPServer):
    """Counts connections and defers the TLS handshake to the handler thread."""

    daemon_threads = True
    block_on_close = False  # close() shuts connections down itself, bounded
    request_queue_size = 2048  # a burst of a thousand streams connects at once
    timeout = 0.05  # handle_request() poll, so the accept loop notices close()

    def __init__(self, fake: FakeUpstream, context: ssl.SSLContext | None) -> None:
        self.fake, self.context = fake, context
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        TCPServer.server_bind(self)  # skips HTTPServer's getfqdn() DNS lookup
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        if self.context is not None:
            sock = self.context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        return sock, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        self.fake._connection(request, +1)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        self.fake._connection(request, -1)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # resets are expected
            super().handle_error(request, client_address)


class FakeUpstream:
    """The fake OpenAI server; use it as a context manager so it always stops."""

    def __init__(self, tls: bool = False) -> None:
        self._cond, self._stopping = threading.Condition(), threading.Event()
        self._scripts: list[Script] = []
        self._live: set[socket.socket] = set()
        self.open_connections = 0  # accepted and not yet closed
        self.connections_total = 0  # accepted since start
        self.requests: list[RecordedRequest] = []
        self.default_script = Script(self._cond, "", DEFAULT_STEPS)
        self.ca_file: str | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        context = None
        if tls:
            ca = trustme.CA()
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            cert = ca.issue_cert("127.0.0.1", "localhost", PROXY_ONLY_HOST)
            cert.configure_cert(context)
            self._tmp = tempfile.TemporaryDirectory(prefix="fake-upstream-")
            self.ca_file = str(Path(self._tmp.name) / "ca.pem")
            ca.cert_pem.write_to_path(self.ca_file)
        self._server = _Server(self, context)
        self.port = port = self._server.server_address[1]
        self.base_url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/v1"
        self._thread = threading.Thread(
            target=self._serve, daemon=True, name=f"fake-upstream-{port}"
        )
        self._thread.start()

    def script(
        self,
        *steps: Step,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        headers_delay: float = 0.0,
        then: Script | None = None,
        unanswered: Hangup | Abort | None = None,
        close_delimited: bool = False,
    ) -> Script:
        """Register steps (or, with ``status != 200``, an error ``body``).

        ``headers_delay`` holds back even the status line: an upstream that hangs
        before its first byte. ``then`` answers the next request with this marker
        (e.g. a 503 ``then`` a stream: the retry succeeds). ``unanswered`` reads
        each request, then closes the connection that way without a byte of answer.
        A ``body`` with status 200 is sent as JSON, instead of a stream.
        ``close_delimited`` sends the stream with ``Connection: close`` and no
        chunked framing, and closes at its end.
        """
        marker = f"[[fake-{next(_marker_ids)}]]"
        script = Script(
            self._cond,
            marker,
            steps,
            status,
            dict(headers or {}),
            body,
            headers_delay,
            unanswered,
        )
        script.then, script.close_delimited = then, close_delimited
        with self._cond:
            self._scripts.append(script)
        return script

    def rate_limited(self, retry_after: str = "7") -> Script:
        """OpenAI's 429, with ``Retry-After`` for our client to pass on.

        ``retry-after-ms`` keeps the SDK's own retries (inside the server) quick.
        """
        error = {
            "message": "Rate limit reached",
            "type": "requests",
            "code": "rate_limit_exceeded",
        }
        headers = {"Retry-After": retry_after, "retry-after-ms": "5"}
        return self.script(status=429, headers=headers, body={"error": error})

    def wait_open_connections(self, count: int, timeout: float = 5.0) -> None:
        """Wait until ``count`` connections are open (closes are seen async)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.open_connections == count, timeout):
                raise AssertionError(f"{self.open_connections} open, wanted {count}")

    def close(self) -> None:
        """Stop accepting, cut open connections, delete the CA file. Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._thread.join(timeout=2.0)
        self._server.server_close()
        with self._cond:
            live = list(self._live)
        for sock in live:  # wakes handlers blocked reading or writing
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass
        with self._cond:
            self._cond.wait_for(lambda: self.open_connections == 0, timeout=2.0)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> FakeUpstream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            self._server.handle_request()

    def _match(self, body: bytes) -> Script:
        with self._cond:
            scripts = list(self._scripts)
        found = (s for s in scripts if s.marker.encode() in body)
        return next(found, self.default_script)

    def _record(self, rec: RecordedRequest, script: Script) -> Script:
        """Record ``rec`` under ``script``; return the script of the chain to play."""
        with self._cond:
            play = script
            if script.then is not None:
                for _ in script.requests:  # each earlier request moves one along
                    play = play.then or play
            self.requests.append(rec)
            script.requests.append(rec)
            self._cond.notify_all()
        return play

    def _update(self, rec: RecordedRequest, **changes: Any) -> None:
        with self._cond:
            for name, value in changes.items():
                setattr(rec, name, value)
            self._cond.notify_all()

    def _connection(self, sock: socket.socket, delta: int) -> None:
        with self._cond:
            self.open_connections += delta
            if delta > 0:
                self.connections_total += 1
                self._live.add(sock)
            else:
                self._live.discard(sock)
            self._cond.notify_all()
