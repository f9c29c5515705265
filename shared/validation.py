"""Turn query strings and JSON bodies into prompts and messages, or a 400/415.

Both apps validate here, from the raw WSGI environ rather than each framework's
parsed request, so that the same request gets the same answer, bad or good.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypedDict, final
from urllib.parse import unquote_to_bytes

from shared.streaming import StreamError, body_too_large

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
# Ids are the model's or the client's own; the bound keeps one from filling a body.
MAX_ID_CHARS = 256
# OpenAI's rule for a function's name: the upstream refuses any other.
FUNCTION_NAME = re.compile("[a-zA-Z0-9_-]{1,64}")
_SURROGATE = re.compile("[\ud800-\udfff]")


# The messages this module returns, one shape per kind. Each is ``final`` (it has
# no other keys), so that ``"tool_calls" in message`` tells the kinds apart.


class FunctionCall(TypedDict):
    name: str
    arguments: str


class ToolCall(TypedDict):
    id: str
    type: Literal["function"]
    function: FunctionCall


@final
class TextMessage(TypedDict):
    role: str
    content: str


@final
class ToolCallsMessage(TypedDict):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ToolCall]


@final
class ToolMessage(TypedDict):
    role: Literal["tool"]
    tool_call_id: str
    content: str


Message = TextMessage | ToolCallsMessage | ToolMessage
Messages = list[Message]


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
    """Each message checked in order, then the conversation as a whole.

    Keys a message's shape does not name are left out, as they always were; the
    tool keys of another role are refused instead, since leaving them out would
    change what the conversation says.
    """
    if not isinstance(value, list) or not value:
        raise StreamError(400, "'messages' must be a non-empty list.")
    calls = _CallLedger()
    messages = [_checked_message(index, m, calls) for index, m in enumerate(value)]
    texts = [text for message in messages for text in _texts(message)]
    total = sum(len(text) for text in texts)
    if total > max_chars:
        raise StreamError(
            400, f"The messages hold {total} characters; the limit is {max_chars}."
        )
    if not any(text.strip() for text in texts):
        raise StreamError(400, "Every message is empty: give some content.")
    return messages


class _CallLedger:
    """The tool calls made so far in a conversation, and which message answered each.

    A ``tool`` message answers a call made before it, once: an answer to no call, or
    a second answer, is a conversation the upstream can't follow.
    """

    def __init__(self) -> None:
        self._answered_by: dict[str, int | None] = {}

    def made(self, where: str, call_id: str) -> None:
        if call_id in self._answered_by:
            raise StreamError(
                400,
                f"{where}.id {_short(call_id)} is the id of an earlier call: give each "
                "call its own id.",
            )
        self._answered_by[call_id] = None

    def answered(self, index: int, call_id: str) -> None:
        if call_id not in self._answered_by:
            raise StreamError(
                400,
                f"messages[{index}].tool_call_id must be the id of a call in an "
                f"earlier assistant message's tool_calls, got {_short(call_id)}.",
            )
        earlier = self._answered_by[call_id]
        if earlier is not None:
            raise StreamError(
                400,
                f"messages[{index}].tool_call_id {_short(call_id)} was already "
                f"answered by messages[{earlier}]: answer each call once.",
            )
        self._answered_by[call_id] = index


def _checked_message(index: int, message: object, calls: _CallLedger) -> Message:
    if not isinstance(message, dict):
        raise StreamError(400, f"messages[{index}] must be an object.")
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise StreamError(
            400,
            f"messages[{index}].role must be one of {sorted(ROLES)}, "
            f"got {_short(role)}.",
        )
    _refuse_tool_keys_of_other_roles(index, role, message)
    if role == "tool":
        return _checked_tool_message(index, message, calls)
    if message.get("tool_calls") is not None:
        return _checked_tool_calls_message(index, message, calls)
    content = message.get("content")
    if not isinstance(content, str):
        raise StreamError(
            400,
            f"messages[{index}].content must be a string, got {_short(content)}.",
        )
    return {"role": role, "content": _well_formed(content)}


def _refuse_tool_keys_of_other_roles(
    index: int, role: str, message: Mapping[str, object]
) -> None:
    for key, owner in (("tool_calls", "assistant"), ("tool_call_id", "tool")):
        if role != owner and message.get(key) is not None:
            raise StreamError(
                400,
                f"messages[{index}].{key} belongs only in a message of role "
                f"{owner!r}, not {role!r}.",
            )


def _checked_tool_message(
    index: int, message: Mapping[str, object], calls: _CallLedger
) -> ToolMessage:
    call_id = _checked_id(
        f"messages[{index}].tool_call_id", message.get("tool_call_id")
    )
    calls.answered(index, call_id)
    content = message.get("content")
    if not isinstance(content, str):
        raise StreamError(
            400,
            f"messages[{index}].content must be a string (the tool's output), "
            f"got {_short(content)}.",
        )
    return {"role": "tool", "tool_call_id": call_id, "content": _well_formed(content)}


def _checked_tool_calls_message(
    index: int, message: Mapping[str, object], calls: _CallLedger
) -> ToolCallsMessage:
    tool_calls, content = message["tool_calls"], message.get("content")
    if not isinstance(tool_calls, list) or not tool_calls:
        raise StreamError(
            400,
            f"messages[{index}].tool_calls must be a non-empty list of calls, "
            f"got {_short(tool_calls)}.",
        )
    if content is not None and not isinstance(content, str):
        raise StreamError(
            400,
            f"messages[{index}].content must be a string or null, "
            f"got {_short(content)}.",
        )
    return {
        "role": "assistant",
        "content": None if content is None else _well_formed(content),
        "tool_calls": [
            _checked_tool_call(f"messages[{index}].tool_calls[{number}]", call, calls)
            for number, call in enumerate(tool_calls)
        ],
    }


def _checked_tool_call(where: str, call: object, calls: _CallLedger) -> ToolCall:
    if not isinstance(call, dict):
        raise StreamError(400, f"{where} must be an object, got {_short(call)}.")
    call_id = _checked_id(f"{where}.id", call.get("id"))
    if call.get("type") != "function":
        raise StreamError(
            400, f"{where}.type must be 'function', got {_short(call.get('type'))}."
        )
    function = _checked_function(f"{where}.function", call.get("function"))
    calls.made(where, call_id)
    return {"id": call_id, "type": "function", "function": function}


def _checked_function(where: str, function: object) -> FunctionCall:
    if not isinstance(function, dict):
        raise StreamError(
            400,
            f"{where} must be an object with 'name' and 'arguments', "
            f"got {_short(function)}.",
        )
    name, arguments = function.get("name"), function.get("arguments")
    if not isinstance(name, str) or not FUNCTION_NAME.fullmatch(name):
        raise StreamError(
            400,
            f"{where}.name must match {FUNCTION_NAME.pattern} (letters, digits, "
            f"'_' and '-'), got {_short(name)}.",
        )
    if not isinstance(arguments, str):
        raise StreamError(
            400,
            f"{where}.arguments must be a string (the arguments' JSON as text), "
            f"got {_short(arguments)}.",
        )
    return {"name": name, "arguments": _well_formed(arguments)}


def _checked_id(where: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
        raise StreamError(
            400,
            f"{where} must be a non-empty string of at most {MAX_ID_CHARS} "
            f"characters, got {_short(value)}.",
        )
    return _well_formed(value)


def _texts(message: Message) -> list[str]:
    """What counts toward ``STREAM_MAX_PROMPT_CHARS``: contents, tool outputs, and
    the arguments of tool calls."""
    content = message["content"]
    texts = [] if content is None else [content]
    if "tool_calls" in message:
        texts.extend(call["function"]["arguments"] for call in message["tool_calls"])
    return texts


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
