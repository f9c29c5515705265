"""CONTRACT.md's "The `useChat` route" (``POST /api/chat``, the Vercel AI SDK's UI
message stream), over real HTTP against the four servers (flask run, runserver,
gunicorn+gevent for each app), then the encoder and the request conversion in
process for corner cases not worth four servers.

What a client from AI SDK 5.0 on needs, checked on every body: each part one
``data:`` line of compact JSON and a blank line, ``[DONE]`` last; only the fields its
strict schemas allow (``PART_FIELDS``); and the order its message builder relies on
(a delta after its part's start and before its end, a tool's output after its input,
each step closed). The fake upstream records what the server asked the model, so the
conversion of ``useChat``'s messages is checked where it matters.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
from typing import Any

import pytest

import shared.streaming as core
from shared.ui_message_stream import UiMessageEncoder, messages_from_ui
from tests.client import Response, error_of, parse_sse, post_json
from tests.conftest import (
    ACCESS_TOKEN,
    CORS_ORIGIN,
    FAKE_API_KEY,
    KEEPALIVE_SECONDS,
    MAX_BODY_BYTES,
    MAX_PROMPT_CHARS,
    ServerPool,
)
from tests.fake_upstream import (
    Done,
    ErrorEvent,
    FakeUpstream,
    Finish,
    Forever,
    FunctionCall,
    Raw,
    Reasoning,
    Refusal,
    Script,
    Sleep,
    Step,
    Text,
    ToolCallFragment,
    Usage,
    _Encoder,
)
from tests.servers import (
    ALL_KINDS,
    DJANGO_GUNICORN,
    FLASK_DEV,
    FLASK_GUNICORN,
    Server,
    ServerKind,
)
from tests.test_lifecycle import CANCEL_BOUND_SECONDS, close_and_time

ROUTE = "/api/chat"
Part = dict[str, Any]
# Every field a part may carry: those of AI SDK 5.0's strict chunk schemas that this
# server sends (a later client added optional ones, e.g. ``finishReason`` on
# ``finish``; a 5.0 client refuses the whole stream over one unknown field).
PART_FIELDS = {
    "start": {"type", "messageId"},
    "start-step": {"type"},
    "reasoning-start": {"type", "id"},
    "reasoning-delta": {"type", "id", "delta"},
    "reasoning-end": {"type", "id"},
    "text-start": {"type", "id"},
    "text-delta": {"type", "id", "delta"},
    "text-end": {"type", "id"},
    "tool-input-start": {"type", "toolCallId", "toolName"},
    "tool-input-delta": {"type", "toolCallId", "inputTextDelta"},
    "tool-input-available": {"type", "toolCallId", "toolName", "input"},
    "tool-output-available": {"type", "toolCallId", "output"},
    "tool-output-error": {"type", "toolCallId", "errorText"},
    "finish-step": {"type"},
    "finish": {"type", "messageMetadata"},  # metadata: what is known, if anything
    "error": {"type", "errorText"},
    "abort": {"type"},
}
STRING_FIELDS = {
    "messageId",
    "id",
    "delta",
    "toolCallId",
    "toolName",
    "inputTextDelta",
    "errorText",
}
HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "x-vercel-ai-ui-message-stream": "v1",
}
KEEPALIVE = b": keep-alive"
DONE = b"data: [DONE]"


@pytest.fixture(params=[pytest.param(kind, id=kind.name) for kind in ALL_KINDS])
def kind(request: pytest.FixtureRequest) -> ServerKind:
    kind: ServerKind = request.param
    return kind


@pytest.fixture
def plain(pool: ServerPool, kind: ServerKind) -> Server:
    """A server with no tools, over Chat Completions."""
    return pool.get(kind, "plain")


@pytest.fixture
def tools(pool: ServerPool, kind: ServerKind) -> Server:
    """A server that runs tests/tools.py's functions, over Chat Completions."""
    return pool.get(kind, "tools")


# --- Requests as useChat sends them ---------------------------------------------------


def text(value: str, **extra: Any) -> Part:
    return {"type": "text", "text": value, **extra}


def message(role: str, *parts: Part, id: str | None = None) -> dict[str, Any]:
    """A UIMessage; the ids say who it is, as the client's generated ids would."""
    return {"id": id or f"{role}-{len(parts)}", "role": role, "parts": list(parts)}


def chat_request(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """The body of ``DefaultChatTransport``'s request."""
    return {"id": "chat-1", "messages": list(messages), **fields}


def asking(script: Script) -> dict[str, Any]:
    """A one-message conversation that the fake upstream answers with ``script``."""
    return chat_request(
        message("user", text(f"go {script.marker}")), trigger="submit-message"
    )


def post_chat(server: Server, body: dict[str, Any], **kw: Any) -> Response:
    return post_json(server, ROUTE, body, **kw)


def answer(server: Server, script: Script, **kw: Any) -> tuple[bytes, list[Part]]:
    """The body of a whole answer (the contract's headers checked) and its parts."""
    status, headers, body = post_chat(server, asking(script), **kw)
    assert status == 200, body
    for name, value in HEADERS.items():
        assert headers[name] == value, name
    assert "Content-Length" not in headers
    assert "Content-Encoding" not in headers
    assert FAKE_API_KEY.encode() not in body
    return body, parts_of(body)


def received(script: Script, index: int = 0) -> list[dict[str, Any]]:
    """The chat messages the fake upstream got in request ``index``, with each tool
    call's arguments parsed (their spacing is JSON's business, not the contract's)."""
    messages: list[dict[str, Any]] = script.requests[index].json["messages"]
    for sent in messages:
        for call in sent.get("tool_calls") or ():
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    return messages


# --- The UI message stream, read byte by byte ------------------------------------


def parts_of(body: bytes) -> list[Part]:
    """The parts of a UI message stream, each frame checked: one ``data:`` line of
    compact JSON with non-ASCII as UTF-8, a blank line after it, only the fields a
    5.0 client accepts, ``[DONE]`` once and last; keep-alive comments aside. A
    conforming SSE parser (httpx-sse) must read the same data."""
    assert body.endswith(b"\n\n"), body[-200:]
    frames = [f for f in body[:-2].split(b"\n\n") if f != KEEPALIVE]
    assert frames[-1] == DONE and DONE not in frames[:-1], body[-200:]
    parts = []
    for frame in frames[:-1]:
        assert frame.startswith(b"data: ") and b"\n" not in frame, frame
        data = frame.removeprefix(b"data: ").decode()
        part = json.loads(data)
        assert data == json.dumps(part, separators=(",", ":"), ensure_ascii=False)
        check_fields(part)
        parts.append(part)
    *datas, done = [event.data for event in parse_sse(body)]
    assert [json.loads(data) for data in datas] == parts and done == "[DONE]"
    return parts


def check_fields(part: Part) -> None:
    """Exactly the fields of the part's schema, strings where strings are due."""
    assert part["type"] in PART_FIELDS, part
    fields = PART_FIELDS[part["type"]]
    if part["type"] == "finish":
        assert set(part) <= fields, part
    else:
        assert set(part) == fields, part
    for name in STRING_FIELDS & set(part):
        assert isinstance(part[name], str), part
    if part["type"] == "start":
        assert part["messageId"].startswith("msg-"), part
    if part["type"] == "finish":
        metadata = part.get("messageMetadata", {})
        assert set(metadata) <= {"finishReason", "usage"}, part
        assert isinstance(metadata.get("finishReason", ""), str), part
        usage = metadata.get("usage", {})
        assert set(usage) <= {"prompt_tokens", "completion_tokens", "total_tokens"}


def check_order(parts: list[Part]) -> None:
    """The order an AI SDK 5 client's message builder relies on (it throws on a
    delta of a part it has not seen start, or an output of a call it has no input
    of), and the brief's.

    ``start`` first (an ``error`` alone if the stream failed before any output);
    then steps, each ``start-step`` ... ``finish-step``; then ``finish`` (or an
    ``error`` last). In a step: a text or reasoning part's deltas between its
    start and its end, one such part open at a time and ended before a tool call
    starts, ids unique in the message; a tool call's start, deltas, input, then at
    most one output, and no call left without its input when the step ends.
    """
    assert parts[0]["type"] == "start" or kinds(parts) == ["error"], parts
    in_step, open_part, seen = False, None, set()
    calls: dict[str, str] = {}  # toolCallId: "start", "input" or "output"
    for index, part in enumerate(parts[1:], 1):
        kind, where = part["type"], (index, part)
        if kind == "start-step":
            assert not in_step, where
            in_step = True
        elif kind == "finish-step":
            assert in_step and open_part is None, where
            assert "start" not in calls.values(), where
            in_step = False
        elif kind in ("finish", "error"):
            assert index == len(parts) - 1, where
            assert kind == "error" or not in_step, where
        elif kind.startswith(("text-", "reasoning-")):
            assert in_step, where
            prefix, _, phase = kind.rpartition("-")
            if phase == "start":
                assert open_part is None and part["id"] not in seen, where
                assert re.fullmatch(rf"{prefix}-\d+", part["id"]), where
                open_part = part["id"]
                seen.add(open_part)
            else:
                assert part["id"] == open_part, where
            if phase == "delta":
                assert part["delta"], where
            if phase == "end":
                open_part = None
        else:
            assert in_step and kind.startswith("tool-"), where
            state = calls.get(part["toolCallId"])
            expected = {
                "tool-input-start": None,
                "tool-input-delta": "start",
                "tool-input-available": "start",
                "tool-output-available": "input",
                "tool-output-error": "input",
            }[kind]
            assert state == expected, where
            assert kind != "tool-input-start" or open_part is None, where
            calls[part["toolCallId"]] = {
                "tool-input-start": "start",
                "tool-input-delta": "start",
                "tool-input-available": "input",
            }.get(kind, "output")


def kinds(parts: list[Part]) -> list[str]:
    return [part["type"] for part in parts]


def said(parts: list[Part]) -> list[tuple[str, str]]:
    """Each text and reasoning part of the answer, its deltas joined, in order."""
    out: list[tuple[str, str]] = []
    for part in parts:
        kind = part["type"]
        if kind in ("text-start", "reasoning-start"):
            out.append((kind.removesuffix("-start"), ""))
        elif kind in ("text-delta", "reasoning-delta"):
            out[-1] = (out[-1][0], out[-1][1] + part["delta"])
    return out


def of_call(parts: list[Part], call_id: str) -> list[Part]:
    return [p for p in parts if p.get("toolCallId") == call_id]


def finish(reason: str, usage: tuple[int, int] | None = None) -> Part:
    metadata: dict[str, Any] = {"finishReason": reason}
    if usage is not None:
        prompt, completion = usage
        metadata["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
    return {"type": "finish", "messageMetadata": metadata}


# --- Request shapes: what the model is asked ----------------------------------------


def test_useChats_messages_become_the_chat_messages_the_upstream_receives(
    plain: Server, upstream: FakeUpstream
) -> None:
    """Text parts joined with a blank line; reasoning, step-start, source-* and
    data-* parts ignored; tool parts in ``output-available`` / ``output-error`` as
    the assistant's ``tool_calls`` and ``tool`` messages, in order, other states
    left out; fields the contract doesn't name, in the body or a message, ignored."""
    script = upstream.script(Text("ok"), Finish("stop"), Done())
    ignored = [
        {"type": "step-start"},
        {"type": "reasoning", "text": "hidden", "providerMetadata": {"x": {}}},
        {"type": "source-url", "sourceId": "s1", "url": "https://example.com"},
        {
            "type": "source-document",
            "sourceId": "s2",
            "mediaType": "text/plain",
            "title": "Doc",
        },
        {"type": "data-weather", "id": "d1", "data": {"city": "Paris"}},
    ]
    history = [
        message("system", text("Be brief."), id="s"),
        message(
            "user",
            text("Add 2 and 3,", state="done"),
            *ignored,
            text("then the weather."),
            id="u1",
        ),
        message(
            "assistant",
            {"type": "step-start"},
            {"type": "reasoning", "text": "adding", "state": "done"},
            text("Let me add."),
            {
                "type": "tool-add",
                "toolCallId": "call_1",
                "state": "output-available",
                "input": {"a": 2, "b": 3},
                "output": "5",
            },
            {"type": "step-start"},
            text("Now the weather."),
            {
                "type": "dynamic-tool",
                "toolName": "weather",
                "toolCallId": "call_2",
                "state": "output-error",
                "input": {"city": "Paris"},
                "errorText": "no network",
            },
            {
                "type": "tool-search",
                "toolCallId": "call_3",
                "state": "input-available",
                "input": {"q": "x"},
            },
            {
                "type": "tool-search",
                "toolCallId": "call_4",
                "state": "input-streaming",
                "input": {"q": ""},
            },
            {
                "type": "tool-slow",
                "toolCallId": "call_5",
                "state": "output-available",
                "input": {"seconds": 1},
                "output": {"slept": 1},
            },
            text("Done."),
            id="a1",
        )
        | {"metadata": {"createdAt": 1}},
        message("user", text(f"Thanks {script.marker}"), id="u2"),
    ]
    body = chat_request(
        *history,
        trigger="submit-message",
        model="not-this-model",
        temperature=2,
        extra={"nested": [1, 2]},
    )
    status, _, reply = post_chat(plain, body)
    assert status == 200, reply
    assert said(parts_of(reply)) == [("text", "ok")]
    [request] = script.requests
    assert request.json["model"] == "gpt-4o-mini"
    assert "temperature" not in request.json
    messages = received(script)
    assert json.loads(messages[6].pop("content")) == {"slept": 1}  # JSON text
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Add 2 and 3,\n\nthen the weather."},
        {
            "role": "assistant",
            "content": "Let me add.",
            "tool_calls": [call("call_1", "add", {"a": 2, "b": 3})],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
        {
            "role": "assistant",
            "content": "Now the weather.",
            "tool_calls": [
                call("call_2", "weather", {"city": "Paris"}),
                call("call_5", "slow", {"seconds": 1}),
            ],
        },
        {"role": "tool", "tool_call_id": "call_2", "content": "Error: no network"},
        {"role": "tool", "tool_call_id": "call_5"},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": f"Thanks {script.marker}"},
    ]


def call(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    """A tool call as ``received`` shows it (arguments parsed)."""
    function = {"name": name, "arguments": arguments}
    return {"id": call_id, "type": "function", "function": function}


def test_regenerate_drops_the_message_and_all_after_it_when_present(
    plain: Server, upstream: FakeUpstream
) -> None:
    """Otherwise (an id not in the messages, a ``submit-message``, no ``trigger``)
    the messages are used as sent."""
    script = upstream.script(Text("again"), Finish("stop"), Done())
    history = [
        message("user", text(f"first {script.marker}"), id="u1"),
        message("assistant", text("answer one"), id="a1"),
        message("user", text("second"), id="u2"),
        message("assistant", text("answer two"), id="a2"),
    ]
    as_sent = [
        {"role": "user", "content": f"first {script.marker}"},
        {"role": "assistant", "content": "answer one"},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "answer two"},
    ]
    cases = [
        ({"trigger": "regenerate-message", "messageId": "a1"}, as_sent[:1]),
        ({"trigger": "regenerate-message", "messageId": "a2"}, as_sent[:3]),
        ({"trigger": "regenerate-message", "messageId": "gone"}, as_sent),
        ({"trigger": "submit-message", "messageId": "a1"}, as_sent),
        ({}, as_sent),
    ]
    for index, (fields, expected) in enumerate(cases):
        status, _, reply = post_chat(plain, chat_request(*history, **fields))
        assert status == 200, (fields, reply)
        assert said(parts_of(reply)) == [("text", "again")]
        assert received(script, index) == expected, fields


# --- Bad requests -------------------------------------------------------------------


def user(*parts: Part) -> dict[str, Any]:
    return message("user", *parts)


BAD_REQUESTS: list[tuple[str, bytes | dict[str, Any], str | None]] = [
    # (what, body, a word the error message must name)
    ("bad JSON", b'{"messages": [', None),
    ("not an object", b"[1, 2]", None),
    ("no messages", {"id": "c", "trigger": "submit-message"}, "messages"),
    ("messages not a list", {"id": "c", "messages": "hi"}, "messages"),
    ("empty messages", chat_request(), "messages"),
    ("message not an object", chat_request("hi"), None),  # type: ignore[arg-type]
    ("unknown role", chat_request(message("wizard", text("x"))), "wizard"),
    ("parts not a list", chat_request({"id": "m", "role": "user", "parts": "x"}), None),
    ("text not a string", chat_request(user({"type": "text", "text": 5})), None),
    ("unknown part type", chat_request(user(text("see"), {"type": "file"})), "file"),
    (
        "unknown part type, named",
        chat_request(user({"type": "image", "url": "x"})),
        "image",
    ),
    ("trigger unknown", chat_request(user(text("x")), trigger="resend"), "resend"),
    (
        "messageId not a string",
        chat_request(user(text("x")), trigger="regenerate-message", messageId=5),
        None,
    ),
    (
        "too long",
        chat_request(user(text("x" * (MAX_PROMPT_CHARS // 2)), text("y" * 1001))),
        None,
    ),
]


def test_bad_requests_get_a_400_naming_the_problem_without_an_upstream_call(
    plain: Server, upstream: FakeUpstream
) -> None:
    before = len(upstream.requests)
    for what, body, named in BAD_REQUESTS:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        response = plain.request("POST", ROUTE, raw, headers)
        assert response[0] == 400, (what, response[2])
        error = error_of(response)
        assert error["type"] == "invalid_request_error", what
        assert named is None or named in error["message"], (what, error)
    assert len(upstream.requests) == before


def test_not_json_wrong_method_and_cross_site_are_refused_before_the_upstream(
    plain: Server, upstream: FakeUpstream
) -> None:
    before = len(upstream.requests)
    body = json.dumps(chat_request(user(text("hi")))).encode()
    response = plain.request("POST", ROUTE, body, {"Content-Type": "text/plain"})
    assert (response[0], error_of(response)["type"]) == (415, "unsupported_media_type")
    response = plain.request("GET", ROUTE)
    assert (response[0], error_of(response)["type"]) == (405, "method_not_allowed")
    assert response[1]["Allow"] == "POST, OPTIONS"
    cross_site = {
        "Content-Type": "application/json",
        "Sec-Fetch-Site": "cross-site",
        "Origin": "https://evil.example",
    }
    lookalike = {
        "Content-Type": "application/json",
        "Origin": "http://127.0.0.1.evil.example",
    }
    for headers in (cross_site, lookalike):
        response = plain.request("POST", ROUTE, body, headers)
        assert (response[0], error_of(response)["type"]) == (403, "cross_site_request")
    assert len(upstream.requests) == before


def test_a_listed_origin_gets_its_preflight_and_cors_headers(
    plain: Server, upstream: FakeUpstream
) -> None:
    """``STREAM_CORS_ORIGINS``: a page there may use this route, as the others."""
    preflight = plain.request(
        "OPTIONS",
        ROUTE,
        headers={
            "Origin": CORS_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
            "Sec-Fetch-Site": "cross-site",
        },
    )
    assert preflight[0] == 204
    assert preflight[1]["Access-Control-Allow-Origin"] == CORS_ORIGIN
    script = upstream.script(Text("ok"), Finish("stop"), Done())
    cross_site = {"Origin": CORS_ORIGIN, "Sec-Fetch-Site": "cross-site"}
    status, headers, body = post_chat(plain, asking(script), headers=cross_site)
    assert (status, headers["Access-Control-Allow-Origin"]) == (200, CORS_ORIGIN)
    assert said(parts_of(body)) == [("text", "ok")]


GUNICORN_KINDS = [
    pytest.param(FLASK_GUNICORN, id="flask-gunicorn"),
    pytest.param(DJANGO_GUNICORN, id="django-gunicorn"),
]


@pytest.mark.parametrize("kind", GUNICORN_KINDS)
def test_the_token_the_body_limit_and_the_rate_limit_hold_as_on_the_other_routes(
    pool: ServerPool, upstream: FakeUpstream, kind: ServerKind
) -> None:
    """On the servers of tests/test_access.py (no start of their own in the suite):
    a token (401 without it), a body limit (413), and 3 requests a minute per
    client, counted from an address of this test's own so that no other test's
    requests count."""
    script = upstream.script(Text("ok"), Finish("stop"), Done())
    guarded = pool.get(kind, "guarded")
    response = post_chat(guarded, asking(script))
    assert (response[0], error_of(response)["type"]) == (401, "unauthorized")
    bearer = {"Authorization": f"Bearer {ACCESS_TOKEN}"}
    response = post_chat(guarded, asking(script), headers=bearer)
    assert response[0] == 200 and said(parts_of(response[2])) == [("text", "ok")]
    padded = asking(script) | {"padding": " " * MAX_BODY_BYTES}
    response = post_chat(guarded, padded, headers=bearer)
    assert (response[0], error_of(response)["type"]) == (413, "payload_too_large")
    limited = pool.get(kind, "rate-limited")
    answers = [post_from(RATE_LIMITED_CLIENT, limited, asking(script)) for _ in "1234"]
    assert [status for status, _, _ in answers] == [200, 200, 200, 429]
    assert error_of(answers[-1])["type"] == "rate_limited"
    assert 1 <= int(answers[-1][1]["Retry-After"]) <= 60
    assert len(script.requests) == 1 + 3  # the refused one asked nothing


RATE_LIMITED_CLIENT = "127.0.0.73"  # a loopback address no other test sends from


def post_from(address: str, server: Server, body: dict[str, Any]) -> Response:
    """``post_chat`` from the client address ``address``."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", server.port, timeout=10, source_address=(address, 0)
    )
    try:
        headers = {"Content-Type": "application/json"}
        conn.request("POST", ROUTE, json.dumps(body).encode(), headers)
        with conn.getresponse() as response:
            return response.status, response.headers, response.read()
    finally:
        conn.close()


# --- The stream ---------------------------------------------------------------------


def test_an_answer_is_one_compact_json_part_per_line_in_the_contracts_order(
    plain: Server, upstream: FakeUpstream
) -> None:
    """Reasoning, then text (the reasoning part ended when the text begins), every
    delta as sent, non-ASCII as UTF-8; ``finish`` carries the finish reason and the
    usage in ``messageMetadata`` and nothing at its top."""
    deltas = ["Hello", ' wörld 🎉\n"quoted"\t', "data: [DONE]\n\n"]
    script = upstream.script(
        Reasoning("Let me think.\n"),
        Reasoning(" More."),
        *[Text(delta) for delta in deltas],
        Finish("stop"),
        Usage(5, 3),
        Done(),
    )
    body, parts = answer(plain, script, headers={"Accept-Encoding": "gzip"})
    assert b"w\xc3\xb6rld \xf0\x9f\x8e\x89" in body and b"\\u" not in body
    assert KEEPALIVE not in body
    check_order(parts)
    assert kinds(parts) == [
        "start",
        "start-step",
        "reasoning-start",
        "reasoning-delta",
        "reasoning-delta",
        "reasoning-end",
        "text-start",
        "text-delta",
        "text-delta",
        "text-delta",
        "text-end",
        "finish-step",
        "finish",
    ]
    assert [p["delta"] for p in parts if p["type"] == "text-delta"] == deltas
    assert said(parts) == [
        ("reasoning", "Let me think.\n More."),
        ("text", "".join(deltas)),
    ]
    assert parts[-1] == finish("stop", (5, 3))


def test_a_refusal_is_sent_as_text_and_usage_only_when_reported(
    plain: Server, upstream: FakeUpstream
) -> None:
    script = upstream.script(
        Refusal("I can't\nhelp"), Refusal(" with that."), Finish("stop"), Done()
    )
    _, parts = answer(plain, script)
    check_order(parts)
    assert said(parts) == [("text", "I can't\nhelp with that.")]
    assert parts[-1] == finish("stop")


def test_server_run_tools_stream_their_input_and_output_in_the_step(
    tools: Server, upstream: FakeUpstream
) -> None:
    """Each call: ``tool-input-start``, its argument fragments as
    ``tool-input-delta``, ``tool-input-available`` with the parsed arguments, then
    ``tool-output-available`` (a tool's result) or ``tool-output-error`` (a tool
    that raised; its message names no key), before the step's ``finish-step``; the
    next model call is the next step; ``finish`` says the last step's reason and
    the usage of both."""
    added = ("call_1", "add", '{"a": 2, "b": 3}')
    failing = ("call_2", "broken", '{"reason": "y"}')
    then = upstream.script(Text("It is 5."), Finish("stop"), Usage(30, 4), Done())
    script = upstream.script(
        Text("Let me add."),
        FunctionCall(*added),
        FunctionCall(*failing),
        Finish("tool_calls"),
        Usage(10, 6),
        Done(),
        then=then,
    )
    _, parts = answer(tools, script)
    check_order(parts)
    assert kinds(parts) == [
        "start",
        "start-step",
        "text-start",
        "text-delta",
        "text-end",
        "tool-input-start",
        "tool-input-delta",
        "tool-input-delta",
        "tool-input-start",
        "tool-input-delta",
        "tool-input-delta",
        "tool-input-available",
        "tool-input-available",
        "tool-output-available",
        "tool-output-error",
        "finish-step",
        "start-step",
        "text-start",
        "text-delta",
        "text-end",
        "finish-step",
        "finish",
    ]
    for call_id, name, arguments in (added, failing):
        start, *deltas, given = of_call(parts, call_id)[:-1]
        assert start["toolName"] == given["toolName"] == name
        assert "".join(d["inputTextDelta"] for d in deltas) == arguments
        assert given["input"] == json.loads(arguments)
    assert of_call(parts, "call_1")[-1]["output"] == "5"
    error = "broken failed: ValueError: no luck with y (key [redacted])"
    assert of_call(parts, "call_2")[-1]["errorText"] == error
    assert said(parts) == [("text", "Let me add."), ("text", "It is 5.")]
    assert parts[-1] == finish("stop", (40, 10))
    assert len(script.requests) == 2


def test_a_tool_run_over_the_responses_api_streams_the_same_parts(
    pool: ServerPool, upstream: FakeUpstream, kind: ServerKind
) -> None:
    """``OPENAI_CHAT_API=responses``: its function call streams (any argument
    deltas making up the arguments) and runs, its output is sent, and the next
    call (given the call and its output as input items) is the next step."""
    server = pool.get(kind, "tools-responses")
    then = upstream.script(Text("It is 5."), Usage(30, 4), Done())
    script = upstream.script(
        Reasoning("Adding."),
        Text("Let me add."),
        FunctionCall("call_1", "add", '{"a": 2, "b": 3}'),
        Usage(10, 6),
        Done(),
        then=then,
    )
    _, parts = answer(server, script)
    check_order(parts)
    start, *deltas, given, output = of_call(parts, "call_1")
    assert (start["type"], start["toolName"]) == ("tool-input-start", "add")
    assert "".join(d["inputTextDelta"] for d in deltas) in ("", '{"a": 2, "b": 3}')
    assert (given["type"], given["input"]) == ("tool-input-available", {"a": 2, "b": 3})
    assert output == {
        "type": "tool-output-available",
        "toolCallId": "call_1",
        "output": "5",
    }
    assert said(parts) == [
        ("reasoning", "Adding."),
        ("text", "Let me add."),
        ("text", "It is 5."),
    ]
    assert kinds(parts).count("start-step") == 2
    assert parts[-1] == finish("stop", (40, 10))
    second = script.requests[1].json["input"]
    assert {
        "type": "function_call_output",
        "call_id": "call_1",
        "output": "5",
    } in second


def test_a_relayed_tool_call_has_no_output_and_finishes_the_answer(
    plain: Server, upstream: FakeUpstream
) -> None:
    """Without tools configured the server runs nothing: the client (``onToolCall``)
    does; arguments that are not JSON are passed as the raw string."""
    script = upstream.script(
        FunctionCall("call_a", "roll", '{"n": 2}'),
        FunctionCall("call_b", "search", '{"q": '),
        Finish("tool_calls"),
        Usage(3, 2),
        Done(),
    )
    _, parts = answer(plain, script)
    check_order(parts)
    given = [p for p in parts if p["type"] == "tool-input-available"]
    assert [(p["toolCallId"], p["toolName"], p["input"]) for p in given] == [
        ("call_a", "roll", {"n": 2}),
        ("call_b", "search", '{"q": '),
    ]
    assert not [p for p in parts if p["type"].startswith("tool-output-")]
    assert kinds(parts)[-2:] == ["finish-step", "finish"]
    assert parts[-1] == finish("tool_calls", (3, 2))


# --- Errors -------------------------------------------------------------------------


def test_upstream_errors_before_the_first_byte_are_the_json_errors_of_the_others(
    plain: Server, upstream: FakeUpstream
) -> None:
    """``useChat`` shows the body: a 400 with the upstream's message, a 429 with its
    ``Retry-After``, a 502 for the rest; no ``start`` is ever sent before them."""
    message = "This model's maximum context length is 128000 tokens."
    too_long = upstream.script(
        status=400,
        body={"error": {"message": message, "type": "invalid_request_error"}},
    )
    response = post_chat(plain, asking(too_long))
    assert (response[0], error_of(response)["message"]) == (400, message)
    response = post_chat(plain, asking(upstream.rate_limited(retry_after="7")))
    assert (response[0], response[1]["Retry-After"]) == (429, "7")
    assert error_of(response)["type"] == "rate_limited"
    failing = upstream.script(status=500, headers={"retry-after-ms": "5"})
    response = post_chat(plain, asking(failing))
    assert (response[0], error_of(response)["type"]) == (502, "upstream_error")


def test_silence_is_kept_alive_and_a_later_failure_is_an_error_part_then_done(
    plain: Server, upstream: FakeUpstream
) -> None:
    """A keep-alive comment one interval into the upstream's silence; a failure
    after the first byte is an ``error`` part, ``[DONE]``, and nothing else: no
    ``finish``, nothing the upstream sends after it."""
    silence = 2 * KEEPALIVE_SECONDS
    script = upstream.script(
        Text("partial"),
        Sleep(silence),
        ErrorEvent("The model crashed"),
        Text("never"),
        Done(),
    )
    body, parts = answer(plain, script)
    check_order(parts)
    assert said(parts) == [("text", "partial")]
    assert parts[-1]["type"] == "error" and parts[-1]["errorText"]
    assert "finish" not in kinds(parts)
    error = json.dumps(parts[-1], separators=(",", ":"), ensure_ascii=False)
    assert body.endswith(f"data: {error}\n\n".encode() + DONE + b"\n\n")
    partial = body.index(b'"partial"')
    assert body.index(KEEPALIVE + b"\n\n", partial) < body.index(b'"type":"error"')
    assert b"never" not in body


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(FLASK_DEV, id="flask-run"),
        pytest.param(DJANGO_GUNICORN, id="django-gunicorn"),
    ],
)
def test_a_refusal_after_a_keepalive_is_an_error_part_alone(
    plain: Server, upstream: FakeUpstream
) -> None:
    """The upstream refuses after a keep-alive went out: too late for a status, and
    no ``start`` before it, which waits for the model's first output. A slow
    scenario, so on one server of each relay (threads, gevent), not four."""
    refused = {"message": "Too long.", "type": "invalid_request_error"}
    late = upstream.script(
        status=400, body={"error": refused}, headers_delay=2 * KEEPALIVE_SECONDS
    )
    body, parts = answer(plain, late)
    assert re.fullmatch(rb"(: keep-alive\n\n)+data: .*\n\ndata: \[DONE\]\n\n", body)
    assert parts == [{"type": "error", "errorText": "Too long."}]


def test_a_client_that_leaves_cancels_the_upstream_within_a_second(
    plain: Server, upstream: FakeUpstream
) -> None:
    script = upstream.script(Forever("tick ", interval=0.05, limit_seconds=30))
    sock = open_chat(plain, asking(script), b"tick")
    assert close_and_time(sock, script) <= CANCEL_BOUND_SECONDS
    assert script.requests[-1].finished_at is None  # never ran to its end


def open_chat(server: Server, body: dict[str, Any], needle: bytes) -> socket.socket:
    """POST ``body`` on a raw socket and read until ``needle`` arrives."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    payload = json.dumps(body).encode()
    head = (
        f"POST {ROUTE} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)
    so_far = b""
    deadline = time.monotonic() + 10
    while needle not in so_far:
        data = sock.recv(65536)
        assert data and time.monotonic() < deadline, so_far
        so_far += data
    return sock


# --- In process: the encoder and the request conversion ------------------------------


def encoded(api: str, *steps: Step) -> bytes:
    """The UI message stream of an upstream that sends ``steps`` in ``api``'s wire
    format (the fake upstream's own bytes), through the core as the views use it."""
    fake = _Encoder(api, "fake-model")
    reads = [fake.created()] if api == "responses" else []
    reads += [fake.encode(step) for step in steps]
    return b"".join(core.encoded_stream([r for r in reads if r], UiMessageEncoder()))


def encode(*batches: list[core.Event]) -> bytes:
    """The encoder alone: each batch as one read of the upstream, then the end."""
    encoder = UiMessageEncoder()
    return b"".join([*(encoder.encode(batch) for batch in batches), encoder.end()])


def test_parallel_tool_calls_interleaved_in_fragments_each_stream_whole() -> None:
    """Chat calls assembled by index, as on the SSE routes: a name split over
    fragments, an id and a name that come late. A client types the tool's part by
    the name of its ``tool-input-start``, so that name must be the whole name, and
    the id the call's own."""
    body = encoded(
        "chat",
        Text("Looking."),
        ToolCallFragment(0, id="call_a", name="get_", arguments=""),
        ToolCallFragment(1, arguments='{"q"'),  # its id and name come late
        ToolCallFragment(0, name="weather", arguments='{"city":  '),
        ToolCallFragment(1, arguments=': "x"}'),
        ToolCallFragment(0, name="", arguments='"Paris" }'),
        ToolCallFragment(1, id="call_b", name="search"),
        ToolCallFragment(1, id="call_b", name="search"),  # the whole name again
        Finish("tool_calls"),
        Done(),
    )
    parts = parts_of(body)
    check_order(parts)
    for call_id, name, arguments in (
        ("call_a", "get_weather", '{"city":  "Paris" }'),
        ("call_b", "search", '{"q": "x"}'),
    ):
        start, *deltas, given = of_call(parts, call_id)
        assert (start["type"], given["type"]) == (
            "tool-input-start",
            "tool-input-available",
        )
        assert start["toolName"] == given["toolName"] == name
        assert "".join(d["inputTextDelta"] for d in deltas) == arguments
        assert given["input"] == json.loads(arguments)
    assert {p.get("toolCallId") for p in parts} == {None, "call_a", "call_b"}
    assert parts[-1] == finish("tool_calls")


def test_a_responses_function_call_streams_whole() -> None:
    """The Responses API's events through the core; and a call that arrives whole,
    without a fragment before it (its ``response.output_item.done`` alone)."""
    body = encoded(
        "responses",
        Text("Rolling."),
        FunctionCall("call_9", "roll_dice", '{"count": 2}'),
        Usage(5, 3),
        Done(),
    )
    parts = parts_of(body)
    check_order(parts)
    start, *deltas, given = of_call(parts, "call_9")
    assert (start["toolName"], given["toolName"]) == ("roll_dice", "roll_dice")
    assert "".join(d["inputTextDelta"] for d in deltas) in ("", '{"count": 2}')
    assert given["input"] == {"count": 2}
    assert parts[-1] == finish("tool_calls", (5, 3))
    whole = parts_of(
        encode([core.ToolCall("call_1", "f", '{"x": 1}'), core.Finish("tool_calls")])
    )
    check_order(whole)
    assert [p for p in whole if "toolCallId" in p] == [
        {"type": "tool-input-start", "toolCallId": "call_1", "toolName": "f"},
        {
            "type": "tool-input-available",
            "toolCallId": "call_1",
            "toolName": "f",
            "input": {"x": 1},
        },
    ]


@pytest.mark.parametrize(
    ("arguments", "given"),
    [
        ('{"a": [1, {"b": null}]}', {"a": [1, {"b": None}]}),
        ("", {}),
        ('{"a": ', '{"a": '),
        ("[DONE]", "[DONE]"),
        ("3", 3),
    ],
    ids=["json", "empty", "cut", "not-json", "a-number"],
)
def test_a_calls_input_is_its_arguments_parsed_or_the_raw_string(
    arguments: str, given: Any
) -> None:
    parts = parts_of(
        encode([core.ToolCall("call_1", "f", arguments), core.Finish("tool_calls")])
    )
    check_order(parts)
    [available] = [p for p in parts if p["type"] == "tool-input-available"]
    assert available["input"] == given


def test_a_step_of_tool_calls_alone_and_the_next_step() -> None:
    """No text part at all in the first step; the results, then the next model
    call's output in a step of its own."""
    parts = parts_of(
        encode(
            [
                core.ToolCall("call_1", "add", '{"a": 1, "b": 2}'),
                core.Finish("tool_calls"),
            ],
            [core.Usage(3, 1, 4)],
            [core.ToolResult("call_1", output="3")],
            [core.Text("Three.")],
            [core.Finish("stop"), core.Usage(5, 2, 7)],
        )
    )
    check_order(parts)
    assert kinds(parts) == [
        "start",
        "start-step",
        "tool-input-start",
        "tool-input-available",
        "tool-output-available",
        "finish-step",
        "start-step",
        "text-start",
        "text-delta",
        "text-end",
        "finish-step",
        "finish",
    ]
    assert parts[-1] == finish("stop", (8, 3))


@pytest.mark.parametrize(
    ("api", "ending", "reason"),
    [
        ("chat", (Finish("length"), Usage(6, 7), Done()), "length"),
        ("chat", (Finish("content_filter"), Usage(6, 7), Done()), "content_filter"),
        ("responses", (Usage(6, 7), Finish("max_output_tokens")), "length"),
        ("responses", (Usage(6, 7), Finish("content_filter")), "content_filter"),
        ("responses", (Usage(6, 7), Done()), "stop"),
    ],
    ids=[
        "chat-length",
        "chat-content_filter",
        "responses-incomplete",
        "responses-filtered",
        "responses-completed",
    ],
)
def test_the_finish_reason_is_the_one_the_sse_routes_say(
    api: str, ending: tuple[Step, ...], reason: str
) -> None:
    """An answer cut by a token limit is never mistaken for a whole one."""
    parts = parts_of(encoded(api, Text("Part"), *ending))
    check_order(parts)
    assert said(parts) == [("text", "Part")]
    assert parts[-1] == finish(reason, (6, 7))


def test_reasoning_and_text_alternating_are_parts_of_their_own() -> None:
    parts = parts_of(
        encode(
            [core.Reasoning("a"), core.Text("b"), core.Reasoning("c")],
            [core.Reasoning("d")],
            [core.Refusal("e")],
            [core.Finish("length")],
        )
    )
    check_order(parts)
    assert said(parts) == [
        ("reasoning", "a"),
        ("text", "b"),
        ("reasoning", "cd"),
        ("text", "e"),
    ]
    assert parts[-1] == finish("length")


def test_an_empty_answer_is_still_a_whole_message() -> None:
    """A model that says nothing: ``start`` and ``finish``, no text part."""
    for body in (encoded("chat", Finish("stop"), Usage(2, 0), Done()), encode()):
        parts = parts_of(body)
        check_order(parts)
        assert not [p for p in parts if p["type"].startswith(("text-", "tool-"))]
        assert parts[-1]["type"] == "finish"


def test_lone_surrogates_become_replacement_characters() -> None:
    """JSON text may hold a lone surrogate, which UTF-8 can't: U+FFFD, as on the
    SSE routes, never an escape the client would keep as a broken character."""
    body = encoded(
        "chat",
        Raw(b'data: {"choices":[{"index":0,"delta":{"content":"a\\ud800b"}}]}\n\n'),
        Raw(b'data: {"choices":[{"index":0,"delta":{"reasoning":"\\udfffc"}}]}\n\n'),
        Finish("stop"),
        Done(),
    )
    body.decode("utf-8")  # strict: every byte is UTF-8
    parts = parts_of(body)
    assert said(parts) == [("text", "a\ufffdb"), ("reasoning", "\ufffdc")]


def test_an_error_ends_the_message_with_an_error_part_then_done() -> None:
    encoder = UiMessageEncoder()
    body = encoder.encode([core.Text("partial")]) + encoder.encode(
        [core.Error("The upstream failed.", "upstream_error")]
    )
    assert body.endswith(
        b'data: {"type":"error","errorText":"The upstream failed."}\n\ndata: [DONE]\n\n'
    )
    parts = parts_of(body)
    check_order(parts)
    assert said(parts) == [("text", "partial")]


def ui_request(*messages: dict[str, Any], **fields: Any) -> Any:
    return messages_from_ui(chat_request(*messages, **fields), MAX_PROMPT_CHARS)


def test_conversion_of_tool_parts_with_odd_outputs() -> None:
    """Outputs that are not strings go as JSON text (``null`` too); an error as
    ``Error: ...``; a tool part first, with no text before it; text after it in a
    message of its own."""
    tool = {"toolCallId": "c1", "input": {}}
    messages = ui_request(
        message("user", text("hi")),
        message(
            "assistant",
            {"type": "tool-a", **tool, "state": "output-available", "output": None},
            {
                "type": "dynamic-tool",
                "toolName": "b",
                "toolCallId": "c2",
                "input": {"x": "é"},
                "state": "output-available",
                "output": [1, "two"],
            },
            text("After."),
        ),
    )
    assert [m["role"] for m in messages] == [
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
    ]
    assert messages[1]["content"] in (None, "")
    assert [c["function"]["name"] for c in messages[1]["tool_calls"]] == ["a", "b"]
    assert json.loads(messages[1]["tool_calls"][1]["function"]["arguments"]) == {
        "x": "é"
    }
    assert json.loads(messages[2]["content"]) is None
    assert json.loads(messages[3]["content"]) == [1, "two"]
    assert messages[4] == {"role": "assistant", "content": "After."}


def test_conversion_keeps_text_sendable_and_refuses_a_malformed_tool_part() -> None:
    """A lone surrogate (half an emoji, cut in the JSON) becomes U+FFFD, as on the
    other routes; a tool part whose call id is not a string is a 400."""
    assert ui_request(message("user", text("cut \ud83d"))) == [
        {"role": "user", "content": "cut \ufffd"}
    ]
    malformed = {
        "type": "tool-a",
        "toolCallId": 5,
        "state": "output-available",
        "input": {},
        "output": "x",
    }
    with pytest.raises(core.StreamError) as caught:
        ui_request(message("user", text("hi")), message("assistant", malformed))
    assert caught.value.status == 400
