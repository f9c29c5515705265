"""Turn query strings and JSON bodies into prompts and messages, or a 400/415.

Both apps validate here, from the raw WSGI environ rather than each framework's
parsed request, so that the same request gets the same answer, bad or good.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

from shared.streaming import StreamError, body_too_large

ROLES = frozenset({"system", "developer", "user", "assistant"})
_SURROGATE = re.compile("[\ud800-\udfff]")

Messages = list[dict[str, str]]


def prompt_from_query(query_string: str, max_chars: int) -> str:
    """The ``?prompt=`` of a GET route, from the request's raw ``QUERY_STRING``.

    A repeated ``prompt`` is refused: Werkzeug would take the first, Django the
    last, and either may not be the one the client meant.
    """
    prompts = [value for name, value in query_fields(query_string) if name == "prompt"]
    if len(prompts) > 1:
        raise StreamError(400, f"Give one 'prompt', got {len(prompts)}.")
    return _checked_prompt(prompts[0] if prompts else None, "prompt", max_chars)


def query_fields(query_string: str) -> list[tuple[str, str]]:
    """The ``(name, value)`` pairs of a WSGI ``QUERY_STRING``, in order.

    Bytes that are not UTF-8 (``%FF``) become U+FFFD, as Django and a browser's
    ``URLSearchParams`` make them; Werkzeug would keep the text ``%FF``. WSGI
    passes the query's bytes as Latin-1 characters.
    """
    fields = []
    for pair in query_string.encode("latin-1").split(b"&"):
        if pair:
            name, _, value = pair.partition(b"=")
            fields.append((_unquote(name), _unquote(value)))
    return fields


def _unquote(part: bytes) -> str:
    return unquote_to_bytes(part.replace(b"+", b" ")).decode("utf-8", "replace")


def request_body(environ: Mapping[str, Any], limit: int) -> bytes:
    """The body of a WSGI request, however it was framed; 413 past ``limit``.

    A chunked body has no ``Content-Length``. gunicorn and Werkzeug's server
    decode it and set ``wsgi.input_terminated``: the input is then read to its end
    (Django alone would read nothing). A server that can't decode it
    (``manage.py runserver``) gets 411. A body that ends before its
    ``Content-Length`` is a 400, not a shorter body.
    """
    stream = environ["wsgi.input"]
    if environ.get("wsgi.input_terminated"):
        return read_body(stream.read, limit)
    length = _content_length(environ)
    if length is None:
        if environ.get("HTTP_TRANSFER_ENCODING"):
            raise StreamError(
                411,
                "Send the body with a Content-Length: this server can't read a "
                "chunked body.",
                "length_required",
            )
        return b""
    if length > limit:
        raise body_too_large(limit)
    body = _read_exactly(stream.read, length)
    if len(body) < length:
        raise StreamError(
            400, f"The body ended before its Content-Length of {length} bytes."
        )
    return body


def _content_length(environ: Mapping[str, Any]) -> int | None:
    length = str(environ.get("CONTENT_LENGTH") or "").strip()
    # isascii: "²".isdigit() is true too (a server may pass such a header on).
    return int(length) if length.isascii() and length.isdigit() else None


def _read_exactly(read: Callable[[int], bytes], length: int) -> bytes:
    """``length`` bytes, or fewer if the input ends first; never one more.

    Under ``flask run`` the input is the connection itself: reading past the body
    would wait for bytes that never come.
    """
    parts: list[bytes] = []
    size = 0
    while size < length:
        part = read(length - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


def read_body(read: Callable[[int], bytes], limit: int) -> bytes:
    """Read a request body of at most ``limit`` bytes, or refuse it with 413.

    A ``Content-Length`` over the limit is refused before this (``shared.guard``);
    a chunked body has none, so at most one byte past the limit is read to tell.
    """
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        part = read(limit + 1 - size)  # a stream may return less than asked
        if not part:
            break
        parts.append(part)
        size += len(part)
    if size > limit:
        raise body_too_large(limit)
    return b"".join(parts)


def json_body(body: bytes, content_type: str | None) -> dict[str, Any]:
    """Parse a POST body, which must be a JSON object sent as ``application/json``."""
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


def messages_from_json(
    data: Mapping[str, Any], prompt_key: str, max_chars: int
) -> Messages:
    """``{prompt_key: str}`` as one user message, or ``{"messages": [...]}``."""
    if "messages" in data:
        return _checked_messages(data["messages"], max_chars)
    prompt = _checked_prompt(data.get(prompt_key), prompt_key, max_chars)
    return [{"role": "user", "content": prompt}]


def _checked_prompt(value: object, name: str, max_chars: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise StreamError(400, f"Give a non-empty {name!r} string.")
    if len(value) > max_chars:
        raise StreamError(
            400, f"The {name!r} is {len(value)} characters; the limit is {max_chars}."
        )
    return _well_formed(value)


def _checked_messages(value: object, max_chars: int) -> Messages:
    if not isinstance(value, list) or not value:
        raise StreamError(400, "'messages' must be a non-empty list.")
    messages: Messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise StreamError(400, f"messages[{index}] must be an object.")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or role not in ROLES:
            raise StreamError(
                400,
                f"messages[{index}].role must be one of {sorted(ROLES)}, "
                f"got {_short(role)}.",
            )
        if not isinstance(content, str):
            raise StreamError(400, f"messages[{index}].content must be a string.")
        messages.append({"role": role, "content": _well_formed(content)})
    total = sum(len(m["content"]) for m in messages)
    if total > max_chars:
        raise StreamError(
            400, f"The messages hold {total} characters; the limit is {max_chars}."
        )
    if not any(m["content"].strip() for m in messages):
        raise StreamError(400, "Every message is empty: give some content.")
    return messages


def _well_formed(text: str) -> str:
    """``text`` with each lone surrogate as U+FFFD, so that it can be sent as UTF-8.

    JSON can carry half a surrogate pair (``"\\ud83d"``, e.g. text cut in the middle
    of an emoji) and ``json.loads`` keeps it; the upstream request could not encode
    it. A browser's ``fetch`` makes the same replacement. A query string never holds
    one: ``query_fields`` decodes an encoded surrogate to U+FFFD already.
    """
    return _SURROGATE.sub("\ufffd", text)


def _short(value: object) -> str:
    """A bad value quoted in an error, cut short: the body may be large."""
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"
