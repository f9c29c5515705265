"""Tools the server runs: their schemas, their runs, and the loop of model calls.

The loop runs against the fake upstream (a real HTTP server speaking OpenAI's wire
format) through the real openai client, in-process; the same through the apps'
servers is ``tests/test_everything_else.py``'s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import openai
import pytest

from shared import streaming
from shared.streaming import Step, ToolCall, ToolResult, Tools, sse_frames
from tests.client import parse_sse
from tests.fake_upstream import Done, FakeUpstream, Finish, Raw, Text, Usage
from tests.gevent_rerun import assert_passes_under_gevent, patched


def add(a: int, b: int = 1) -> int:
    """Add two whole numbers.

    The model should use it for sums.
    """
    return a + b


def shout(text: str) -> str:
    """The text in capitals."""
    return text.upper()


def broken(reason: str) -> str:
    """Always fails."""
    raise ValueError(f"no luck with {reason}")


def slow(seconds: float) -> str:
    """Sleeps, then answers."""
    time.sleep(seconds)
    return "awake"


TOOLS = Tools([add, shout, broken, slow], max_steps=3, timeout_seconds=0.5)


def test_a_functions_signature_and_docstring_are_its_schema() -> None:
    [chat_add, *_] = TOOLS.definitions()
    assert chat_add == {
        "type": "function",
        "function": {
            "name": "add",
            "description": (
                "Add two whole numbers.\n\nThe model should use it for sums."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"type": "integer"},
                    "b": {"type": "integer", "default": 1},
                },
                "required": ["a"],
                "additionalProperties": False,
            },
        },
    }
    [responses_add, *_] = TOOLS.definitions("responses")
    assert responses_add == {"type": "function", **chat_add["function"]}


@pytest.mark.parametrize(
    ("call", "result"),
    [
        pytest.param(ToolCall("c", "add", '{"a": 2, "b": 3}'), ("5", None), id="int"),
        pytest.param(ToolCall("c", "add", '{"a": 2}'), ("3", None), id="default"),
        pytest.param(ToolCall("c", "shout", '{"text": "hé"}'), ("HÉ", None), id="str"),
        pytest.param(ToolCall("c", "add", ""), (None, "Bad arguments"), id="empty"),
        pytest.param(
            ToolCall("c", "add", '{"a": '), (None, "Bad arguments"), id="json"
        ),
        pytest.param(
            ToolCall("c", "add", '{"a": "two"}'), (None, "Bad arguments"), id="type"
        ),
        pytest.param(
            ToolCall("c", "add", '{"a": 1, "c": 2}'),
            (None, "Bad arguments"),
            id="extra",
        ),
        pytest.param(
            ToolCall("c", "broken", '{"reason": "x"}'),
            (None, "broken failed: ValueError: no luck with x"),
            id="raises",
        ),
        pytest.param(
            ToolCall("c", "nope", "{}"),
            (None, "There is no tool named 'nope'."),
            id="?",
        ),
        pytest.param(
            ToolCall("c", "slow", '{"seconds": 5}'),
            (None, "slow did not finish within 0.5 s."),
            id="hangs",
        ),
    ],
)
def test_a_tool_run_gives_an_output_or_an_error_the_model_can_read(
    call: ToolCall, result: tuple[str | None, str | None]
) -> None:
    started = time.monotonic()
    ran = TOOLS.run(call)
    assert time.monotonic() - started < 2, "a hanging tool is given up"
    output, error = result
    assert (ran.id, ran.output) == ("c", output)
    if error is None:
        assert ran.error is None
    else:
        assert ran.error is not None and ran.error.startswith(error), ran.error


def test_a_result_that_is_not_a_string_goes_back_as_json() -> None:
    def numbers() -> list[int]:
        """Some numbers."""
        return [1, 2]

    assert Tools([numbers]).run(ToolCall("c", "numbers", "{}")).output == "[1, 2]"


def test_a_step_is_sent_back_in_the_shape_of_each_api() -> None:
    step = Step(
        "Let me add.",
        [ToolCall("c1", "add", '{"a": 2}')],
        [ToolResult("c1", output="3")],
    )
    assert step.chat_messages() == [
        {
            "role": "assistant",
            "content": "Let me add.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 2}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "3"},
    ]
    assert step.responses_input() == [
        {"role": "assistant", "content": "Let me add."},
        {
            "type": "function_call",
            "call_id": "c1",
            "name": "add",
            "arguments": '{"a": 2}',
        },
        {"type": "function_call_output", "call_id": "c1", "output": "3"},
    ]
    failed = Step("", [ToolCall("c2", "broken", "{}")], [ToolResult("c2", error="x")])
    assert failed.chat_messages()[0]["content"] is None
    assert failed.chat_messages()[1]["content"] == "Error: x"


# --- The loop ------------------------------------------------------------------------


def tool_call_chunks(*calls: tuple[str, str, str]) -> list[Raw]:
    """Chat chunks calling ``(id, name, arguments)``, arguments in two pieces."""
    chunks = []
    for index, (call_id, name, arguments) in enumerate(calls):
        head = {"index": index, "id": call_id, "type": "function"}
        head["function"] = {"name": name, "arguments": arguments[:3]}
        rest = {"index": index, "function": {"arguments": arguments[3:]}}
        for call in (head, rest):
            delta = {"tool_calls": [call]}
            chunk = {
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta}],
            }
            chunks.append(Raw(b"data: " + json.dumps(chunk).encode() + b"\n\n"))
    return chunks


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
def client(fake: FakeUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key="sk-test", base_url=fake.base_url, max_retries=0) as c:
        yield c


def ask(client: openai.OpenAI, marker: str, **kwargs: Any) -> bytes:
    """One answer with the tools, through ``sse_frames``, as a view would ask."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": f"sum {marker}"}]

    def request(history: list[dict[str, Any]]) -> streaming.Opener:
        return lambda: client.chat.completions.with_streaming_response.create(
            model="m",
            messages=history,  # type: ignore[arg-type]
            tools=TOOLS.definitions(),  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )

    def follow_up(steps: Sequence[Step]) -> streaming.Opener:
        return request(messages + [m for s in steps for m in s.chat_messages()])

    body = sse_frames(request(messages), tools=TOOLS, follow_up=follow_up, **kwargs)
    try:
        return b"".join(body)
    finally:
        body.close()  # type: ignore[attr-defined]


def events_of(body: bytes) -> list[tuple[str, Any]]:
    return [
        (e.event, e.data if e.event in ("message", "reasoning") else json.loads(e.data))
        for e in parse_sse(body)
    ]


def test_the_server_runs_the_tools_and_asks_again_in_the_same_response(
    fake: FakeUpstream, client: openai.OpenAI
) -> None:
    answer = fake.script(Text("It is 5."), Finish("stop"), Usage(30, 4), Done())
    calls = tool_call_chunks(
        ("c1", "add", '{"a": 2, "b": 3}'), ("c2", "broken", '{"reason": "y"}')
    )
    first = fake.script(*calls, Finish("tool_calls"), Usage(10, 6), Done(), then=answer)
    events = events_of(ask(client, first.marker))
    assert events == [
        ("tool_call", {"id": "c1", "name": "add", "arguments": '{"a": 2, "b": 3}'}),
        ("tool_call", {"id": "c2", "name": "broken", "arguments": '{"reason": "y"}'}),
        ("finish", {"reason": "tool_calls"}),
        ("tool_result", {"id": "c1", "output": "5"}),
        (
            "tool_result",
            {"id": "c2", "error": "broken failed: ValueError: no luck with y"},
        ),
        ("message", "It is 5."),
        ("finish", {"reason": "stop"}),
        ("usage", {"prompt_tokens": 40, "completion_tokens": 10, "total_tokens": 50}),
        ("message", "[DONE]"),
    ]
    [_, second] = first.requests + answer.requests
    sent = second.json["messages"]
    assert sent[1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                },
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "broken", "arguments": '{"reason": "y"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "5"},
        {
            "role": "tool",
            "tool_call_id": "c2",
            "content": "Error: broken failed: ValueError: no luck with y",
        },
    ]


def test_past_the_last_step_the_calls_are_not_run(
    fake: FakeUpstream, client: openai.OpenAI
) -> None:
    """``max_steps`` model calls at most: the last one's calls end the answer."""
    call = tool_call_chunks(("c", "add", '{"a": 1}'))
    third = fake.script(*call, Finish("tool_calls"), Done())
    second = fake.script(*call, Finish("tool_calls"), Done(), then=third)
    first = fake.script(*call, Finish("tool_calls"), Done(), then=second)
    events = events_of(ask(client, first.marker))
    kinds = [kind for kind, _ in events]
    assert kinds == ["tool_call", "finish", "tool_result"] * 2 + [
        "tool_call",
        "finish",
        "message",
    ]
    assert events[-2] == ("finish", {"reason": "tool_calls"})
    assert len(first.requests + second.requests + third.requests) == 3


def test_keepalives_go_on_while_a_tool_runs(
    fake: FakeUpstream, client: openai.OpenAI
) -> None:
    answer = fake.script(Text("done"), Finish("stop"), Done())
    call = tool_call_chunks(("c", "slow", '{"seconds": 0.3}'))
    first = fake.script(Text("wait"), *call, Finish("tool_calls"), Done(), then=answer)
    body = ask(client, first.marker, keepalive_seconds=0.1)
    assert body.count(b": keep-alive\n\n") >= 2, body
    assert ("tool_result", {"id": "c", "output": "awake"}) in events_of(body)


def test_a_client_that_leaves_during_a_tool_run_gets_no_further_model_call(
    fake: FakeUpstream, client: openai.OpenAI
) -> None:
    answer = fake.script(Text("never"), Done())
    call = tool_call_chunks(("c", "slow", '{"seconds": 0.4}'))
    first = fake.script(Text("wait"), *call, Finish("tool_calls"), Done(), then=answer)
    messages = [{"role": "user", "content": f"sum {first.marker}"}]

    def request() -> streaming.Opener:
        return lambda: client.chat.completions.with_streaming_response.create(
            model="m",
            messages=messages,
            stream=True,  # type: ignore[arg-type]
        )

    body = sse_frames(request(), tools=TOOLS, follow_up=lambda steps: request())
    iterator = iter(body)
    assert next(iterator) == b"data: wait\n\n"
    body.close()  # type: ignore[attr-defined]  # the client left
    time.sleep(0.8)  # the tool's run, and then some
    # The fake records every request of a chain under its first script.
    assert len(first.requests + answer.requests) == 1


@pytest.mark.skipif(patched(), reason="this is the gevent run")
def test_tools_pass_these_tests_under_gevent_too() -> None:
    """Under gevent a hanging tool is interrupted, and the loop runs in the
    relay's helper greenlet: every test above runs again that way."""
    assert_passes_under_gevent(__file__)
