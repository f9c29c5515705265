"""Every dialect of the fixture corpus (``tests/corpus/``), split at awkward byte
boundaries: each delta comes out once, in order, exactly.

Each case is the raw SSE body one provider sends (``NAME.sse``) and the typed events
the core must call ``on_event`` with (``NAME.expected.json``); ``tests/corpus/
README.md`` says where each shape comes from. The body is fed to the public entry
points as an upstream's reads, whole and split: one byte per read, inside ``data:``,
inside a multi-byte UTF-8 character, inside JSON strings and escapes, between a CR
and its LF, at random. Whatever the split, the events, the SSE body and the raw
text must be those of the unsplit body, and the events those the case expects.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import pytest

from shared import streaming
from shared.streaming import UpstreamFailed, sse_frames, text_stream
from tests.client import parse_sse

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted(path.stem for path in CORPUS.glob("*.sse"))
# Cases this small are also split in two at every byte boundary, one run each.
SMALL_BYTES = 1000
# Events with a JSON payload on the SSE routes; the rest carry their text.
JSON_EVENTS = ("tool_call", "finish", "usage", "error")


def body_of(case: str) -> bytes:
    return (CORPUS / f"{case}.sse").read_bytes()


def expected_of(case: str) -> list[Any]:
    """The case's events, built from ``[kind, *fields]`` rows.

    Looked up by name in ``shared.streaming`` so that a missing event type fails
    the cases that need it, not the collection of the whole module.
    """
    rows = json.loads((CORPUS / f"{case}.expected.json").read_text("utf-8"))
    return [getattr(streaming, kind)(*fields) for kind, *fields in rows]


# --- Running the core -----------------------------------------------------------------


def read_all(body: Iterable[bytes]) -> tuple[bytes, BaseException | None]:
    """What a client receives: the bytes written, and the failure that cut them off
    (raw text), closed afterwards as a WSGI server does."""
    parts: list[bytes] = []
    failure: BaseException | None = None
    try:
        for part in body:
            parts.append(part)
    except UpstreamFailed as exc:
        failure = exc
    finally:
        cast(Any, body).close()
    return b"".join(parts), failure


def sse_run(reads: list[bytes]) -> tuple[list[Any], bytes]:
    """The events ``on_event`` was called with, and the SSE body."""
    events: list[Any] = []
    body, failure = read_all(sse_frames(list(reads), on_event=events.append))
    assert failure is None
    return events, body


def text_run(reads: list[bytes]) -> tuple[bytes, bool]:
    """The raw text body, and whether it was cut off by a failure."""
    body, failure = read_all(text_stream(list(reads)))
    return body, failure is not None


# --- Splitting ------------------------------------------------------------------------


def split(body: bytes, points: Iterable[int]) -> list[bytes]:
    edges = [0, *sorted({p for p in points if 0 < p < len(body)}), len(body)]
    return [body[a:b] for a, b in zip(edges, edges[1:], strict=False)]


def inside_data_fields(body: bytes) -> list[int]:
    return [m.start() + 2 for m in re.finditer(rb"data:", body)]


def inside_utf8(body: bytes) -> list[int]:
    """Before every continuation byte: inside each multi-byte character."""
    return [i for i, byte in enumerate(body) if 0x80 <= byte < 0xC0]


def inside_json_strings(body: bytes) -> list[int]:
    """Just inside each string value (``"delta":"|..."``) and inside each escape
    (``\\|"``, ``\\|n``)."""
    values = [m.end() for m in re.finditer(rb'":"', body)]
    escapes = [m.start() + 1 for m in re.finditer(rb"\\", body)]
    return values + escapes


def after_each_cr(body: bytes) -> list[int]:
    return [i + 1 for i, byte in enumerate(body) if byte == 0x0D]


def at_random(body: bytes) -> list[int]:
    rng = random.Random(body)  # the same points on every run
    return rng.sample(range(1, len(body)), min(40, len(body) - 1))


def crlf(body: bytes) -> bytes:
    """The body with CRLF line ends: a raw LF is only ever a line end in SSE whose
    data is JSON (JSON escapes its own line breaks)."""
    return body.replace(b"\n", b"\r\n")


def cr(body: bytes) -> bytes:
    return body.replace(b"\n", b"\r")


Split = Callable[[bytes], list[bytes]]
SPLITS: dict[str, Split] = {
    "one-byte-reads": lambda body: split(body, range(1, len(body))),
    "inside-data": lambda body: split(body, inside_data_fields(body)),
    "inside-utf8": lambda body: split(body, inside_utf8(body)),
    "inside-json-strings": lambda body: split(body, inside_json_strings(body)),
    "at-random": lambda body: split(body, at_random(body)),
    "crlf-whole": lambda body: [crlf(body)],
    "crlf-between-cr-and-lf": lambda body: split(crlf(body), after_each_cr(crlf(body))),
    "crlf-one-byte-reads": lambda body: split(crlf(body), range(1, 2 * len(body))),
    "cr-inside-utf8": lambda body: split(cr(body), inside_utf8(cr(body))),
}


def crlf_split(case: str) -> list[bytes]:
    return SPLITS["crlf-between-cr-and-lf"](body_of(case))


def test_every_case_has_its_expected_events_and_is_sse_with_lf_line_ends() -> None:
    assert len(CASES) >= 20
    for case in CASES:
        assert (CORPUS / f"{case}.expected.json").is_file(), case
        assert b"\r" not in body_of(case), f"{case}: the splits add CRs themselves"


def test_the_splits_cut_where_they_say() -> None:
    body = 'data: {"a":"é\\n"}\n\n'.encode()
    assert split(body, inside_data_fields(body))[0] == b"da"
    assert split(body, inside_utf8(body))[0].endswith(b"\xc3")
    assert [p[-1:] for p in split(body, inside_json_strings(body))[:2]] == [b'"', b"\\"]
    assert split(crlf(body), after_each_cr(crlf(body)))[1].startswith(b"\n")


# --- Every delta once, in order, exactly ----------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_the_whole_body_gives_the_expected_events(case: str) -> None:
    events, _ = sse_run([body_of(case)])
    assert events == expected_of(case)


@pytest.mark.parametrize("how", SPLITS)
@pytest.mark.parametrize("case", CASES)
def test_any_split_gives_the_same_events_sse_and_text(case: str, how: str) -> None:
    whole = body_of(case)
    reads = SPLITS[how](whole)
    assert b"".join(reads).replace(b"\r\n", b"\n").replace(b"\r", b"\n") == whole
    assert sse_run(reads) == sse_run([whole])
    assert text_run(reads) == text_run([whole])
    assert sse_run(reads)[0] == expected_of(case)


@pytest.mark.parametrize(
    "case", [case for case in CASES if len(body_of(case)) < SMALL_BYTES]
)
def test_a_small_body_split_in_two_anywhere_gives_the_same_events(case: str) -> None:
    whole = body_of(case)
    unsplit = sse_run([whole])
    for at in range(1, len(whole)):
        assert sse_run([whole[:at], whole[at:]]) == unsplit, at
    assert unsplit[0] == expected_of(case)


# --- What the routes write -----------------------------------------------------------


def sse_of(event: Any) -> list[tuple[str, object]]:
    """The (event name, data) pairs the contract writes for one typed event."""
    match type(event).__name__:
        case "Text":
            return [("message", event.text)]
        case "Reasoning":
            return [("reasoning", event.text)]
        case "Refusal":
            return [("refusal", event.text)]
        case "ToolCall":
            call = {"id": event.id, "name": event.name, "arguments": event.arguments}
            return [("tool_call", call)]
        case "Finish":
            return [("finish", {"reason": event.reason})]
        case "Usage":
            return [("usage", event.as_dict())]
        case "Error":
            return [("error", {"message": event.message, "type": event.type})]
    return []  # a tool call's fragments are not written on their own


def parsed(body: bytes) -> list[tuple[str, object]]:
    """The body's events read back by an independent parser (httpx-sse)."""
    return [
        (e.event, json.loads(e.data) if e.event in JSON_EVENTS else e.data)
        for e in parse_sse(body)
    ]


@pytest.mark.parametrize("case", CASES)
def test_the_sse_body_carries_each_event_as_the_contract_names_it(case: str) -> None:
    expected = expected_of(case)
    _, body = sse_run([body_of(case)])
    frames = [frame for event in expected for frame in sse_of(event)]
    failed = type(expected[-1]).__name__ == "Error"
    assert parsed(body) == frames + ([] if failed else [("message", "[DONE]")])


@pytest.mark.parametrize("case", CASES)
def test_raw_text_is_the_text_and_the_refusal_only(case: str) -> None:
    expected = expected_of(case)
    said = [e.text for e in expected if type(e).__name__ in ("Text", "Refusal")]
    failed = type(expected[-1]).__name__ == "Error"
    assert text_run([body_of(case)]) == ("".join(said).encode(), failed)


def test_deepseek_reasoning_then_text_as_sse_bytes() -> None:
    _, body = sse_run(crlf_split("deepseek_reasoner"))
    assert (
        body
        == (
            "event: reasoning\ndata: 嗯，\n\n"
            "event: reasoning\ndata: 用户问\n\n"
            "event: reasoning\ndata:  1+1。\n\n"
            "event: reasoning\ndata: \ndata: \ndata: 答案是 2 😀\n\n"
            "data: 1 + 1 = \n\n"
            "data: **2**\n\n"
            "data: 。\ndata: \n\n"
            "data: ✓\n\n"
            'event: finish\ndata: {"reason": "stop"}\n\n'
            "event: usage\n"
            'data: {"prompt_tokens": 13, "completion_tokens": 96, '
            '"total_tokens": 109}\n\n'
            "data: [DONE]\n\n"
        ).encode()
    )


def test_openai_refusal_as_sse_bytes() -> None:
    _, body = sse_run(SPLITS["one-byte-reads"](body_of("openai_refusal")))
    assert body == (
        b"event: refusal\ndata: I'm sorry\n\n"
        b"event: refusal\ndata: , but I\n\n"
        b"event: refusal\ndata:  can't help\n\n"
        b"event: refusal\ndata:  with that.\n\n"
        b'event: finish\ndata: {"reason": "stop"}\n\n'
        b"event: usage\n"
        b'data: {"prompt_tokens": 25, "completion_tokens": 10, "total_tokens": 35}\n\n'
        b"data: [DONE]\n\n"
    )


def test_parallel_tool_calls_are_written_once_each_whole_in_index_order() -> None:
    _, body = sse_run(
        SPLITS["inside-json-strings"](body_of("openai_parallel_tool_calls"))
    )
    assert parsed(body) == [
        (
            "tool_call",
            {
                "id": "call_Q8jxKqPz3YtN5VwR2mLs",
                "name": "get_weather",
                "arguments": '{"city":"Paris","unit":"c"}',
            },
        ),
        (
            "tool_call",
            {
                "id": "call_Zr7bMw2Hn4Kd9Tf6Xc1P",
                "name": "get_weather",
                "arguments": '{"city":"東京"}',
            },
        ),
        ("finish", {"reason": "tool_calls"}),
        ("usage", {"prompt_tokens": 82, "completion_tokens": 51, "total_tokens": 133}),
        ("message", "[DONE]"),
    ]


def test_responses_function_calls_are_named_by_their_call_id() -> None:
    _, body = sse_run(SPLITS["inside-utf8"](body_of("responses_function_calls")))
    calls = [data for name, data in parsed(body) if name == "tool_call"]
    assert calls == [
        {
            "id": "call_Hk3Jt5Lm7Np9Qr1St3Uv",
            "name": "get_weather",
            "arguments": '{"location":"Paris, France"}',
        },
        {
            "id": "call_Wx5Yz7Ab9Cd1Ef3Gh5Ij",
            "name": "get_weather",
            "arguments": '{"location":"Zürich"}',
        },
    ]
    assert ("finish", {"reason": "tool_calls"}) in parsed(body)
