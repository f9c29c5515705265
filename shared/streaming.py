"""Relay an OpenAI-compatible completion stream as Server-Sent Events or raw text.

One framework-agnostic core that Flask and Django views (and views copied into other
apps) mount. It reads chunks from an openai SDK stream, from plain dicts, or from the
raw SSE bytes of any OpenAI-compatible response; yields ``bytes`` for a WSGI body;
calls optional callbacks; and closes the upstream when the client goes away.

Deliberate choices a reader might want to "fix":

- Deltas are split on ``\\r\\n|\\r|\\n`` and not ``str.splitlines()``: those three are
  the only line ends of the SSE spec; ``splitlines`` also breaks at U+2028, ``\\x0b``
  and friends, and drops a trailing newline.
- A delta that is exactly ``[DONE]`` goes out as two events (``[DONE`` and ``]``) so
  that only the real end of the stream reads as the end.
- Keep-alive is an SSE comment: every parser ignores it, so it never shows as text.
- The upstream is read by a helper thread (a greenlet under gevent) feeding a small
  bounded queue: the response thread can then write keep-alives during silence and
  notice a client that left, while backpressure still reaches the upstream. The
  queue is bounded in text as well as in reads: one read at full speed can carry
  64 KiB, and a client that stops reading must not cost megabytes.
- The fast input is raw SSE bytes (the apps read them through the SDK's
  ``with_streaming_response``): a lean parser and one ``json.loads`` per event cost a
  small fraction of the pydantic object the SDK builds per chunk. Whatever the
  reader has queued goes out in one write.
- After ``[DONE]`` the rest of the HTTP body is read (normally just its end): only a
  response read to its end returns its connection to the pool, so the next request
  skips the TCP and TLS handshakes.
- Raw bytes must reach the stream's end (``[DONE]``, a terminal Responses event, or
  a finish reason then the body's end): a close-delimited body ends the same way
  whether its server finished or died, and a gateway's JSON error is a ``200`` too.
- Errors before the first byte become an HTTP status (:class:`StreamError`); after it,
  an ``event: error`` (SSE) or a body cut off without its final chunk (raw text), so
  that a client never mistakes a failure for a short answer.
- The relay can send the upstream request itself (given an :data:`Opener`): an
  upstream that holds back its headers is then silence like any other, so the
  keep-alive clock still starts with the request, and a client that leaves while
  the request waits cancels it.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import re
import select
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict, TypeGuard, Unpack

__all__ = [
    "MAX_EVENT_BYTES",
    "Callbacks",
    "SSE_HEADERS",
    "TEXT_HEADERS",
    "ClientDisconnected",
    "Opener",
    "StreamError",
    "UpstreamFailed",
    "end_open_streams",
    "open_upstream",
    "register_secret",
    "sse_event",
    "sse_frames",
    "text_stream",
]

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
TEXT_HEADERS = {
    "Content-Type": "text/plain; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    # Without it a browser sniffs the type and buffers the text until the end.
    "X-Content-Type-Options": "nosniff",
}
DEFAULT_KEEPALIVE_SECONDS = 15.0

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_SSE_LINE_END = re.compile(rb"\r\n|\r|\n")
_SURROGATE = re.compile("[\ud800-\udfff]")
# What an upstream's error message may quote of a key: the key, a masked form of it
# (``sk-proj-****abcd``, ``sk-…abcd``, ``sk-***...abcd``), any masked secret, or a
# bearer token (unless its value was redacted already). A match ends on a word
# character or a star, so a sentence keeps its final period.
_KEY_LIKE = re.compile(
    r"\b(?:sk|gsk|hf|xai|pk|rk|key|api)[-_](?=[\w\-*.…]{6})[\w\-*.…]*[\w*]"
    r"|[\w\-]*\*{3,}[\w\-*.…]*[\w*]"
    r"|(?<=Bearer )(?!\[redacted\])\S+",
    re.IGNORECASE,
)
# Request headers whose values are credentials, removed from upstream messages.
_CREDENTIAL_HEADERS = ("authorization", "api-key", "x-api-key")
_MIN_SECRET_CHARS = 8  # shorter values (a placeholder, "demo") would garble messages
_secrets: set[str] = set()  # register_secret()'s
_KEEPALIVE = b": keep-alive\n\n"
_DONE = b"data: [DONE]\n\n"
_QUEUE_SIZE = 32  # upstream reads buffered per stream before the upstream is paused
_QUEUE_CHARS = 65536  # ... or this much text queued, whichever comes first
_READER_JOIN_SECONDS = 1.0
# After [DONE], how long and how many reads to wait for the end of the HTTP body.
_DRAIN_SECONDS = 0.1
_DRAIN_READS = 16
# What a body that is not SSE may say (a gateway's JSON error), kept until an event.
_SNIFF_BYTES = 4096
# The largest event (or unfinished line) kept while it arrives: an upstream that
# never ends its line must not grow a worker's memory until the read timeout.
MAX_EVENT_BYTES = 4 * 1024 * 1024
_CLIENT_CHECK_SECONDS = 0.5  # see _Relay._left_after_sending
_TCP_ESTABLISHED = 1  # Linux's tcpi_state
# Responses API ``incomplete_details.reason`` as the finish reasons of chat.
_INCOMPLETE_REASONS = {
    "max_output_tokens": "length",
    "content_filter": "content_filter",
}

Usage = dict[str, int]
# What open_upstream() takes: sends the upstream request, returns what it answered.
Opener = Callable[[], Any]


@dataclass(frozen=True)
class _Refusal:
    """A refusal delta: what the model says instead of answering."""

    text: str


@dataclass(frozen=True)
class _Finish:
    """Why the answer ended, when that is worth an ``event: finish``."""

    reason: str


# What one upstream read gave: text deltas, refusals, finish reasons and usage.
Batch = list[str | _Refusal | _Finish | Usage]


class StreamError(Exception):
    """A failure to answer with an HTTP status and a JSON body, before any byte."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.headers = dict(headers or {})

    def body(self) -> bytes:
        """The contract's error body: ``{"error": {"message", "type"}}``."""
        error = {"message": self.message, "type": self.type}
        return json.dumps({"error": error}).encode()


class UpstreamFailed(Exception):
    """The upstream failed after the first byte; raised to cut a raw text body off."""


def open_upstream(create: Callable[[], Any]) -> Any:
    """Call ``create`` and map the openai SDK's errors to a :class:`StreamError`.

    ``create`` is e.g. ``lambda: client.chat.completions.with_streaming_response
    .create(..., stream=True)`` (the fast path: raw bytes, whose context manager is
    entered here, sending the request) or ``client.chat.completions.create(...,
    stream=True)`` (SDK objects). The error carries the contract's status, so the
    view can still answer with it before the first byte.
    """
    try:
        upstream = create()
        if not hasattr(upstream, "__iter__") and hasattr(upstream, "__enter__"):
            upstream = upstream.__enter__()  # the SDK's ResponseContextManager
        return upstream
    except Exception as exc:
        raise _as_stream_error(exc) from exc


def register_secret(value: str) -> None:
    """Never pass ``value`` (e.g. the configured API key) on in an upstream message.

    The credentials of the request that failed are removed anyway, when the error
    carries that request (the openai SDK's do); this covers the rest, for keys that
    look like nothing a pattern could recognise.
    """
    if len(value) >= _MIN_SECRET_CHARS:
        _secrets.add(value)


def _as_stream_error(exc: BaseException) -> StreamError:
    import openai  # the SDK is only needed once something failed

    if isinstance(exc, StreamError):
        return exc
    if isinstance(exc, UpstreamFailed):
        return StreamError(502, str(exc), "upstream_error")
    if isinstance(exc, openai.APITimeoutError):
        return StreamError(504, "The upstream timed out.", "upstream_timeout")
    if isinstance(exc, openai.APIConnectionError):
        return StreamError(
            502, "The connection to the upstream failed.", "upstream_connection_error"
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status == 400:
            return StreamError(400, _upstream_message(exc), "upstream_bad_request")
        if status == 429:
            retry_after = exc.response.headers.get("retry-after")
            headers = {"Retry-After": retry_after} if retry_after else {}
            return StreamError(
                429, "The upstream is rate limiting requests.", "rate_limited", headers
            )
        return StreamError(502, f"The upstream answered {status}.", "upstream_error")
    if isinstance(exc, openai.APIError):
        return StreamError(
            502, _redact(exc.message, _secrets_of(exc)), "upstream_error"
        )
    # Raised while reading raw bytes (``with_streaming_response``), where the SDK
    # no longer wraps them in its own exceptions.
    if isinstance(exc, TimeoutError) or _is_http_error(exc, "TimeoutException"):
        return StreamError(504, "The upstream timed out.", "upstream_timeout")
    if isinstance(exc, OSError) or _is_http_error(exc, "TransportError"):
        return StreamError(
            502, "The connection to the upstream failed.", "upstream_connection_error"
        )
    return StreamError(502, "The upstream failed.", "upstream_error")


def _is_http_error(exc: BaseException, name: str) -> bool:
    """``exc`` is one of the SDK's HTTP client's ``name`` errors, by class name.

    The client is ``httpx2`` under openai 3 and ``httpx`` under openai 2: a view
    copied into an app on either must not need the other to classify a failure.
    """
    return any(
        cls.__name__ == name and cls.__module__.partition(".")[0] in ("httpx", "httpx2")
        for cls in type(exc).__mro__
    )


def _upstream_message(exc: Any) -> str:
    body = exc.body
    if isinstance(body, dict):
        body = _error_message(body)
    message = str(body if body and isinstance(body, str) else exc.message)
    return _redact(message, _secrets_of(exc))


def _error_message(body: Mapping[str, Any]) -> Any:
    """The message of an error body: ``{"error": {"message"}}`` and its variants."""
    error = body.get("error")
    return body.get("message") or (
        error.get("message") if isinstance(error, dict) else error
    )


def _redact(message: str, secrets: Iterable[str] = ()) -> str:
    """Hide the credentials an upstream message quotes.

    The values themselves go first (``secrets``, then :func:`register_secret`'s):
    an Azure key is 32 hex digits, a self-hosted token anything at all. Then
    anything shaped like a key, a masked key or a bearer token.
    """
    for secret in sorted({*secrets, *_secrets}, key=len, reverse=True):
        message = message.replace(secret, "[redacted]")
    return _KEY_LIKE.sub("[redacted]", message)


def _secrets_of(source: object) -> tuple[str, ...]:
    """The credentials sent in the request of ``source``: an SDK error or response.

    The SDK's errors carry the HTTP request; its streams and raw responses carry
    the HTTP response, which carries the request.
    """
    headers = getattr(_request_of(source), "headers", None)
    if headers is None:
        return ()
    values = (headers.get(name) for name in _CREDENTIAL_HEADERS)
    # The token of "Bearer TOKEN": the scheme alone is no secret.
    tokens = (value.rpartition(" ")[2] for value in values if value)
    return tuple(token for token in tokens if len(token) >= _MIN_SECRET_CHARS)


def _request_of(source: object) -> object:
    for holder in (source, _http_response(source)):
        try:
            request = getattr(holder, "request", None)
        except RuntimeError:  # an httpx response made without its request
            continue
        if request is not None:
            return request
    return None


def _http_response(chunks: object) -> object:
    """The HTTP response under an SDK stream or raw response (or ``chunks``)."""
    return getattr(chunks, "response", None) or getattr(chunks, "http_response", chunks)


# --- Reading chunks -----------------------------------------------------------------


def _field(obj: Any, name: str) -> Any:
    """Read a field from a dict or from an SDK (pydantic) object alike."""
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _chunk_items(chunk: Any, secrets: tuple[str, ...] = ()) -> Batch:
    """What one chunk of chat, legacy completions or Responses events says.

    ``secrets`` are removed from an error's message (see :func:`_redact`).
    """
    error = _field(chunk, "error")
    if error and _field(chunk, "type") != "response.failed":
        raise UpstreamFailed(_redact(str(_field(error, "message") or error), secrets))
    if _field(chunk, "object") == "error":  # vLLM's ErrorResponse, not wrapped
        message = _field(chunk, "message") or "The upstream failed."
        raise UpstreamFailed(_redact(str(message), secrets))
    kind = _field(chunk, "type")
    # A Responses API event; other providers' chunks may carry a "type" of their own.
    if isinstance(kind, str) and (kind.startswith("response.") or kind == "error"):
        return _responses_items(kind, chunk, secrets)
    items: Batch = []
    for choice in _field(chunk, "choices") or ():
        if _field(choice, "index") not in (0, None):
            continue
        # Providers differ: a delta (chat), text (legacy), or a whole message. A
        # delta, even an empty one beside the whole message, is what is new.
        delta = _field(choice, "delta")
        message = _field(choice, "message") if delta is None else delta
        text = _field(message, "content") if message else _field(choice, "text")
        if text and isinstance(text, str):  # not e.g. a list of content parts
            items.append(text)
        refusal = _field(message, "refusal") if message else None
        if refusal and isinstance(refusal, str):
            items.append(_Refusal(refusal))
    usage = _field(chunk, "usage")
    if usage:
        items.append(_usage(usage, "prompt_tokens", "completion_tokens"))
    return items


def _responses_items(kind: str, event: Any, secrets: tuple[str, ...]) -> Batch:
    """What one Responses API event says; events without text say nothing."""
    delta = _field(event, "delta")
    if kind == "response.output_text.delta" and delta and isinstance(delta, str):
        return [delta]
    if kind == "response.refusal.delta" and delta and isinstance(delta, str):
        return [_Refusal(delta)]
    response = _field(event, "response")
    if kind in ("response.failed", "error"):
        error = _field(response, "error") or event
        raise UpstreamFailed(_redact(str(_field(error, "message") or kind), secrets))
    items: Batch = []
    if kind == "response.incomplete":  # cut short: never mistaken for a whole answer
        reason = _field(_field(response, "incomplete_details"), "reason")
        items.append(_Finish(_INCOMPLETE_REASONS.get(reason, str(reason or kind))))
    usage = _field(response, "usage")
    if kind in ("response.completed", "response.incomplete") and usage:
        items.append(_usage(usage, "input_tokens", "output_tokens"))
    return items


def _ends_answer(chunk: Any) -> bool:
    """The chunk says the answer is over: a finish reason, or a terminal event.

    Some OpenAI-compatible servers send no ``[DONE]``: after one of these, a clean
    end of the body is the end of the answer.
    """
    if _field(chunk, "type") in ("response.completed", "response.incomplete"):
        return True
    choices = _field(chunk, "choices")
    return isinstance(choices, list) and any(
        _field(choice, "finish_reason") for choice in choices
    )


def _usage(usage: Any, prompt_key: str, completion_key: str) -> Usage:
    prompt = int(_field(usage, prompt_key) or 0)
    completion = int(_field(usage, completion_key) or 0)
    total = int(_field(usage, "total_tokens") or prompt + completion)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
    }


def _sse_payloads(reads: Iterable[bytes]) -> Iterator[list[str]]:
    """Decode raw SSE bytes into the ``data`` of each event, one list per read.

    NOTE: as per the spec, lines end at CRLF, CR or LF, a CR may end one read and its
    LF start the next, and an event is dispatched at a blank line. Splitting bytes is
    safe for UTF-8: no multi-byte sequence contains a CR or LF byte.
    """
    pending = b""
    data: list[bytes] = []
    size = 0  # of ``data``
    skip_lf = False  # the last read ended with a CR: an LF next completes that CRLF
    reads = _without_bom(reads)
    for read in reads:
        if skip_lf and read[:1] == b"\n":
            read = read[1:]
        buffer = pending + read
        skip_lf = buffer.endswith(b"\r")
        lines = _SSE_LINE_END.split(buffer)
        pending = lines.pop()  # the incomplete last line
        events: list[str] = []
        for line in lines:
            if not line:
                if data:
                    events.append(b"\n".join(data).decode("utf-8", "replace"))
                    data, size = [], 0
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
                size += len(value)
            # event:, id:, retry: and comments carry nothing the relay needs
        if size + len(pending) > MAX_EVENT_BYTES:
            raise UpstreamFailed(
                f"The upstream sent an event over {MAX_EVENT_BYTES} bytes."
            )
        if events:
            yield events
    if data:  # tolerate a provider that ends without the final blank line
        yield [b"\n".join(data).decode("utf-8", "replace")]


def _without_bom(reads: Iterable[bytes]) -> Iterator[bytes]:
    """NOTE: as per the spec, one leading byte order mark is not part of the stream."""
    iterator = iter(reads)
    for first in iterator:
        if first:
            yield first.removeprefix(b"\xef\xbb\xbf")
            break
    for read in iterator:  # noqa: UP028 (not `yield from`: see _prepend)
        yield read


def _batches(chunks: Iterable[Any], secrets: tuple[str, ...] = ()) -> Iterator[Batch]:
    """Normalise any accepted upstream into batches of what the model said."""
    iterator = iter(chunks)
    first = next(iterator, None)
    if first is None:
        return
    if isinstance(first, (bytes, bytearray)):
        yield from _raw_batches(_prepend(bytes(first), iterator), secrets)
        return
    yield _chunk_items(first, secrets)
    for chunk in iterator:
        yield _chunk_items(chunk, secrets)


def _raw_batches(reads: Iterator[bytes], secrets: tuple[str, ...]) -> Iterator[Batch]:
    """Batches from raw SSE bytes, which must reach the stream's end.

    A body that ends before ``[DONE]``, a terminal Responses event or a finish
    reason was cut (a close-delimited body ends that way when its server dies), and
    one without a single event is not a stream at all (a gateway's JSON error):
    both raise :class:`UpstreamFailed` rather than pass for a whole answer.
    """
    head = bytearray()  # the body's first bytes, until it shows an event
    ended = False
    for payloads in _sse_payloads(_keeping_head(reads, head)):
        head.clear()
        batch: Batch = []
        try:
            for payload in payloads:
                if payload.strip() == "[DONE]":
                    yield batch
                    return
                chunk = _json_chunk(payload)
                batch.extend(_chunk_items(chunk, secrets))
                ended = ended or _ends_answer(chunk)
        except UpstreamFailed:
            yield batch  # what came before the failure in the same read
            raise
        yield batch
    if not ended:
        raise UpstreamFailed(_unfinished(bytes(head), secrets))


def _keeping_head(reads: Iterator[bytes], head: bytearray) -> Iterator[bytes]:
    """``reads``, copying their first ``_SNIFF_BYTES`` into ``head``; none once the
    caller cleared ``head`` (at the first event: the body is SSE)."""
    kept = 0
    for read in reads:
        if kept < _SNIFF_BYTES and (head or not kept):
            head += read[: _SNIFF_BYTES - kept]
        kept += len(read)
        yield read


def _unfinished(head: bytes, secrets: tuple[str, ...]) -> str:
    """Why a body that ended early failed: its own error message, when it has one."""
    if not head.strip():
        return "The upstream's answer ended before the end of its stream."
    try:
        body = json.loads(head)
    except ValueError:
        body = None
    message = _error_message(body) if isinstance(body, dict) else None
    if message and isinstance(message, str):
        return _redact(message, secrets)
    return "The upstream answered without an event stream."


def _json_chunk(payload: str) -> Any:
    try:
        return json.loads(payload)
    except ValueError as exc:
        raise UpstreamFailed("The upstream sent a malformed chunk.") from exc


def _prepend(first: bytes, rest: Iterator[Any]) -> Iterator[bytes]:
    """``first``, then ``rest``, leaving ``rest`` open when this one is closed.

    ``yield from`` would close ``rest`` (the upstream's byte iterator) along with
    this generator, and with it the response, before the reader drains it.
    """
    yield first
    for read in rest:  # noqa: UP028
        yield read


# --- Framing -----------------------------------------------------------------------


def sse_event(text: str, event: str | None = None) -> bytes:
    """Frame one delta so that a conforming parser's ``data`` gives it back.

    ``event`` names the event (``refusal``); text events have no name.
    """
    head = b"" if event is None else b"event: " + event.encode() + b"\n"
    if text == "[DONE]":
        return head + b"data: [DONE\n\n" + head + b"data: ]\n\n"
    if "\n" not in text and "\r" not in text:
        return head + b"data: " + _utf8(text) + b"\n\n"
    lines = _LINE_BREAK.split(text)
    return head + b"".join(b"data: " + _utf8(line) + b"\n" for line in lines) + b"\n"


def _sse_item(item: str | _Refusal | _Finish | Usage) -> bytes:
    if isinstance(item, str):
        return sse_event(item)
    if isinstance(item, _Refusal):
        return sse_event(item.text, "refusal")
    if isinstance(item, _Finish):
        return _named_event("finish", {"reason": item.reason})
    return _named_event("usage", item)


def _text_of(item: str | _Refusal | _Finish | Usage) -> str:
    """The raw text route's share of an item: text, and a refusal as text."""
    if isinstance(item, str):
        return item
    return item.text if isinstance(item, _Refusal) else ""


def _named_event(name: str, payload: Mapping[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate (possible in JSON text) can't be UTF-8: send U+FFFD.
        return _SURROGATE.sub("\ufffd", text).encode()


def sse_frames(
    chunks: Iterable[Any] | Opener,
    *,
    keepalive_seconds: float = DEFAULT_KEEPALIVE_SECONDS,
    client_socket: socket.socket | None = None,
    **callbacks: Unpack[Callbacks],
) -> Iterable[bytes]:
    """Stream ``chunks`` as the contract's SSE body: text events, refusals, a
    ``finish`` for an incomplete Responses answer, usage, then ``[DONE]``.

    Waits up to ``keepalive_seconds`` for the first output and raises
    :class:`StreamError` if the upstream fails before it, so the view can still
    answer with a status. ``chunks`` may be an :data:`Opener` instead (what
    :func:`open_upstream` takes): the request is then sent by the relay, within
    that wait, so that an upstream slow to send its headers still gets its first
    keep-alive one interval after the request. ``client_socket`` (the WSGI
    server's, e.g. ``environ["gunicorn.socket"]``) lets a client that leaves be
    noticed while the upstream is silent. Close the returned body (WSGI servers do)
    to end the stream.
    """

    def frames(relay: _Relay) -> Iterator[bytes]:
        try:
            for batch in relay:
                if batch is None:
                    yield _KEEPALIVE
                    continue
                out = b"".join(map(_sse_item, batch))
                if out:
                    yield out
        except ClientDisconnected:
            return
        except Exception as exc:  # any failure is reported to the client
            error = _as_stream_error(exc)
            yield _named_event("error", {"message": error.message, "type": error.type})
        else:
            yield _DONE

    relay = _Relay(chunks, keepalive_seconds, client_socket, _Callbacks(**callbacks))
    relay.start(first_output_within=keepalive_seconds)
    return _ClosingIterable(frames(relay), relay)


def text_stream(
    chunks: Iterable[Any] | Opener,
    *,
    client_socket: socket.socket | None = None,
    **callbacks: Unpack[Callbacks],
) -> Iterable[bytes]:
    """Stream ``chunks`` as raw UTF-8 text (refusals too); a failure raises
    :class:`UpstreamFailed`.

    Waits for the first output and raises :class:`StreamError` if the upstream fails
    before it. ``chunks`` may be an :data:`Opener`, as for :func:`sse_frames`: a
    client that leaves while the request waits for its answer then cancels it. A
    later failure's exception makes the WSGI server drop the connection without the
    body's final chunk, so a client sees an error rather than a silently shortened
    answer.
    """

    def texts(relay: _Relay) -> Iterator[bytes]:
        try:
            for batch in relay:
                out = _utf8("".join(map(_text_of, batch or ())))
                if out:
                    yield out
        except ClientDisconnected:
            return
        except UpstreamFailed:
            raise
        except Exception as exc:
            raise UpstreamFailed(_as_stream_error(exc).message) from exc

    # No keep-alive in raw text: any byte written would become part of the answer.
    relay = _Relay(chunks, None, client_socket, _Callbacks(**callbacks))
    relay.start(first_output_within=None)
    return _ClosingIterable(texts(relay), relay)


# --- Lifecycle -----------------------------------------------------------------------


class ClientDisconnected(Exception):
    """The client closed its connection; the stream ends without another byte."""


class Callbacks(TypedDict, total=False):
    """Optional hooks, called from the thread that writes the response.

    ``on_token`` and ``on_completion`` (the whole text, at a normal end) get the
    answer's text, not refusals; ``on_error`` the exception of a failed stream (not
    of a client that left).
    """

    on_start: Callable[[], object]
    on_token: Callable[[str], object]
    on_completion: Callable[[str], object]
    on_usage: Callable[[Usage], object]
    on_error: Callable[[BaseException], object]


class _Callbacks:
    def __init__(
        self,
        on_start: Callable[[], object] | None = None,
        on_token: Callable[[str], object] | None = None,
        on_completion: Callable[[str], object] | None = None,
        on_usage: Callable[[Usage], object] | None = None,
        on_error: Callable[[BaseException], object] | None = None,
    ) -> None:
        self.on_start, self.on_token, self.on_usage = on_start, on_token, on_usage
        self.on_completion, self.on_error = on_completion, on_error
        self._parts: list[str] = []  # kept only when on_completion wants the text

    def batch(self, batch: Batch) -> None:
        for item in batch:
            if isinstance(item, str):
                if self.on_token:
                    self.on_token(item)
                if self.on_completion:
                    self._parts.append(item)
            elif isinstance(item, dict) and self.on_usage:
                self.on_usage(item)

    def complete(self) -> None:
        if self.on_completion:
            self.on_completion("".join(self._parts))


_END = object()
_GONE = object()
_ENDING = object()  # end_open_streams() was called
# The relays of this process that are open: end_open_streams() ends them.
_open_relays: weakref.WeakSet[_Relay] = weakref.WeakSet()
_open_relays_lock = threading.Lock()


def end_open_streams(
    message: str = "The server is shutting down.", type: str = "server_shutdown"
) -> int:
    """End every open stream of this process now, with an error; how many there were.

    For a graceful shutdown that can't wait for every stream: an SSE stream ends with
    a whole ``event: error`` frame (``message``, ``type``), a raw text stream is cut
    off without its final chunk, and one still waiting for its first output is
    answered ``503``; each closes its upstream response. Call it shortly before the
    server gives up waiting (``gunicorn.conf.py`` does, on ``SIGTERM``): streams
    killed with the process would end in silence, or halfway through a frame.
    """
    with _open_relays_lock:
        relays = list(_open_relays)
    for relay in relays:
        relay.end(StreamError(503, message, type))
    return len(relays)


class _BatchQueue(queue.Queue[object]):
    """The relay's queue: full at ``maxsize`` batches or ``_QUEUE_CHARS`` of text.

    A read at full speed carries up to 64 KiB of events: bounded by reads alone, a
    client that stops reading would leave megabytes queued per stream, and a
    hundred such clients hundreds of megabytes.
    """

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)
        self._chars = 0

    def _qsize(self) -> int:
        count: int = len(self.queue)
        return count if self._chars < _QUEUE_CHARS else max(count, self.maxsize)

    def _put(self, item: object) -> None:
        super()._put(item)
        self._chars += _chars(item)

    def _get(self) -> object:
        item = super()._get()
        self._chars -= _chars(item)
        return item


def _chars(item: object) -> int:
    """The size of a queued batch: its texts' lengths (other items count 1)."""
    if type(item) is not list:
        return 0
    return sum(len(part) if isinstance(part, str) else 1 for part in item)


def _deadline(seconds: float | None) -> float | None:
    return None if seconds is None else time.monotonic() + seconds


def _left(deadline: float | None) -> float | None:
    """Seconds until ``deadline``, for a ``timeout=``; ``None`` waits for ever."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _gevent_active() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("socket"))


class _Relay:
    """Batches from the upstream, read by a helper; ``None`` when a keep-alive is due.

    Under gevent the helpers are greenlets, killed on close so that the upstream
    response is closed by the greenlet reading it. Under threads, the upstream socket
    is shut down to wake a reader blocked on it.
    """

    def __init__(
        self,
        chunks: Iterable[Any] | Opener,
        keepalive_seconds: float | None,
        client_socket: socket.socket | None,
        callbacks: _Callbacks,
    ) -> None:
        self._opener: Opener | None = chunks if _is_opener(chunks) else None
        # Set by the reader once it has opened the upstream, when given an opener.
        self._chunks: object = None if self._opener else chunks
        self._keepalive = keepalive_seconds
        self._client_socket = client_socket
        self._callbacks = callbacks
        self._queue: queue.Queue[object] = _BatchQueue(_QUEUE_SIZE)
        self._stop = threading.Event()
        self._client_gone = threading.Event()
        self._ended = threading.Event()  # the upstream sent its end marker
        self._gevent = _gevent_active()
        self._helpers: list[Any] = []
        self._started = False
        self._first: object = None
        self._silent_start = False  # start() waited a whole interval for output
        self._ending: StreamError | None = None
        self._secrets = _secrets_of(self._chunks)

    def start(self, first_output_within: float | None) -> None:
        """Start reading, and wait up to the given time for the first output.

        A failure before any output raises :class:`StreamError`, so that the view
        still answers with the contract's status instead of a 200 it can't take
        back. Silence past the wait lets the response start (with a keep-alive).
        """
        self._started = True
        with _open_relays_lock:
            _open_relays.add(self)
        if self._callbacks.on_start:
            try:
                self._callbacks.on_start()
            except BaseException:
                _close(self._chunks)
                raise
        self._spawn(self._read)
        if self._client_socket is not None:
            self._spawn(self._watch_client)
        # Chunks without text (a role, reasoning) don't count as output, nor restart
        # the wait: without a byte, a proxy in front may give up on the response.
        deadline = _deadline(first_output_within)
        while True:
            try:
                item = self._queue.get(timeout=_left(deadline))
            except queue.Empty:
                self._silent_start = True
                return
            if item == []:
                continue  # e.g. the role-only first chunk: nothing to write yet
            if item is _ENDING:
                item = self._ending
            if isinstance(item, BaseException):
                self.close()
                if self._callbacks.on_error:
                    self._callbacks.on_error(item)
                if isinstance(item, StreamError):  # end_open_streams(), open_upstream()
                    raise item
                raise _as_stream_error(item) from item
            self._first = item
            return

    def __iter__(self) -> Iterator[Batch | None]:
        # A keep-alive is due after this long without output, however many chunks
        # without text (e.g. a reasoning model's) arrived meanwhile. The first one
        # is due at once when start() waited an interval already: the clock started
        # with the request.
        keepalive_due = (
            time.monotonic() if self._silent_start else _deadline(self._keepalive)
        )
        while True:
            if self._client_gone.is_set():
                raise ClientDisconnected
            if self._ending is not None:  # even with batches still queued
                item: object = self._ending
            elif self._first is not None:
                item, self._first = self._first, None
            else:
                try:
                    item = self._queue.get(timeout=_left(keepalive_due))
                except queue.Empty:
                    keepalive_due = _deadline(self._keepalive)
                    yield None
                    continue
            if item is _END:
                self._callbacks.complete()
                return
            if item is _GONE:
                raise ClientDisconnected
            if item is _ENDING:
                item = self._ending
            if isinstance(item, BaseException):
                if self._callbacks.on_error:
                    self._callbacks.on_error(item)
                raise item
            batch: Batch = item  # type: ignore[assignment]
            # Take whatever else the reader has queued too, without waiting: under
            # load, one write then carries many events instead of one each.
            while self._first is None:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(more, list):
                    batch.extend(more)  # each read's batch is a list of its own
                else:
                    self._first = more  # the end, or an error: next round
            if batch:
                keepalive_due = _deadline(self._keepalive)
            self._callbacks.batch(batch)
            yield batch

    def _spawn(self, target: Callable[[], None]) -> None:
        if self._gevent:
            import gevent

            self._helpers.append(gevent.spawn(target))
        else:
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._helpers.append(thread)

    def _read(self) -> None:
        try:
            if self._opener is not None and not self._open():
                return
            chunks: Any = self._chunks
            reads = iter(
                chunks.iter_bytes() if hasattr(chunks, "iter_bytes") else chunks
            )
            for batch in _batches(reads, self._secrets):
                if not self._put(batch):
                    return
            self._put(_END)
            self._ended.set()
            # What follows [DONE] is normally just the end of the HTTP body: read to
            # it, the response returns its connection to the pool for the next
            # request; closed before it, the connection is thrown away.
            for _ in itertools.islice(reads, _DRAIN_READS):
                pass
        except Exception as exc:
            if not self._stop.is_set():
                self._put(exc)
        finally:
            # Close the upstream response even when the client left mid-stream:
            # this is what stops the model generating (and billing).
            _close(self._chunks)

    def _open(self) -> bool:
        """Send the upstream request; False if the stream was closed meanwhile.

        Under threads nothing can interrupt a request waiting for its answer: what
        it opens after the stream was closed is closed by the caller's ``finally``.
        Under gevent the reader is killed, and the transport closes its connection.
        """
        assert self._opener is not None
        self._chunks = open_upstream(self._opener)
        self._secrets = _secrets_of(self._chunks)
        return not self._stop.is_set()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def _watch_client(self) -> None:
        """Notice a client that closed its connection, even during upstream silence."""
        client = self._client_socket
        assert client is not None
        poller = select.poll()
        poller.register(client, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(None if self._gevent else 500):
                continue
            try:
                peeked = _peek(client)
            except BlockingIOError:
                continue
            except OSError:
                peeked = b""
            # End of file: the client is gone. Any other byte may be its next
            # request (not ours to read), or a TLS close_notify before its FIN.
            if not peeked or self._left_after_sending(client):
                self._client_left()
            return

    def _left_after_sending(self, client: socket.socket) -> bool:
        """Whether the client, which sent bytes, closes its end before the stream does.

        The unread bytes keep the socket readable, so the watch goes on through the
        TCP state (Linux), twice a second; elsewhere the next write will tell.
        """
        while (state := _tcp_state(client)) == _TCP_ESTABLISHED:
            if self._stop.wait(_CLIENT_CHECK_SECONDS):
                return False
        return state is not None

    def _client_left(self) -> None:
        self._client_gone.set()
        self._stop.set()
        if not self._ended.is_set():  # else the connection may be pooled
            _shutdown(self._chunks)
        try:
            self._queue.put_nowait(_GONE)  # wakes a writer waiting for data
        except queue.Full:
            pass  # the writer is not waiting: it sees _client_gone next

    def end(self, error: StreamError) -> None:
        """End the stream with ``error`` (see :func:`end_open_streams`)."""
        self._ending = error
        self._stop.set()  # the reader stops, closing the upstream response
        try:
            self._queue.put_nowait(_ENDING)  # wakes a writer waiting for data
        except queue.Full:
            pass  # the writer is not waiting: it sees _ending next

    def close(self) -> None:
        """Stop the helpers and close the upstream; safe to call more than once."""
        self._stop.set()
        with _open_relays_lock:
            _open_relays.discard(self)
        if not self._started:
            _close(self._chunks)  # opened by the view (if not an opener), never read
            return
        if not self._helpers:
            return  # closed already
        reader = self._helpers[0]
        if self._ended.is_set():  # a moment to read to the end of the body
            reader.join(_DRAIN_SECONDS)
        if self._gevent:
            import gevent

            try:
                gevent.killall(self._helpers, block=True, timeout=_READER_JOIN_SECONDS)
            except gevent.Timeout:
                # A starved worker: they are being killed all the same, and the
                # response must still end as it was going to, not in a 500.
                pass
        else:
            if reader.is_alive():  # blocked on the upstream: wake it
                _shutdown(self._chunks)
            for thread in self._helpers:
                thread.join(_READER_JOIN_SECONDS)
        self._helpers.clear()


def _peek(client: socket.socket) -> bytes:
    """The next byte the client sent, left unread; ``b""`` once it closed.

    Through a duplicate of the descriptor: an ``ssl.SSLSocket`` refuses
    ``MSG_PEEK`` (gunicorn with ``--certfile``, ``flask run --cert``), and what is
    to be seen is the TCP connection's end, not what TLS carries.
    """
    with socket.socket(fileno=os.dup(client.fileno())) as raw:
        raw.setblocking(False)
        return raw.recv(1, socket.MSG_PEEK)


def _tcp_state(sock: socket.socket) -> int | None:
    """The connection's TCP state where the system tells it (Linux), else None."""
    option = getattr(socket, "TCP_INFO", None)
    if option is None:
        return None
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, option, 1)[0]
    except OSError:
        return None


def _shutdown(chunks: object) -> None:
    """Shut down the upstream socket: the upstream sees the close at once."""
    extensions = getattr(_http_response(chunks), "extensions", None)
    stream = extensions.get("network_stream") if isinstance(extensions, dict) else None
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


def _is_opener(chunks: object) -> TypeGuard[Opener]:
    """``chunks`` is an :data:`Opener` rather than an opened upstream."""
    return callable(chunks) and not hasattr(chunks, "__iter__")


def _close(chunks: object) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


class _ClosingIterable:
    """The WSGI body: ``close()`` ends the relay even if iteration never started.

    Werkzeug and Django both call ``close()`` on the body when the response ends,
    including when the client disconnected, so cleanup rides on it.
    """

    def __init__(self, body: Iterator[bytes], relay: _Relay) -> None:
        self._body = body
        self._relay = relay

    def __iter__(self) -> Iterator[bytes]:
        return self._body

    def close(self) -> None:
        try:
            self._body.close()  # type: ignore[attr-defined]
        finally:
            self._relay.close()
