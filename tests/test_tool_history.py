"""Conversation history with tool use (CONTRACT.md, "Tools run by the server"), over
real HTTP against each of the four servers.

A history with assistant ``tool_calls`` and ``tool`` answers reaches Chat Completions
as sent, and the Responses API as ``function_call`` and ``function_call_output``
items in the same order; a history the upstream could not follow is a 400 naming the
message and the field, and no upstream request. ``/api/stream`` takes the same
``messages`` as ``POST /completions/chat``, so both routes are checked.
"""

from __future__ import annotations

from typing import Any

import pytest

from shared.config import Settings
from shared.streaming import Step, ToolCall, ToolResult, Tools, responses_input
from shared.upstream import Upstream
from tests.client import error_of, parse_sse, post_json, texts
from tests.conftest import MAX_PROMPT_CHARS, ServerPool
from tests.fake_upstream import Done, FakeUpstream, Text
from tests.servers import ALL_KINDS, Server, ServerKind

ROUTES = ["/completions/chat", "/api/stream"]


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def history(marker: str) -> list[dict[str, Any]]:
    """Two parallel calls answered out of order, text beside a call, then more."""
    return [
        {"role": "system", "content": "Use the tools."},
        {"role": "user", "content": f"Time in Paris, and a die? {marker}"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                call("call_time", "current_time", '{"tz": "Europe/Paris"}'),
                call("call_dice", "roll-dice_2", "{}"),
            ],
        },
        {"role": "tool", "tool_call_id": "call_dice", "content": "4"},
        {"role": "tool", "tool_call_id": "call_time", "content": "12:00"},
        {
            "role": "assistant",
            "content": "Let me check again.",
            "tool_calls": [call("call_again", "current_time", '{"tz": "UTC"')],
        },
        {"role": "tool", "tool_call_id": "call_again", "content": ""},
        {"role": "user", "content": "So?"},
    ]


def items(marker: str) -> list[dict[str, Any]]:
    """``history(marker)`` as the Responses API's input items."""
    return [
        {"role": "system", "content": "Use the tools."},
        {"role": "user", "content": f"Time in Paris, and a die? {marker}"},
        {
            "type": "function_call",
            "call_id": "call_time",
            "name": "current_time",
            "arguments": '{"tz": "Europe/Paris"}',
        },
        {
            "type": "function_call",
            "call_id": "call_dice",
            "name": "roll-dice_2",
            "arguments": "{}",
        },
        {"type": "function_call_output", "call_id": "call_dice", "output": "4"},
        {"type": "function_call_output", "call_id": "call_time", "output": "12:00"},
        {"role": "assistant", "content": "Let me check again."},
        {
            "type": "function_call",
            "call_id": "call_again",
            "name": "current_time",
            "arguments": '{"tz": "UTC"',
        },
        {"type": "function_call_output", "call_id": "call_again", "output": ""},
        {"role": "user", "content": "So?"},
    ]


def test_assistant_text_is_an_item_only_when_there_is_some() -> None:
    calling = {"role": "assistant", "tool_calls": [call("c", "f", "{}")]}
    function_call = {
        "type": "function_call",
        "call_id": "c",
        "name": "f",
        "arguments": "{}",
    }
    assert responses_input([{**calling, "content": None}]) == [function_call]
    assert responses_input([{**calling, "content": ""}]) == [function_call]
    assert responses_input([{"role": "assistant", "content": ""}]) == [
        {"role": "assistant", "content": ""}
    ]


def current_time(tz: str) -> str:
    """The time in a time zone."""
    return "12:00"


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_the_tool_loop_sends_the_history_and_its_steps_in_the_apis_shape(
    api: str,
) -> None:
    """The loop's next request: the client's history, then each step, converted
    alike (the core's own ``Step`` conversion agrees)."""
    environ = {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_CHAT_API": api}
    upstream = Upstream(Settings.from_env(environ), Tools([current_time]))
    sent = history("[[marker]]")
    answer = upstream.chat(sent)
    assert answer.follow_up is not None
    step = Step("", [ToolCall("c9", "current_time", "{}")], [ToolResult("c9", "1")])
    opener = answer.follow_up([step])
    body = opener.args[1].json_data  # type: ignore[attr-defined]
    if api == "responses":
        assert body["input"] == [*items("[[marker]]"), *step.responses_input()]
    else:
        assert body["messages"] == [*sent, *step.chat_messages()]


@pytest.fixture(params=ALL_KINDS, ids=lambda kind: kind.name)
def kind(request: pytest.FixtureRequest) -> ServerKind:
    kind: ServerKind = request.param
    return kind


@pytest.mark.parametrize("path", ROUTES)
def test_a_tool_history_reaches_chat_completions_as_sent(
    pool: ServerPool, upstream: FakeUpstream, kind: ServerKind, path: str
) -> None:
    server = pool.get(kind, "plain")
    script = upstream.script(Text("It is noon."), Done())
    messages = history(script.marker)
    status, _, body = post_json(server, path, {"messages": messages})
    assert status == 200, body
    assert answer_text(path, body) == "It is noon."
    request = script.wait_for_request()
    assert request.path == "/v1/chat/completions"
    assert request.json["messages"] == messages


@pytest.mark.parametrize("path", ROUTES)
def test_a_tool_history_reaches_the_responses_api_as_items(
    pool: ServerPool, upstream: FakeUpstream, kind: ServerKind, path: str
) -> None:
    server = pool.get(kind, "responses")
    script = upstream.script(Text("It is noon."), Done())
    status, _, body = post_json(server, path, {"messages": history(script.marker)})
    assert status == 200, body
    assert answer_text(path, body) == "It is noon."
    request = script.wait_for_request()
    assert request.path == "/v1/responses"
    assert request.json["input"] == items(script.marker)


def answer_text(path: str, body: bytes) -> str:
    if path == "/api/stream":
        return body.decode()
    return "".join(texts(parse_sse(body)))


ASK = {"role": "user", "content": "What time is it?"}
CALLING = {"role": "assistant", "content": None, "tool_calls": [call("c1", "now", "")]}
ANSWER = {"role": "tool", "tool_call_id": "c1", "content": "12:00"}
BAD_HISTORIES = [
    pytest.param(
        [ANSWER],
        "messages[1].tool_call_id must be the id of a call in an earlier assistant "
        "message's tool_calls, got 'c1'.",
        id="answer-to-no-call",
    ),
    pytest.param(
        [CALLING, ANSWER, ANSWER],
        "messages[3].tool_call_id 'c1' was already answered by messages[2]: "
        "answer each call once.",
        id="answered-twice",
    ),
    pytest.param(
        [{**CALLING, "tool_calls": [call("c1", "what time", "{}")]}],
        "messages[1].tool_calls[0].function.name must match [a-zA-Z0-9_-]{1,64} "
        "(letters, digits, '_' and '-'), got 'what time'.",
        id="bad-name",
    ),
    pytest.param(
        [{**CALLING, "tool_calls": [{**call("c1", "now", "{}"), "type": "tool"}]}],
        "messages[1].tool_calls[0].type must be 'function', got 'tool'.",
        id="type-not-function",
    ),
    pytest.param(
        [
            {
                **CALLING,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "now"}}
                ],
            }
        ],
        "messages[1].tool_calls[0].function.arguments must be a string (the "
        "arguments' JSON as text), got None.",
        id="no-arguments",
    ),
    pytest.param(
        [{**CALLING, "tool_calls": [call("", "now", "{}")]}],
        "messages[1].tool_calls[0].id must be a non-empty string of at most 256 "
        "characters, got ''.",
        id="empty-id",
    ),
    pytest.param(
        [{"role": "assistant", "content": None}],
        "messages[1].content must be a string, got None.",
        id="null-content-without-calls",
    ),
    pytest.param(
        [CALLING, {**ANSWER, "content": None}],
        "messages[2].content must be a string (the tool's output), got None.",
        id="tool-output-not-a-string",
    ),
    pytest.param(
        [{**ASK, "tool_calls": CALLING["tool_calls"]}],
        "messages[1].tool_calls belongs only in a message of role 'assistant', "
        "not 'user'.",
        id="calls-in-a-user-message",
    ),
]


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize(("after_the_question", "message"), BAD_HISTORIES)
def test_a_bad_tool_history_is_a_400_and_no_upstream_request(
    pool: ServerPool,
    upstream: FakeUpstream,
    kind: ServerKind,
    path: str,
    after_the_question: list[dict[str, Any]],
    message: str,
) -> None:
    script = upstream.script(Text("never"), Done())
    ask = {**ASK, "content": f"{ASK['content']} {script.marker}"}
    assert_refused(pool.get(kind, "plain"), path, [ask, *after_the_question], message)
    assert script.requests == []


@pytest.mark.parametrize("path", ROUTES)
def test_tool_outputs_count_toward_the_prompt_limit(
    pool: ServerPool, upstream: FakeUpstream, kind: ServerKind, path: str
) -> None:
    script = upstream.script(Text("never"), Done())
    ask = {**ASK, "content": f"{ASK['content']} {script.marker}"}
    output = {**ANSWER, "content": "x" * (MAX_PROMPT_CHARS - len(ask["content"]))}
    arguments = {**CALLING, "tool_calls": [call("c1", "now", "{}")]}
    total = MAX_PROMPT_CHARS + 2
    message = f"The messages hold {total} characters; the limit is {MAX_PROMPT_CHARS}."
    assert_refused(pool.get(kind, "plain"), path, [ask, arguments, output], message)
    assert script.requests == []


def assert_refused(
    server: Server, path: str, messages: list[dict[str, Any]], message: str
) -> None:
    response = post_json(server, path, {"messages": messages})
    assert response[0] == 400
    assert error_of(response) == {"message": message, "type": "invalid_request_error"}
