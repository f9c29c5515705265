"""Unit tests of the streaming core (``shared/streaming.py``), without a real network.

SSE bodies are read back with httpx-sse's decoder (``tests.client.parse_sse``), an
independent parser, so a framing bug can't hide behind a matching parsing bug. The
upstream is fed in every accepted shape: SDK objects, plain dicts, raw SSE bytes (lists
of reads, an httpx response) and real openai SDK streams over a mock transport.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import socket
import ssl
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
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st
from openai._models import construct_type
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
    MAX_EVENT_BYTES,
    SSE_HEADERS,
    TEXT_HEADERS,
    StreamError,
    UpstreamFailed,
    open_upstream,
    sse_event,
    sse_frames,
    text_stream,
)
from shared.upstream import LeanHttpClient
from tests import fake_upstream
from tests.client import parse_sse
from tests.gevent_rerun import assert_passes_under_gevent, patched

# Threads can't be interrupted: these follow what a helper thread does after the
# stream ends. Under gevent the helper greenlet is killed instead (the servers'
# tests see the upstream request cancelled: tests/test_keepalive_clock.py).
threads_only = pytest.mark.skipif(patched(), reason="the thread relay's own behaviour")

FAST = settings(deadline=None, max_examples=60)
KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
USAGE = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
USAGE_FRAME = b"event: usage\ndata: " + json.dumps(USAGE).encode() + b"\n\n"
# The conversation every upstream shape below carries: "Hel", "lo\nyou", usage 4/2/6.


def finish_frame(reason: str) -> bytes:
    return f'event: finish\ndata: {{"reason": "{reason}"}}\n\n'.encode()


FINISH_STOP = finish_frame("stop")
EXPECTED_SSE = (
    b"data: Hel\n\ndata: lo\ndata: you\n\n" + FINISH_STOP + USAGE_FRAME + DONE
)
EXPECTED_TEXT = b"Hello\nyou"
REQUEST = httpx2.Request("POST", "https://api.example/v1/chat/completions")
SECRET = "sk-proj-AbCdEf0123456789"

# --- Upstream builders ----------------------------------------------------------------

CHUNK = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
LEGACY = {"id": "c1", "object": "text_completion", "created": 1, "model": "m"}
RESPONSE = {"id": "r1", "object": "response", "created_at": 1, "model": "m"}
RESPONSE |= {"output": [], "parallel_tool_calls": True, "tool_choice": "auto"}
RESPONSE |= {"tools": [], "status": "completed"}
RESPONSES_USAGE: dict[str, Any] = {
    "input_tokens": 4,
    "output_tokens": 2,
    "total_tokens": 6,
}
RESPONSES_USAGE |= {
    "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
    "output_tokens_details": {"reasoning_tokens": 0},
}


def chat(text: object, **choice: Any) -> dict[str, Any]:
    return {**CHUNK, "choices": [{"index": 0, "delta": {"content": text}, **choice}]}


def chat_dicts() -> list[dict[str, Any]]:
    role = {**CHUNK, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
    finish = {**CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    usage = {**CHUNK, "choices": [], "usage": USAGE}
    return [role, chat("Hel"), chat("lo\nyou"), finish, usage]


def legacy(text: str, finish_reason: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "text": text, "finish_reason": finish_reason}
    return {**LEGACY, "choices": [choice | {"logprobs": None}]}


def legacy_dicts() -> list[dict[str, Any]]:
    usage = {**LEGACY, "choices": [], "usage": USAGE}
    return [legacy("Hel"), legacy("lo\nyou"), legacy("", "stop"), usage]


def text_delta(text: str) -> dict[str, Any]:
    delta = {"type": "response.output_text.delta", "delta": text, "logprobs": []}
    return delta | {"item_id": "m1", "output_index": 0, "content_index": 0}


def responses_dicts() -> list[dict[str, Any]]:
    created = {"type": "response.created", "response": RESPONSE}
    usage = {"usage": RESPONSES_USAGE}
    completed = {"type": "response.completed", "response": RESPONSE | usage}
    events = [created, text_delta("Hel"), text_delta("lo\nyou"), completed]
    return [event | {"sequence_number": n} for n, event in enumerate(events)]


def responses_sdk() -> list[Any]:
    _, hel, lo, completed = responses_dicts()
    deltas = [ResponseTextDeltaEvent.model_validate(d) for d in (hel, lo)]
    return [*deltas, ResponseCompletedEvent.model_validate(completed)]


def sse_bytes(*payloads: object, eol: str = "\n", ascii_json: bool = True) -> bytes:
    """Raw upstream SSE: one ``data:`` event per payload (a str is sent as is)."""
    out = ""
    for payload in payloads:
        if not isinstance(payload, str):
            payload = json.dumps(payload, ensure_ascii=ascii_json)
        out += f"data: {payload}{eol}{eol}"
    return out.encode()


def raw_chat(eol: str = "\n") -> bytes:
    return sse_bytes(*chat_dicts(), "[DONE]", eol=eol)


@dataclass(frozen=True)
class Pause:
    """A silence in the middle of an :class:`Upstream`'s items."""

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
    """Raw SSE reads behind ``iter_bytes()`` and ``close()``, like an httpx response."""

    def iter_bytes(self) -> Iterator[bytes]:
        return iter(self)


def endless() -> Iterator[dict[str, Any]]:
    while True:
        yield chat("x")


def trickle() -> Upstream:
    """A first text, then a slow trickle that would last five seconds."""
    return Upstream([chat("first"), *[Pause(0.1), chat("more")] * 50])


def close(body: Iterable[bytes]) -> None:
    cast(Any, body).close()


def collect(body: Iterable[bytes]) -> bytes:
    """The whole body, closed afterwards as a WSGI server does."""
    try:
        return b"".join(body)
    finally:
        close(body)


def data_of(body: bytes) -> list[str]:
    return [event.data for event in parse_sse(body)]


def normalized(text: str) -> str:
    return re.sub(r"\r\n|\r", "\n", text)


Handler = Callable[[httpx2.Request], httpx2.Response]


def sdk_client(stack: ExitStack, handler: Handler) -> openai.OpenAI:
    http = stack.enter_context(httpx2.Client(transport=httpx2.MockTransport(handler)))
    base_url = "http://upstream.test/v1"
    return openai.OpenAI(
        api_key="k", base_url=base_url, max_retries=0, http_client=http
    )


def sse_answer(body: bytes) -> Handler:
    def handler(request: httpx2.Request) -> httpx2.Response:
        reads = iter([body[:50], body[50:]])  # an event split across two reads
        headers = {"content-type": "text/event-stream"}
        return httpx2.Response(200, headers=headers, content=reads)

    return handler


def sdk_chat_stream(stack: ExitStack) -> object:
    client = sdk_client(stack, sse_answer(raw_chat()))
    create = client.chat.completions.create
    return open_upstream(lambda: create(model="m", messages=[], stream=True))


def sdk_responses_stream(stack: ExitStack) -> object:
    client = sdk_client(stack, sse_answer(sse_bytes(*responses_dicts())))
    create = client.responses.create
    return open_upstream(lambda: create(model="m", input="hi", stream=True))


def sdk_raw_chat_stream(stack: ExitStack) -> object:
    """The apps' fast path: the SDK sends the request, the core reads raw bytes."""
    client = sdk_client(stack, sse_answer(raw_chat()))
    create = client.chat.completions.with_streaming_response.create
    return open_upstream(lambda: create(model="m", messages=[], stream=True))


def sdk_raw_responses_stream(stack: ExitStack) -> object:
    client = sdk_client(stack, sse_answer(sse_bytes(*responses_dicts())))
    create = client.responses.with_streaming_response.create
    return open_upstream(lambda: create(model="m", input="hi", stream=True))


def httpx_response(stack: ExitStack) -> httpx.Response:
    body = raw_chat("\r\n")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=iter([body[:9], body[9:]]))

    client = stack.enter_context(httpx.Client(transport=httpx.MockTransport(handler)))
    return client.send(
        client.build_request("POST", "http://upstream.test/"), stream=True
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
        ("\n\nevent: x\nid: 1", b"data: \ndata: \ndata: event: x\ndata: id: 1\n\n"),
        (": not a comment", b"data: : not a comment\n\n"),
        ("héllo ✓ 😀", "data: héllo ✓ 😀\n\n".encode()),
        # Not SSE line ends, though str.splitlines() breaks at them:
        ("a\u2028b\x0bc\x85d\x0c", "data: a\u2028b\x0bc\x85d\x0c\n\n".encode()),
    ],
)
def test_a_delta_is_framed_byte_exactly(text: str, frame: bytes) -> None:
    assert sse_event(text) == frame


def test_multiline_delta_is_split_into_data_lines() -> None:
    events = parse_sse(sse_event("one\r\ntwo\rthree\nfour"))
    assert [(e.event, e.data) for e in events] == [("message", "one\ntwo\nthree\nfour")]


def test_a_lone_surrogate_goes_out_as_the_replacement_character() -> None:
    # JSON can carry half a surrogate pair ("\ud83d"); streaming._utf8's comment
    # promises U+FFFD for it.
    assert sse_event("a\ud83db") == "data: a\ufffdb\n\n".encode()
    raw = sse_bytes(chat("a\ud83db"), "[DONE]")
    assert collect(text_stream([raw])) == "a\ufffdb".encode()


PIECES = ["\r", "\n", "\r\n", ":", "data: ", "event: error", "id: 1", " ", "é", "😀"]
DELTA = st.one_of(
    st.just("[DONE]"),
    st.lists(st.text(max_size=6) | st.sampled_from(PIECES), max_size=6).map("".join),
)


@FAST
@given(DELTA.filter(bool))
def test_any_delta_round_trips_through_a_conforming_parser(text: str) -> None:
    events = parse_sse(sse_event(text))
    assert all((e.event, e.id, e.retry) == ("message", "", None) for e in events)
    expected = ["[DONE", "]"] if text == "[DONE]" else [normalized(text)]
    assert [e.data for e in events] == expected


@FAST
@given(st.lists(DELTA, max_size=8))
def test_any_deltas_round_trip_as_sse_and_as_raw_text(deltas: list[str]) -> None:
    expected: list[str] = []
    for delta in filter(None, deltas):
        expected += ["[DONE", "]"] if delta == "[DONE]" else [normalized(delta)]
    events = parse_sse(collect(sse_frames([chat(d) for d in deltas])))
    assert [(e.event, e.data) for e in events] == [
        *(("message", data) for data in expected),
        ("message", "[DONE]"),
    ]
    assert collect(text_stream([chat(d) for d in deltas])) == "".join(deltas).encode()


# --- Every accepted upstream ----------------------------------------------------------

UPSTREAMS: dict[str, Callable[[ExitStack], Any]] = {
    "chat-dicts": lambda _: chat_dicts(),
    "chat-sdk": lambda _: [ChatCompletionChunk.model_validate(c) for c in chat_dicts()],
    "legacy-dicts": lambda _: legacy_dicts(),
    # As the SDK builds stream chunks: leniently (a chunk's finish_reason is null).
    "legacy-sdk": lambda _: [
        construct_type(type_=Completion, value=c) for c in legacy_dicts()
    ],
    "responses-dicts": lambda _: responses_dicts(),
    "responses-sdk": lambda _: responses_sdk(),
    "raw-sse-one-read": lambda _: [raw_chat()],
    "raw-sse-responses-api": lambda _: [sse_bytes(*responses_dicts())],
    "raw-sse-iter-bytes": lambda _: RawUpstream([raw_chat("\r")]),
    "httpx-response": httpx_response,
    "openai-sdk-chat-stream": sdk_chat_stream,
    "openai-sdk-responses-stream": sdk_responses_stream,
    "openai-sdk-raw-chat": sdk_raw_chat_stream,
    "openai-sdk-raw-responses": sdk_raw_responses_stream,
}


@pytest.mark.parametrize("make", UPSTREAMS.values(), ids=UPSTREAMS.keys())
def test_every_accepted_upstream_gives_the_same_sse_body(
    make: Callable[[ExitStack], Any], stack: ExitStack
) -> None:
    upstream = make(stack)
    assert collect(sse_frames(upstream)) == EXPECTED_SSE
    if isinstance(upstream, httpx.Response):
        assert upstream.is_closed


@pytest.mark.parametrize("make", UPSTREAMS.values(), ids=UPSTREAMS.keys())
def test_every_accepted_upstream_gives_the_same_raw_text(
    make: Callable[[ExitStack], Any], stack: ExitStack
) -> None:
    assert collect(text_stream(make(stack))) == EXPECTED_TEXT


HI = chat("hi")
STOP = {**CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
EXTRA = {"x_groq": {"id": "q"}, "system_fingerprint": None, "service_tier": "flex"}
MESSAGE = {"index": 0, "message": {"role": "assistant", "content": "hi"}}
MESSAGE |= {"finish_reason": "stop"}
QUIRKS = {
    "extra-fields": sse_bytes(chat("hi", logprobs=None, reasoning=None) | EXTRA) + DONE,
    "chat-completion-objects": sse_bytes(
        {"object": "chat.completion", "choices": [MESSAGE]}
    ),
    "empty-choices": sse_bytes({**CHUNK, "choices": []}, HI, "[DONE]"),
    "no-choices-key": sse_bytes({"id": "x"}, HI, "[DONE]"),
    "finish-reason-without-done": sse_bytes(HI, STOP),
    "no-final-blank-line": sse_bytes(HI, STOP)[:-1],
    "comments": b": OPENROUTER PROCESSING\n\n" + sse_bytes(HI) + b": ping\n\n" + DONE,
    "event-id-retry-fields": b"event: message\nid: 7\nretry: 100\n"
    + sse_bytes(HI, "[DONE]"),
    "crlf": sse_bytes(HI, "[DONE]", eol="\r\n"),
    "cr": sse_bytes(HI, "[DONE]", eol="\r"),
    "no-space-after-colon": b"data:" + sse_bytes(HI, "[DONE]")[6:],
    "done-with-spaces": sse_bytes(HI, " [DONE] ", chat("nope")),
    "text-after-done": sse_bytes(HI, "[DONE]", chat("nope")),
    "other-choices": sse_bytes(chat("nope", index=1), HI, "[DONE]"),
    "null-content-tool-calls": sse_bytes(
        chat(None), HI, chat(None, tool_calls=[]), "[DONE]"
    ),
    "legacy-text": sse_bytes({"choices": [{"index": 0, "text": "hi"}]}, "[DONE]"),
    "legacy-finish-reason": sse_bytes(
        {"choices": [{"index": 0, "text": "hi", "finish_reason": "length"}]}
    ),
    # The whole message again in the last chunk, beside its empty delta: not new.
    "empty-delta-and-whole-message": sse_bytes(
        HI, {"choices": [{"index": 0, "delta": {}} | MESSAGE]}, "[DONE]"
    ),
    "empty-delta-and-text": sse_bytes(
        {"choices": [{"delta": {}, "text": ""}]}, HI, "[DONE]"
    ),
    "other-responses-events": sse_bytes(
        {"type": "response.in_progress"},
        text_delta("hi"),
        {"type": "response.completed", "response": RESPONSE},
    ),
}


# The quirks whose upstream says why the answer ended.
QUIRK_FINISHES = {
    "chat-completion-objects": "stop",
    "finish-reason-without-done": "stop",
    "no-final-blank-line": "stop",
    "legacy-finish-reason": "length",
    "empty-delta-and-whole-message": "stop",
    "other-responses-events": "stop",
}


@pytest.mark.parametrize(("name", "raw"), QUIRKS.items(), ids=QUIRKS.keys())
def test_provider_quirks_are_tolerated(name: str, raw: bytes) -> None:
    assert collect(text_stream([raw])) == b"hi"
    finish = finish_frame(QUIRK_FINISHES[name]) if name in QUIRK_FINISHES else b""
    assert collect(sse_frames([raw])) == b"data: hi\n\n" + finish + DONE


@pytest.mark.parametrize(
    ("usage", "sent"),
    [
        ({"prompt_tokens": 3, "completion_tokens": 5}, (3, 5, 8)),
        (
            {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 9, "x": 1},
            (3, 5, 9),
        ),
        ({"completion_tokens": 2}, (0, 2, 2)),
    ],
)
def test_usage_is_one_event_with_the_contracts_fields(
    usage: dict[str, int], sent: tuple[int, int, int]
) -> None:
    body = collect(sse_frames([HI, {"choices": [], "usage": usage}]))
    prompt, completion, total = sent
    usage_data = (
        f'{{"prompt_tokens": {prompt}, "completion_tokens": {completion}, '
        f'"total_tokens": {total}}}'
    )
    assert body == f"data: hi\n\nevent: usage\ndata: {usage_data}\n\n".encode() + DONE


EMPTY_DELTAS: dict[str, list[Any]] = {
    "chat-dict": [chat(""), chat("x")],
    "chat-sdk": [ChatCompletionChunk.model_validate(chat(t)) for t in ("", "x")],
    "legacy": [{"choices": [{"text": ""}]}, {"choices": [{"text": "x"}]}],
    "responses-dict": [text_delta(""), text_delta("x")],
    "responses-sdk": [
        ResponseTextDeltaEvent.model_validate(text_delta(t) | {"sequence_number": 1})
        for t in ("", "x")
    ],
}


@pytest.mark.parametrize("chunks", EMPTY_DELTAS.values(), ids=EMPTY_DELTAS.keys())
def test_an_empty_delta_produces_no_event(chunks: list[Any]) -> None:
    tokens: list[str] = []
    assert collect(sse_frames(chunks, on_token=tokens.append)) == b"data: x\n\n" + DONE
    assert tokens == ["x"]


def test_non_text_content_is_never_reported_as_usage() -> None:
    # Some providers send content as a list of parts. Whatever the relay makes of
    # it, it must not become an ``event: usage`` carrying model output.
    usages: list[object] = []
    parts = chat([{"type": "text", "text": "hi"}])
    body = collect(sse_frames([parts, chat("!")], on_usage=usages.append))
    assert b"event: usage" not in body
    assert usages == []


# --- Parsing raw upstream SSE ---------------------------------------------------------


def payloads(*reads: bytes) -> list[str]:
    decoder = streaming._SseDecoder()
    return [data for read in reads for data in decoder.payloads(read)] + decoder.flush()


def split(body: bytes, points: Iterable[int]) -> list[bytes]:
    edges = [0, *sorted(set(points)), len(body)]
    return [body[a:b] for a, b in zip(edges, edges[1:], strict=False) if a < b]


def bytewise(body: bytes) -> list[bytes]:
    return split(body, range(1, len(body)))


SPEC_EXAMPLES = [  # from the WHATWG HTML spec, 9.2 Server-sent events
    (b"data: YHOO\ndata: +2\ndata: 10\n\n", ["YHOO\n+2\n10"]),
    (
        b": test stream\n\ndata: first event\nid: 1\n\n"
        b"data:second event\nid\n\ndata:  third event\n\n",
        ["first event", "second event", " third event"],
    ),
    (b"data:test\n\ndata: test\n\n", ["test", "test"]),
    (
        b"event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\n"
        b"event: add\ndata: 113411\n\n",
        ["73857293", "2153", "113411"],
    ),
]


@pytest.mark.parametrize(("stream", "expected"), SPEC_EXAMPLES)
def test_the_spec_examples_parse_as_the_spec_says(
    stream: bytes, expected: list[str]
) -> None:
    assert payloads(stream) == expected
    assert payloads(*bytewise(stream)) == expected
    assert data_of(stream) == expected


SPLITS: dict[str, Callable[[bytes], list[int]]] = {
    "whole": lambda body: [],
    "one-byte-at-a-time": lambda body: list(range(1, len(body))),
    "mid-line": lambda body: [m.start() + 4 for m in re.finditer(rb"data: ", body)],
    "mid-utf8": lambda body: [i for i, b in enumerate(body) if 0x80 <= b < 0xC0],
    "after-each-cr": lambda body: [i + 1 for i, b in enumerate(body) if b == 0x0D],
}


@pytest.mark.parametrize("points", SPLITS.values(), ids=SPLITS.keys())
@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
def test_raw_sse_survives_awkward_splits(
    eol: str, points: Callable[[bytes], list[int]]
) -> None:
    deltas = [chat("héllo "), chat("😀\r\n"), chat("wörld"), {"usage": USAGE}]
    body = sse_bytes(*deltas, "[DONE]", eol=eol, ascii_json=False)
    reads = split(body, points(body))
    assert collect(text_stream(RawUpstream(reads))) == "héllo 😀\r\nwörld".encode()
    expected = "data: héllo \n\ndata: 😀\ndata: \n\ndata: wörld\n\n".encode()
    assert collect(sse_frames(RawUpstream(reads))) == expected + USAGE_FRAME + DONE


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
def test_a_json_chunk_spread_over_data_lines_survives_one_byte_reads(eol: str) -> None:
    # An event's data lines are joined with "\n", so JSON may span several of them.
    lines = ['data: {"choices": [{"index": 0,', 'data: "delta": {"content": "hi"}}]}']
    body = "".join(line + eol for line in [*lines, "", "data: [DONE]", ""]).encode()
    assert collect(text_stream([body])) == b"hi"
    assert collect(text_stream(bytewise(body))) == b"hi"


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
    # Either end of a whole stream: [DONE], or a finish reason and the body's end.
    body += DONE if data.draw(st.booleans()) else sse_bytes(STOP)
    points = data.draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=12))
    assert collect(text_stream(split(body, points))) == "".join(deltas).encode()


VALUE = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=8)
LINE = st.sampled_from(["data:", ":", "event:"]).flatmap(lambda f: VALUE.map(f.__add__))


@FAST
@given(st.lists(st.lists(LINE, max_size=4), max_size=5), st.data())
def test_upstream_sse_parsing_agrees_with_httpx_sse(
    blocks: list[list[str]], data: st.DataObject
) -> None:
    """Differential: any event stream, split anywhere, gives httpx-sse's data."""
    lines = [line for block in blocks for line in [*block, "data:x", ""]]
    body = "".join(line + data.draw(EOL) for line in lines).encode() + b"\n\n"
    points = data.draw(st.lists(st.integers(1, len(body) - 1), max_size=12))
    assert payloads(*split(body, points)) == data_of(body)


# --- Keep-alive -----------------------------------------------------------------------


def test_silence_before_the_first_text_starts_the_response_with_keepalives() -> None:
    started = time.monotonic()
    body = sse_frames(Upstream([Pause(0.3), HI]), keepalive_seconds=0.05)
    assert time.monotonic() - started < 0.25, "the response should start in the silence"
    frames = list(body)
    close(body)
    assert frames[0] == KEEPALIVE
    assert b"".join(frames).replace(KEEPALIVE, b"") == b"data: hi\n\n" + DONE


def test_silence_between_deltas_is_filled_with_keepalive_comments() -> None:
    upstream = Upstream([chat("a"), Pause(0.2), chat("b")])
    body = collect(sse_frames(upstream, keepalive_seconds=0.05))
    assert re.fullmatch(
        rb"data: a\n\n(: keep-alive\n\n)+data: b\n\n" + re.escape(DONE), body
    )
    assert data_of(body) == ["a", "b", "[DONE]"]


def test_raw_text_never_contains_keepalives() -> None:
    upstream = Upstream([Pause(0.1), chat("a"), Pause(0.1), chat("b")])
    assert collect(text_stream(upstream)) == b"ab"


# --- Failures -------------------------------------------------------------------------

TIMED_OUT = ("upstream_timeout", "The upstream timed out.")
NO_CONNECTION = ("upstream_connection_error", "The connection to the upstream failed.")


SERVER_FAILED = ("server_error", "The server failed; the failure is logged.")


def failed(message: str) -> tuple[str, str]:
    return ("upstream_error", message)


def connection_error() -> openai.APIConnectionError:
    return openai.APIConnectionError(request=REQUEST)


def responses_failed() -> dict[str, Any]:
    error = {"code": "server_error", "message": "It broke"}
    return {"type": "response.failed", "response": RESPONSE | {"error": error}}


def responses_error() -> ResponseErrorEvent:
    event = {"type": "error", "code": "x", "message": "Bad", "param": None}
    return ResponseErrorEvent.model_validate(event | {"sequence_number": 1})


RAW_ERROR = b'event: error\ndata: {"error": {"message": "Overloaded"}}\n\n'
FAILURES = [  # what the upstream sends (or raises), and the error's (type, message)
    pytest.param(lambda: openai.APITimeoutError(REQUEST), TIMED_OUT, id="timeout"),
    pytest.param(connection_error, NO_CONNECTION, id="connection"),
    pytest.param(
        lambda: openai.APIError(f"Bad key {SECRET}", REQUEST, body=None),
        failed("Bad key [redacted]"),
        id="sdk-mid-stream-error",
    ),
    pytest.param(lambda: RuntimeError(SECRET), SERVER_FAILED, id="bug"),
    pytest.param(
        lambda: {"error": {"message": f"Overloaded {SECRET}", "code": 503}},
        failed("Overloaded [redacted]"),
        id="error-chunk",
    ),
    pytest.param(lambda: {"error": "boom"}, failed("boom"), id="error-string"),
    pytest.param(
        lambda: {"object": "error", "message": f"Bad {SECRET}", "code": 400},
        failed("Bad [redacted]"),
        id="flat-error-object",
    ),
    pytest.param(
        lambda: b"data: " + b"x" * MAX_EVENT_BYTES,
        failed(f"The upstream sent an event over {MAX_EVENT_BYTES} bytes."),
        id="raw-endless-line",
    ),
    pytest.param(
        lambda: {"type": "error", "error": {"type": "overloaded", "message": "Busy"}},
        failed("Busy"),
        id="anthropic-style-error",
    ),
    pytest.param(responses_failed, failed("It broke"), id="responses-failed"),
    pytest.param(
        lambda: ResponseFailedEvent.model_validate(
            responses_failed() | {"sequence_number": 1}
        ),
        failed("It broke"),
        id="responses-failed-sdk",
    ),
    pytest.param(responses_error, failed("Bad"), id="responses-error-sdk"),
    pytest.param(lambda: RAW_ERROR, failed("Overloaded"), id="raw-error-event"),
    pytest.param(
        lambda: b"data: {not json\n\n",
        failed("The upstream sent a malformed chunk."),
        id="raw-malformed-json",
    ),
]
# The upstream's failures: a bug before any output is raised as it is (see below).
UPSTREAM_FAILURES = [f for f in FAILURES if f.id != "bug"]


def then_failing(first: dict[str, Any], failure: object) -> Upstream:
    """``first`` (raw SSE if the failure is raw), then the failure."""
    if isinstance(failure, bytes):
        return Upstream([sse_bytes(first), failure])
    return Upstream([first, failure])


@pytest.mark.parametrize(("failure", "error"), UPSTREAM_FAILURES)
@pytest.mark.parametrize("stream", [sse_frames, text_stream], ids=["sse", "text"])
def test_a_failure_before_any_output_raises_stream_error(
    stream: Callable[..., Iterable[bytes]],
    failure: Callable[[], object],
    error: tuple[str, str],
) -> None:
    upstream = then_failing(chat(""), failure())  # a first chunk, but no text yet
    errors: list[BaseException] = []
    completions: list[str] = []
    with pytest.raises(StreamError) as info:
        stream(upstream, on_error=errors.append, on_completion=completions.append)
    status = 504 if error == TIMED_OUT else 502
    assert (info.value.status, info.value.type, info.value.message) == (status, *error)
    assert upstream.closed.is_set()
    assert len(errors) == 1 and completions == []


@pytest.mark.parametrize(("failure", "error"), FAILURES)
def test_a_failure_after_output_ends_sse_with_an_error_event(
    failure: Callable[[], object], error: tuple[str, str]
) -> None:
    upstream = then_failing(chat("partial"), failure())
    errors: list[BaseException] = []
    completions: list[str] = []
    body = sse_frames(
        upstream, on_error=errors.append, on_completion=completions.append
    )
    kind, message = error
    event = json.dumps({"message": message, "type": kind})
    assert collect(body) == f"data: partial\n\nevent: error\ndata: {event}\n\n".encode()
    assert upstream.closed.is_set()
    assert len(errors) == 1 and completions == []


@pytest.mark.parametrize(("failure", "error"), FAILURES)
def test_a_failure_after_output_cuts_raw_text_off(
    failure: Callable[[], object], error: tuple[str, str]
) -> None:
    upstream = then_failing(chat("partial"), failure())
    body = text_stream(upstream)
    received: list[bytes] = []
    with pytest.raises(UpstreamFailed, match=re.escape(error[1])):
        received.extend(body)
    close(body)
    assert received == [b"partial"]
    assert upstream.closed.is_set()


@pytest.mark.parametrize("stream", [sse_frames, text_stream], ids=["sse", "text"])
def test_a_bug_before_any_output_is_raised_as_it_is(
    stream: Callable[..., Iterable[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    """Not passed off as an upstream failure: the framework answers 500 and logs it."""
    upstream = then_failing(chat(""), KeyError("a bug in a callback"))
    errors: list[BaseException] = []
    with caplog.at_level(logging.ERROR, logger=streaming.__name__):
        with pytest.raises(KeyError, match="a bug in a callback"):
            stream(upstream, on_error=errors.append)
    assert upstream.closed.is_set()
    assert len(errors) == 1
    assert not caplog.records  # the framework logs it, once


def test_a_bug_after_output_is_logged_once_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client sees a server error; the log has what went wrong."""
    upstream = then_failing(chat("partial"), KeyError("a bug in the relay"))
    with caplog.at_level(logging.ERROR, logger=streaming.__name__):
        body = collect(sse_frames(upstream))
    [_, error] = parse_sse(body)
    assert (error.event, json.loads(error.data)) == (
        "error",
        dict(zip(("type", "message"), SERVER_FAILED, strict=True)),
    )
    (record,) = caplog.records
    assert "Traceback" in record.message
    assert "KeyError: 'a bug in the relay'" in record.message


@pytest.mark.parametrize(("failure", "error"), UPSTREAM_FAILURES)
def test_an_upstream_failure_is_not_logged_as_a_bug(
    failure: Callable[[], object],
    error: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger=streaming.__name__):
        collect(sse_frames(then_failing(chat("partial"), failure())))
    assert not caplog.records, caplog.text


def test_text_and_a_failure_in_the_same_read_keep_the_text() -> None:
    raw = sse_bytes(HI, {"error": {"message": "late"}})
    error = b'event: error\ndata: {"message": "late", "type": "upstream_error"}\n\n'
    assert collect(sse_frames([raw])) == b"data: hi\n\n" + error


def test_a_failure_after_a_keepalive_is_an_error_event_not_a_status() -> None:
    upstream = Upstream([Pause(0.2), connection_error()])
    body = collect(sse_frames(upstream, keepalive_seconds=0.05))
    assert body.startswith(KEEPALIVE) and DONE not in body
    [event] = parse_sse(body)
    assert (event.event, json.loads(event.data)["type"]) == ("error", NO_CONNECTION[0])


def test_an_empty_upstream_is_just_done() -> None:
    completions: list[str] = []
    assert collect(sse_frames([], on_completion=completions.append)) == DONE
    assert completions == [""]
    assert collect(text_stream(iter([]))) == b""


# --- open_upstream --------------------------------------------------------------------

STATUS_ERRORS = {400: openai.BadRequestError, 401: openai.AuthenticationError}
STATUS_ERRORS |= {404: openai.NotFoundError, 429: openai.RateLimitError}
STATUS_ERRORS |= {500: openai.InternalServerError}
ECHO = {"message": f"Incorrect API key provided: {SECRET}", "type": "invalid_request"}
REDACTED_ECHO = "Incorrect API key provided: [redacted]"


def status_error(status: int, body: object, **headers: str) -> openai.APIStatusError:
    cls = STATUS_ERRORS.get(status, openai.APIStatusError)
    response = httpx2.Response(status, headers=headers, request=REQUEST)
    return cls(f"Error code: {status}", response=response, body=body)


def bad_request(message: str) -> tuple[int, str, str]:
    return (400, "upstream_bad_request", message)


NOT_FOUND_HINT = (
    " Check the model name, and that the base URL ends with the API's version path"
    " (e.g. /v1)."
)


def answered(status: int) -> tuple[int, str, str]:
    hint = NOT_FOUND_HINT if status == 404 else ""
    return (502, "upstream_error", f"The upstream answered {status}.{hint}")


RATE_LIMITED = (429, "rate_limited", "The upstream is rate limiting requests.")
MAPPINGS = [  # what create() raises, and the StreamError's (status, type, message)
    pytest.param(openai.APITimeoutError(REQUEST), (504, *TIMED_OUT), id="timeout"),
    pytest.param(connection_error(), (502, *NO_CONNECTION), id="connection"),
    pytest.param(status_error(400, {"message": "No"}), bad_request("No"), id="400"),
    pytest.param(
        status_error(400, {"error": {"message": "Nested"}}),
        bad_request("Nested"),
        id="400-nested",
    ),
    pytest.param(status_error(400, ECHO), bad_request(REDACTED_ECHO), id="400-key"),
    pytest.param(
        status_error(400, None), bad_request("Error code: 400"), id="400-no-body"
    ),
    pytest.param(status_error(429, ECHO), RATE_LIMITED, id="429"),
    *(
        pytest.param(status_error(n, ECHO), answered(n), id=str(n))
        for n in (401, 404, 418, 500, 503)
    ),
    pytest.param(
        openai.APIError(f"Bad key {SECRET}", REQUEST, body=None),
        (502, *failed("Bad key [redacted]")),
        id="api-error",
    ),
    pytest.param(UpstreamFailed("Cut off"), (502, *failed("Cut off")), id="failed"),
    # Raised by httpx2 itself while the core reads raw bytes, unwrapped by the SDK.
    pytest.param(
        httpx2.ReadTimeout("timed out", request=REQUEST),
        (504, *TIMED_OUT),
        id="read-timeout",
    ),
    pytest.param(
        httpx2.RemoteProtocolError("peer closed", request=REQUEST),
        (502, *NO_CONNECTION),
        id="protocol-error",
    ),
]


def raising(exc: BaseException) -> Callable[[], object]:
    def create() -> object:
        raise exc

    return create


@pytest.mark.parametrize(("exc", "expected"), MAPPINGS)
def test_open_upstream_maps_sdk_errors_to_the_contracts_status(
    exc: BaseException, expected: tuple[int, str, str]
) -> None:
    with pytest.raises(StreamError) as info:
        open_upstream(raising(exc))
    error = info.value
    assert (error.status, error.type, error.message) == expected
    assert error.headers == {} and error.__cause__ is exc
    _, kind, message = expected
    assert json.loads(error.body()) == {"error": {"message": message, "type": kind}}


def test_a_429_passes_retry_after_through() -> None:
    with pytest.raises(StreamError) as info:
        open_upstream(raising(status_error(429, ECHO, **{"Retry-After": "7"})))
    assert (info.value.status, info.value.headers) == (429, {"Retry-After": "7"})


def test_open_upstream_returns_the_stream_and_passes_stream_errors_through() -> None:
    assert open_upstream(lambda: 42) == 42
    original = StreamError(418, "teapot", "x", {"A": "b"})
    with pytest.raises(StreamError) as info:
        open_upstream(raising(original))
    assert info.value is original
    assert original.body() == b'{"error": {"message": "teapot", "type": "x"}}'


@pytest.mark.parametrize(
    "bug",
    [
        pytest.param(lambda: openai.OpenAI(api_key=None), id="no-key"),
        pytest.param(
            lambda: openai.OpenAI(api_key="k").chat.completions.create(
                model="m", messages=[], stream=True, stream_option={}
            ),
            id="typo",
        ),
    ],
)
def test_open_upstream_raises_the_callers_own_failure_as_it_is(
    bug: Callable[[], object],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A missing key or a typo is no upstream's failure: not a 502, but the
    framework's 500 and its logged traceback."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with caplog.at_level(logging.WARNING, logger=streaming.__name__):
        with pytest.raises((openai.OpenAIError, TypeError)) as info:
            open_upstream(bug)
    assert not isinstance(info.value, StreamError | openai.APIError)
    assert not caplog.records


@pytest.mark.parametrize("status", [401, 403, 404, 429, 500])
def test_an_upstream_error_status_is_logged_in_the_upstreams_words(
    status: int, stack: ExitStack, caplog: pytest.LogCaptureFixture
) -> None:
    """Whoever runs the server sees why: a wrong key, a base URL without /v1."""
    handler = answer(status, {"error": ECHO})
    create = sdk_client(stack, handler).chat.completions.create
    with caplog.at_level(logging.WARNING, logger=streaming.__name__):
        with pytest.raises(StreamError):
            open_upstream(lambda: create(model="m", messages=[], stream=True))
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        f"The upstream answered {status} to POST "
        f"http://upstream.test/v1/chat/completions: {REDACTED_ECHO}"
    )
    assert SECRET not in caplog.text


def test_an_upstream_400_is_told_to_the_client_not_logged(
    stack: ExitStack, caplog: pytest.LogCaptureFixture
) -> None:
    create = sdk_client(stack, answer(400, {"error": ECHO})).chat.completions.create
    with caplog.at_level(logging.WARNING, logger=streaming.__name__):
        with pytest.raises(StreamError):
            open_upstream(lambda: create(model="m", messages=[], stream=True))
    assert not caplog.records


def answer(status: int, body: object, **headers: str) -> Handler:
    return lambda request: httpx2.Response(status, json=body, headers=headers)


def transport_error(cls: type[httpx2.TransportError]) -> Handler:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise cls("no", request=request)

    return handler


REAL_SDK = [  # the mock upstream's answer; the StreamError's status, type, message
    pytest.param(answer(400, {"error": ECHO}), bad_request(REDACTED_ECHO), id="400"),
    pytest.param(answer(503, {"error": ECHO}), answered(503), id="503"),
    pytest.param(transport_error(httpx2.ReadTimeout), (504, *TIMED_OUT), id="timeout"),
    pytest.param(
        transport_error(httpx2.ConnectError), (502, *NO_CONNECTION), id="refused"
    ),
]


@pytest.mark.parametrize(("handler", "expected"), REAL_SDK)
def test_open_upstream_maps_the_real_sdks_failures(
    handler: Handler, expected: tuple[int, str, str], stack: ExitStack
) -> None:
    create = sdk_client(stack, handler).chat.completions.create
    with pytest.raises(StreamError) as info:
        open_upstream(lambda: create(model="m", messages=[], stream=True))
    assert (info.value.status, info.value.type, info.value.message) == expected


def test_the_real_sdks_429_passes_retry_after_through(stack: ExitStack) -> None:
    handler = answer(429, {"error": ECHO}, **{"retry-after": "3"})
    create = sdk_client(stack, handler).chat.completions.create
    with pytest.raises(StreamError) as info:
        open_upstream(lambda: create(model="m", messages=[], stream=True))
    assert (info.value.status, info.value.headers) == (429, {"Retry-After": "3"})


def test_a_400_with_a_plain_string_error_keeps_the_upstream_message(
    stack: ExitStack,
) -> None:
    # {"error": "..."}, as some OpenAI-compatible servers answer a bad request.
    handler = answer(400, {"error": "Model 'x' not found"})
    create = sdk_client(stack, handler).chat.completions.create
    with pytest.raises(StreamError) as info:
        open_upstream(lambda: create(model="x", messages=[], stream=True))
    assert info.value.status == 400
    assert "Model 'x' not found" in info.value.message


# --- Callbacks ------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [sse_frames, text_stream], ids=["sse", "text"])
def test_callbacks_see_the_start_each_token_the_usage_and_the_full_text(
    stream: Callable[..., Iterable[bytes]],
) -> None:
    calls: list[tuple[str, object]] = []
    deltas = ["Hel", "lo\r\nyou", "[DONE]"]

    def upstream() -> Iterator[dict[str, Any]]:
        calls.append(("read", None))
        yield from [*(chat(d) for d in deltas), {"usage": USAGE}]

    callbacks = {
        "on_start": lambda: calls.append(("start", None)),
        "on_token": lambda text: calls.append(("token", text)),
        "on_usage": lambda usage: calls.append(("usage", usage)),
        "on_completion": lambda text: calls.append(("completion", text)),
        "on_error": lambda exc: calls.append(("error", exc)),
    }
    collect(stream(upstream(), **callbacks))
    assert calls == [
        ("start", None),
        ("read", None),
        *(("token", d) for d in deltas),
        ("usage", USAGE),
        ("completion", "Hello\r\nyou[DONE]"),
    ]


# --- Closing, and the client leaving --------------------------------------------------


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


@pytest.mark.parametrize("stream", [sse_frames, text_stream], ids=["sse", "text"])
def test_what_follows_done_is_read_before_the_upstream_is_closed(
    stream: Callable[..., Iterable[bytes]],
) -> None:
    """An HTTP response read to its end returns its connection to the pool."""
    upstream = RawUpstream([raw_chat(), b"\r\n", b""])
    body = stream(upstream)
    b"".join(body)
    close(body)
    assert upstream.closed.is_set() and upstream.reads == 3


def test_closing_the_body_closes_a_generator_upstream() -> None:
    finished = threading.Event()

    def upstream() -> Iterator[dict[str, Any]]:
        try:
            yield from endless()
        finally:
            finished.set()

    close(sse_frames(upstream()))
    assert finished.is_set()


def test_a_relay_never_started_still_closes_its_upstream() -> None:
    upstream = Upstream([HI])
    streaming._ThreadRelay(
        upstream, streaming.SseEncoder(), None, None, streaming._Hooks()
    ).close()
    assert upstream.closed.is_set()


def test_a_slow_client_pauses_the_upstream() -> None:
    upstream = Upstream(endless())
    body = sse_frames(upstream)
    time.sleep(0.2)
    assert upstream.reads <= streaming._QUEUE_SIZE + 2, "it should wait for the client"
    close(body)


class SocketResponse:
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
    """Shaped like an openai SDK stream: the httpx response is its ``response``."""

    def __init__(self, response: SocketResponse) -> None:
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
        response = SocketResponse(ours)
        upstream = response if shape == "httpx-response" else SdkShaped(response)
        body = sse_frames(cast(Any, upstream))
        assert next(iter(body)) == b"data: hi\n\n"
        started = time.monotonic()
        close(body)
        assert time.monotonic() - started < 0.5
        assert response.closed.is_set()
        assert theirs.recv(1) == b"", "the upstream should see the connection closed"
        close(body)  # the socket is closed by now: a second close is harmless


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
    upstream = trickle()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
        with ours:
            body = sse_frames(upstream, keepalive_seconds=0.05, client_socket=ours)
            client.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            client.close()  # sends an RST: peeking at the socket fails
            started = time.monotonic()
            received = collect(body)
            assert time.monotonic() - started < 1.0
    assert DONE not in received
    assert upstream.closed.is_set()


def test_a_client_sending_its_next_request_is_not_taken_for_gone() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        upstream = Upstream([chat("a"), Pause(0.1), chat("b")])
        body = sse_frames(upstream, client_socket=ours)
        theirs.sendall(b"GET /next HTTP/1.1\r\n")
        assert data_of(collect(body)) == ["a", "b", "[DONE]"]
        assert ours.recv(3) == b"GET", "the relay must not consume the client's bytes"


def test_a_client_that_stays_through_a_long_silence_is_not_taken_for_gone() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:  # the watcher polls the idle socket in half-second rounds
        upstream = Upstream([chat("a"), Pause(0.6), chat("b")])
        body = collect(sse_frames(upstream, keepalive_seconds=0.2, client_socket=ours))
    assert data_of(body) == ["a", "b", "[DONE]"]


@threads_only
def test_a_client_that_leaves_while_the_queue_is_full_still_ends_the_stream() -> None:
    ours, theirs = socket.socketpair()
    upstream = Upstream(endless())
    with ours, theirs:
        body = sse_frames(upstream, keepalive_seconds=0.05, client_socket=ours)
        time.sleep(0.2)  # the relay's queue fills up: nobody reads the body yet
        theirs.close()
        assert upstream.closed.wait(2), "the relay should close the upstream"
        received, deadline = b"", time.monotonic() + 2
        for frame in body:
            received += frame
            if time.monotonic() > deadline:
                break
        close(body)
    assert time.monotonic() < deadline, "the stream should end: the client is gone"
    assert DONE not in received


def test_the_headers_keep_proxies_and_browsers_from_buffering() -> None:
    assert SSE_HEADERS["Content-Type"] == "text/event-stream; charset=utf-8"
    assert TEXT_HEADERS["Content-Type"] == "text/plain; charset=utf-8"
    assert TEXT_HEADERS["X-Content-Type-Options"] == "nosniff"
    for headers in (SSE_HEADERS, TEXT_HEADERS):
        assert (headers["Cache-Control"], headers["X-Accel-Buffering"]) == (
            "no-cache",
            "no",
        )


def test_a_chat_chunk_with_a_type_field_of_its_own_is_still_read() -> None:
    chunk = {"type": "chunk", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    assert b"".join(text_stream([chunk])) == b"hi"


def test_chunks_without_output_do_not_hold_back_keepalives() -> None:
    """An upstream may send chunks with nothing to write for a long time (a role,
    empty deltas, a provider's own fields): the client (and any proxy in front)
    must still get a byte every keep-alive interval."""
    empty = {**CHUNK, "choices": [{"index": 0, "delta": {"content": ""}}]}
    steps: list[Any] = []
    for _ in range(12):
        steps += [empty, Pause(0.02)]
    started = time.monotonic()
    body = sse_frames(Upstream([*steps, chat("a")]), keepalive_seconds=0.05)
    assert time.monotonic() - started < 0.2, "the response should start meanwhile"
    frames = collect(body)
    assert frames.count(KEEPALIVE) >= 2, frames
    assert frames.endswith(b"data: a\n\n" + DONE)


# --- The keep-alive clock -------------------------------------------------------------


def test_the_first_keepalive_comes_one_interval_after_the_start_not_two() -> None:
    """A proxy's first-byte limit counts from the request: one interval, then more."""
    interval = 0.4
    started = time.monotonic()
    body = sse_frames(Upstream([Pause(1.5), HI]), keepalive_seconds=interval)
    frames = iter(body)
    try:
        assert next(frames) == KEEPALIVE
        first = time.monotonic() - started
        assert next(frames) == KEEPALIVE
        second = time.monotonic() - started
    finally:
        close(body)
    assert interval * 0.9 <= first < interval * 1.5, first
    assert interval * 0.9 <= second - first < interval * 1.5, second - first


# --- Answers cut short ----------------------------------------------------------------

CUT = "The upstream's answer ended before the end of its stream."
NOT_SSE = "The upstream answered without an event stream."
GATEWAY_ERROR = {"error": {"message": f"Your credit balance is too low ({SECRET})"}}
COMPLETION = {**CHUNK, "object": "chat.completion", "choices": [MESSAGE]}
CUT_BEFORE_OUTPUT = {  # raw bodies that end before any text; the 502's message
    "empty-body": ([b""], CUT),
    "role-only": ([sse_bytes(chat(""))], CUT),
    "gateway-json-error": (
        [json.dumps(GATEWAY_ERROR).encode()],
        "Your credit balance is too low ([redacted])",
    ),
    "json-error-over-two-reads": (
        [
            json.dumps(GATEWAY_ERROR).encode()[:9],
            json.dumps(GATEWAY_ERROR).encode()[9:],
        ],
        "Your credit balance is too low ([redacted])",
    ),
    "one-json-completion": ([json.dumps(COMPLETION).encode()], NOT_SSE),
    "html-error-page": ([b"<html><body>Bad gateway</body></html>"], NOT_SSE),
}


@pytest.mark.parametrize(
    ("reads", "message"), CUT_BEFORE_OUTPUT.values(), ids=CUT_BEFORE_OUTPUT.keys()
)
@pytest.mark.parametrize("stream", [sse_frames, text_stream], ids=["sse", "text"])
def test_a_raw_body_without_its_end_before_any_output_is_a_502(
    stream: Callable[..., Iterable[bytes]], reads: list[bytes], message: str
) -> None:
    upstream = RawUpstream(reads)
    with pytest.raises(StreamError) as info:
        stream(upstream)
    assert (info.value.status, info.value.type) == (502, "upstream_error")
    assert info.value.message == message
    assert upstream.closed.is_set()


def test_a_raw_body_cut_after_output_is_an_error_event_or_a_cut_body() -> None:
    reads = [sse_bytes(chat("The answer is"))]
    completions: list[str] = []
    body = collect(sse_frames(RawUpstream(reads), on_completion=completions.append))
    error = json.dumps({"message": CUT, "type": "upstream_error"})
    assert body == f"data: The answer is\n\nevent: error\ndata: {error}\n\n".encode()
    assert completions == []
    text = text_stream(RawUpstream(reads))
    received: list[bytes] = []
    with pytest.raises(UpstreamFailed, match=re.escape(CUT)):
        received.extend(text)
    close(text)
    assert received == [b"The answer is"]


@pytest.mark.parametrize(
    ("end", "reason"),
    [
        pytest.param(sse_bytes(STOP), "stop", id="chat-finish-reason"),
        pytest.param(
            sse_bytes(legacy("", "length")), "length", id="legacy-finish-reason"
        ),
        pytest.param(
            sse_bytes({"type": "response.completed", "response": RESPONSE}),
            "stop",
            id="responses-completed",
        ),
    ],
)
def test_a_clean_end_after_a_finish_reason_is_a_whole_answer(
    end: bytes, reason: str
) -> None:
    """Some compatible servers send no [DONE]: their finish reason ends the answer."""
    reads = [sse_bytes(chat("hi")), end]
    assert collect(sse_frames(RawUpstream(reads))) == (
        b"data: hi\n\n" + finish_frame(reason) + DONE
    )


def test_sdk_objects_and_dicts_end_when_their_iterator_ends() -> None:
    assert collect(sse_frames([chat("hi")])) == b"data: hi\n\n" + DONE
    sdk = [ChatCompletionChunk.model_validate(chat("hi"))]
    assert collect(text_stream(sdk)) == b"hi"


# --- Refusals and incomplete answers -------------------------------------------------


def responses_events(*events: dict[str, Any]) -> bytes:
    return sse_bytes(*[e | {"sequence_number": n} for n, e in enumerate(events)])


def incomplete(reason: str | None) -> dict[str, Any]:
    details = {"incomplete_details": {"reason": reason} if reason else None}
    response = RESPONSE | {"status": "incomplete", "usage": RESPONSES_USAGE} | details
    return {"type": "response.incomplete", "response": response}


@pytest.mark.parametrize(
    ("reason", "sent"),
    [("max_output_tokens", "length"), ("content_filter", "content_filter")],
)
def test_an_incomplete_responses_answer_says_why_and_keeps_its_usage(
    reason: str, sent: str
) -> None:
    raw = responses_events(text_delta("It was the best of"), incomplete(reason))
    usages: list[object] = []
    body = collect(sse_frames([raw], on_usage=usages.append))
    finish = f'event: finish\ndata: {{"reason": "{sent}"}}\n\n'.encode()
    assert body == b"data: It was the best of\n\n" + finish + USAGE_FRAME + DONE
    assert usages == [USAGE]
    assert collect(text_stream([raw])) == b"It was the best of"


def refusal_delta(text: str) -> dict[str, Any]:
    delta = {"type": "response.refusal.delta", "delta": text}
    return delta | {"item_id": "m1", "output_index": 0, "content_index": 0}


def chat_refusal(text: str) -> dict[str, Any]:
    return {**CHUNK, "choices": [{"index": 0, "delta": {"refusal": text}}]}


REFUSAL = "I'm sorry,\nI can't help with that."
REFUSALS = {
    "responses": responses_events(
        refusal_delta("I'm sorry,\n"),
        refusal_delta("I can't help with that."),
        {
            "type": "response.completed",
            "response": RESPONSE | {"usage": RESPONSES_USAGE},
        },
    ),
    "chat": sse_bytes(
        chat_refusal("I'm sorry,\n"),
        chat_refusal("I can't help with that."),
        STOP,
        {**CHUNK, "choices": [], "usage": USAGE},
        "[DONE]",
    ),
}


@pytest.mark.parametrize("raw", REFUSALS.values(), ids=REFUSALS.keys())
def test_a_refusal_is_an_event_of_its_own_and_raw_text(raw: bytes) -> None:
    tokens: list[str] = []
    body = collect(sse_frames([raw], on_token=tokens.append))
    events = parse_sse(body)
    assert [(e.event, e.data) for e in events] == [
        ("refusal", "I'm sorry,\n"),
        ("refusal", "I can't help with that."),
        ("finish", '{"reason": "stop"}'),
        ("usage", json.dumps(USAGE)),
        ("message", "[DONE]"),
    ]
    assert body.startswith(b"event: refusal\ndata: I'm sorry,\ndata: \n\n")
    assert tokens == [], "on_token gets the answer's text, not a refusal"
    assert collect(text_stream([raw])) == REFUSAL.encode()


def test_a_refusal_delta_that_reads_done_is_not_the_end() -> None:
    body = collect(sse_frames([chat_refusal("[DONE]")]))
    assert body == (
        b"event: refusal\ndata: [DONE\n\nevent: refusal\ndata: ]\n\n" + DONE
    )


def test_an_sdk_chat_refusal_is_read_too() -> None:
    chunk = ChatCompletionChunk.model_validate(chat_refusal("No."))
    assert collect(sse_frames([chunk])) == b"event: refusal\ndata: No.\n\n" + DONE


# --- Keys that look like nothing ------------------------------------------------------

ODD_KEYS = {
    "hex": "3f9a1c0e7b2d4a6f8e1c3b5d7f9a2c4e",
    "fireworks": "fw_3ZkQpLm8Xy2Vb7Nc",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhcHAifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ",
}


def echoing_client(stack: ExitStack, key: str, handler: Handler) -> openai.OpenAI:
    http = stack.enter_context(httpx2.Client(transport=httpx2.MockTransport(handler)))
    return openai.OpenAI(
        api_key=key, base_url="http://upstream.test/v1", max_retries=0, http_client=http
    )


def quoting_key(status: int, body: Callable[[str], bytes]) -> Handler:
    """An upstream whose answer quotes the bearer token it received."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        key = request.headers["authorization"].removeprefix("Bearer ")
        content_type = "application/json" if status != 200 else "text/event-stream"
        headers = {"content-type": content_type}
        return httpx2.Response(status, headers=headers, content=body(key))

    return handler


@pytest.mark.parametrize("key", ODD_KEYS.values(), ids=ODD_KEYS.keys())
def test_the_requests_own_key_is_removed_from_an_upstream_400(
    key: str, stack: ExitStack
) -> None:
    def body(k: str) -> bytes:
        return json.dumps({"error": {"message": f"Bad deployment for {k}."}}).encode()

    handler = quoting_key(400, body)
    create = echoing_client(
        stack, key, handler
    ).chat.completions.with_streaming_response
    with pytest.raises(StreamError) as info:
        open_upstream(lambda: create.create(model="m", messages=[], stream=True))
    assert (info.value.status, info.value.message) == (
        400,
        "Bad deployment for [redacted].",
    )


@pytest.mark.parametrize("key", ODD_KEYS.values(), ids=ODD_KEYS.keys())
@pytest.mark.parametrize("after_output", [False, True], ids=["first", "midway"])
def test_the_requests_own_key_is_removed_from_an_in_stream_error(
    key: str, after_output: bool, stack: ExitStack
) -> None:
    def events(k: str) -> bytes:
        error = {"error": {"message": f"Key {k} was revoked"}}
        return sse_bytes(*([chat("a")] if after_output else []), error)

    client = echoing_client(stack, key, quoting_key(200, events))
    create = client.chat.completions.with_streaming_response.create
    upstream = open_upstream(lambda: create(model="m", messages=[], stream=True))
    errors: list[BaseException] = []
    try:
        body = collect(sse_frames(upstream, on_error=errors.append))
    except StreamError as error:
        body = error.body()
    assert key.encode() not in body and b"Key [redacted] was revoked" in body
    assert [str(e) for e in errors] == ["Key [redacted] was revoked"]


def test_a_registered_secret_is_removed_from_every_upstream_message() -> None:
    secret = "a1b2c3d4e5f6a7b8c9d0"
    streaming.register_secret(secret)
    streaming.register_secret("short")  # too short to be a key: ignored
    upstream = Upstream([chat("a"), {"error": {"message": f"{secret} is short"}}])
    body = collect(sse_frames(upstream))
    assert secret.encode() not in body and b"[redacted] is short" in body
    assert b"short" in body


# --- openai 2 (httpx) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (httpx.ReadTimeout("slow"), 504),
        (httpx.RemoteProtocolError("cut"), 502),
        (httpx.ConnectError("refused"), 502),
    ],
)
def test_httpx_errors_of_openai_2_map_like_httpx2s(
    error: Exception, status: int
) -> None:
    upstream = Upstream([chat(""), error])
    with pytest.raises(StreamError) as info:
        sse_frames(upstream)
    assert info.value.status == status
    assert info.value.type != "upstream_error"


# --- A client that leaves a TLS connection --------------------------------------------


def tls_connection() -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    """The server's and the client's ends of a TLS connection on 127.0.0.1."""
    ca = trustme.CA()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        accepted: list[ssl.SSLSocket] = []
        handshake = threading.Thread(
            target=lambda: accepted.append(
                server_context.wrap_socket(listener.accept()[0], server_side=True)
            )
        )
        handshake.start()
        client = client_context.wrap_socket(
            socket.create_connection(listener.getsockname()),
            server_hostname="127.0.0.1",
        )
        handshake.join(5)
    return accepted[0], client


def quiet() -> Upstream:
    """A first text, then five seconds of chunks without text: silence for a client."""
    return Upstream([chat("a"), *[Pause(0.05), chat("")] * 100, chat("b")])


@pytest.mark.parametrize(
    "alert_first", [False, True], ids=["close", "alert-then-close"]
)
def test_a_tls_client_that_leaves_during_silence_is_noticed_at_once(
    alert_first: bool,
) -> None:
    """gunicorn ``--certfile`` and ``flask run --cert`` hand over an SSLSocket, which
    refuses ``MSG_PEEK``; a TLS client may send an alert (close_notify) before its
    FIN, which leaves bytes to read on a connection that is gone all the same."""
    ours, client = tls_connection()
    upstream = quiet()
    with ours, client:
        body = sse_frames(upstream, keepalive_seconds=10, client_socket=ours)
        parts = iter(body)
        assert next(parts) == b"data: a\n\n"
        if alert_first:  # bytes as a close_notify record would be, then the FIN
            socket.socket.sendall(client, b"\x15\x03\x03\x00\x02\x01\x00")
        client.close()
        started = time.monotonic()
        rest = b"".join(parts)
        assert time.monotonic() - started < 1.0
        close(body)
    assert rest == b""
    assert upstream.closed.is_set()


def test_a_tls_client_that_stays_is_not_taken_for_gone() -> None:
    ours, client = tls_connection()
    with ours, client:
        upstream = Upstream([chat("a"), Pause(0.6), chat("b")])
        body = collect(sse_frames(upstream, keepalive_seconds=10, client_socket=ours))
    assert data_of(body) == ["a", "b", "[DONE]"]


# --- Upstreams the relay opens itself -------------------------------------------------


class SlowOpener:
    """An opener whose request waits until ``release()`` (or ``seconds``), then
    answers ``upstream`` or raises ``failure``; like an upstream holding its headers."""

    def __init__(
        self,
        upstream: Upstream,
        seconds: float = 10.0,
        failure: Exception | None = None,
    ) -> None:
        self.upstream, self.seconds, self.failure = upstream, seconds, failure
        self.answered = threading.Event()
        self._released = threading.Event()

    def __call__(self) -> Upstream:
        self._released.wait(self.seconds)
        self.answered.set()
        if self.failure is not None:
            raise self.failure
        return self.upstream

    def release(self) -> None:
        self._released.set()


@pytest.mark.parametrize("stream", [sse_frames, text_stream], ids=["sse", "text"])
def test_an_opener_gives_the_same_body_as_the_stream_it_opens(
    stream: Callable[..., Iterable[bytes]],
) -> None:
    upstream = RawUpstream([raw_chat()])
    expected = EXPECTED_SSE if stream is sse_frames else EXPECTED_TEXT
    assert collect(stream(lambda: upstream)) == expected
    assert upstream.closed.is_set()


@pytest.mark.parametrize("stream", [sse_frames, text_stream], ids=["sse", "text"])
def test_an_opener_failing_within_the_interval_is_still_a_status(
    stream: Callable[..., Iterable[bytes]],
) -> None:
    """E.g. an upstream 429, or a timeout shorter than the keep-alive interval."""
    failure = openai.APITimeoutError(REQUEST)
    opener = SlowOpener(Upstream([HI]), seconds=0.05, failure=failure)
    keepalive = {"keepalive_seconds": 2.0} if stream is sse_frames else {}
    with pytest.raises(StreamError) as info:
        stream(opener, **keepalive)
    assert (info.value.status, info.value.type) == (504, TIMED_OUT[0])


def test_an_opener_slower_than_the_interval_starts_the_clock_with_the_request() -> None:
    """Keep-alives from one interval after the request, then the late failure as an
    ``event: error`` (the first byte went out already)."""
    interval = 0.3
    failure = openai.APITimeoutError(REQUEST)
    opener = SlowOpener(Upstream([HI]), seconds=interval * 2.5, failure=failure)
    started = time.monotonic()
    body = sse_frames(opener, keepalive_seconds=interval)
    frames = iter(body)
    try:
        assert next(frames) == KEEPALIVE
        first = time.monotonic() - started
        rest = b"".join(frames)
    finally:
        close(body)
    assert interval * 0.9 <= first < interval * 1.5, first
    assert rest.startswith(KEEPALIVE) and DONE not in rest
    event = parse_sse(rest)[-1]
    assert (event.event, json.loads(event.data)["type"]) == ("error", TIMED_OUT[0])


@threads_only
@pytest.mark.parametrize("stream", STREAMS.values(), ids=STREAMS.keys())
def test_a_client_that_leaves_while_the_upstream_opens_ends_the_stream(
    stream: Callable[..., Iterable[bytes]],
) -> None:
    ours, theirs = socket.socketpair()
    opener = SlowOpener(trickle())
    with ours, theirs:
        threading.Timer(0.2, theirs.close).start()
        started = time.monotonic()
        body = stream(opener, client_socket=ours)
        assert collect(body).replace(KEEPALIVE, b"") == b""
        assert time.monotonic() - started < 2.5  # the thread's join waits one second
    opener.release()
    assert opener.upstream.closed.wait(2.0), "what opens after the close is closed"
    assert opener.upstream.reads == 0


@threads_only
def test_a_stream_closed_while_the_upstream_opens_closes_what_it_opens() -> None:
    opener = SlowOpener(trickle())
    body = sse_frames(opener, keepalive_seconds=0.05)
    assert next(iter(body)) == KEEPALIVE
    close(body)
    assert not opener.answered.is_set()
    opener.release()
    assert opener.upstream.closed.wait(2.0)
    assert opener.upstream.reads == 0


@threads_only
def test_a_stream_still_opening_at_shutdown_is_answered_503() -> None:
    opener = SlowOpener(trickle())
    threading.Timer(0.2, streaming.end_open_streams).start()
    with pytest.raises(StreamError) as info:
        sse_frames(opener, keepalive_seconds=5.0)
    assert info.value.status == 503
    opener.release()
    assert opener.upstream.closed.wait(2.0)


def test_an_iterable_that_is_also_callable_is_read_not_called() -> None:
    class CallableChunks(list[Any]):
        def __call__(self) -> None:
            raise AssertionError("an opened upstream was called")

    assert collect(sse_frames(CallableChunks([HI]))) == b"data: hi\n\n" + DONE


@pytest.mark.skipif(patched(), reason="this is the gevent run")
def test_the_core_passes_these_tests_under_gevent_too() -> None:
    """Under gevent the relay takes its own path (one greenlet per stream): every
    test above runs again that way, in a process patched as gunicorn's workers are."""
    assert_passes_under_gevent(__file__)


class JsonLines:
    """A wire protocol of the test's own: each event as one line of JSON."""

    keepalive = b"\n"

    def encode(self, events: Iterable[streaming.Event]) -> bytes:
        lines = (
            json.dumps({"event": type(event).__name__, **dataclasses.asdict(event)})
            for event in events
        )
        return "".join(f"{line}\n" for line in lines).encode()

    def end(self) -> bytes:
        return b'{"event": "End"}\n'


def json_lines(body: Iterable[bytes]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in collect(body).splitlines() if line]


def test_a_protocol_of_ones_own_is_an_encoder() -> None:
    """Every event the decoder makes reaches an encoder, in the upstream's order:
    tool-call fragments too, which SSE doesn't write, then the whole call."""
    thinking = chat(None, delta={"reasoning_content": "Let me see."})
    thinking_vllm = chat(None, delta={"reasoning": " Yes."})
    call = {"index": 0, "id": "call_1", "function": {"name": "dice", "arguments": ""}}
    args = {"index": 0, "function": {"arguments": '{"sides": 6}'}}
    calls = [
        chat(None, delta={"tool_calls": [call]}),
        chat(None, delta={"tool_calls": [args]}),
    ]
    chunks = [thinking, thinking_vllm, HI, *calls, chat(None, delta={"refusal": "No."})]
    assert json_lines(streaming.encoded_stream(chunks, JsonLines())) == [
        {"event": "Reasoning", "text": "Let me see."},
        {"event": "Reasoning", "text": " Yes."},
        {"event": "Text", "text": "hi"},
        {
            "event": "ToolCallDelta",
            "index": 0,
            "id": "call_1",
            "name": "dice",
            "arguments": "",
        },
        {
            "event": "ToolCallDelta",
            "index": 0,
            "id": None,
            "name": None,
            "arguments": '{"sides": 6}',
        },
        {"event": "Refusal", "text": "No."},
        # No finish reason: the call goes out when the stream ends.
        {
            "event": "ToolCall",
            "id": "call_1",
            "name": "dice",
            "arguments": '{"sides": 6}',
        },
        {"event": "End"},
    ]


def test_a_protocol_of_ones_own_gets_the_error_event() -> None:
    body = streaming.encoded_stream(then_failing(HI, connection_error()), JsonLines())
    assert json_lines(body) == [
        {"event": "Text", "text": "hi"},
        {"event": "Error", "message": NO_CONNECTION[1], "type": NO_CONNECTION[0]},
    ]


def test_responses_reasoning_deltas_are_reasoning_events() -> None:
    kinds = ["response.reasoning_summary_text.delta", "response.reasoning_text.delta"]
    events = [{"type": kind, "delta": f"{i}"} for i, kind in enumerate(kinds)]
    done = {"type": "response.completed", "response": RESPONSE}
    assert json_lines(streaming.encoded_stream([*events, done], JsonLines())) == [
        {"event": "Reasoning", "text": "0"},
        {"event": "Reasoning", "text": "1"},
        {"event": "Finish", "reason": "stop"},
        {"event": "End"},
    ]


def test_a_client_slower_than_the_read_timeout_is_no_silent_upstream() -> None:
    """The upstream sends on time, the client reads slower than the read timeout:
    what waits on the socket is read, not taken for silence (under gevent the
    response's greenlet, busy with its client, did not see it arrive)."""
    words = [f"w{i} " for i in range(4)]
    pause = fake_upstream.Sleep(0.05)  # each word a read of its own
    steps = [step for word in words for step in (fake_upstream.Text(word), pause)]
    with fake_upstream.FakeUpstream() as fake:
        script = fake.script(*steps, fake_upstream.Done())
        client = openai.OpenAI(
            api_key="sk-test-not-a-key",
            base_url=fake.base_url,
            timeout=0.3,
            max_retries=0,
            http_client=LeanHttpClient(),
        )
        body = sse_frames(
            lambda: client.chat.completions.with_streaming_response.create(
                model="m",
                messages=[{"role": "user", "content": script.marker}],
                stream=True,
            )
        )
        received = []
        for part in body:
            received.append(part)
            time.sleep(0.5)  # more than the read timeout
        close(body)
        client.close()
    assert b"".join(received) == b"".join(map(sse_event, words)) + DONE


# --- Everything else the model says -----------------------------------------------


def tool_fragment(index: int | None, **fields: Any) -> dict[str, Any]:
    """A chat chunk with one tool-call fragment: ``id``, ``name``, ``arguments``."""
    function = {k: v for k, v in fields.items() if k in ("name", "arguments")}
    call: dict[str, Any] = {"function": function, "type": "function"}
    if index is not None:
        call["index"] = index
    if "id" in fields:
        call["id"] = fields["id"]
    return chat(None, delta={"tool_calls": [call]})


def sse_events(body: bytes) -> list[tuple[str, str]]:
    return [(e.event, e.data) for e in parse_sse(body)]


def test_reasoning_is_an_event_of_its_own_split_at_line_breaks() -> None:
    chunks = [
        chat(None, delta={"reasoning_content": "Hmm.\nLet me"}),
        chat(None, delta={"reasoning": " see."}),
        chat(None, delta={"reasoning_content": "[DONE]"}),
        HI,
        STOP,
    ]
    body = collect(sse_frames(chunks))
    assert body.startswith(b"event: reasoning\ndata: Hmm.\ndata: Let me\n\n")
    assert sse_events(body) == [
        ("reasoning", "Hmm.\nLet me"),
        ("reasoning", " see."),
        ("reasoning", "[DONE"),
        ("reasoning", "]"),
        ("message", "hi"),
        ("finish", '{"reason": "stop"}'),
        ("message", "[DONE]"),
    ]
    assert collect(text_stream(chunks)) == b"hi", "raw text never carries reasoning"


def test_parallel_tool_calls_are_assembled_whatever_order_their_fragments_come_in() -> (
    None
):
    chunks = [
        tool_fragment(0, id="call_a", name="get_", arguments=""),
        tool_fragment(1, id="call_b", arguments='{"q"'),  # its name comes late
        tool_fragment(0, name="weather", arguments='{"city": '),
        tool_fragment(1, arguments=': "x"}'),
        tool_fragment(0, name="", arguments='"Paris"}'),  # an empty name: nothing
        tool_fragment(1, name="search"),
        tool_fragment(1, name="search"),  # the whole name again: not doubled
        {
            **CHUNK,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
        },
        "[DONE]",
    ]
    events: list[streaming.Event] = []
    body = collect(sse_frames([sse_bytes(*chunks)], on_event=events.append))
    first = {"id": "call_a", "name": "get_weather", "arguments": '{"city": "Paris"}'}
    second = {"id": "call_b", "name": "search", "arguments": '{"q": "x"}'}
    assert sse_events(body) == [
        ("tool_call", json.dumps(first)),
        ("tool_call", json.dumps(second)),
        ("finish", '{"reason": "tool_calls"}'),
        ("message", "[DONE]"),
    ]
    whole = [e for e in events if not isinstance(e, streaming.ToolCallDelta)]
    assert whole == [
        streaming.ToolCall(**first),
        streaming.ToolCall(**second),
        streaming.Finish("tool_calls"),
    ]


def test_a_fragment_without_index_or_id_is_the_first_call() -> None:
    chunks = [tool_fragment(None, name="roll", arguments="{}"), STOP]
    body = collect(sse_frames(chunks))
    call = {"id": "call_0", "name": "roll", "arguments": "{}"}
    assert sse_events(body)[0] == ("tool_call", json.dumps(call))


def test_a_responses_function_call_is_one_tool_call_then_finish_tool_calls() -> None:
    item = {"type": "function_call", "id": "fc_1", "call_id": "call_9"}
    item |= {"name": "roll_dice", "arguments": ""}
    whole = item | {"arguments": '{"count": 2}', "status": "completed"}
    events = [
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {
            "type": "response.function_call_arguments.delta",
            "output_index": 0,
            "item_id": "fc_1",
            "delta": '{"count"',
        },
        {
            "type": "response.function_call_arguments.delta",
            "output_index": 0,
            "item_id": "fc_1",
            "delta": ": 2}",
        },
        {"type": "response.output_item.done", "output_index": 0, "item": whole},
        {
            "type": "response.completed",
            "response": RESPONSE | {"output": [whole], "usage": RESPONSES_USAGE},
        },
    ]
    body = collect(sse_frames([sse_bytes(*events)]))
    call = {"id": "call_9", "name": "roll_dice", "arguments": '{"count": 2}'}
    assert sse_events(body) == [
        ("tool_call", json.dumps(call)),
        ("finish", '{"reason": "tool_calls"}'),
        ("usage", json.dumps(USAGE)),
        ("message", "[DONE]"),
    ]


def test_an_answer_cut_by_the_token_limit_says_so() -> None:
    length = {
        **CHUNK,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
    }
    body = collect(sse_frames([HI, length, {**CHUNK, "choices": [], "usage": USAGE}]))
    assert body == b"data: hi\n\n" + finish_frame("length") + USAGE_FRAME + DONE


def test_tool_results_are_events_with_an_output_or_an_error() -> None:
    encoder = streaming.SseEncoder()
    results = [
        streaming.ToolResult("call_1", output="4"),
        streaming.ToolResult("call_2", error="ValueError: no such zone"),
    ]
    assert encoder.encode(results) == (
        b'event: tool_result\ndata: {"id": "call_1", "output": "4"}\n\n'
        b'event: tool_result\ndata: {"id": "call_2", "error": "ValueError: no such '
        b'zone"}\n\n'
    )


def test_usage_of_several_model_calls_is_sent_once_summed_at_the_end() -> None:
    encoder = streaming.SseEncoder()
    steps = [streaming.Usage(4, 2, 6), streaming.Finish("tool_calls")]
    steps += [streaming.Usage(10, 3, 13), streaming.Finish("stop")]
    assert encoder.encode(steps) == finish_frame("tool_calls") + finish_frame("stop")
    usage = {"prompt_tokens": 14, "completion_tokens": 5, "total_tokens": 19}
    assert encoder.end() == (
        b"event: usage\ndata: " + json.dumps(usage).encode() + b"\n\n" + DONE
    )


def test_on_event_gets_every_event_in_order() -> None:
    chunks = [chat(None, delta={"reasoning": "So"}), HI, STOP]
    events: list[streaming.Event] = []
    collect(sse_frames(chunks, on_event=events.append))
    assert events == [
        streaming.Reasoning("So"),
        streaming.Text("hi"),
        streaming.Finish("stop"),
    ]
