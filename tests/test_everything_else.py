"""CONTRACT.md's "Everything else the model says", over real HTTP against the four
servers (flask run, runserver, gunicorn+gevent for each app).

The fake upstream speaks each dialect: chat's ``reasoning_content`` (DeepSeek) and
``reasoning`` (vLLM, Ollama, OpenRouter), refusals, tool call fragments; the
Responses API's reasoning, refusals, function calls and incomplete answers; legacy
completions' finish reasons. Servers of the configuration ``tools`` (and
``tools-responses``) run ``tests/tools.py``'s functions; the others relay the calls.
"""

from __future__ import annotations

import http.client
import itertools
import json
import time
import uuid
from typing import Any
from urllib.parse import quote

import pytest

from flask_app import create_app
from shared.config import Settings
from tests.client import parse_sse
from tests.conftest import FAKE_API_KEY, TOOLS_KEEPALIVE_SECONDS, ServerPool
from tests.fake_upstream import (
    Done,
    FakeUpstream,
    Finish,
    FunctionCall,
    Reasoning,
    Refusal,
    Script,
    Step,
    Text,
    ToolCallFragment,
    Usage,
)
from tests.servers import ALL_KINDS, Server, ServerKind
from tests.tools import broken

DONE = ("message", "[DONE]")
# The events whose data is JSON; the others' data is the model's text.
JSON_EVENTS = {"tool_call", "tool_result", "finish", "usage", "error"}
# What the "tools" servers offer: the schema of each of tests/tools.py's functions.
TOOL_SCHEMAS = [
    {
        "name": "add",
        "description": "Add two whole numbers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
    {
        "name": "broken",
        "description": (
            "Always fails, quoting the server's key as a careless tool might."
        ),
        "parameters": {
            "type": "object",
            "properties": {"reason": {"type": "string"}},
            "required": ["reason"],
            "additionalProperties": False,
        },
    },
    {
        "name": "slow",
        "description": (
            "Sleeps, then says how long: not a string, so it goes back as JSON."
        ),
        "parameters": {
            "type": "object",
            "properties": {"seconds": {"type": "number"}},
            "required": ["seconds"],
            "additionalProperties": False,
        },
    },
]
TOOL_TIMEOUT_BOUND_SECONDS = 2.0  # STREAM_TOOL_TIMEOUT_SECONDS=1, and a margin


@pytest.fixture(params=[pytest.param(kind, id=kind.name) for kind in ALL_KINDS])
def kind(request: pytest.FixtureRequest) -> ServerKind:
    kind: ServerKind = request.param
    return kind


@pytest.fixture
def plain(pool: ServerPool, kind: ServerKind) -> Server:
    """A server with no tools, over Chat Completions."""
    return pool.get(kind, "plain")


@pytest.fixture
def responses(pool: ServerPool, kind: ServerKind) -> Server:
    """A server with no tools, over the Responses API."""
    return pool.get(kind, "responses")


@pytest.fixture(params=["chat", "responses"])
def api(request: pytest.FixtureRequest) -> str:
    api: str = request.param
    return api


@pytest.fixture
def relaying(pool: ServerPool, kind: ServerKind, api: str) -> Server:
    """A server with no tools, over ``api``."""
    return pool.get(kind, "plain" if api == "chat" else "responses")


@pytest.fixture
def tools(pool: ServerPool, kind: ServerKind, api: str) -> Server:
    """A server that runs tests/tools.py's functions, over ``api``."""
    return pool.get(kind, "tools" if api == "chat" else "tools-responses")


# --- Helpers ---------------------------------------------------------------------


def ask(server: Server, script: Script, route: str = "/completions/chat") -> bytes:
    """The whole body of one answer on ``route`` for a prompt carrying the marker;
    no answer ever names the key."""
    prompt = f"go {script.marker}"
    if route.startswith("/api/"):
        status, _, body = post(server, route, {"message": prompt})
    elif route == "/completions/chat":
        status, _, body = post(server, route, {"prompt": prompt})
    else:
        status, _, body = server.request("GET", f"{route}?prompt={quote(prompt)}")
    assert status == 200, body
    assert FAKE_API_KEY.encode() not in body
    return body


def post(server: Server, route: str, payload: object) -> tuple[int, Any, bytes]:
    headers = {"Content-Type": "application/json"}
    return server.request("POST", route, json.dumps(payload).encode(), headers)


def events_of(body: bytes) -> list[tuple[str, Any]]:
    """Each event a conforming parser sees: its name and its data (parsed, when
    JSON)."""
    return [
        (e.event, json.loads(e.data) if e.event in JSON_EVENTS else e.data)
        for e in parse_sse(body)
    ]


def ends(api: str, reason: str, usage: Usage) -> tuple[Step, ...]:
    """The end of a model call that stopped for ``reason`` (``stop`` or
    ``tool_calls``), with ``usage``. The Responses API says no reason: its
    ``response.completed`` says whether the output holds function calls."""
    if api == "chat":
        return (Finish(reason), usage, Done())
    return (usage, Done())


def sent_back(api: str, request_json: dict[str, Any]) -> list[dict[str, Any]]:
    """What a follow-up request added after the user's message."""
    key = "messages" if api == "chat" else "input"
    history: list[dict[str, Any]] = request_json[key]
    assert history[0]["role"] == "user"
    return history[1:]


def call_and_result(
    api: str, call: tuple[str, str, str], content: str
) -> list[dict[str, Any]]:
    """A step that called ``(id, name, arguments)`` and what the tool gave, as the
    next request sends them back."""
    call_id, name, arguments = call
    if api == "chat":
        function = {"name": name, "arguments": arguments}
        assistant = {"id": call_id, "type": "function", "function": function}
        return [
            {"role": "assistant", "content": None, "tool_calls": [assistant]},
            {"role": "tool", "tool_call_id": call_id, "content": content},
        ]
    return [
        {
            "type": "function_call",
            "call_id": call_id,
            "name": name,
            "arguments": arguments,
        },
        {"type": "function_call_output", "call_id": call_id, "output": content},
    ]


def tool_call(call_id: str, name: str, arguments: str) -> tuple[str, Any]:
    return ("tool_call", {"id": call_id, "name": name, "arguments": arguments})


def finish(reason: str) -> tuple[str, Any]:
    return ("finish", {"reason": reason})


def usage(prompt: int, completion: int) -> tuple[str, Any]:
    total = prompt + completion
    return (
        "usage",
        {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": total,
        },
    )


def timed_body(
    server: Server, script: Script
) -> tuple[bytes, list[tuple[float, bytes]]]:
    """The body of an answer on ``/completions/chat``, and when each part of it
    arrived (seconds after the request was sent)."""
    conn = server.connection(timeout=10)
    payload = json.dumps({"prompt": f"go {script.marker}"}).encode()
    started = time.monotonic()
    conn.request(
        "POST", "/completions/chat", payload, {"Content-Type": "application/json"}
    )
    reads: list[tuple[float, bytes]] = []
    try:
        with conn.getresponse() as response:
            assert response.status == 200
            while data := response.read1(65536):
                reads.append((time.monotonic() - started, data))
    finally:
        conn.close()
    body = b"".join(data for _, data in reads)
    assert FAKE_API_KEY.encode() not in body
    return body, reads


def leave_at(server: Server, script: Script, needle: bytes) -> None:
    """Ask on ``/completions/chat``, read until ``needle``, and close the connection."""
    conn = server.connection(timeout=10)
    payload = json.dumps({"prompt": f"go {script.marker}"}).encode()
    try:
        conn.request(
            "POST", "/completions/chat", payload, {"Content-Type": "application/json"}
        )
        response: http.client.HTTPResponse = conn.getresponse()
        received = b""
        while needle not in received:
            data = response.read1(65536)
            assert data, f"the answer ended before {needle!r}: {received!r}"
            received += data
        response.close()
    finally:
        conn.close()


def arrival(reads: list[tuple[float, bytes]], needle: bytes) -> float:
    """When the read that completed the first ``needle`` arrived."""
    so_far = b""
    for at, data in reads:
        so_far += data
        if needle in so_far:
            return at
    raise AssertionError(f"{needle!r} never arrived")


# --- Reasoning --------------------------------------------------------------------


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
@pytest.mark.parametrize("route", ["/completionChat", "/completions/chat"])
def test_chat_reasoning_is_an_event_of_its_own_split_at_line_breaks(
    plain: Server, upstream: FakeUpstream, field: str, route: str
) -> None:
    """``reasoning_content`` is DeepSeek's (and older vLLM's) name, ``reasoning``
    vLLM's, Ollama's and OpenRouter's; in the upstream's order, among the text."""
    script = upstream.script(
        Reasoning("Hmm.\nTwo\r\nlines\rhere", field),
        Reasoning(" so", field),
        Text("Hi"),
        Reasoning("[DONE]", field),  # never the end
        Text(" there"),
        Finish("stop"),
        Usage(3, 2),
        Done(),
    )
    body = ask(plain, script, route)
    assert body.startswith(
        b"event: reasoning\ndata: Hmm.\ndata: Two\ndata: lines\ndata: here\n\n"
    )
    assert events_of(body) == [
        ("reasoning", "Hmm.\nTwo\nlines\nhere"),
        ("reasoning", " so"),
        ("message", "Hi"),
        ("reasoning", "[DONE"),
        ("reasoning", "]"),
        ("message", " there"),
        finish("stop"),
        usage(3, 2),
        DONE,
    ]
    assert ask(plain, script, "/api/stream") == b"Hi there"


@pytest.mark.parametrize("summary", [True, False], ids=["summary", "raw"])
def test_responses_reasoning_is_an_event_of_its_own(
    responses: Server, upstream: FakeUpstream, summary: bool
) -> None:
    """``response.reasoning_summary_text.delta`` (OpenAI's summaries) and
    ``response.reasoning_text.delta`` (raw thinking, e.g. vLLM's)."""
    script = upstream.script(
        Reasoning("Think\nhard", summary=summary),
        Text("Hi"),
        Reasoning("[DONE]", summary=summary),
        Usage(3, 2),
        Done(),
    )
    body = ask(responses, script)
    assert events_of(body) == [
        ("reasoning", "Think\nhard"),
        ("message", "Hi"),
        ("reasoning", "[DONE"),
        ("reasoning", "]"),
        finish("stop"),
        usage(3, 2),
        DONE,
    ]
    assert ask(responses, script, "/api/stream") == b"Hi"


# --- Refusals ---------------------------------------------------------------------


def test_a_refusal_is_an_event_of_its_own_and_raw_text_says_it(
    relaying: Server, upstream: FakeUpstream, api: str
) -> None:
    script = upstream.script(
        Refusal("I can't\nhelp"),
        Refusal(" with [DONE]"),
        Refusal("[DONE]"),
        *ends(api, "stop", Usage(4, 3)),
    )
    assert events_of(ask(relaying, script)) == [
        ("refusal", "I can't\nhelp"),
        ("refusal", " with [DONE]"),
        ("refusal", "[DONE"),
        ("refusal", "]"),
        finish("stop"),
        usage(4, 3),
        DONE,
    ]
    body = ask(relaying, script, "/api/stream")
    assert body == b"I can't\nhelp with [DONE][DONE]"


# --- Tool calls the server relays ---------------------------------------------------


def test_chat_tool_calls_are_assembled_from_fragments_in_any_order_and_relayed(
    plain: Server, upstream: FakeUpstream
) -> None:
    """Parallel calls interleaved, a name split over fragments, an id and a name
    that come late, the whole name repeated: each call once, arguments exactly as
    sent (even when they are not JSON). Without tools configured, nothing runs."""
    script = upstream.script(
        Text("Looking."),
        ToolCallFragment(0, id="call_a", name="get_", arguments=""),
        ToolCallFragment(1, arguments='{"q"'),  # its id and name come late
        ToolCallFragment(0, name="weather", arguments='{"city":  '),
        ToolCallFragment(1, arguments=': "x"'),  # never closed: sent as it is
        ToolCallFragment(0, name="", arguments='"Paris" }'),
        ToolCallFragment(1, id="call_b", name="search"),
        ToolCallFragment(1, id="call_b", name="search"),  # the whole name again
        Finish("tool_calls"),
        Usage(9, 4),
        Done(),
    )
    body = ask(plain, script)
    assert events_of(body) == [
        ("message", "Looking."),
        tool_call("call_a", "get_weather", '{"city":  "Paris" }'),
        tool_call("call_b", "search", '{"q": "x"'),
        finish("tool_calls"),
        usage(9, 4),
        DONE,
    ]
    [request] = script.requests
    assert "tools" not in request.json, "no tools are offered unless configured"


def test_a_fragment_without_index_is_the_first_call(
    plain: Server, upstream: FakeUpstream
) -> None:
    script = upstream.script(
        ToolCallFragment(None, id="call_x", name="roll", arguments='{"n"'),
        ToolCallFragment(None, arguments=": 1}"),
        Finish("tool_calls"),
        Done(),
    )
    assert events_of(ask(plain, script)) == [
        tool_call("call_x", "roll", '{"n": 1}'),
        finish("tool_calls"),
        DONE,
    ]


def test_a_responses_function_call_is_relayed_with_its_call_id(
    responses: Server, upstream: FakeUpstream
) -> None:
    script = upstream.script(
        Text("Rolling."),
        FunctionCall("call_9", "roll_dice", '{"count": 2}'),  # item id fc_call_9
        Usage(5, 3),
        Done(),
    )
    assert events_of(ask(responses, script)) == [
        ("message", "Rolling."),
        tool_call("call_9", "roll_dice", '{"count": 2}'),
        finish("tool_calls"),
        usage(5, 3),
        DONE,
    ]
    assert len(script.requests) == 1
    assert "tools" not in script.requests[0].json


# --- Finish reasons -----------------------------------------------------------------


@pytest.mark.parametrize("reason", ["stop", "length", "content_filter", "tool_calls"])
def test_chat_finish_reasons_come_after_the_steps_deltas_and_calls(
    plain: Server, upstream: FakeUpstream, reason: str
) -> None:
    calls = [FunctionCall("call_1", "add", '{"a": 1, "b": 2}')]
    script = upstream.script(
        Text("Part"),
        Reasoning("hm"),
        Text(" two"),
        *(calls if reason == "tool_calls" else []),
        Finish(reason),
        Usage(4, 2),
        Done(),
    )
    called = [tool_call("call_1", "add", '{"a": 1, "b": 2}')]
    assert events_of(ask(plain, script, "/completionChat")) == [
        ("message", "Part"),
        ("reasoning", "hm"),
        ("message", " two"),
        *(called if reason == "tool_calls" else []),
        finish(reason),
        usage(4, 2),
        DONE,
    ]


@pytest.mark.parametrize("reason", ["stop", "length"])
def test_legacy_completions_say_why_they_ended(
    plain: Server, upstream: FakeUpstream, reason: str
) -> None:
    script = upstream.script(Text("Once"), Finish(reason), Usage(2, 1), Done())
    assert events_of(ask(plain, script, "/completion")) == [
        ("message", "Once"),
        finish(reason),
        usage(2, 1),
        DONE,
    ]


@pytest.mark.parametrize(
    ("ending", "reason"),
    [
        ((Finish("max_output_tokens"),), "length"),
        ((Finish("content_filter"),), "content_filter"),
        ((Done(),), "stop"),
        ((FunctionCall("call_1", "add", '{"a": 1, "b": 2}'), Done()), "tool_calls"),
    ],
    ids=["max_output_tokens", "content_filter", "completed", "function_call"],
)
def test_a_responses_answer_says_why_it_ended_and_its_usage(
    responses: Server, upstream: FakeUpstream, ending: tuple[Step, ...], reason: str
) -> None:
    """``response.incomplete`` is cut short, never a whole answer; its usage is
    sent too."""
    script = upstream.script(Text("Part"), Usage(6, 7), *ending)
    called = [tool_call("call_1", "add", '{"a": 1, "b": 2}')]
    assert events_of(ask(responses, script)) == [
        ("message", "Part"),
        *(called if reason == "tool_calls" else []),
        finish(reason),
        usage(6, 7),
        DONE,
    ]


# --- What every client sees ---------------------------------------------------------


def test_no_events_data_is_exactly_done_before_the_end(
    relaying: Server, upstream: FakeUpstream, api: str
) -> None:
    script = upstream.script(
        Reasoning("[DONE]"),
        Text("[DONE]"),
        Refusal("[DONE]"),
        FunctionCall("call_1", "f", "[DONE]"),
        *ends(api, "tool_calls", Usage(1, 1)),
    )
    events = parse_sse(ask(relaying, script))
    assert [e.data for e in events].count("[DONE]") == 1
    assert (events[-1].event, events[-1].data) == DONE
    assert {e.event for e in events} == {
        "reasoning",
        "message",
        "refusal",
        "tool_call",
        "finish",
        "usage",
    }


def test_a_reader_of_unnamed_events_sees_the_text_as_before(
    relaying: Server, upstream: FakeUpstream, api: str
) -> None:
    """``EventSource.onmessage`` gets the text deltas, exactly, and nothing else."""
    deltas = ["Hello", " two\nlines", "", "crlf\r\nend", "[DONE]", "event: x"]
    script = upstream.script(
        Reasoning("thinking\nhard"),
        Text(deltas[0]),
        Reasoning("more"),
        Text(deltas[1]),
        Refusal("no"),
        Text(deltas[2]),
        FunctionCall("call_1", "f", '{"x": "data: y"}'),
        Text(deltas[3]),
        Text(deltas[4]),
        Text(deltas[5]),
        *ends(api, "tool_calls", Usage(1, 1)),
    )
    unnamed = [e.data for e in parse_sse(ask(relaying, script)) if e.event == "message"]
    assert unnamed == [
        "Hello",
        " two\nlines",
        "crlf\nend",
        "[DONE",
        "]",
        "event: x",
        "[DONE]",  # the end
    ]


# --- Tools the server runs ----------------------------------------------------------


@pytest.mark.parametrize(
    "route", ["/completionChat", "/completions/chat", "/api/stream"]
)
def test_the_tools_are_offered_with_their_signatures_and_docstrings(
    tools: Server, upstream: FakeUpstream, api: str, route: str
) -> None:
    """On every chat route; legacy completions have no tools to offer."""
    script = upstream.script(Text("Hi"), *ends(api, "stop", Usage(1, 1)))
    ask(tools, script, route)
    offered = script.requests[0].json["tools"]
    if api == "chat":
        assert offered == [{"type": "function", "function": s} for s in TOOL_SCHEMAS]
    else:
        assert offered == [{"type": "function", **s} for s in TOOL_SCHEMAS]
    legacy = upstream.script(Text("Hi"), Finish("stop"), Done())
    ask(tools, legacy, "/completion")
    assert "tools" not in legacy.requests[0].json


def test_the_demo_model_gets_the_demos_tools_and_the_server_runs_them(
    pool: ServerPool, kind: ServerKind
) -> None:
    """With no key and no base URL, ``STREAM_TOOLS`` defaults to the demo's."""
    demo = pool.get(kind, "demo")
    status, _, body = post(demo, "/completions/chat", {"prompt": "Time in Tokyo?"})
    assert status == 200, body
    events = events_of(body)
    kinds = [name for name, _ in events]
    # Thinking, the call, the step's end, the result; thinking and the answer.
    shape = [kind for kind, _ in itertools.groupby(kinds)]
    assert shape == [
        "reasoning",
        "tool_call",
        "finish",
        "tool_result",
        "reasoning",
        "message",
        "finish",
        "usage",
        "message",
    ]
    [(_, call)] = [event for event in events if event[0] == "tool_call"]
    assert (call["name"], json.loads(call["arguments"])) == (
        "current_time",
        {"timezone": "Asia/Tokyo"},
    )
    [(_, result)] = [event for event in events if event[0] == "tool_result"]
    assert result["id"] == call["id"] and result["output"].endswith("+09:00")
    assert [data for kind, data in events if kind == "finish"] == [
        {"reason": "tool_calls"},
        {"reason": "stop"},
    ]
    assert events[-1] == DONE


def test_the_server_runs_a_tool_and_asks_the_model_again_in_the_same_response(
    tools: Server, upstream: FakeUpstream, api: str
) -> None:
    """``tool_call``, the step's ``finish``, then ``tool_result``; the next request
    carries the call and its result; the next step streams on; usage is summed
    over the steps and sent once, after the last ``finish``."""
    call = ("call_1", "add", '{"a": 2, "b": 3}')
    answer = upstream.script(Text("It is 5."), *ends(api, "stop", Usage(30, 4)))
    first = upstream.script(
        Text("Let me add."),
        FunctionCall(*call),
        *ends(api, "tool_calls", Usage(10, 6)),
        then=answer,
    )
    assert events_of(ask(tools, first)) == [
        ("message", "Let me add."),
        tool_call(*call),
        finish("tool_calls"),
        ("tool_result", {"id": "call_1", "output": "5"}),
        ("message", "It is 5."),
        finish("stop"),
        usage(40, 10),
        DONE,
    ]
    [_, second] = first.requests
    added = sent_back(api, second.json)
    if api == "chat":
        [assistant, tool] = call_and_result(api, call, "5")
        assert added == [assistant | {"content": "Let me add."}, tool]
    else:
        said = {"role": "assistant", "content": "Let me add."}
        assert added == [said, *call_and_result(api, call, "5")]
    assert second.json["tools"] == first.requests[0].json["tools"]


def test_raw_text_of_an_answer_with_tools_is_the_text_of_every_step(
    tools: Server, upstream: FakeUpstream, api: str
) -> None:
    answer = upstream.script(Text("It is 5."), *ends(api, "stop", Usage(30, 4)))
    first = upstream.script(
        Text("Let me add. "),
        FunctionCall("call_1", "add", '{"a": 2, "b": 3}'),
        *ends(api, "tool_calls", Usage(10, 6)),
        then=answer,
    )
    assert ask(tools, first, "/api/stream") == b"Let me add. It is 5."
    assert len(first.requests) == 2


def test_bad_arguments_and_a_tool_that_raises_give_errors_the_model_reads(
    tools: Server, upstream: FakeUpstream, api: str
) -> None:
    """The model goes on after them, and no error names the key (``broken``
    quotes it)."""
    bad = ("call_bad", "add", '{"a": 2, "b": ')
    raising = ("call_err", "broken", '{"reason": "y"}')
    answer = upstream.script(Text("Sorry."), *ends(api, "stop", Usage(1, 1)))
    first = upstream.script(
        FunctionCall(*bad),
        FunctionCall(*raising),
        *ends(api, "tool_calls", Usage(1, 1)),
        then=answer,
    )
    events = events_of(ask(tools, first))
    results = {data["id"]: data for name, data in events if name == "tool_result"}
    assert set(results["call_bad"]) == {"id", "error"}
    assert results["call_bad"]["error"].startswith("Bad arguments for add")
    error = "broken failed: ValueError: no luck with y (key [redacted])"
    assert results["call_err"] == {"id": "call_err", "error": error}
    assert events[-4:] == [("message", "Sorry."), finish("stop"), usage(2, 2), DONE]
    [_, second] = first.requests
    told = json.dumps(sent_back(api, second.json))
    assert "Bad arguments for add" in told and error in told
    assert FAKE_API_KEY not in told


def test_a_tool_error_names_no_key_even_one_that_no_pattern_recognises(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process (the servers' key has a key's shape): an Azure key is 32 hex
    digits, which only its value can give away."""
    key = uuid.uuid4().hex
    monkeypatch.setenv("OPENAI_API_KEY", key)  # what ``broken`` quotes
    settings = Settings(api_key=key, base_url=upstream.base_url)
    answer = upstream.script(Text("Sorry."), Finish("stop"), Done())
    first = upstream.script(
        FunctionCall("call_err", "broken", '{"reason": "y"}'),
        Finish("tool_calls"),
        Done(),
        then=answer,
    )
    app = create_app({"STREAM_SETTINGS": settings}, tools=[broken])
    prompt = {"prompt": f"go {first.marker}"}
    try:
        body = app.test_client().post("/completions/chat", json=prompt).get_data()
    finally:
        app.extensions["upstream"].client.close()  # its pooled connection
    assert b"event: tool_result" in body and b"Sorry." in body
    assert key.encode() not in body
    assert key not in json.dumps(first.requests[-1].json)


def test_a_result_that_is_not_a_string_is_sent_as_json(
    tools: Server, upstream: FakeUpstream, api: str
) -> None:
    call = ("call_s", "slow", '{"seconds": 0.01}')
    answer = upstream.script(Text("Done."), *ends(api, "stop", Usage(1, 1)))
    first = upstream.script(
        FunctionCall(*call), *ends(api, "tool_calls", Usage(1, 1)), then=answer
    )
    output = '{"slept": 0.01}'
    assert ("tool_result", {"id": "call_s", "output": output}) in events_of(
        ask(tools, first)
    )
    [_, second] = first.requests
    assert sent_back(api, second.json) == call_and_result(api, call, output)


def test_a_hanging_tool_is_given_up_and_the_model_goes_on(
    tools: Server, upstream: FakeUpstream, api: str
) -> None:
    answer = upstream.script(Text("Too slow."), *ends(api, "stop", Usage(1, 1)))
    first = upstream.script(
        FunctionCall("call_h", "slow", '{"seconds": 30}'),
        *ends(api, "tool_calls", Usage(1, 1)),
        then=answer,
    )
    body, reads = timed_body(tools, first)
    ran = arrival(reads, b"event: tool_result") - arrival(reads, b"event: tool_call")
    assert ran < TOOL_TIMEOUT_BOUND_SECONDS
    error = "slow did not finish within 1 s."
    events = events_of(body)
    assert ("tool_result", {"id": "call_h", "error": error}) in events
    assert events[-4:] == [("message", "Too slow."), finish("stop"), usage(2, 2), DONE]


def test_keepalives_go_on_while_a_tool_runs(
    tools: Server, upstream: FakeUpstream, api: str
) -> None:
    seconds = 4 * TOOLS_KEEPALIVE_SECONDS
    answer = upstream.script(Text("Awake."), *ends(api, "stop", Usage(1, 1)))
    first = upstream.script(
        FunctionCall("call_s", "slow", json.dumps({"seconds": seconds})),
        *ends(api, "tool_calls", Usage(1, 1)),
        then=answer,
    )
    body = ask(tools, first)
    during = body.partition(b"event: tool_call")[2].partition(b"event: tool_result")[0]
    assert during.count(b": keep-alive\n\n") >= 2, body
    assert ("message", "Awake.") in events_of(body)


def test_at_the_last_step_the_calls_are_not_run(
    tools: Server, upstream: FakeUpstream, api: str
) -> None:
    """``STREAM_MAX_STEPS=3``: the third model call's calls end the answer."""

    def calling(n: int, then: Script | None = None) -> Script:
        call = FunctionCall(f"call_{n}", "add", f'{{"a": {n}, "b": 1}}')
        return upstream.script(call, *ends(api, "tool_calls", Usage(n, 1)), then=then)

    first = calling(1, then=calling(2, then=calling(3)))
    events = events_of(ask(tools, first))
    assert events == [
        tool_call("call_1", "add", '{"a": 1, "b": 1}'),
        finish("tool_calls"),
        ("tool_result", {"id": "call_1", "output": "2"}),
        tool_call("call_2", "add", '{"a": 2, "b": 1}'),
        finish("tool_calls"),
        ("tool_result", {"id": "call_2", "output": "3"}),
        tool_call("call_3", "add", '{"a": 3, "b": 1}'),
        finish("tool_calls"),
        usage(6, 3),
        DONE,
    ]
    assert len(first.requests) == 3


def test_a_client_that_leaves_during_a_tool_run_gets_no_further_model_call(
    tools: Server, upstream: FakeUpstream, api: str
) -> None:
    seconds = 0.8  # past runserver's second keep-alive write, which fails
    answer = upstream.script(Text("never"), *ends(api, "stop", Usage(1, 1)))
    first = upstream.script(
        Text("Wait."),
        FunctionCall("call_s", "slow", json.dumps({"seconds": seconds})),
        *ends(api, "tool_calls", Usage(1, 1)),
        then=answer,
    )
    leave_at(tools, first, b"event: tool_call")
    time.sleep(seconds + 1.0)  # the tool's run, and the time a request would take
    assert len(first.requests) == 1
