"""Relay an OpenAI-compatible completion stream as Server-Sent Events or raw text.

One framework-agnostic module that Flask and Django views (and views copied into
other apps) mount. It reads what the model says from an openai SDK stream, from
plain dicts, or from the raw SSE bytes of any OpenAI-compatible response; turns it
into typed events; writes them as ``bytes`` for a WSGI body; calls optional
callbacks; and closes the upstream when the client goes away.

The sections, in order: errors; requests (what a view checks before it pays for a
completion, and the ``STREAM_*`` settings); events (what the model says, as a
closed set of types); decoding (every upstream dialect into events); encoding
(events into SSE or raw text); the relay (moving events from the upstream to the
client, in time); and the entry points (:func:`sse_frames`, :func:`text_stream`).

Which relay runs where:

- Under gevent (gunicorn's gevent workers) each stream runs in one greenlet, the
  response's own: it waits on the upstream socket and the client socket together,
  with the next keep-alive as the wait's timeout, and reads the upstream only when
  a read can't block. A client that leaves wakes it at once, even while the model
  is silent; a client that stops reading stops it in its write, which stops the
  upstream reads (backpressure). A helper greenlet only sends the request (it may
  wait long for the headers), and reads when the upstream can't be waited on (a
  transport other than this repo's, SDK objects, dicts): see :class:`Pollable`.
- Under threads (``flask run``, ``manage.py runserver``) a helper thread reads the
  upstream into a small bounded queue and another watches the client socket, so the
  response thread can write keep-alives during silence and notice a client that
  left.

Deliberate choices a reader might want to "fix":

- Deltas are split on ``\\r\\n|\\r|\\n`` and not ``str.splitlines()``: those three are
  the only line ends of the SSE spec; ``splitlines`` also breaks at U+2028, ``\\x0b``
  and friends, and drops a trailing newline.
- A delta that is exactly ``[DONE]`` goes out as two events (``[DONE`` and ``]``) so
  that only the real end of the stream reads as the end.
- Keep-alive is an SSE comment: every parser ignores it, so it never shows as text.
- The fast input is raw SSE bytes (an HTTP response: the SDK's
  ``with_streaming_response``, or ``client.request(..., stream=True)`` as the apps
  send theirs): a lean parser and one ``json.loads`` per event cost a
  small fraction of the pydantic object the SDK builds per chunk. What one upstream
  read carries goes out in one write.
- After ``[DONE]`` the rest of the HTTP body is read (normally just its end): only a
  response read to its end returns its connection to the pool, so the next request
  skips the TCP and TLS handshakes.
- Raw bytes must reach the stream's end (``[DONE]``, a terminal Responses event, or
  a finish reason then the body's end): a close-delimited body ends the same way
  whether its server finished or died, and a gateway's JSON error is a ``200`` too.
- Errors before the first byte become an HTTP status (:class:`StreamError`); after it,
  an ``event: error`` (SSE) or a body cut off without its final chunk (raw text), so
  that a client never mistakes a failure for a short answer. A failure that is not
  the upstream's (a bug in the view, a client made without a key) is never passed
  off as one: before the first byte it is raised as it is, for the framework's
  ``500`` and its logged traceback; after it, logged here and sent as a
  ``server_error``.
- The relay can send the upstream request itself (given an :data:`Opener`): an
  upstream that holds back its headers is then silence like any other, so the
  keep-alive clock still starts with the request, and a client that leaves while
  the request waits cancels it.
"""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import math
import os
import queue
import re
import select
import socket
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import (
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import (
    Any,
    Protocol,
    Self,
    TypedDict,
    TypeGuard,
    TypeVar,
    Unpack,
    cast,
    overload,
)
from urllib.parse import urlsplit

__all__ = [
    "MAX_EVENT_BYTES",
    "SSE_HEADERS",
    "TEXT_HEADERS",
    "Body",
    "Callbacks",
    "ClientDisconnected",
    "Encoder",
    "Error",
    "Event",
    "FollowUp",
    "Finish",
    "Opener",
    "Pollable",
    "Reasoning",
    "Refusal",
    "SseEncoder",
    "Step",
    "StreamError",
    "StreamSettings",
    "Text",
    "TextEncoder",
    "ToolCall",
    "ToolCallDelta",
    "ToolResult",
    "Tools",
    "UpstreamFailed",
    "Usage",
    "check_request",
    "check_site",
    "client_has_left",
    "client_socket_of",
    "encoded_stream",
    "json_body",
    "end_open_streams",
    "open_upstream",
    "register_secret",
    "responses_input",
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
DEFAULT_MAX_PROMPT_CHARS = 32_000
# A request body holds at most the prompt: 1 MiB leaves room for JSON escapes.
DEFAULT_MAX_BODY_BYTES = 1_048_576
DEFAULT_UPSTREAM_TIMEOUT_SECONDS = 60.0
DEFAULT_UPSTREAM_MAX_RETRIES = 2  # the openai SDK's own default
DEFAULT_MAX_STEPS = 5  # model calls per answer, when tools run
DEFAULT_TOOL_TIMEOUT_SECONDS = 30.0
# Past these a setting is a typo (or nan/inf), not a choice.
MAX_SECONDS = 86_400  # a day
MAX_CHARS_OR_TOKENS = 100_000_000  # far past any model's context window
MAX_BODY_BYTES = 1_073_741_824  # 1 GiB
MAX_RETRIES = 100
MAX_STEPS = 100
# The largest event (or unfinished line) kept while it arrives: an upstream that
# never ends its line must not grow a worker's memory until the read timeout.
MAX_EVENT_BYTES = 4 * 1024 * 1024

log = logging.getLogger(__name__)

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
_QUEUE_CHARS = 65536  # ... or this much text buffered, whichever comes first
_HELPER_JOIN_SECONDS = 1.0
# After [DONE], how long and how many reads to wait for the end of the HTTP body.
_DRAIN_SECONDS = 0.1
_DRAIN_READS = 16
# What a body that is not SSE may say (a gateway's JSON error), kept until an event.
_SNIFF_BYTES = 4096
_CLIENT_CHECK_SECONDS = 0.5  # see _Relay._client_closed
_TCP_ESTABLISHED = 1  # Linux's tcpi_state
# Responses API ``incomplete_details.reason`` as the finish reasons of chat.
# What to check when the upstream answers 404 (its own message is logged).
_NOT_FOUND_HINT = (
    " Check the model name, and that the base URL ends with the API's version path"
    " (e.g. /v1)."
)
_SERVER_FAILED = ("The server failed; the failure is logged.", "server_error")
_INCOMPLETE_REASONS = {
    "max_output_tokens": "length",
    "content_filter": "content_filter",
}

# What open_upstream() takes: sends the upstream request, returns what it answered.
Opener = Callable[[], Any]
_N = TypeVar("_N", int, float)
# --- Errors -------------------------------------------------------------------------


class StreamingError(Exception):
    """The base of this module's exceptions."""


class StreamError(StreamingError):
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


class UpstreamFailed(StreamingError):
    """The upstream failed after the first byte; raised to cut a raw text body off."""


class ClientDisconnected(StreamingError):
    """The client closed its connection; the stream ends without another byte."""


def open_upstream(create: Callable[[], Any]) -> Any:
    """Call ``create`` and map the upstream's failures to a :class:`StreamError`.

    ``create`` is e.g. ``lambda: client.chat.completions.with_streaming_response
    .create(..., stream=True)`` (the fast path: raw bytes, whose context manager is
    entered here, sending the request) or ``client.chat.completions.create(...,
    stream=True)`` (SDK objects). The error carries the contract's status, so the
    view can still answer with it before the first byte.

    Any other exception is the caller's (a typo in ``create``, a client made
    without a key) and is raised as it is, for the framework to answer ``500`` and
    log its traceback: passed off as an upstream failure, it would hide its cause.
    """
    try:
        upstream = create()
        if not hasattr(upstream, "__iter__") and hasattr(upstream, "__enter__"):
            upstream = upstream.__enter__()  # the SDK's ResponseContextManager
        return upstream
    except Exception as exc:
        error = _as_stream_error(exc)
        if error is None or error is exc:
            raise
        raise error from exc


def register_secret(value: str) -> None:
    """Never pass ``value`` (e.g. the configured API key) on in an upstream message.

    The credentials of the request that failed are removed anyway, when the error
    carries that request (the openai SDK's do); this covers the rest, for keys that
    look like nothing a pattern could recognise.
    """
    if len(value) >= _MIN_SECRET_CHARS:
        _secrets.add(value)


def _as_stream_error(exc: BaseException) -> StreamError | None:
    """The status and message that the upstream's failure ``exc`` gives the client;
    ``None`` when ``exc`` is no upstream's failure but a bug (the caller's, or this
    module's)."""
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
        return _status_error(exc)
    if isinstance(exc, openai.APIError):
        return StreamError(
            502, _redact(exc.message, _secrets_of(exc)), "upstream_error"
        )
    # Raised while reading raw bytes, where the SDK no longer wraps them in its
    # own exceptions (or by the relay: a silence past the read timeout).
    if isinstance(exc, TimeoutError) or _is_http_error(exc, "TimeoutException"):
        return StreamError(504, "The upstream timed out.", "upstream_timeout")
    if isinstance(exc, OSError) or _is_http_error(exc, "TransportError"):
        return StreamError(
            502, "The connection to the upstream failed.", "upstream_connection_error"
        )
    return None


def _status_error(exc: Any) -> StreamError:
    """An upstream's error status, for the client; unless the client is told the
    upstream's own message (400), it is logged for whoever runs the server: a
    wrong key or base URL shows there, in the upstream's words."""
    status: int = exc.status_code
    if status == 400:
        return StreamError(400, _upstream_message(exc), "upstream_bad_request")
    url = exc.request.url.copy_with(query=None)
    log.warning(
        "The upstream answered %d to %s %s: %s",
        status,
        exc.request.method,
        url,
        _upstream_message(exc),
    )
    if status == 429:
        retry_after = exc.response.headers.get("retry-after")
        headers = {"Retry-After": retry_after} if retry_after else {}
        return StreamError(
            429, "The upstream is rate limiting requests.", "rate_limited", headers
        )
    hint = _NOT_FOUND_HINT if status == 404 else ""
    return StreamError(502, f"The upstream answered {status}.{hint}", "upstream_error")


def _log_bug(exc: BaseException) -> None:
    """Log ``exc`` with its traceback, less anything shaped like a credential: the
    message of a failure no one expected may quote anything."""
    trace = "".join(traceback.format_exception(exc))
    log.error("The stream failed unexpectedly:\n%s", _redact(trace).rstrip())


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


# --- Requests: what a view checks before it pays for a completion --------------------


@dataclass(frozen=True)
class StreamSettings:
    """The ``STREAM_*`` settings a streaming view reads: keep-alive, limits, and the
    other sites that may call it.

    This repo's apps read more (``shared.config.Settings`` extends this); a view
    copied into another app reads these with :meth:`from_env`, so that the same
    variables mean the same there.
    """

    keepalive_seconds: float = DEFAULT_KEEPALIVE_SECONDS
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_output_tokens: int | None = None
    upstream_timeout_seconds: float = DEFAULT_UPSTREAM_TIMEOUT_SECONDS
    upstream_max_retries: int = DEFAULT_UPSTREAM_MAX_RETRIES
    cors_origins: frozenset[str] = frozenset()
    max_steps: int = DEFAULT_MAX_STEPS
    tool_timeout_seconds: float = DEFAULT_TOOL_TIMEOUT_SECONDS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Self:
        """Read the variables; raise ``ValueError`` naming a bad one."""
        return cls(
            keepalive_seconds=positive_setting(
                environ,
                "STREAM_KEEPALIVE_SECONDS",
                DEFAULT_KEEPALIVE_SECONDS,
                float,
                MAX_SECONDS,
            ),
            max_prompt_chars=positive_setting(
                environ,
                "STREAM_MAX_PROMPT_CHARS",
                DEFAULT_MAX_PROMPT_CHARS,
                int,
                MAX_CHARS_OR_TOKENS,
            ),
            max_body_bytes=positive_setting(
                environ,
                "STREAM_MAX_BODY_BYTES",
                DEFAULT_MAX_BODY_BYTES,
                int,
                MAX_BODY_BYTES,
            ),
            max_output_tokens=positive_setting(
                environ, "STREAM_MAX_OUTPUT_TOKENS", None, int, MAX_CHARS_OR_TOKENS
            ),
            upstream_timeout_seconds=positive_setting(
                environ,
                "STREAM_UPSTREAM_TIMEOUT_SECONDS",
                DEFAULT_UPSTREAM_TIMEOUT_SECONDS,
                float,
                MAX_SECONDS,
            ),
            upstream_max_retries=_retries(
                environ, "STREAM_UPSTREAM_MAX_RETRIES", DEFAULT_UPSTREAM_MAX_RETRIES
            ),
            cors_origins=frozenset(
                origin.rstrip("/")
                for origin in comma_list(environ, "STREAM_CORS_ORIGINS")
            ),
            max_steps=positive_setting(
                environ, "STREAM_MAX_STEPS", DEFAULT_MAX_STEPS, int, MAX_STEPS
            ),
            tool_timeout_seconds=positive_setting(
                environ,
                "STREAM_TOOL_TIMEOUT_SECONDS",
                DEFAULT_TOOL_TIMEOUT_SECONDS,
                float,
                MAX_SECONDS,
            ),
        )

    @classmethod
    def from_env_or_exit(cls, environ: Mapping[str, str] = os.environ) -> Self:
        """:meth:`from_env` for a server starting up: a bad value stops it with one
        line naming the variable, not inside a traceback."""
        try:
            return cls.from_env(environ)
        except ValueError as error:
            raise SystemExit(f"Bad setting: {error}") from None


def check_request(
    environ: Mapping[str, Any],
    settings: StreamSettings,
    methods: Collection[str] = ("GET",),
) -> None:
    """Refuse, before any upstream call, a request no view should pay a model for.

    ``405`` for another method: ``HEAD`` too, which Flask and Django route to a GET
    view, where it would start a completion no one reads. ``403`` from another
    site (see :func:`check_site`), ``413`` for a body over the size limit, told by
    its ``Content-Length`` before it is read. ``environ`` is the WSGI environ:
    Flask's ``request.environ``, Django's ``request.META``.
    """
    method = environ.get("REQUEST_METHOD", "")
    if method not in methods:
        raise method_not_allowed(method, methods)
    check_site(_EnvironHeaders(environ), settings.cors_origins)
    check_body_size(environ.get("CONTENT_LENGTH"), settings.max_body_bytes)


def method_not_allowed(method: str, allowed: Collection[str]) -> StreamError:
    """405 for ``method``, whose ``Allow`` names the ``allowed`` methods."""
    return StreamError(
        405,
        f"Use {' or '.join(allowed)} here, got {method[:20]!r}.",
        "method_not_allowed",
        {"Allow": ", ".join(allowed)},
    )


class Headers(Protocol):
    """Request headers, looked up case-insensitively (Flask's and Django's alike)."""

    def get(self, key: str, /) -> str | None: ...


def check_site(headers: Headers, cors_origins: Collection[str] = ()) -> None:
    """Refuse a request from another site with 403, before any upstream call.

    A browser on another site must not spend the key: a request it marks
    ``Sec-Fetch-Site: cross-site``, or whose ``Origin`` names another host than
    ``Host``, is refused unless its origin is in ``cors_origins``. Clients that are
    not browsers send neither header and pass. Host and port are compared, not the
    scheme: behind a TLS-terminating proxy the app sees ``http`` while the browser
    says ``https``.
    """
    origin = headers.get("Origin")
    if origin is not None and origin in cors_origins:
        return
    host = headers.get("Host") or ""
    if headers.get("Sec-Fetch-Site") == "cross-site" or (
        origin is not None and _netloc(origin) != host.lower()
    ):
        raise StreamError(
            403,
            "Cross-site requests may not use this endpoint; list the origin in "
            f"STREAM_CORS_ORIGINS to allow it.{_port_hint(origin, host)}",
            "cross_site_request",
        )


def check_body_size(content_length: str | None, limit: int) -> None:
    """Refuse a body whose ``Content-Length`` is over ``limit``, before reading it."""
    length = (content_length or "").strip()
    # isascii: "²".isdigit() is true too (a server may pass such a header on).
    if length.isascii() and length.isdigit() and int(length) > limit:
        raise body_too_large(limit)


def body_too_large(limit: int) -> StreamError:
    return StreamError(
        413, f"The body is over the limit of {limit} bytes.", "payload_too_large"
    )


def json_body(body: bytes, content_type: str | None) -> dict[str, Any]:
    """A POST body, which must be a JSON object sent as ``application/json``.

    ``415`` for another type: with the cross-site refusal, this is what keeps a
    form on another site from posting to the view (a form can't send JSON).
    """
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise StreamError(
            415,
            f"Send the body as application/json, got {content_type or 'no type'!r}.",
            "unsupported_media_type",
        )
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise StreamError(400, "The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise StreamError(400, "The body must be a JSON object.")
    return data


def client_socket_of(environ: Mapping[str, Any]) -> socket.socket | None:
    """The client's socket in the WSGI environ, for ``client_socket=``: with it a
    client that leaves is noticed even while the upstream is silent.

    gunicorn and ``flask run`` (Werkzeug) put it there, each under its own key;
    ``manage.py runserver`` does not, and a client that left is noticed at the
    next write (a keep-alive at the latest).
    """
    found = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    return found if isinstance(found, socket.socket) else None


class _EnvironHeaders:
    """The request headers of a WSGI environ, as :class:`Headers`."""

    def __init__(self, environ: Mapping[str, Any]) -> None:
        self._environ = environ

    def get(self, key: str, /) -> str | None:
        value = self._environ.get("HTTP_" + key.upper().replace("-", "_"))
        return value if isinstance(value, str) else None


def _netloc(origin: str) -> str | None:
    try:
        return urlsplit(origin).netloc.lower() or None
    except ValueError:
        return None


def _port_hint(origin: str | None, host: str) -> str:
    """Why a same-host page may look cross-site: a proxy that dropped the port."""
    netloc = _netloc(origin or "")
    if netloc is None or netloc == host.lower():
        return ""
    if urlsplit(origin or "").hostname == urlsplit(f"//{host}").hostname:
        return (
            f" (Origin {netloc!r} and Host {host!r} differ only in their port: "
            "a proxy in front must pass the Host header on whole, e.g. nginx's "
            "'proxy_set_header Host $http_host;')"
        )
    return ""


def comma_list(environ: Mapping[str, str], name: str, default: str = "") -> list[str]:
    """The items of a comma-separated variable, each trimmed, empty ones dropped.

    ``"a.example, b.example,"`` is ``["a.example", "b.example"]``: a space after a
    comma is easy to type and invisible in a log, and kept it would never match.
    An unset or empty variable gives the items of ``default``.
    """
    raw = environ.get(name) or default
    return [item.strip() for item in raw.split(",") if item.strip()]


@overload
def positive_setting(
    environ: Mapping[str, str], name: str, default: _N, kind: type[_N], maximum: int
) -> _N: ...
@overload
def positive_setting(
    environ: Mapping[str, str], name: str, default: None, kind: type[_N], maximum: int
) -> _N | None: ...
def positive_setting(
    environ: Mapping[str, str],
    name: str,
    default: _N | None,
    kind: type[_N],
    maximum: int,
) -> _N | None:
    """A number above 0 and at most ``maximum``; nan and inf are refused.

    ``nan`` passes any comparison test written as "refuse if <= 0": a keep-alive
    interval of nan wrote keep-alives in a tight loop, and inf broke every stream.
    """
    raw = environ.get(name)
    if not raw:
        return default
    number = "whole number" if kind is int else "number"
    problem = ValueError(
        f"{name} must be a {number} above 0 and at most {maximum}, got {_quoted(raw)}"
    )
    try:
        value = kind(raw)
    except ValueError:
        raise problem from None
    if not (math.isfinite(value) and 0 < value <= maximum):
        raise problem
    return value


def _retries(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if not raw:
        return default
    digits = raw.strip()
    # isascii: "²".isdigit() is true too, and int() refuses it; the length check
    # comes before int(), which refuses more than 4,300 digits.
    short = len(digits) <= len(str(MAX_RETRIES))
    whole = digits.isascii() and digits.isdigit() and short
    if not whole or int(digits) > MAX_RETRIES:
        raise ValueError(
            f"{name} must be a whole number from 0 to {MAX_RETRIES}, got {_quoted(raw)}"
        )
    return int(digits)


def _quoted(raw: str) -> str:
    """A bad value for a message, cut short: a pasted file can be long."""
    text = repr(raw)
    return text if len(text) <= 40 else text[:39] + "…"


# --- Events: what the model says -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Text:
    """A delta of the answer's text."""

    text: str


@dataclass(frozen=True, slots=True)
class Reasoning:
    """A delta of a reasoning model's thinking, or of its summary."""

    text: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refusal delta: what the model says instead of answering."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of a tool call: chat sends a call's id, name and arguments in
    pieces, keyed by ``index`` (parallel calls interleave)."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A whole tool call: sent once its step has ended, arguments exactly as the
    model wrote them (not necessarily valid JSON)."""

    id: str
    name: str
    arguments: str

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool the server ran gave back for call ``id``: its ``output``, or the
    ``error`` the model is told instead."""

    id: str
    output: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, str]:
        if self.error is not None:
            return {"id": self.id, "error": self.error}
        return {"id": self.id, "output": self.output or ""}


@dataclass(frozen=True, slots=True)
class Finish:
    """Why the answer (or one step of it) ended: ``stop``, ``length``, ..."""

    reason: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage, as Chat Completions names it."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    def __add__(self, other: Usage) -> Usage:
        """The usage of two model calls together (an answer that ran tools)."""
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.total_tokens + other.total_tokens,
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True, slots=True)
class Error:
    """The stream failed: always its last event."""

    message: str
    type: str


Event = (
    Text
    | Reasoning
    | Refusal
    | ToolCallDelta
    | ToolCall
    | ToolResult
    | Finish
    | Usage
    | Error
)


# --- Decoding: every upstream dialect into events -----------------------------------


def _field(obj: Any, name: str) -> Any:
    """Read a field from a dict or from an SDK (pydantic) object alike."""
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _chunk_events(chunk: Any, secrets: tuple[str, ...] = ()) -> list[Event]:
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
        return _responses_events(kind, chunk, secrets)
    events: list[Event] = []
    for choice in _field(chunk, "choices") or ():
        if _field(choice, "index") not in (0, None):
            continue
        # Providers differ: a delta (chat), text (legacy), or a whole message. A
        # delta, even an empty one beside the whole message, is what is new.
        delta = _field(choice, "delta")
        message = _field(choice, "message") if delta is None else delta
        if message:
            _message_events(message, events)
        else:
            _add_text(Text, _field(choice, "text"), events)
        reason = _field(choice, "finish_reason")
        if reason and isinstance(reason, str):
            events.append(Finish(reason))
    usage = _field(chunk, "usage")
    if usage:
        events.append(_usage(usage, "prompt_tokens", "completion_tokens"))
    return events


def _message_events(message: Any, events: list[Event]) -> None:
    """The events of a chat delta (or whole message), in the order a model says
    them: thinking, then text or a refusal, then tool calls."""
    # DeepSeek (and older vLLM) say reasoning_content; vLLM, Ollama, OpenRouter
    # reasoning.
    reasoning = _field(message, "reasoning_content") or _field(message, "reasoning")
    _add_text(Reasoning, reasoning, events)
    _add_text(Text, _field(message, "content"), events)
    _add_text(Refusal, _field(message, "refusal"), events)
    for call in _field(message, "tool_calls") or ():
        function = _field(call, "function")
        index = _field(call, "index")
        events.append(
            ToolCallDelta(
                index=index if isinstance(index, int) else 0,
                id=_field(call, "id") or None,
                name=_field(function, "name") or None,
                arguments=_field(function, "arguments") or "",
            )
        )


def _add_text(
    kind: type[Text | Reasoning | Refusal], text: Any, out: list[Event]
) -> None:
    if text and isinstance(text, str):  # not e.g. a list of content parts
        out.append(kind(text))


def _responses_events(kind: str, event: Any, secrets: tuple[str, ...]) -> list[Event]:
    """What one Responses API event says; most events say nothing new."""
    delta = _field(event, "delta")
    if kind == "response.output_text.delta" and delta and isinstance(delta, str):
        return [Text(delta)]
    if kind == "response.refusal.delta" and delta and isinstance(delta, str):
        return [Refusal(delta)]
    if kind in _RESPONSES_REASONING and delta and isinstance(delta, str):
        return [Reasoning(delta)]
    if kind == "response.function_call_arguments.delta" and isinstance(delta, str):
        index = _field(event, "output_index")
        return [
            ToolCallDelta(index if isinstance(index, int) else 0, None, None, delta)
        ]
    if kind in _RESPONSES_ITEM_EVENTS:
        return _function_call_events(kind, event)
    response = _field(event, "response")
    if kind in ("response.failed", "error"):
        error = _field(response, "error") or event
        raise UpstreamFailed(_redact(str(_field(error, "message") or kind), secrets))
    events: list[Event] = []
    if kind == "response.incomplete":  # cut short: never mistaken for a whole answer
        reason = _field(_field(response, "incomplete_details"), "reason")
        events.append(Finish(_INCOMPLETE_REASONS.get(reason, str(reason or kind))))
    elif kind == "response.completed":
        calls = any(
            _field(item, "type") == "function_call"
            for item in _field(response, "output") or ()
        )
        events.append(Finish("tool_calls" if calls else "stop"))
    usage = _field(response, "usage")
    if kind in _RESPONSES_ENDS and usage:
        events.append(_usage(usage, "input_tokens", "output_tokens"))
    return events


def _function_call_events(kind: str, event: Any) -> list[Event]:
    """A Responses function call: its start (id and name), or the whole call."""
    item = _field(event, "item")
    if _field(item, "type") != "function_call":
        return []
    call_id = str(_field(item, "call_id") or _field(item, "id") or "")
    name = str(_field(item, "name") or "")
    arguments = _field(item, "arguments")
    arguments = arguments if isinstance(arguments, str) else ""
    if kind == "response.output_item.done":
        return [ToolCall(call_id, name, arguments)]
    index = _field(event, "output_index")
    index = index if isinstance(index, int) else 0
    return [ToolCallDelta(index, call_id or None, name or None, arguments)]


_RESPONSES_ITEM_EVENTS = ("response.output_item.added", "response.output_item.done")
_RESPONSES_REASONING = (
    "response.reasoning_summary_text.delta",
    "response.reasoning_text.delta",
)
_RESPONSES_ENDS = ("response.completed", "response.incomplete")


def _ends_answer(chunk: Any) -> bool:
    """The chunk says the answer is over: a finish reason, or a terminal event.

    Some OpenAI-compatible servers send no ``[DONE]``: after one of these, a clean
    end of the body is the end of the answer.
    """
    if _field(chunk, "type") in _RESPONSES_ENDS:
        return True
    choices = _field(chunk, "choices")
    return isinstance(choices, list) and any(
        _field(choice, "finish_reason") for choice in choices
    )


class _ToolCalls:
    """Assembles chat's tool call fragments into whole :class:`ToolCall` events.

    Fragments are keyed by ``index`` (parallel calls interleave) and may come in
    any order: the id in one, the name split over several, or late, or repeated
    whole. The calls of a step go out when it ends, in index order, just before
    its :class:`Finish` (or at the end of the stream, when it reports none). A
    Responses API call arrives whole (``response.output_item.done``) and replaces
    the fragments of the same id.
    """

    def __init__(self) -> None:
        self._pending: dict[int, list[str]] = {}  # index: [id, name, arguments]

    def assemble(self, events: list[Event]) -> list[Event]:
        if not self._pending:
            for event in events:
                if type(event) in _STEP_EVENTS:
                    break
            else:
                return events  # text alone: the common case, kept cheap
        out: list[Event] = []
        for event in events:
            match event:
                case ToolCallDelta(index, id, name, arguments):
                    call = self._pending.setdefault(index, ["", "", ""])
                    call[0] = call[0] or id or ""
                    if name and name != call[1]:  # not a repeat of the whole name
                        call[1] += name
                    call[2] += arguments
                case ToolCall(id):
                    self._pending = {
                        i: c for i, c in self._pending.items() if c[0] != id
                    }
                case Finish():
                    out.extend(self.flush())
            out.append(event)
        return out

    def flush(self) -> list[Event]:
        """The calls not sent yet, whole: the step (or the stream) ended."""
        calls: list[Event] = [
            ToolCall(id or f"call_{index}", name, arguments)
            for index, (id, name, arguments) in sorted(self._pending.items())
        ]
        self._pending = {}
        return calls


_STEP_EVENTS = frozenset({ToolCallDelta, ToolCall, Finish})


def _usage(usage: Any, prompt_key: str, completion_key: str) -> Usage:
    prompt = int(_field(usage, prompt_key) or 0)
    completion = int(_field(usage, completion_key) or 0)
    total = int(_field(usage, "total_tokens") or prompt + completion)
    return Usage(prompt, completion, total)


def _decode(
    chunks: Iterable[Any], secrets: tuple[str, ...] = ()
) -> Iterator[list[Event]]:
    """Events from any accepted upstream, one list per chunk or per read (maybe
    empty: a read may complete no event)."""
    iterator = iter(chunks)
    first = next(iterator, None)
    if first is None:
        return
    if isinstance(first, (bytes, bytearray)):
        decoder = _SseDecoder(secrets)
        yield decoder.feed(bytes(first))
        # Not `for read in iterator`: after [DONE] the caller reads the rest itself.
        while not decoder.done:
            read = next(iterator, None)
            yield decoder.feed(read) if read is not None else decoder.end()
        return
    if isinstance(first, _Decoded):  # an answer of several model calls
        yield first.events
        for decoded in iterator:
            yield decoded.events
        return
    calls = _ToolCalls()
    yield calls.assemble(_chunk_events(first, secrets))
    for chunk in iterator:
        yield calls.assemble(_chunk_events(chunk, secrets))
    yield calls.flush()


@dataclass(frozen=True, slots=True)
class _Decoded:
    """Events decoded already: what an answer of several model calls yields."""

    events: list[Event]


class _SseDecoder:
    """Events from raw SSE bytes, one read at a time: the relay under gevent reads
    only when a read can't block, so a step must never read on its own.

    ``done`` once the stream ended (``[DONE]``, or the body's end). The body must
    reach the stream's end: one that ends before ``[DONE]``, a terminal Responses
    event or a finish reason was cut (a close-delimited body ends that way when its
    server dies), and one without a single event is not a stream at all (a
    gateway's JSON error): both raise :class:`UpstreamFailed` rather than pass for
    a whole answer. A failure inside a read raises at the next call, after the
    events that came before it.

    NOTE: as per the spec, lines end at CRLF, CR or LF, a CR may end one read and its
    LF start the next, an event is dispatched at a blank line, and one leading byte
    order mark is not part of the stream. Splitting bytes is safe for UTF-8: no
    multi-byte sequence contains a CR or LF byte.
    """

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        self.done = False
        self._secrets = secrets
        self._pending = b""  # the incomplete last line
        self._data: list[bytes] = []  # the event's data lines so far
        self._size = 0  # of ``_data``
        self._skip_lf = False  # the last read ended with a CR: an LF next ends a CRLF
        self._head: bytearray | None = bytearray()  # until the first event
        self._ended = False  # a finish reason or a terminal event came
        self._failure: UpstreamFailed | None = None
        self._calls = _ToolCalls()

    def feed(self, read: bytes) -> list[Event]:
        """The events that ``read`` completed."""
        self._raise_failure()
        return self._events(self.payloads(read))

    def end(self) -> list[Event]:
        """The body ended: the last event, if it lacked its blank line."""
        self._raise_failure()
        self.done = True
        events = self._events(self.flush()) + self._calls.flush()
        self._raise_failure()
        if not self._ended:
            head = bytes(self._head or b"")
            raise UpstreamFailed(_unfinished(head, self._secrets))
        return events

    def payloads(self, read: bytes) -> list[str]:
        """The ``data`` of each event that ``read`` completed."""
        head = self._head
        if head is not None:
            if not head:
                read = read.removeprefix(b"\xef\xbb\xbf")
            if len(head) < _SNIFF_BYTES:
                head += read[: _SNIFF_BYTES - len(head)]
        if self._skip_lf and read[:1] == b"\n":
            read = read[1:]
        buffer = self._pending + read if self._pending else read
        self._skip_lf = buffer.endswith(b"\r")
        # Most upstreams end lines with LF alone: bytes.split is the fast way.
        lines = _SSE_LINE_END.split(buffer) if b"\r" in buffer else buffer.split(b"\n")
        self._pending = lines.pop()
        payloads: list[str] = []
        for line in lines:
            if not line:
                if self._data:
                    payloads.append(self._joined())
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
                self._size += len(value)
            # event:, id:, retry: and comments carry nothing the relay needs
        if self._size + len(self._pending) > MAX_EVENT_BYTES:
            raise UpstreamFailed(
                f"The upstream sent an event over {MAX_EVENT_BYTES} bytes."
            )
        if payloads:
            self._head = None  # the body is SSE
        return payloads

    def flush(self) -> list[str]:
        """The last event's ``data``, if the body ended without its blank line
        (some providers do)."""
        return [self._joined()] if self._data else []

    def _joined(self) -> str:
        data, self._data, self._size = self._data, [], 0
        return b"\n".join(data).decode("utf-8", "replace")

    def _events(self, payloads: list[str]) -> list[Event]:
        events: list[Event] = []
        try:
            for payload in payloads:
                if payload.strip() == "[DONE]":
                    self.done = True
                    break
                chunk = _json_chunk(payload)
                events += _chunk_events(chunk, self._secrets)
                self._ended = self._ended or _ends_answer(chunk)
        except UpstreamFailed as exc:
            self._failure = exc  # raised next time, after what came before it
        events = self._calls.assemble(events)
        return events + self._calls.flush() if self.done else events

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure


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


# --- Encoding: events into bytes ---------------------------------------------------


class Encoder(Protocol):
    """Writes events as one wire protocol. ``keepalive`` is what to write during
    silence (``None``: nothing can be, as in raw text); ``end()`` what a whole
    answer ends with."""

    keepalive: bytes | None

    def encode(self, events: Iterable[Event]) -> bytes: ...

    def end(self) -> bytes: ...


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


class SseEncoder:
    """The SSE routes' events: text unnamed, the rest named, then the usage of
    every step summed and ``[DONE]``."""

    keepalive: bytes | None = _KEEPALIVE

    def __init__(self) -> None:
        self._usage: Usage | None = None

    def encode(self, events: Iterable[Event]) -> bytes:
        return b"".join(map(self._frame, events))

    def end(self) -> bytes:
        if self._usage is None:
            return _DONE
        return _named_event("usage", self._usage.as_dict()) + _DONE

    def _frame(self, event: Event) -> bytes:
        match event:
            case Text(text):
                return sse_event(text)
            case Reasoning(text):
                return sse_event(text, "reasoning")
            case Refusal(text):
                return sse_event(text, "refusal")
            case ToolCall():
                return _named_event("tool_call", event.as_dict())
            case ToolResult():
                return _named_event("tool_result", event.as_dict())
            case Finish(reason):
                return _named_event("finish", {"reason": reason})
            case Usage():  # sent at the end: after the last step's finish
                self._usage = event if self._usage is None else self._usage + event
            case Error(message, type):
                return _named_event("error", {"message": message, "type": type})
        return b""  # a tool call's fragments: the whole call is sent


class TextEncoder:
    """The raw text route: the answer's text, and a refusal as text; an error
    cuts the body off (:class:`UpstreamFailed`) so that it can't pass for a
    short answer."""

    keepalive: bytes | None = None  # any byte written would become part of the answer

    def encode(self, events: Iterable[Event]) -> bytes:
        parts = []
        for event in events:
            match event:
                case Text(text) | Refusal(text):
                    parts.append(text)
                case Error(message):
                    raise UpstreamFailed(message)
        return _utf8("".join(parts)) if parts else b""

    def end(self) -> bytes:
        return b""


def _named_event(name: str, payload: Mapping[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate (possible in JSON text) can't be UTF-8: send U+FFFD.
        return _SURROGATE.sub("\ufffd", text).encode()


# --- Tools the server runs -----------------------------------------------------------


class Tools:
    """Plain Python functions the model may call, run by the server between its
    model calls (see :func:`sse_frames`'s ``tools``).

    A function's name, docstring and annotated parameters are the schema the model
    sees (built by pydantic, which the openai SDK brings). A call whose arguments
    are not valid JSON for the function, or a function that raises, gives the
    model an error to read instead of an output; a result that is not a string
    goes back as its JSON text. A tool that runs longer than ``timeout_seconds`` is
    given up: under gevent it is interrupted where it waits (I/O, sleep); under
    threads it can't be, and runs on in its thread while the answer goes on
    without it. At most ``max_steps`` model calls make one answer.
    """

    def __init__(
        self,
        functions: Iterable[Callable[..., Any]],
        *,
        max_steps: int = DEFAULT_MAX_STEPS,
        timeout_seconds: float = DEFAULT_TOOL_TIMEOUT_SECONDS,
    ) -> None:
        self.functions = {function.__name__: function for function in functions}
        self.max_steps = max_steps
        self.timeout_seconds = timeout_seconds
        self._models = {name: _arguments_model(f) for name, f in self.functions.items()}

    def __bool__(self) -> bool:
        return bool(self.functions)

    def definitions(self, api: str = "chat") -> list[Any]:
        """The ``tools`` of a request: Chat Completions' shape, or ``"responses"``'."""
        tools = []
        for name, function in self.functions.items():
            schema = _without_titles(self._models[name].model_json_schema())
            tool = {
                "name": name,
                "description": inspect.getdoc(function) or "",
                "parameters": schema,
            }
            tools.append(
                {"type": "function", **tool}
                if api == "responses"
                else {"type": "function", "function": tool}
            )
        return tools

    def run(self, call: ToolCall) -> ToolResult:
        """Run ``call`` within the timeout; its output, or the error the model reads."""
        function = self.functions.get(call.name)
        if function is None:
            return ToolResult(call.id, error=f"There is no tool named {call.name!r}.")
        try:
            arguments = self._models[call.name].model_validate_json(
                call.arguments or "{}"
            )
        except ValueError as exc:  # pydantic's ValidationError is one
            return ToolResult(call.id, error=f"Bad arguments for {call.name}: {exc}")
        try:
            output = _within(self.timeout_seconds, function, dict(arguments))
        except TimeoutError:
            error = f"{call.name} did not finish within {self.timeout_seconds:g} s."
            return ToolResult(call.id, error=error)
        except Exception as exc:
            error = _redact(f"{call.name} failed: {type(exc).__name__}: {exc}")
            return ToolResult(call.id, error=error)
        if not isinstance(output, str):
            output = json.dumps(output, default=str, ensure_ascii=False)
        return ToolResult(call.id, output=output)


@dataclass(frozen=True)
class Step:
    """One model call of an answer that called tools: what the model said, the
    calls it made, and what the tools gave back, to send it in the next call."""

    text: str
    calls: list[ToolCall]
    results: list[ToolResult]

    def chat_messages(self) -> list[dict[str, Any]]:
        """The step as Chat Completions messages: the assistant's, then the tools'."""
        calls = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in self.calls
        ]
        assistant = {"role": "assistant", "content": self.text or None}
        tools = [
            {"role": "tool", "tool_call_id": r.id, "content": _tool_text(r)}
            for r in self.results
        ]
        return [assistant | {"tool_calls": calls}, *tools]

    def responses_input(self) -> list[dict[str, Any]]:
        """The step as Responses API input items: the calls, then their outputs."""
        return responses_input(self.chat_messages())


def responses_input(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages as the Responses API's input items, in the same order.

    The Responses API has no ``tool_calls`` or ``tool`` role: each call is a
    ``function_call`` item after its assistant message's text (none when the text
    is null or empty), and each answer a ``function_call_output`` item.
    """
    return [item for message in messages for item in _input_items(message)]


def _input_items(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    if message["role"] == "tool":
        output = {"call_id": message["tool_call_id"], "output": message["content"]}
        return [{"type": "function_call_output", **output}]
    calls = message.get("tool_calls") or []
    items: list[dict[str, Any]] = []
    if message["content"] or not calls:
        items.append({"role": message["role"], "content": message["content"]})
    items.extend(
        {
            "type": "function_call",
            "call_id": call["id"],
            "name": call["function"]["name"],
            "arguments": call["function"]["arguments"],
        }
        for call in calls
    )
    return items


# Given the steps so far, the request of the next model call.
FollowUp = Callable[[Sequence[Step]], Opener]


class _ToolSteps:
    """An answer of several model calls: each call's events, then, when the model
    called tools, their results, and the next call's events, up to ``max_steps``.

    Read by a relay's helper (greenlet or thread), so that keep-alives go on while
    a tool runs; a client that leaves stops it there, before the next request.
    """

    def __init__(
        self, first: Iterable[Any] | Opener, tools: Tools, follow_up: FollowUp
    ) -> None:
        self._first, self._tools, self._follow_up = first, tools, follow_up
        self._upstream: Any = None

    def __iter__(self) -> Iterator[_Decoded]:
        steps: list[Step] = []
        opener: Any = self._first
        while True:
            upstream = open_upstream(opener) if _is_opener(opener) else opener
            self._upstream = upstream
            calls: list[ToolCall] = []
            text: list[str] = []
            try:
                reads = iter(
                    upstream.iter_bytes()
                    if hasattr(upstream, "iter_bytes")
                    else upstream
                )
                for events in _decode(reads, _secrets_of(upstream)):
                    for event in events:
                        if type(event) is ToolCall:
                            calls.append(event)
                        elif type(event) is Text:
                            text.append(event.text)
                    yield _Decoded(events)
                for _ in itertools.islice(reads, _DRAIN_READS):
                    pass  # to the end of the body: the connection is pooled
            finally:
                _close(upstream)
            if not calls or len(steps) + 1 >= self._tools.max_steps:
                return
            results = []
            for call in calls:
                results.append(self._tools.run(call))
                yield _Decoded([results[-1]])
            steps.append(Step("".join(text), calls, results))
            opener = self._follow_up(tuple(steps))

    @property
    def http_response(self) -> object:
        """The current model call's HTTP response: its socket, its credentials."""
        return _http_response(self._upstream)

    def close(self) -> None:
        _close(self._upstream)


def _arguments_model(function: Callable[..., Any]) -> Any:
    """A pydantic model of ``function``'s parameters: its JSON schema, and the
    validation of the arguments the model writes."""
    import pydantic  # the openai SDK's own dependency

    fields: dict[str, Any] = {}
    for name, parameter in inspect.signature(function).parameters.items():
        annotation = (
            Any
            if parameter.annotation is inspect.Parameter.empty
            else parameter.annotation
        )
        default = (
            ... if parameter.default is inspect.Parameter.empty else parameter.default
        )
        fields[name] = (annotation, default)
    config = pydantic.ConfigDict(extra="forbid")
    return pydantic.create_model(function.__name__, __config__=config, **fields)


def _without_titles(schema: Any) -> Any:
    """pydantic's schema less its generated titles, which tell the model nothing."""
    if isinstance(schema, dict):
        return {k: _without_titles(v) for k, v in schema.items() if k != "title"}
    if isinstance(schema, list):
        return [_without_titles(item) for item in schema]
    return schema


def _within(
    seconds: float, function: Callable[..., Any], arguments: dict[str, Any]
) -> Any:
    """``function(**arguments)``, or ``TimeoutError`` after ``seconds``."""
    if _gevent_active():
        import gevent

        with gevent.Timeout(seconds, TimeoutError):
            return function(**arguments)
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, function(**arguments)))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        raise TimeoutError
    succeeded, value = outcome[0]
    if not succeeded:
        raise value
    return value


def _tool_text(result: ToolResult) -> str:
    return result.output or "" if result.error is None else f"Error: {result.error}"


# --- The relay: from the upstream to the client, in time ------------------------------


class Body(Protocol):
    """A stream's WSGI body: its bytes; ``close()`` (the server calls it) ends it, and
    ``end(error)`` ends it with ``error`` (see :func:`end_open_streams`)."""

    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...

    def end(self, error: StreamError) -> None: ...


class Callbacks(TypedDict, total=False):
    """Optional hooks, called from the thread (or greenlet) that writes the response.

    ``on_token`` and ``on_completion`` (the whole text, at a normal end) get the
    answer's text, not refusals; ``on_usage`` a dict with ``prompt_tokens``,
    ``completion_tokens``, ``total_tokens``, once per model call; ``on_error`` the
    exception of a failed stream (not of a client that left). ``on_event`` gets
    every typed event in order (reasoning, tool calls and their fragments, tool
    results, finish reasons, usage, errors): the one hook for everything else.
    """

    on_start: Callable[[], object]
    on_token: Callable[[str], object]
    on_completion: Callable[[str], object]
    on_usage: Callable[[dict[str, int]], object]
    on_error: Callable[[BaseException], object]
    on_event: Callable[[Event], object]


class _Hooks:
    """Calls the :class:`Callbacks` a stream was given, with what it relays."""

    def __init__(
        self,
        on_start: Callable[[], object] | None = None,
        on_token: Callable[[str], object] | None = None,
        on_completion: Callable[[str], object] | None = None,
        on_usage: Callable[[dict[str, int]], object] | None = None,
        on_error: Callable[[BaseException], object] | None = None,
        on_event: Callable[[Event], object] | None = None,
    ) -> None:
        self.on_start, self.on_token, self.on_usage = on_start, on_token, on_usage
        self.on_completion, self.on_error = on_completion, on_error
        self.on_event = on_event
        self.want_events = bool(on_token or on_completion or on_usage or on_event)
        self._parts: list[str] = []  # kept only when on_completion wants the text

    def events(self, events: list[Event]) -> None:
        for event in events:
            if self.on_event:
                self.on_event(event)
            match event:
                case Text(text):
                    if self.on_token:
                        self.on_token(text)
                    if self.on_completion:
                        self._parts.append(text)
                case Usage() if self.on_usage:
                    self.on_usage(event.as_dict())

    def complete(self) -> None:
        if self.on_completion:
            self.on_completion("".join(self._parts))

    def error(self, exc: BaseException) -> None:
        if self.on_error:
            self.on_error(exc)


class Pollable(Protocol):
    """What lets the relay read an upstream response in the response's own greenlet.

    A transport offers it as ``response.extensions["network_stream"]
    .get_extra_info("pollable")`` (this repo's ``shared/transport.py`` does), and
    promises with it that the body holds back no complete data: when ``pending()``
    is 0 and the socket is not readable, the next read would block.
    """

    def fileno(self) -> int:
        """The socket to wait on."""
        ...

    def pending(self) -> int:
        """Bytes received but not yet returned by a read (the transport's, TLS's)."""
        ...

    def read_timeout(self) -> float | None:
        """How long the upstream may stay silent before a read fails."""
        ...


_END = object()  # the upstream's answer is whole
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


class _Relay:
    """One stream: events from the upstream, written by an :class:`Encoder`, with
    keep-alives during silence. Subclasses say how to wait for the upstream
    (:meth:`_next_events`) under gevent and under threads."""

    def __init__(
        self,
        chunks: Iterable[Any] | Opener,
        encoder: Encoder,
        keepalive_seconds: float | None,
        client_socket: socket.socket | None,
        hooks: _Hooks,
    ) -> None:
        self._opener: Opener | None = chunks if _is_opener(chunks) else None
        # Set once the upstream is open, when given an opener.
        self._chunks: object = None if self._opener else chunks
        self._encoder = encoder
        self.keepalive_seconds = (
            keepalive_seconds if encoder.keepalive is not None else None
        )
        self._client_socket = client_socket
        self._hooks = hooks
        self._secrets = _secrets_of(self._chunks)
        self._ending: StreamError | None = None  # end() was called
        self._first: object = None  # what start() waited for: bytes, or _END
        self._silent_start = False  # start() waited a whole interval for output
        self._gone = False  # the client left before the first output
        self._started = False
        # Batches read meanwhile are merged into one write only once the response
        # is written: what start() holds must stay one read, for backpressure.
        self._merging = False

    def start(self, first_output_within: float | None) -> None:
        """Start reading, and wait up to the given time for the first output.

        A failure before any output raises :class:`StreamError`, so that the view
        still answers with its status instead of a 200 it can't take back. Silence
        past the wait lets the response start (with a keep-alive).
        """
        self._started = True
        with _open_relays_lock:
            _open_relays.add(self)
        if self._hooks.on_start:
            try:
                self._hooks.on_start()
            except BaseException:
                _close(self._chunks)
                raise
        try:
            self._begin()
            # Events that write nothing (a role, reasoning) don't count as output,
            # nor restart the wait: without a byte, a proxy in front may give up.
            self._first = self._output(_deadline(first_output_within))
        except ClientDisconnected:
            self._gone = True
            return
        except Exception as exc:
            self.close()
            self._hooks.error(exc)
            error = _as_stream_error(exc)
            if error is None or error is exc:
                raise  # not the upstream's: the framework answers 500 and logs it
            raise error from exc
        self._silent_start = self._first is None

    def __iter__(self) -> Iterator[bytes]:
        if self._gone:
            return
        self._merging = True
        encoder = self._encoder
        # A keep-alive is due after an interval without output. The first one goes
        # out at once when start() waited an interval already: the clock started
        # with the request.
        output, self._first = self._first, None  # None: the silent start
        try:
            while True:
                if output is _END:
                    self._hooks.complete()
                    if end := encoder.end():
                        yield end
                    return
                yield (
                    encoder.keepalive or b"" if output is None else cast(bytes, output)
                )
                output = self._output(_deadline(self.keepalive_seconds))
        except ClientDisconnected:
            return
        except Exception as exc:  # any failure is reported to the client
            self._hooks.error(exc)
            error = _as_stream_error(exc)
            if error is None:  # a bug, which the client must not take for the model's
                _log_bug(exc)
                error = StreamError(500, *_SERVER_FAILED)
            events: list[Event] = [Error(error.message, error.type)]
            if self._hooks.want_events:
                self._hooks.events(events)
            yield encoder.encode(events)

    def _output(self, deadline: float | None) -> object:
        """The next bytes to write; ``None`` if ``deadline`` came first; ``_END``."""
        while True:
            events = self._next_events(deadline)
            if events is None or events is _END:
                return events
            assert isinstance(events, list)
            if self._hooks.want_events:
                self._hooks.events(events)
            output = self._encoder.encode(events)
            if output:
                return output

    def end(self, error: StreamError) -> None:
        """End the stream with ``error`` (see :func:`end_open_streams`)."""
        self._ending = error
        self._wake()

    def close(self) -> None:
        """Stop reading and close the upstream; safe to call more than once."""
        with _open_relays_lock:
            _open_relays.discard(self)
        self._stop()

    def _begin(self) -> None:
        """Start what reads the upstream (sending the request, given an opener)."""
        raise NotImplementedError

    def _next_events(self, deadline: float | None) -> list[Event] | object:
        """The upstream's next events; ``None`` at ``deadline``; ``_END`` at the end.

        Raises the upstream's failure, :class:`ClientDisconnected`, or the error
        given to :meth:`end`.
        """
        raise NotImplementedError

    def _wake(self) -> None:
        """Wake a response waiting in :meth:`_next_events` (to see ``_ending``)."""
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError


def _deadline(seconds: float | None) -> float | None:
    return None if seconds is None else time.monotonic() + seconds


def _left(deadline: float | None) -> float | None:
    """Seconds until ``deadline``, for a ``timeout=``; ``None`` waits for ever."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _chars(item: object) -> int:
    """The size of a buffered batch: its texts' lengths (other events count 1)."""
    if type(item) is not list:
        return 0
    return sum(len(getattr(event, "text", "")) or 1 for event in item)


# --- The relay under gevent: one greenlet per stream --------------------------------

_UPSTREAM = "upstream"  # what woke a waiting response
_CLIENT = "client"
_TIMER = "timer"
_NUDGE = "nudge"


@dataclass(frozen=True, slots=True)
class _Opened:
    """The helper sent the request: here is what the upstream answered."""

    chunks: Any


@dataclass(slots=True)
class _Polled:
    """An upstream response that the response's greenlet reads itself."""

    pollable: Pollable
    reads: Iterator[bytes]
    decoder: _SseDecoder
    watch: Any  # the event loop's watcher of the upstream socket
    readable: bool = False  # the socket was seen readable since the last read
    due: float | None = None  # when its silence exceeds the read timeout

    def ready(self) -> bool:
        """A read now won't block."""
        return self.readable or self.pollable.pending() > 0

    def silent_too_long(self, poll: Callable[[], Any]) -> bool:
        """Past the read timeout with nothing to read, the socket checked at once
        (``poll``): a response kept busy writing to its client has not seen it
        become readable, and what waits there is no silence."""
        if self.due is None or time.monotonic() < self.due or self.ready():
            return False
        watch = poll()
        watch.register(self.pollable.fileno(), select.POLLIN)
        self.readable = bool(watch.poll(0))
        return not self.readable

    def read(self) -> list[Event]:
        self.readable = False
        read = next(self.reads, None)
        self.due = _deadline(self.pollable.read_timeout())
        return self.decoder.end() if read is None else self.decoder.feed(read)


class _GreenRelay(_Relay):
    """The response's greenlet waits on the upstream socket, the client socket and
    the keep-alive timer at once, and reads the upstream only when a read can't
    block (see :class:`Pollable`).

    A helper greenlet sends the request when given an opener, and hands over what
    it answered; it reads the upstream into a small buffer only when the upstream
    can't be waited on. Killed on close, it closes what it opened.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        import gevent
        import gevent.event
        import gevent.monkey

        self._gevent = gevent
        self._hub = gevent.get_hub()
        # The system's poll, not gevent's: a check that must not yield.
        self._poll = gevent.monkey.get_original("select", "poll")
        self._helper: Any = None
        self._inbox: deque[object] = deque()  # what the helper hands over
        self._inbox_chars = 0
        self._room = gevent.event.Event()  # a helper with a full inbox waits on it
        self._polled: _Polled | None = None
        self._waiter: Any = None  # set while the response waits
        self._client_watch: Any = None
        self._client_check_due: float | None = None  # once the client sent bytes
        self._ended = False  # the upstream sent its end
        self._stopped = False

    def _begin(self) -> None:
        if self._client_socket is not None:
            self._client_watch = self._hub.loop.io(self._client_socket.fileno(), 1)
        if self._opener is not None:
            self._helper = self._gevent.spawn(self._open)
        else:
            self._adopt(self._chunks)

    def _open(self) -> None:
        """The helper's first job: send the request, hand over the answer."""
        assert self._opener is not None
        item: object
        try:
            item = _Opened(open_upstream(self._opener))
        except Exception as exc:
            item = exc
        if self._stopped:  # closed while the request waited
            if isinstance(item, _Opened):
                _close(item.chunks)
            return
        self._helper = None
        self._put(item)

    def _adopt(self, chunks: Any) -> None:
        """Read ``chunks`` here if it can be waited on, else in a helper."""
        self._chunks = chunks
        self._secrets = _secrets_of(chunks)
        pollable = _pollable(chunks)
        if pollable is None:
            self._helper = self._gevent.spawn(self._read, chunks)
            return
        self._polled = _Polled(
            pollable,
            iter(chunks.iter_bytes()),
            _SseDecoder(self._secrets),
            self._hub.loop.io(pollable.fileno(), 1),
            due=_deadline(pollable.read_timeout()),
        )

    def _read(self, chunks: Any) -> None:
        """The helper's job for an upstream that can't be waited on."""
        reads = iter(chunks.iter_bytes() if hasattr(chunks, "iter_bytes") else chunks)
        try:
            for events in _decode(reads, self._secrets):
                if events:
                    self._put(events)
            self._put(_END)
            # Read to the end of the HTTP body: only then is the connection pooled.
            for _ in itertools.islice(reads, _DRAIN_READS):
                pass
        except Exception as exc:
            self._put(exc)
        finally:
            _close(chunks)

    def _put(self, item: object) -> None:
        while len(self._inbox) >= _QUEUE_SIZE or self._inbox_chars >= _QUEUE_CHARS:
            self._room.clear()
            self._room.wait()  # the client reads slowly: so does the upstream
        self._inbox.append(item)
        self._inbox_chars += _chars(item)
        self._wake()

    def _take(self) -> object:
        """What the helper handed over: batches merged, else one item."""
        item = self._inbox.popleft()
        if type(item) is list and self._merging:
            while self._inbox and type(self._inbox[0]) is list:
                item.extend(cast(list[Event], self._inbox.popleft()))
        self._inbox_chars = sum(map(_chars, self._inbox))
        self._room.set()
        return item

    def _next_events(self, deadline: float | None) -> list[Event] | object:
        while True:
            if self._ending is not None:
                raise self._ending
            if self._inbox:
                item = self._take()
                if isinstance(item, _Opened):
                    self._adopt(item.chunks)
                    continue
                if isinstance(item, BaseException):
                    raise item
                self._ended = item is _END
                return item
            polled = self._polled
            if polled is not None:
                if polled.decoder.done:
                    self._ended = True
                    return _END
                if polled.silent_too_long(self._poll):
                    raise TimeoutError("The upstream was silent past its read timeout.")
                if polled.ready():
                    return polled.read()
            self._wait(deadline)
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _wait(self, deadline: float | None, *, client: bool = True) -> None:
        """Park until the upstream or the client is readable, a helper hands
        something over, or a deadline; note which, and whether the client left."""
        polled = self._polled
        check_due = self._client_check_due if client else None
        dues = (deadline, check_due, polled.due if polled else None)
        until = min((due for due in dues if due is not None), default=None)
        waiter = self._gevent.hub.Waiter(self._hub)
        watches = []
        if polled is not None:
            watches.append((polled.watch, _UPSTREAM))
        if client and check_due is None and self._client_watch is not None:
            watches.append((self._client_watch, _CLIENT))
        for watch, why in watches:
            watch.start(waiter.switch, why)
        timer = None
        if until is not None:
            timer = self._hub.loop.timer(max(0.0, until - time.monotonic()))
            timer.start(waiter.switch, _TIMER)
        self._waiter = waiter
        try:
            why = waiter.get()
        finally:
            self._waiter = None
            for watch, _ in watches:
                watch.stop()
            if timer is not None:
                timer.close()
        if why is _UPSTREAM and polled is not None:
            polled.readable = True
        elif why is _CLIENT:
            self._client_sent()
        if check_due is not None and time.monotonic() >= check_due:
            self._check_client_state()

    def _client_sent(self) -> None:
        """The client socket is readable: it closed, or sent bytes (its next
        request, not ours to read, or a TLS close_notify before its FIN)."""
        assert self._client_socket is not None
        try:
            peeked = _peek(self._client_socket)
        except BlockingIOError:
            return
        except OSError:
            peeked = b""
        if not peeked:
            raise ClientDisconnected
        # The unread bytes keep the socket readable: watch the TCP state instead.
        self._check_client_state()

    def _check_client_state(self) -> None:
        assert self._client_socket is not None
        state = _tcp_state(self._client_socket)
        if state is None:  # not Linux: the next write will tell
            self._client_check_due = None
            self._client_watch = None
        elif state == _TCP_ESTABLISHED:
            self._client_check_due = time.monotonic() + _CLIENT_CHECK_SECONDS
        else:
            raise ClientDisconnected

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._hub.loop.run_callback(waiter.switch, _NUDGE)

    def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        helper, self._helper = self._helper, None
        if helper is not None:
            if self._ended:  # a moment to read to the end of the body
                helper.join(_DRAIN_SECONDS)
            try:
                self._gevent.killall([helper], timeout=_HELPER_JOIN_SECONDS)
            except self._gevent.Timeout:
                # A starved worker: it is being killed all the same, and the
                # response must still end as it was going to, not in a 500.
                pass
        for item in self._inbox:
            if isinstance(item, _Opened):
                _close(item.chunks)
        self._inbox.clear()
        if self._polled is not None and self._ended:
            self._drain(self._polled)
        # Close the upstream response even when the client left mid-stream: this
        # is what stops the model generating (and billing).
        _close(self._chunks)
        if self._polled is not None:
            self._polled.watch.close()
        if self._client_watch is not None:
            self._client_watch.close()

    def _drain(self, polled: _Polled) -> None:
        """Read to the end of the HTTP body, briefly: only then is it pooled."""
        deadline = _deadline(_DRAIN_SECONDS)
        try:
            for _ in range(_DRAIN_READS):
                if not polled.ready():
                    self._wait(deadline, client=False)
                    if not polled.ready():
                        return
                polled.readable = False
                if next(polled.reads, None) is None:
                    return
        except Exception:
            return  # the connection is closed, not pooled


# --- The relay under threads ---------------------------------------------------------

_GONE = object()  # the client left
_ENDING = object()  # end() was called


class _ThreadRelay(_Relay):
    """A helper thread reads the upstream into a bounded queue; another watches
    the client socket. The upstream socket is shut down to wake a reader blocked
    on it when the stream closes."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._queue: queue.Queue[object] = _BatchQueue(_QUEUE_SIZE)
        self._stop_event = threading.Event()
        self._client_gone = threading.Event()
        self._ended = threading.Event()  # the upstream sent its end marker
        self._threads: list[threading.Thread] = []
        self._held: object = None  # taken from the queue, for the next call

    def _begin(self) -> None:
        self._spawn(self._read)
        if self._client_socket is not None:
            self._spawn(self._watch_client)

    def _spawn(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _next_events(self, deadline: float | None) -> list[Event] | object:
        if self._client_gone.is_set():
            raise ClientDisconnected
        if self._ending is not None:  # even with batches still queued
            raise self._ending
        item, self._held = self._held, None
        if item is None:
            try:
                item = self._queue.get(timeout=_left(deadline))
            except queue.Empty:
                return None
        if item is _GONE:
            raise ClientDisconnected
        if item is _ENDING:
            raise self._ending  # type: ignore[misc]
        if isinstance(item, BaseException):
            raise item
        if item is _END:
            return _END
        assert isinstance(item, list)
        # Take whatever else the reader has queued too, without waiting: under
        # load, one write then carries many events instead of one each.
        while self._merging:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if not isinstance(more, list):
                self._held = more  # the end, or an error: next call
                break
            item.extend(more)
        return item

    def _read(self) -> None:
        try:
            if self._opener is not None and not self._open():
                return
            chunks: Any = self._chunks
            reads = iter(
                chunks.iter_bytes() if hasattr(chunks, "iter_bytes") else chunks
            )
            for events in _decode(reads, self._secrets):
                if self._stop_event.is_set() or (events and not self._put(events)):
                    return
            self._put(_END)
            self._ended.set()
            # What follows [DONE] is normally just the end of the HTTP body: read to
            # it, the response returns its connection to the pool for the next
            # request; closed before it, the connection is thrown away.
            for _ in itertools.islice(reads, _DRAIN_READS):
                pass
        except Exception as exc:
            if not self._stop_event.is_set():
                self._put(exc)
        finally:
            # Close the upstream response even when the client left mid-stream:
            # this is what stops the model generating (and billing).
            _close(self._chunks)

    def _open(self) -> bool:
        """Send the upstream request; False if the stream was closed meanwhile.

        Nothing can interrupt a request waiting for its answer: what it opens after
        the stream was closed is closed by the caller's ``finally``.
        """
        assert self._opener is not None
        self._chunks = open_upstream(self._opener)
        self._secrets = _secrets_of(self._chunks)
        return not self._stop_event.is_set()

    def _put(self, item: object) -> bool:
        while not self._stop_event.is_set():
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
        while not self._stop_event.is_set():
            if not poller.poll(500):
                continue
            try:
                peeked = _peek(client)
            except BlockingIOError:
                continue
            except OSError:
                peeked = b""
            # End of file: the client is gone. Any other byte may be its next
            # request (not ours to read), or a TLS close_notify before its FIN.
            if not peeked or self._client_closed(client):
                self._client_left()
            return

    def _client_closed(self, client: socket.socket) -> bool:
        """Whether the client, which sent bytes, closes its end before the stream does.

        The unread bytes keep the socket readable, so the watch goes on through the
        TCP state (Linux), twice a second; elsewhere the next write will tell.
        """
        while (state := _tcp_state(client)) == _TCP_ESTABLISHED:
            if self._stop_event.wait(_CLIENT_CHECK_SECONDS):
                return False
        return state is not None

    def _client_left(self) -> None:
        self._client_gone.set()
        self._stop_event.set()
        if not self._ended.is_set():  # else the connection may be pooled
            _shutdown(self._chunks)
        self._signal(_GONE)

    def _wake(self) -> None:
        self._stop_event.set()  # the reader stops, closing the upstream response
        self._signal(_ENDING)

    def _signal(self, item: object) -> None:
        try:
            self._queue.put_nowait(item)  # wakes a writer waiting for data
        except queue.Full:
            pass  # the writer is not waiting: it sees the flag next

    def _stop(self) -> None:
        self._stop_event.set()
        if not self._started:
            _close(self._chunks)  # opened by the view (if not an opener), never read
            return
        if not self._threads:
            return  # closed already
        reader = self._threads[0]
        if self._ended.is_set():  # a moment to read to the end of the body
            reader.join(_DRAIN_SECONDS)
        if reader.is_alive():  # blocked on the upstream: wake it
            _shutdown(self._chunks)
        for thread in self._threads:
            thread.join(_HELPER_JOIN_SECONDS)
        self._threads.clear()


class _BatchQueue(queue.Queue[object]):
    """The thread relay's queue: full at ``maxsize`` batches or ``_QUEUE_CHARS`` of
    text.

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


# --- Sockets and upstream responses ---------------------------------------------------


def _gevent_active() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("socket"))


def _pollable(chunks: object) -> Pollable | None:
    """The :class:`Pollable` of a raw upstream response, when its transport has one."""
    if not hasattr(chunks, "iter_bytes"):
        return None  # SDK objects: the SDK's own parser holds back events
    extensions = getattr(_http_response(chunks), "extensions", None)
    stream = extensions.get("network_stream") if isinstance(extensions, dict) else None
    get_extra_info = getattr(stream, "get_extra_info", None)
    pollable: Pollable | None = get_extra_info("pollable") if get_extra_info else None
    return pollable


def client_has_left(client: socket.socket) -> bool:
    """Whether the client closed its connection (for a response that waits on
    something else than the upstream: a log, a queue). Linux sees it at once;
    elsewhere only a failed write tells."""
    try:
        peeked = _peek(client)
    except BlockingIOError:
        return False  # nothing to read: still connected
    except OSError:
        return True
    if not peeked:
        return True
    state = _tcp_state(client)  # it sent bytes: its next request, or a TLS close
    return state is not None and state != _TCP_ESTABLISHED


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


# --- Entry points ---------------------------------------------------------------------


def sse_frames(
    chunks: Iterable[Any] | Opener,
    *,
    keepalive_seconds: float = DEFAULT_KEEPALIVE_SECONDS,
    client_socket: socket.socket | None = None,
    tools: Tools | None = None,
    follow_up: FollowUp | None = None,
    **callbacks: Unpack[Callbacks],
) -> Body:
    """Stream ``chunks`` as SSE: text events, then the named ones (reasoning,
    refusals, tool calls and results, ``finish``), usage, then ``[DONE]``; a
    failure after the first byte as ``event: error``.

    Waits up to ``keepalive_seconds`` for the first output and raises
    :class:`StreamError` if the upstream fails before it, so the view can still
    answer with a status. ``chunks`` may be an :data:`Opener` instead (what
    :func:`open_upstream` takes): the request is then sent by the relay, within
    that wait, so that an upstream slow to send its headers still gets its first
    keep-alive one interval after the request. ``client_socket`` (the WSGI
    server's, e.g. ``environ["gunicorn.socket"]``) lets a client that leaves be
    noticed while the upstream is silent. Close the returned body (WSGI servers do)
    to end the stream.

    With ``tools`` (offered to the model in the request ``chunks`` sends) and
    ``follow_up``, the server runs the tools the model calls, streams their
    results, and asks again with ``follow_up(steps)``, the request of the next
    model call, in the same response (see :class:`Tools`, :class:`Step`).
    """
    return encoded_stream(
        chunks,
        SseEncoder(),
        keepalive_seconds=keepalive_seconds,
        client_socket=client_socket,
        tools=tools,
        follow_up=follow_up,
        **callbacks,
    )


def text_stream(
    chunks: Iterable[Any] | Opener,
    *,
    client_socket: socket.socket | None = None,
    tools: Tools | None = None,
    follow_up: FollowUp | None = None,
    **callbacks: Unpack[Callbacks],
) -> Body:
    """Stream ``chunks`` as raw UTF-8 text (refusals too); a failure raises
    :class:`UpstreamFailed`.

    Waits for the first output and raises :class:`StreamError` if the upstream fails
    before it. ``chunks`` may be an :data:`Opener`, as for :func:`sse_frames`: a
    client that leaves while the request waits for its answer then cancels it. A
    later failure's exception makes the WSGI server drop the connection without the
    body's final chunk, so a client sees an error rather than a silently shortened
    answer. ``tools`` run as for :func:`sse_frames`; only the text is written.
    """
    return encoded_stream(
        chunks,
        TextEncoder(),
        client_socket=client_socket,
        tools=tools,
        follow_up=follow_up,
        **callbacks,
    )


def encoded_stream(
    chunks: Iterable[Any] | Opener,
    encoder: Encoder,
    *,
    keepalive_seconds: float | None = None,
    client_socket: socket.socket | None = None,
    tools: Tools | None = None,
    follow_up: FollowUp | None = None,
    **callbacks: Unpack[Callbacks],
) -> Body:
    """Stream ``chunks`` in the wire protocol of ``encoder``: the relay under
    :func:`sse_frames` and :func:`text_stream`, for a protocol of your own.

    ``keepalive_seconds`` applies when the encoder has a keep-alive; the rest is as
    for :func:`sse_frames`.
    """
    if tools and follow_up is not None:
        chunks = _ToolSteps(chunks, tools, follow_up)
    relay_class = _GreenRelay if _gevent_active() else _ThreadRelay
    relay = relay_class(
        chunks, encoder, keepalive_seconds, client_socket, _Hooks(**callbacks)
    )
    relay.start(first_output_within=relay.keepalive_seconds)
    return _ClosingIterable(relay)


class _ClosingIterable:
    """The WSGI body: ``close()`` ends the relay even if iteration never started.

    Werkzeug and Django both call ``close()`` on the body when the response ends,
    including when the client disconnected, so cleanup rides on it.
    """

    def __init__(self, relay: _Relay) -> None:
        self._relay = relay
        self._body = iter(relay)

    def __iter__(self) -> Iterator[bytes]:
        return self._body

    def end(self, error: StreamError) -> None:
        """End the stream now with ``error``, as :func:`end_open_streams` does."""
        self._relay.end(error)

    def close(self) -> None:
        try:
            self._body.close()  # type: ignore[attr-defined]
        finally:
            self._relay.close()
