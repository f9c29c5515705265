"""Unit tests of the streaming core (``shared/streaming.py``), without a real network.

Every SSE body is read back with httpx-sse's decoder (``tests.client.parse_sse``), an
independent parser, so a framing bug can't hide behind a matching parsing bug. Upstream
input is fed in every accepted shape: SDK objects, plain dicts, raw SSE bytes (lists of
reads, an httpx response, an openai SDK stream over a mock transport).
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, cast

import httpx
import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import Completion
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseErrorEvent,
    ResponseFailedEvent,
    ResponseTextDeltaEvent,
)

from shared import streaming
from shared.streaming import (
    SSE_HEADERS,
    TEXT_HEADERS,
    StreamError,
    UpstreamFailed,
    open_upstream,
    sse_event,
    sse_frames,
    text_stream,
)
from tests.client import parse_sse

FAST = settings(deadline=None, max_examples=60)
KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
USAGE = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
USAGE_FRAME = b'event: usage\ndata: {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}\n\n'
# The conversation every input shape below carries: "Hel", "lo\nyou", usage 4/2/6.
EXPECTED_SSE = b"data: Hel\n\ndata: lo\ndata: you\n\n" + USAGE_FRAME + DONE
EXPECTED_TEXT = b"Hello\nyou"
REQUEST = httpx2.Request("POST", "https://api.example/v1/chat/completions")

# --- Upstream builders ----------------------------------------------------------------

CHUNK = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
RESPONSE = {
    "id": "r1",
    "object": "response",
    "created_at": 1,
    "model": "m",
    "output": [],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
}
RESPONSES_USAGE = {
    "input_tokens": 4,
    "output_tokens": 2,
    "total_tokens": 6,
    "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
    "output_tokens_details": {"reasoning_tokens": 0},
}


def chat(text: str | None, **choice: Any) -> dict[str, Any]:
    delta = {"content": text}
    return {
        **CHUNK,
        "choices": [{"index": 0, "delta": delta, "finish_reason": None, **choice}],
    }


def chat_dicts() -> list[dict[str, Any]]:
    role = {
        **CHUNK,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
    }
    finish = {**CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    return [
        role,
        chat("Hel"),
        chat("lo\nyou"),
        finish,
        {**CHUNK, "choices": [], "usage": USAGE},
    ]


def legacy_dicts() -> list[dict[str, Any]]:
    head = {"id": "c1", "object": "text_completion", "created": 1, "model": "m"}
    texts = [
        {**head, "choices": [{"index": 0, "text": t, "finish_reason": None}]}
        for t in ("Hel", "lo\nyou")
    ]
    return [*texts, {**head, "choices": [], "usage": USAGE}]


def text_delta(text: str, n: int = 1) -> dict[str, Any]:
    return {
        "type": "response.output_text.delta",
        "item_id": "msg_1",
        "output_index": 0,
        "content_index": 0,
        "delta": text,
        "logprobs": [],
        "sequence_number": n,
    }


def responses_dicts() -> list[dict[str, Any]]:
    created = {
        "type": "response.created",
        "sequence_number": 0,
        "response": {**RESPONSE, "status": "in_progress"},
    }
    completed = {
        "type": "response.completed",
        "sequence_number": 3,
        "response": {**RESPONSE, "status": "completed", "usage": RESPONSES_USAGE},
    }
    return [created, text_delta("Hel", 1), text_delta("lo\nyou", 2), completed]


def responses_sdk() -> list[Any]:
    *_, completed = responses_dicts()
    return [
        ResponseTextDeltaEvent.model_validate(text_delta("Hel", 1)),
        ResponseTextDeltaEvent.model_validate(text_delta("lo\nyou", 2)),
        ResponseCompletedEvent.model_validate(completed),
    ]


def sse_bytes(*payloads: object, eol: str = "\n", ascii_json: bool = True) -> bytes:
    """Raw upstream SSE: one ``data:`` event per payload (a str payload is sent as is)."""
    out = ""
    for payload in payloads:
        data = (
            payload
            if isinstance(payload, str)
            else json.dumps(payload, ensure_ascii=ascii_json)
        )
        out += f"data: {data}{eol}{eol}"
    return out.encode()


def raw_chat(eol: str = "\n") -> bytes:
    return sse_bytes(*chat_dicts(), "[DONE]", eol=eol)


@dataclass(frozen=True)
class Pause:
    """An upstream silence, in the middle of an :class:`Upstream`'s items."""

    seconds: float


class Upstream:
    """An upstream with ``close()``, like an SDK stream; items may pause or raise."""

    def __init__(self, items: Iterable[Any]) -> None:
        self.items = items
        self.closed = threading.Event()
        self.reads = 0

    def __iter__(self) -> Iterator[Any]:
        for item in self.items:
            if isinstance(item, Pause):
                time.sleep(item.seconds)
            elif isinstance(item, BaseException):
                raise item
            else:
                self.reads += 1
                yield item

    def close(self) -> None:
        self.closed.set()


class RawUpstream(Upstream):
    """Raw SSE bytes behind ``iter_bytes()`` and ``close()``, like an httpx response."""

    def iter_bytes(self) -> Iterator[bytes]:
        return iter(self)


def close(body: Iterable[bytes]) -> None:
    cast(Any, body).close()


def collect(body: Iterable[bytes]) -> bytes:
    """The whole body, closed afterwards as a WSGI server would."""
    try:
        return b"".join(body)
    finally:
        close(body)


def data_of(body: bytes) -> list[str]:
    return [event.data for event in parse_sse(body)]


def normalized(text: str) -> str:
    return re.sub(r"\r\n|\r", "\n", text)


def sdk_client(
    stack: ExitStack, handler: Callable[[httpx2.Request], httpx2.Response]
) -> openai.OpenAI:
    http = stack.enter_context(httpx2.Client(transport=httpx2.MockTransport(handler)))
    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://upstream.test/v1",
        max_retries=0,
        http_client=http,
    )


def sse_response(body: bytes) -> Callable[[httpx2.Request], httpx2.Response]:
    def handler(request: httpx2.Request) -> httpx2.Response:
        reads = iter([body[:50], body[50:]])  # an event split across reads
        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=reads
        )

    return handler


def sdk_chat_stream(stack: ExitStack) -> Any:
    client = sdk_client(stack, sse_response(raw_chat()))
    messages: Any = [{"role": "user", "content": "hi"}]
    return open_upstream(
        lambda: client.chat.completions.create(
            model="m", messages=messages, stream=True
        )
    )


def sdk_responses_stream(stack: ExitStack) -> Any:
    client = sdk_client(stack, sse_response(sse_bytes(*responses_dicts())))
    return open_upstream(
        lambda: client.responses.create(model="m", input="hi", stream=True)
    )


def httpx_response(stack: ExitStack) -> httpx.Response:
    body = raw_chat("\r\n")
    handler = lambda request: httpx.Response(200, content=iter([body[:9], body[9:]]))  # noqa: E731
    client = stack.enter_context(httpx.Client(transport=httpx.MockTransport(handler)))
    return client.send(
        client.build_request("POST", "http://upstream.test/v1/chat/completions"),
        stream=True,
    )


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


# --- Framing one delta ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "frame"),
    [
        ("Hello", b"data: Hello\n\n"),
        (" leading space", b"data:  leading space\n\n"),
        ("a\nb", b"data: a\ndata: b\n\n"),
        ("a\r\nb", b"data: a\ndata: b\n\n"),
        ("a\rb", b"data: a\ndata: b\n\n"),
        ("\n", b"data: \ndata: \n\n"),
        ("a\n", b"data: a\ndata: \n\n"),
        ("\r\n\r\n", b"data: \ndata: \ndata: \n\n"),
        ("\r\r\n\n", b"data: \ndata: \ndata: \ndata: \n\n"),
        ("[DONE]", b"data: [DONE\n\ndata: ]\n\n"),
        ("[DONE]\n", b"data: [DONE]\ndata: \n\n"),
        (" [DONE]", b"data:  [DONE]\n\n"),
        (
            "\n\nevent: error\ndata: x",
            b"data: \ndata: \ndata: event: error\ndata: data: x\n\n",
        ),
        (": not a comment", b"data: : not a comment\n\n"),
        ("héllo ✓ 😀", "data: héllo ✓ 😀\n\n".encode()),
        # Not SSE line ends (str.splitlines would break at them):
        ("a\u2028b\x0bc\x85d\x0ce", "data: a\u2028b\x0bc\x85d\x0ce\n\n".encode()),
    ],
)
def test_a_delta_is_framed_byte_exactly(text: str, frame: bytes) -> None:
    assert sse_event(text) == frame


def test_multiline_delta_is_split_into_data_lines() -> None:
    events = parse_sse(sse_event("one\r\ntwo\rthree\nfour"))
    assert [(e.event, e.data) for e in events] == [("message", "one\ntwo\nthree\nfour")]


def test_a_lone_surrogate_goes_out_as_the_replacement_character() -> None:
    # JSON can carry half a surrogate pair ("\ud83d"); streaming.py's comment promises
    # U+FFFD for it, in SSE and raw text alike.
    assert sse_event("a\ud83db") == "data: a\ufffdb\n\n".encode()
    raw = sse_bytes(chat("a\ud83db"))
    assert collect(text_stream([raw])) == "a\ufffdb".encode()


PIECES = [
    "\r",
    "\n",
    "\r\n",
    ":",
    "data: ",
    "event: error",
    "id: 1",
    "[DONE]",
    " ",
    "é",
    "😀",
]
DELTA = st.one_of(
    st.just("[DONE]"),
    st.lists(st.one_of(st.text(max_size=6), st.sampled_from(PIECES)), max_size=6).map(
        "".join
    ),
)


@FAST
@given(DELTA.filter(bool))
def test_any_delta_round_trips_through_a_conforming_parser(text: str) -> None:
    events = parse_sse(sse_event(text))
    assert all((e.event, e.id, e.retry) == ("message", "", None) for e in events)
    if text == "[DONE]":
        assert [e.data for e in events] == ["[DONE", "]"]
    else:
        assert [e.data for e in events] == [normalized(text)]


@FAST
@given(st.lists(DELTA, max_size=8))
def test_any_deltas_round_trip_as_sse_and_as_raw_text(deltas: list[str]) -> None:
    events = parse_sse(collect(sse_frames([chat(d) for d in deltas])))
    expected: list[str] = []
    for delta in filter(None, deltas):
        expected += ["[DONE", "]"] if delta == "[DONE]" else [normalized(delta)]
    assert [e.data for e in events] == [*expected, "[DONE]"]
    assert all(e.event == "message" for e in events)
    assert collect(text_stream([chat(d) for d in deltas])) == "".join(deltas).encode()


# --- Every accepted upstream ----------------------------------------------------------

UPSTREAMS: dict[str, Callable[[ExitStack], Any]] = {
    "chat-dicts": lambda _: chat_dicts(),
    "chat-sdk-objects": lambda _: [
        ChatCompletionChunk.model_validate(c) for c in chat_dicts()
    ],
    "legacy-dicts": lambda _: legacy_dicts(),
    "legacy-sdk-objects": lambda _: [
        Completion.model_validate(c) for c in legacy_dicts()
    ],
    "responses-dicts": lambda _: responses_dicts(),
    "responses-sdk-events": lambda _: responses_sdk(),
    "raw-sse-one-read": lambda _: [raw_chat()],
    "raw-sse-responses-api": lambda _: [sse_bytes(*responses_dicts())],
    "raw-sse-iter-bytes": lambda _: RawUpstream([raw_chat("\r")]),
    "httpx-response": httpx_response,
    "openai-sdk-chat-stream": sdk_chat_stream,
    "openai-sdk-responses-stream": sdk_responses_stream,
}


@pytest.mark.parametrize("make", UPSTREAMS.values(), ids=UPSTREAMS.keys())
def test_every_accepted_upstream_gives_the_same_sse_body(
    make: Callable[[ExitStack], Any], stack: ExitStack
) -> None:
    source = make(stack)
    assert collect(sse_frames(source)) == EXPECTED_SSE
    if isinstance(source, httpx.Response):
        assert source.is_closed


@pytest.mark.parametrize("make", UPSTREAMS.values(), ids=UPSTREAMS.keys())
def test_every_accepted_upstream_gives_the_same_raw_text(
    make: Callable[[ExitStack], Any], stack: ExitStack
) -> None:
    assert collect(text_stream(make(stack))) == EXPECTED_TEXT


def whole_message(text: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": text}
    return {
        "id": "c1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message}],
    }


HI = chat("hi")
QUIRKS: dict[str, bytes] = {
    "extra-fields": sse_bytes(
        {
            **CHUNK,
            "x_groq": {"id": "q"},
            "provider": "p",
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": "hi", "reasoning": None},
                    "logprobs": None,
                }
            ],
        }
    ),
    "chat-completion-objects": sse_bytes(whole_message("hi")),
    "empty-choices": sse_bytes({**CHUNK, "choices": []}, HI),
    "no-choices-key": sse_bytes({"id": "x"}, HI),
    "no-done": sse_bytes(HI),
    "no-final-blank-line": sse_bytes(HI)[:-1],
    "comments": b": OPENROUTER PROCESSING\n\n" + sse_bytes(HI) + b": ping\n\n" + DONE,
    "event-id-retry-fields": b"event: message\nid: 7\nretry: 100\n" + sse_bytes(HI),
    "crlf": sse_bytes(HI, "[DONE]", eol="\r\n"),
    "cr": sse_bytes(HI, "[DONE]", eol="\r"),
    "no-space-after-colon": b"data:" + sse_bytes(HI)[6:],
    "done-with-spaces": sse_bytes(HI, " [DONE] ", chat("nope")),
    "text-after-done-ignored": sse_bytes(HI, "[DONE]", chat("nope")),
    "other-choices-ignored": sse_bytes(chat("nope", index=1), HI),
    "null-content-and-tool-calls": sse_bytes(
        chat(None), chat("hi"), chat(None, tool_calls=[])
    ),
    "legacy-text": sse_bytes({"choices": [{"index": 0, "text": "hi"}]}),
    "empty-delta-then-text": sse_bytes({"choices": [{"delta": {}, "text": ""}]}, HI),
    "unknown-responses-events": sse_bytes(
        {"type": "response.in_progress"}, text_delta("hi")
    ),
}


@pytest.mark.parametrize("raw", QUIRKS.values(), ids=QUIRKS.keys())
def test_provider_quirks_are_tolerated(raw: bytes) -> None:
    assert collect(text_stream([raw])) == b"hi"
    assert collect(sse_frames([raw])) == b"data: hi\n\n" + DONE


@pytest.mark.parametrize(
    ("usage", "frame"),
    [
        (
            {"prompt_tokens": 3, "completion_tokens": 5},
            b'{"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}',
        ),
        (
            {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 9, "x": {}},
            b'{"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 9}',
        ),
        (
            {"completion_tokens": 2},
            b'{"prompt_tokens": 0, "completion_tokens": 2, "total_tokens": 2}',
        ),
    ],
)
def test_usage_is_one_event_with_the_contracts_fields(
    usage: dict[str, int], frame: bytes
) -> None:
    body = collect(sse_frames([HI, {**CHUNK, "choices": [], "usage": usage}]))
    assert body == b"data: hi\n\nevent: usage\ndata: " + frame + b"\n\n" + DONE


EMPTY_DELTAS: dict[str, Callable[[], list[Any]]] = {
    "chat-dict": lambda: [chat(""), chat("x")],
    "chat-sdk": lambda: [
        ChatCompletionChunk.model_validate(c) for c in (chat(""), chat("x"))
    ],
    "legacy": lambda: [
        {"choices": [{"index": 0, "text": ""}]},
        {"choices": [{"text": "x"}]},
    ],
    "responses-dict": lambda: [text_delta(""), text_delta("x")],
    "responses-sdk": lambda: [
        ResponseTextDeltaEvent.model_validate(text_delta(t)) for t in ("", "x")
    ],
}


@pytest.mark.parametrize("make", EMPTY_DELTAS.values(), ids=EMPTY_DELTAS.keys())
def test_an_empty_delta_produces_no_event(make: Callable[[], list[Any]]) -> None:
    tokens: list[str] = []
    assert collect(sse_frames(make(), on_token=tokens.append)) == b"data: x\n\n" + DONE
    assert tokens == ["x"]


def test_non_text_content_is_never_reported_as_usage() -> None:
    # Some providers send content as a list of parts; whatever the relay does with
    # it, it must not become an ``event: usage`` carrying model output.
    parts = [{"type": "text", "text": "hi"}]
    usages: list[object] = []
    body = collect(
        sse_frames([chat(cast(Any, parts)), chat("!")], on_usage=usages.append)
    )
    assert b"event: usage" not in body
    assert usages == []


# --- Parsing raw upstream SSE ---------------------------------------------------------


def payloads(*reads: bytes) -> list[str]:
    return [data for batch in streaming._sse_payloads(reads) for data in batch]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [  # the examples of the WHATWG HTML spec, section 9.2 (server-sent events)
        (b"data: YHOO\ndata: +2\ndata: 10\n\n", ["YHOO\n+2\n10"]),
        (
            b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
            ["first event", "second event", " third event"],
        ),
        (b"data:test\n\ndata: test\n\n", ["test", "test"]),
        (
            b"event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\nevent: add\ndata: 113411\n\n",
            ["73857293", "2153", "113411"],
        ),
    ],
)
def test_the_spec_examples_parse_as_the_spec_says(
    stream: bytes, expected: list[str]
) -> None:
    assert payloads(stream) == expected
    assert payloads(*[stream[i : i + 1] for i in range(len(stream))]) == expected


def split_points(body: bytes, how: str) -> list[int]:
    if how == "one-byte-at-a-time":
        return list(range(1, len(body)))
    if how == "mid-line":
        return [m.start() + 4 for m in re.finditer(rb"data: ", body)]
    if how == "mid-utf8":
        return [i for i, byte in enumerate(body) if 0x80 <= byte < 0xC0]
    if how == "after-each-cr":
        return [i + 1 for i, byte in enumerate(body) if byte == 0x0D]
    assert how == "whole"
    return []


def split(body: bytes, points: Iterable[int]) -> list[bytes]:
    edges = [0, *sorted(set(points)), len(body)]
    return [body[a:b] for a, b in zip(edges, edges[1:], strict=False) if a < b]


@pytest.mark.parametrize(
    "how", ["whole", "one-byte-at-a-time", "mid-line", "mid-utf8", "after-each-cr"]
)
@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
def test_raw_sse_survives_awkward_splits(eol: str, how: str) -> None:
    deltas = ["héllo ", "😀\r\n", "wörld"]
    body = sse_bytes(
        *(chat(d) for d in deltas),
        {"choices": [], "usage": USAGE},
        "[DONE]",
        eol=eol,
        ascii_json=False,
    )
    reads = split(body, split_points(body, how))
    assert collect(text_stream(RawUpstream(reads))) == "".join(deltas).encode()
    expected = (
        "data: héllo \n\ndata: 😀\ndata: \n\ndata: wörld\n\n".encode()
        + USAGE_FRAME
        + DONE
    )
    assert collect(sse_frames(RawUpstream(reads))) == expected


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
def test_a_json_chunk_spread_over_data_lines_survives_one_byte_reads(eol: str) -> None:
    # SSE joins an event's data lines with "\n": JSON may span several of them.
    lines = [
        'data: {"choices": [{"index": 0,',
        'data: "delta": {"content": "hi"}}]}',
        "",
        "data: [DONE]",
        "",
    ]
    body = "".join(line + eol for line in lines).encode()
    assert collect(text_stream([body])) == b"hi"
    assert collect(text_stream(split(body, range(1, len(body))))) == b"hi"


EOL = st.sampled_from(["\n", "\r\n", "\r"])


@FAST
@given(st.lists(DELTA, max_size=6), st.data())
def test_raw_sse_split_anywhere_gives_back_the_text(
    deltas: list[str], data: st.DataObject
) -> None:
    body = b""
    for delta in deltas:
        eol = data.draw(EOL)
        if data.draw(st.booleans()):
            body += f": ping{eol}event: message{eol}".encode()
        body += sse_bytes(chat(delta), eol=eol, ascii_json=data.draw(st.booleans()))
    if data.draw(st.booleans()):
        body += DONE
    points = data.draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=12))
    assert collect(text_stream(split(body, points))) == "".join(deltas).encode()


VALUE = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=8)
FIELD_LINE = st.one_of(
    VALUE.map(lambda v: "data:" + v),
    VALUE.map(lambda v: ":" + v),
    VALUE.map(lambda v: "event:" + v),
)


@FAST
@given(st.lists(st.lists(FIELD_LINE, max_size=4), max_size=5), st.data())
def test_upstream_sse_parsing_agrees_with_httpx_sse(
    blocks: list[list[str]], data: st.DataObject
) -> None:
    """Differential: any event stream, split anywhere, gives httpx-sse's event data."""
    lines = [line for block in blocks for line in [*block, "data:x", ""]]
    body = "".join(line + data.draw(EOL) for line in lines).encode() + b"\n\n"
    points = data.draw(st.lists(st.integers(1, len(body) - 1), max_size=12))
    assert payloads(*split(body, points)) == data_of(body)


# --- Keep-alive -------------------------------------------------------------------------


def test_silence_before_the_first_text_starts_the_response_with_keepalives() -> None:
    started = time.monotonic()
    body = sse_frames(Upstream([Pause(0.3), HI]), keepalive_seconds=0.05)
    assert time.monotonic() - started < 0.25, (
        "the response should start during the silence"
    )
    frames = list(body)
    close(body)
    assert frames[0] == KEEPALIVE
    assert b"".join(frames).replace(KEEPALIVE, b"") == b"data: hi\n\n" + DONE


def test_silence_between_deltas_is_filled_with_keepalive_comments() -> None:
    body = collect(
        sse_frames(Upstream([chat("a"), Pause(0.2), chat("b")]), keepalive_seconds=0.05)
    )
    assert re.fullmatch(
        rb"data: a\n\n(: keep-alive\n\n)+data: b\n\ndata: \[DONE\]\n\n", body
    ), body
    assert data_of(body) == ["a", "b", "[DONE]"]


def test_raw_text_never_contains_keepalives() -> None:
    assert (
        collect(text_stream(Upstream([Pause(0.1), chat("a"), Pause(0.1), chat("b")])))
        == b"ab"
    )


# --- Failures ---------------------------------------------------------------------------

SECRET = "sk-proj-AbCdEf0123456789"
FAILURES: dict[str, tuple[Callable[[], list[Any]], str, str]] = {
    # name: (what the upstream sends after its text, error type, error message)
    "timeout": (
        lambda: [openai.APITimeoutError(REQUEST)],
        "upstream_timeout",
        "The upstream timed out.",
    ),
    "connection": (
        lambda: [openai.APIConnectionError(request=REQUEST)],
        "upstream_connection_error",
        "The connection to the upstream failed.",
    ),
    "sdk-mid-stream-error": (
        lambda: [openai.APIError(f"Bad key {SECRET}", REQUEST, body=None)],
        "upstream_error",
        "Bad key [redacted]",
    ),
    "other-exception": (
        lambda: [RuntimeError("internal detail")],
        "upstream_error",
        "The upstream failed.",
    ),
    "error-chunk": (
        lambda: [{"error": {"message": f"Overloaded {SECRET}", "code": 503}}],
        "upstream_error",
        "Overloaded [redacted]",
    ),
    "error-string": (lambda: [{"error": "boom"}], "upstream_error", "boom"),
    "anthropic-style-error": (
        lambda: [
            {
                "type": "error",
                "error": {"type": "overloaded_error", "message": "Overloaded"},
            }
        ],
        "upstream_error",
        "Overloaded",
    ),
    "responses-failed": (
        lambda: [
            {
                "type": "response.failed",
                "response": {
                    **RESPONSE,
                    "error": {"code": "server_error", "message": "It broke"},
                },
            }
        ],
        "upstream_error",
        "It broke",
    ),
    "responses-failed-sdk": (
        lambda: [
            ResponseFailedEvent.model_validate(
                {
                    "type": "response.failed",
                    "sequence_number": 9,
                    "response": {
                        **RESPONSE,
                        "error": {"code": "server_error", "message": "It broke"},
                    },
                }
            )
        ],
        "upstream_error",
        "It broke",
    ),
    "responses-error-sdk": (
        lambda: [
            ResponseErrorEvent.model_validate(
                {
                    "type": "error",
                    "sequence_number": 9,
                    "code": "x",
                    "message": "Bad",
                    "param": None,
                }
            )
        ],
        "upstream_error",
        "Bad",
    ),
}
RAW_FAILURES: dict[str, tuple[bytes, str]] = {
    "raw-error-event": (
        b'event: error\ndata: {"error": {"message": "Overloaded"}}\n\n',
        "Overloaded",
    ),
    "raw-malformed-json": (
        b"data: {not json\n\n",
        "The upstream sent a malformed chunk.",
    ),
}


def failure_cases() -> Iterator[Any]:
    for name, (make, kind, message) in FAILURES.items():
        yield pytest.param(make, kind, message, id=name)
    for name, (raw, message) in RAW_FAILURES.items():
        yield pytest.param(lambda raw=raw: [raw], "upstream_error", message, id=name)


def with_text_first(make: Callable[[], list[Any]]) -> list[Any]:
    failure = make()
    if isinstance(failure[0], bytes):  # raw SSE: the text comes as bytes too
        return [sse_bytes(chat("partial")), *failure]
    return [chat("partial"), *failure]


@pytest.mark.parametrize(("make", "kind", "message"), list(failure_cases()))
@pytest.mark.parametrize("stream", [sse_frames, text_stream], ids=["sse", "text"])
def test_a_failure_before_any_output_raises_stream_error(
    stream: Callable[..., Iterable[bytes]],
    make: Callable[[], list[Any]],
    kind: str,
    message: str,
) -> None:
    failure = make()
    if not isinstance(failure[0], bytes):
        failure = [chat(""), *failure]  # a role-only first chunk: still no output
    upstream = Upstream(failure)
    errors: list[BaseException] = []
    completions: list[str] = []
    with pytest.raises(StreamError) as info:
        stream(upstream, on_error=errors.append, on_completion=completions.append)
    expected_status = 504 if kind == "upstream_timeout" else 502
    assert (info.value.status, info.value.type, info.value.message) == (
        expected_status,
        kind,
        message,
    )
    assert upstream.closed.is_set()
    assert len(errors) == 1 and completions == []


@pytest.mark.parametrize(("make", "kind", "message"), list(failure_cases()))
def test_a_failure_after_output_ends_sse_with_an_error_event(
    make: Callable[[], list[Any]], kind: str, message: str
) -> None:
    upstream = Upstream(with_text_first(make))
    errors: list[BaseException] = []
    completions: list[str] = []
    body = collect(
        sse_frames(upstream, on_error=errors.append, on_completion=completions.append)
    )
    error = json.dumps({"message": message, "type": kind})
    assert body == f"data: partial\n\nevent: error\ndata: {error}\n\n".encode()
    assert upstream.closed.is_set()
    assert len(errors) == 1 and completions == []


@pytest.mark.parametrize(("make", "kind", "message"), list(failure_cases()))
def test_a_failure_after_output_cuts_raw_text_off(
    make: Callable[[], list[Any]], kind: str, message: str
) -> None:
    upstream = Upstream(with_text_first(make))
    body = text_stream(upstream)
    received: list[bytes] = []
    with pytest.raises(UpstreamFailed, match=re.escape(message)):
        for part in body:
            received.append(part)
    close(body)
    assert received == [b"partial"]
    assert upstream.closed.is_set()


def test_text_and_a_failure_in_the_same_read_keep_the_text() -> None:
    raw = sse_bytes(HI, {"error": {"message": "late"}})
    assert (
        collect(sse_frames([raw]))
        == b'data: hi\n\nevent: error\ndata: {"message": "late", "type": "upstream_error"}\n\n'
    )


def test_a_failure_after_a_keepalive_is_an_error_event_not_a_status() -> None:
    upstream = Upstream([Pause(0.2), openai.APIConnectionError(request=REQUEST)])
    body = collect(sse_frames(upstream, keepalive_seconds=0.05))
    assert body.startswith(KEEPALIVE) and DONE not in body
    assert [(e.event, json.loads(e.data)["type"]) for e in parse_sse(body)] == [
        ("error", "upstream_connection_error")
    ]


def test_an_empty_upstream_is_just_done() -> None:
    completions: list[str] = []
    assert collect(sse_frames([], on_completion=completions.append)) == DONE
    assert collect(text_stream(iter([]))) == b""
    assert completions == [""]


# --- open_upstream ----------------------------------------------------------------------


def status_error(
    cls: type[openai.APIStatusError],
    status: int,
    body: object,
    headers: dict[str, str] | None = None,
) -> openai.APIStatusError:
    response = httpx2.Response(status, headers=headers, request=REQUEST)
    return cls(f"Error code: {status}", response=response, body=body)


ECHO = {
    "message": f"Incorrect API key provided: {SECRET}",
    "type": "invalid_request_error",
}
MAPPINGS: dict[str, tuple[BaseException, int, str, str, dict[str, str]]] = {
    "timeout": (
        openai.APITimeoutError(REQUEST),
        504,
        "upstream_timeout",
        "The upstream timed out.",
        {},
    ),
    "connection": (
        openai.APIConnectionError(request=REQUEST),
        502,
        "upstream_connection_error",
        "The connection to the upstream failed.",
        {},
    ),
    "400": (
        status_error(openai.BadRequestError, 400, {"message": "Unknown model: gpt-x"}),
        400,
        "upstream_bad_request",
        "Unknown model: gpt-x",
        {},
    ),
    "400-nested": (
        status_error(openai.BadRequestError, 400, {"error": {"message": "Nested"}}),
        400,
        "upstream_bad_request",
        "Nested",
        {},
    ),
    "400-redacted": (
        status_error(openai.BadRequestError, 400, ECHO),
        400,
        "upstream_bad_request",
        "Incorrect API key provided: [redacted]",
        {},
    ),
    "429": (
        status_error(openai.RateLimitError, 429, ECHO, {"Retry-After": "7"}),
        429,
        "rate_limited",
        "The upstream is rate limiting requests.",
        {"Retry-After": "7"},
    ),
    "429-no-retry-after": (
        status_error(openai.RateLimitError, 429, ECHO),
        429,
        "rate_limited",
        "The upstream is rate limiting requests.",
        {},
    ),
    "401": (
        status_error(openai.AuthenticationError, 401, ECHO),
        502,
        "upstream_error",
        "The upstream answered 401.",
        {},
    ),
    "404": (
        status_error(openai.NotFoundError, 404, ECHO),
        502,
        "upstream_error",
        "The upstream answered 404.",
        {},
    ),
    "500": (
        status_error(openai.InternalServerError, 500, ECHO),
        502,
        "upstream_error",
        "The upstream answered 500.",
        {},
    ),
    "418": (
        status_error(openai.APIStatusError, 418, None),
        502,
        "upstream_error",
        "The upstream answered 418.",
        {},
    ),
    "api-error": (
        openai.APIError(f"Bad key {SECRET}", REQUEST, body=None),
        502,
        "upstream_error",
        "Bad key [redacted]",
        {},
    ),
    "other": (
        RuntimeError(f"internal {SECRET}"),
        502,
        "upstream_error",
        "The upstream failed.",
        {},
    ),
    "upstream-failed": (
        UpstreamFailed("cut off"),
        502,
        "upstream_error",
        "cut off",
        {},
    ),
}


def raising(exc: BaseException) -> Callable[[], object]:
    def create() -> object:
        raise exc

    return create


@pytest.mark.parametrize(
    ("exc", "status", "kind", "message", "headers"),
    MAPPINGS.values(),
    ids=MAPPINGS.keys(),
)
def test_open_upstream_maps_sdk_errors_to_the_contracts_status(
    exc: BaseException, status: int, kind: str, message: str, headers: dict[str, str]
) -> None:
    with pytest.raises(StreamError) as info:
        open_upstream(raising(exc))
    error = info.value
    assert (error.status, error.type, error.message, error.headers) == (
        status,
        kind,
        message,
        headers,
    )
    assert error.__cause__ is exc
    assert json.loads(error.body()) == {"error": {"message": message, "type": kind}}


def test_open_upstream_returns_what_create_returns_and_passes_stream_errors_through() -> (
    None
):
    assert open_upstream(lambda: 42) == 42
    original = StreamError(418, "teapot", "x", {"A": "b"})
    with pytest.raises(StreamError) as info:
        open_upstream(raising(original))
    assert info.value is original
    assert original.body() == b'{"error": {"message": "teapot", "type": "x"}}'


def answer(
    status: int, body: object, headers: dict[str, str] | None = None
) -> Callable[[httpx2.Request], httpx2.Response]:
    return lambda request: httpx2.Response(status, json=body, headers=headers)


def fail_with(
    exc_type: type[httpx2.TransportError],
) -> Callable[[httpx2.Request], httpx2.Response]:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise exc_type("no", request=request)

    return handler


REAL_SDK: dict[
    str,
    tuple[Callable[[httpx2.Request], httpx2.Response], int, str, str, dict[str, str]],
] = {
    "400": (
        answer(400, {"error": ECHO}),
        400,
        "upstream_bad_request",
        "Incorrect API key provided: [redacted]",
        {},
    ),
    "429": (
        answer(429, {"error": ECHO}, {"retry-after": "3"}),
        429,
        "rate_limited",
        "The upstream is rate limiting requests.",
        {"Retry-After": "3"},
    ),
    "503": (
        answer(503, {"error": ECHO}),
        502,
        "upstream_error",
        "The upstream answered 503.",
        {},
    ),
    "timeout": (
        fail_with(httpx2.ReadTimeout),
        504,
        "upstream_timeout",
        "The upstream timed out.",
        {},
    ),
    "refused": (
        fail_with(httpx2.ConnectError),
        502,
        "upstream_connection_error",
        "The connection to the upstream failed.",
        {},
    ),
}


@pytest.mark.parametrize(
    ("handler", "status", "kind", "message", "headers"),
    REAL_SDK.values(),
    ids=REAL_SDK.keys(),
)
def test_open_upstream_maps_the_real_sdks_failures(
    handler: Callable[[httpx2.Request], httpx2.Response],
    status: int,
    kind: str,
    message: str,
    headers: dict[str, str],
    stack: ExitStack,
) -> None:
    client = sdk_client(stack, handler)
    with pytest.raises(StreamError) as info:
        open_upstream(
            lambda: client.chat.completions.create(model="m", messages=[], stream=True)
        )
    error = info.value
    assert (error.status, error.type, error.message, error.headers) == (
        status,
        kind,
        message,
        headers,
    )


def test_a_400_with_a_plain_string_error_keeps_the_upstream_message(
    stack: ExitStack,
) -> None:
    # e.g. {"error": "..."} as some OpenAI-compatible servers answer a bad request.
    client = sdk_client(stack, answer(400, {"error": "Model 'x' not found"}))
    with pytest.raises(StreamError) as info:
        open_upstream(
            lambda: client.chat.completions.create(model="x", messages=[], stream=True)
        )
    assert info.value.status == 400
    assert "Model 'x' not found" in info.value.message


# --- Callbacks --------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [sse_frames, text_stream], ids=["sse", "text"])
def test_callbacks_see_the_start_each_token_the_usage_and_the_full_text(
    stream: Callable[..., Iterable[bytes]],
) -> None:
    calls: list[tuple[str, object]] = []

    class Logged(Upstream):
        def __iter__(self) -> Iterator[Any]:
            for item in super().__iter__():
                calls.append(("read", None))
                yield item

    deltas = ["Hel", "lo\r\nyou", "[DONE]"]
    upstream = Logged([*(chat(d) for d in deltas), {"choices": [], "usage": USAGE}])
    collect(
        stream(
            upstream,
            on_start=lambda: calls.append(("start", None)),
            on_token=lambda text: calls.append(("token", text)),
            on_usage=lambda usage: calls.append(("usage", usage)),
            on_completion=lambda text: calls.append(("completion", text)),
            on_error=lambda exc: calls.append(("error", exc)),
        )
    )
    assert calls[0] == ("start", None)
    assert [c for c in calls if c[0] != "read"][1:] == [
        *(("token", d) for d in deltas),
        ("usage", USAGE),
        ("completion", "Hello\r\nyou[DONE]"),
    ]


# --- Closing and the client leaving -----------------------------------------------------


def endless() -> Iterator[dict[str, Any]]:
    while True:
        yield chat("x")


@pytest.mark.parametrize("stream", [sse_frames, text_stream], ids=["sse", "text"])
@pytest.mark.parametrize("frames_read", [0, 2])
def test_closing_the_body_closes_the_upstream(
    stream: Callable[..., Iterable[bytes]], frames_read: int
) -> None:
    upstream = Upstream(endless())
    body = stream(upstream)
    for _, _frame in zip(range(frames_read), body, strict=False):
        pass
    close(body)
    assert upstream.closed.is_set()
    close(body)  # a second close is harmless


def test_closing_the_body_closes_a_generator_upstream() -> None:
    finished = threading.Event()

    def upstream() -> Iterator[dict[str, Any]]:
        try:
            yield from endless()
        finally:
            finished.set()

    close(sse_frames(upstream()))
    assert finished.is_set()


def test_a_slow_client_pauses_the_upstream() -> None:
    upstream = Upstream(endless())
    body = sse_frames(upstream)
    time.sleep(0.2)
    assert upstream.reads < 16, "the upstream should wait for the client to catch up"
    close(body)


def test_a_relay_never_started_still_closes_its_upstream() -> None:
    upstream = Upstream([HI])
    callbacks = streaming._Callbacks(None, None, None, None, None)
    streaming._Relay(upstream, None, None, callbacks).close()
    assert upstream.closed.is_set()


class SocketUpstream:
    """Raw SSE read from a socket, shaped like an httpx response (``extensions``)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.extensions = {"network_stream": self}
        self.closed = threading.Event()

    def get_extra_info(self, name: str) -> object:
        return self.sock if name == "socket" else None

    def iter_bytes(self) -> Iterator[bytes]:
        while chunk := self.sock.recv(65536):
            yield chunk

    def close(self) -> None:
        self.sock.close()
        self.closed.set()


class SdkShaped:
    """An SDK-stream-shaped wrapper: the httpx response is its ``response``."""

    def __init__(self, response: SocketUpstream) -> None:
        self.response = response

    def __iter__(self) -> Iterator[bytes]:
        return self.response.iter_bytes()

    def close(self) -> None:
        self.response.close()


@pytest.mark.parametrize("shape", ["httpx-response", "sdk-stream"])
def test_closing_shuts_down_a_silent_upstreams_socket_at_once(shape: str) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(sse_bytes(HI))
        response = SocketUpstream(ours)
        body = sse_frames(
            response if shape == "httpx-response" else SdkShaped(response)
        )
        assert next(iter(body)) == b"data: hi\n\n"
        started = time.monotonic()
        close(body)
        assert time.monotonic() - started < 0.5
        assert response.closed.is_set()
        assert theirs.recv(1) == b"", "the upstream should see the connection closed"
        close(body)  # the socket is gone by now: a second close is harmless


def trickle(first: str = "first") -> Upstream:
    """Text, then a slow trickle that would last five seconds."""
    return Upstream(
        [chat(first), *[item for _ in range(50) for item in (Pause(0.1), chat("more"))]]
    )


STREAMS: dict[str, Callable[..., Iterable[bytes]]] = {
    "sse": lambda upstream, **kw: sse_frames(upstream, keepalive_seconds=0.05, **kw),
    "text": text_stream,
}


@pytest.mark.parametrize("stream", STREAMS.values(), ids=STREAMS.keys())
def test_a_client_that_leaves_ends_the_stream_and_closes_the_upstream(
    stream: Callable[..., Iterable[bytes]],
) -> None:
    ours, theirs = socket.socketpair()
    upstream = trickle()
    completions: list[str] = []
    with ours, theirs:
        body = stream(upstream, client_socket=ours, on_completion=completions.append)
        parts = iter(body)
        assert next(parts) in (b"first", b"data: first\n\n")
        theirs.close()
        started = time.monotonic()
        rest = b"".join(parts)
        assert time.monotonic() - started < 1.0
        close(body)
    assert DONE not in rest
    assert upstream.closed.is_set()
    assert completions == []


def test_a_client_connection_reset_counts_as_gone() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, socket.create_connection(listener.getsockname()) as client:
        server_side, _ = listener.accept()
        with server_side:
            upstream = trickle()
            body = sse_frames(
                upstream, keepalive_seconds=0.05, client_socket=server_side
            )
            client.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            client.close()  # an RST: the peek fails with ECONNRESET
            started = time.monotonic()
            body_bytes = collect(body)
            assert time.monotonic() - started < 1.5
    assert DONE not in body_bytes
    assert upstream.closed.is_set()


def test_a_client_sending_its_next_request_is_not_taken_for_gone() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        body = sse_frames(
            Upstream([chat("a"), Pause(0.1), chat("b")]), client_socket=ours
        )
        theirs.sendall(b"GET /next HTTP/1.1\r\n")
        assert data_of(collect(body)) == ["a", "b", "[DONE]"]
        assert ours.recv(3) == b"GET", "the relay must not consume the client's bytes"


def test_a_client_that_leaves_while_the_queue_is_full_still_ends_the_stream() -> None:
    ours, theirs = socket.socketpair()
    upstream = Upstream(endless())
    with ours, theirs:
        body = sse_frames(upstream, keepalive_seconds=0.05, client_socket=ours)
        time.sleep(0.2)  # the relay's queue fills up: nobody reads the body yet
        theirs.close()
        assert upstream.closed.wait(2), "the relay should notice and close the upstream"
        received, deadline = b"", time.monotonic() + 2
        for frame in body:
            received += frame
            if time.monotonic() > deadline:
                break
        close(body)
    assert time.monotonic() < deadline, "the stream should end once the client is gone"
    assert DONE not in received


def test_the_headers_keep_proxies_and_browsers_from_buffering() -> None:
    assert SSE_HEADERS["Content-Type"] == "text/event-stream; charset=utf-8"
    assert TEXT_HEADERS["Content-Type"] == "text/plain; charset=utf-8"
    for headers in (SSE_HEADERS, TEXT_HEADERS):
        assert (
            headers["Cache-Control"] == "no-cache"
            and headers["X-Accel-Buffering"] == "no"
        )
    assert TEXT_HEADERS["X-Content-Type-Options"] == "nosniff"
