"""The demo upstream, exercised through the real openai client and raw httpx2."""

from __future__ import annotations

import datetime
import json
import time
import zoneinfo
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import openai
import pydantic
import pytest
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseReasoningItem,
    ResponseStreamEvent,
)

from shared import demo, demo_tools
from shared.demo import (
    DEMO_BASE_URL,
    DemoStream,
    DemoTransport,
    demo_answer,
    demo_turn,
)
from shared.demo_tools import DEMO_TOOLS, current_time, roll_dice

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Earlier question"},
    {"role": "assistant", "content": "Earlier answer"},
    {"role": "user", "content": "Tell me   about streaming\nresponses, please."},
]


class RecordingTransport(DemoTransport):
    """Keeps the streams it hands out, to see what the generator did."""

    def __init__(self) -> None:
        super().__init__(token_delay=0)
        self.streams: list[DemoStream] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = super().handle_request(request)
        if isinstance(response.stream, DemoStream):
            self.streams.append(response.stream)
        return response


@pytest.fixture
def transport() -> RecordingTransport:
    return RecordingTransport()


def make_client(transport: DemoTransport, strict: bool) -> Iterator[openai.OpenAI]:
    http = httpx2.Client(transport=transport)
    client = openai.OpenAI(
        api_key="demo",
        base_url=DEMO_BASE_URL,
        http_client=http,
        max_retries=0,
        _strict_response_validation=strict,
    )
    with http, client:
        yield client


@pytest.fixture
def client(transport: RecordingTransport) -> Iterator[openai.OpenAI]:
    """Validates every response strictly against the SDK's pydantic types."""
    yield from make_client(transport, strict=True)


@pytest.fixture
def lax_client(transport: RecordingTransport) -> Iterator[openai.OpenAI]:
    """The SDK's default: legacy completion chunks carry ``finish_reason: null``
    (as OpenAI sends them) while ``CompletionChoice.finish_reason`` is not Optional,
    so strict validation would reject the real wire format."""
    yield from make_client(transport, strict=False)


def chat_stream(client: openai.OpenAI, usage: bool) -> list[ChatCompletionChunk]:
    options = {"stream_options": {"include_usage": True}} if usage else {}
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, **options
    )
    return list(stream)


def test_answer_is_short_friendly_multiline_and_quotes_the_prompt() -> None:
    text = demo_answer("Tell me   about streaming\nresponses, please.")
    lines = text.split("\n")
    assert 3 <= len(lines) <= 6
    assert "offline demo model" in lines[0]
    assert '"Tell me about streaming responses, please."' in text
    assert sum(line.startswith("- ") for line in lines) >= 2
    assert demo_answer("x" * 500).count("…") == 1
    assert demo_answer("same") == demo_answer("same") != demo_answer("other")


def reasoning_of(chunk: ChatCompletionChunk) -> str | None:
    """DeepSeek's ``delta.reasoning_content``: an extra field for the SDK."""
    extra = chunk.choices[0].delta.model_extra or {}
    return extra.get("reasoning_content")


def test_chat_stream_thinks_then_answers(client: openai.OpenAI) -> None:
    chunks = chat_stream(client, usage=True)
    first, *middle, last_choice, usage_chunk = chunks
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == ""
    thinking = [c for c in middle if reasoning_of(c) is not None]
    answer = middle[len(thinking) :]
    assert middle[: len(thinking)] == thinking  # every thought before the answer
    assert all(c.choices[0].delta.content is None for c in thinking)
    assert all(reasoning_of(c) is None for c in answer)
    deltas = [c.choices[0].delta.content for c in answer]
    thoughts = [reasoning_of(c) for c in thinking]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert thoughts[:4] == ["The", " user", " wrote", ' "Tell']
    assert "\n" in thoughts and 10 <= len(thoughts) <= 40
    assert deltas[:3] == ["Hello!", " I", " am"]
    assert "\n" in deltas and all(c.choices[0].finish_reason is None for c in middle)
    assert last_choice.choices[0].finish_reason == "stop"
    assert last_choice.choices[0].delta.content is None
    assert usage_chunk.choices == []
    usage = usage_chunk.usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == len(thoughts)
    assert usage.completion_tokens == len(thoughts) + len(deltas)
    assert 60 <= len(deltas) <= 120
    assert usage.prompt_tokens == 13
    assert usage.total_tokens == 13 + usage.completion_tokens
    text, reasoning = "".join(deltas), "".join(thoughts)  # type: ignore[arg-type]
    assert text == demo_answer(MESSAGES[-1]["content"])
    assert (
        reasoning
        == demo_turn(MESSAGES).reasoning
        == (
            'The user wrote "Tell me about streaming responses, please." (6 words).\n'
            "I will answer in a few short lines that quote it."
        )
    )

    again = chat_stream(client, usage=False)
    assert "".join(c.choices[0].delta.content or "" for c in again) == text
    assert "".join(reasoning_of(c) or "" for c in again) == reasoning
    assert all(c.usage is None for c in again) and again[-1].choices

    whole = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.content == text
    assert whole.choices[0].message.model_extra == {"reasoning_content": reasoning}
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None
    assert whole.usage.completion_tokens == usage.completion_tokens
    assert whole.usage.completion_tokens_details == usage.completion_tokens_details


def test_chat_stream_helper(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model="m", messages=MESSAGES) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == demo_answer(MESSAGES[-1]["content"])


def test_completions_stream(lax_client: openai.OpenAI) -> None:
    stream = lax_client.completions.create(
        model="gpt-3.5-turbo-instruct",
        prompt="Say hi",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(isinstance(c, openai.types.Completion) for c in chunks)
    assert not any(c.choices[0].model_extra for c in chunks if c.choices)
    assert all(c.object == "text_completion" for c in chunks)
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert chunks[-2].choices[0].finish_reason == "stop" and texts[-1] == ""
    assert "".join(texts) == demo_answer("Say hi")
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == len(texts) - 1  # no thinking
    assert chunks[-1].usage.prompt_tokens == 2
    assert chunks[-1].usage.completion_tokens_details is None
    whole = lax_client.completions.create(model="m", prompt="Say hi")
    assert whole.choices[0].text == demo_answer("Say hi")


REASONING_EVENTS = [
    "response.output_item.added",
    "response.reasoning_summary_part.added",
    "response.reasoning_summary_text.delta",
    "response.reasoning_summary_text.done",
    "response.reasoning_summary_part.done",
    "response.output_item.done",
]


def collapsed(types: list[str]) -> list[str]:
    """Event types with each run of one type written once."""
    return [t for i, t in enumerate(types) if i == 0 or types[i - 1] != t]


@pytest.mark.parametrize(
    "given",
    [
        "Hi there",
        [{"role": "user", "content": [{"type": "input_text", "text": "Hi there"}]}],
    ],
)
def test_responses_stream_summarises_its_reasoning_then_answers(
    client: openai.OpenAI, given: object
) -> None:
    stream = client.responses.create(model="gpt-4o-mini", input=given, stream=True)
    events = list(stream)
    assert collapsed([e.type for e in events]) == [
        "response.created",
        "response.in_progress",
        *REASONING_EVENTS,
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    thinking = [e for e in events if e.type == "response.reasoning_summary_text.delta"]
    reasoning = "".join(e.delta for e in thinking)
    assert reasoning == demo_turn([{"role": "user", "content": "Hi there"}]).reasoning
    assert reasoning.startswith('The user wrote "Hi there" (2 words).\n')
    summary = events[2 + len(thinking) + 4]
    assert summary.type == "response.output_item.done"
    assert isinstance(summary.item, ResponseReasoningItem)
    assert [s.text for s in summary.item.summary] == [reasoning]
    assert {(e.item_id, e.output_index, e.summary_index) for e in thinking} == {
        (summary.item.id, 0, 0)
    }
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) + len(thinking) == len(events) - 13
    added = events[3 + len(thinking) + 4]
    assert added.type == "response.output_item.added"
    assert {(d.item_id, d.output_index, d.content_index) for d in deltas} == {
        (added.item.id, 1, 0)
    }
    text = "".join(d.delta for d in deltas)
    assert text == demo_answer("Hi there") == events[-4].text
    completed = events[-1].response
    assert completed.status == "completed" and completed.output_text == text
    assert completed.output[0] == summary.item
    assert completed.id == events[0].response.id
    assert completed.usage is not None
    assert completed.usage.input_tokens == 2
    assert completed.usage.output_tokens == len(deltas) + len(thinking)
    assert completed.usage.output_tokens_details.reasoning_tokens == len(thinking)
    assert completed.usage.total_tokens == 2 + completed.usage.output_tokens

    with client.responses.stream(model="m", input=given) as helper:
        assert helper.get_final_response().output_text == text
    whole = client.responses.create(model="m", input=given)
    assert whole.output_text == text
    assert whole.output[0].type == "reasoning"
    assert whole.output[0].summary[0].text == reasoning
    assert whole.usage == completed.usage


def test_wire_format(transport: RecordingTransport) -> None:
    with httpx2.Client(transport=transport, base_url=DEMO_BASE_URL) as http:
        body = {"model": "m", "messages": MESSAGES, "stream": True}
        chat = http.post("/chat/completions", json=body)
        responses = http.post("/responses", json={"input": "x", "stream": True})
    assert chat.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert chat.text.startswith('data: {"id":"chatcmpl-')
    assert chat.text.endswith("}\n\ndata: [DONE]\n\n")
    assert responses.text.startswith("event: response.created\ndata: {")
    last = responses.text.split("\n\n")[-2]
    assert last.startswith("event: response.completed\ndata: {")
    assert "[DONE]" not in responses.text
    # One SSE event per yield.
    stream = transport.streams[0]
    assert stream.sent == chat.text.count("\n\n")


def test_errors(client: openai.OpenAI, transport: RecordingTransport) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="m", input="x")
    assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert "/v1/embeddings" in caught.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="m", messages=[])
    assert bad.value.param == "messages"  # type: ignore[attr-defined]
    with httpx2.Client(transport=transport, base_url=DEMO_BASE_URL) as http:
        not_json = http.post("/chat/completions", content=b"{nope")
        wrong_method = http.get("/chat/completions")
        no_prompt = http.post("/completions", json={"model": "m"})
    assert not_json.status_code == 400
    assert not_json.json()["error"]["type"] == "invalid_request_error"
    assert wrong_method.status_code == 404
    assert no_prompt.json()["error"]["code"] == "missing_required_parameter"


def test_closing_early_stops_generation(
    client: openai.OpenAI, transport: RecordingTransport
) -> None:
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    got = [next(stream) for _ in range(3)]
    assert reasoning_of(got[2]) == " user"
    stream.close()
    (demo_stream,) = transport.streams
    assert demo_stream.closed
    sent = demo_stream.sent
    assert sent <= 4  # the SDK may have read one event ahead, no more
    assert list(stream) == []
    assert demo_stream.sent == sent


def test_delay_and_prompt_close(monkeypatch: pytest.MonkeyPatch) -> None:
    naps: list[float] = []
    monkeypatch.setattr(demo.time, "sleep", naps.append)
    events = iter([{"a": 1}, {"a": 2}, None])
    assert list(DemoStream(events, delay=0.5)) == [
        b'data: {"a":1}\n\n',
        b'data: {"a":2}\n\n',
        b"data: [DONE]\n\n",
    ]
    assert naps == [0.5, 0.5]  # between events, not before the first
    monkeypatch.undo()

    slow = DemoStream(iter([{"a": 1}, {"a": 2}]), delay=5.0)
    body = iter(slow)
    assert next(body) == b'data: {"a":1}\n\n'
    slow.close()
    started = time.monotonic()
    assert list(body) == []
    assert time.monotonic() - started < 1.0
    assert slow.sent == 1


def schema(function: Callable[..., Any]) -> dict[str, Any]:
    """The JSON schema of a function's parameters, as a server builds it."""
    return pydantic.TypeAdapter(function).json_schema()


def chat_tools(*functions: Callable[..., Any]) -> list[Any]:
    return [
        {
            "type": "function",
            "function": {
                "name": f.__name__,
                "description": f.__doc__,
                "parameters": schema(f),
            },
        }
        for f in functions
    ]


def responses_tools(*functions: Callable[..., Any]) -> list[Any]:
    return [
        {
            "type": "function",
            "name": f.__name__,
            "description": f.__doc__,
            "parameters": schema(f),
            "strict": False,
        }
        for f in functions
    ]


def ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def assembled(chunks: list[ChatCompletionChunk]) -> list[dict[str, str]]:
    """Tool call fragments joined by ``index``, as a client assembles them."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for part in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            call = calls.setdefault(
                part.index, dict.fromkeys(("id", "name", "args"), "")
            )
            call["id"] += part.id or ""
            call["name"] += part.function and part.function.name or ""
            call["args"] += part.function and part.function.arguments or ""
    return [calls[index] for index in sorted(calls)]


CALLS = [
    ("What time is it in Tokyo?", "current_time", {"timezone": "Asia/Tokyo"}),
    ("What's the time, please?", "current_time", {"timezone": "UTC"}),
    (
        "Which hour is it in Europe/Lisbon?",
        "current_time",
        {"timezone": "Europe/Lisbon"},
    ),
    ("Roll 3 dice with 20 sides", "roll_dice", {"count": 3, "sides": 20}),
    ("Roll a die for me", "roll_dice", {"count": 1, "sides": 6}),
]


@pytest.mark.parametrize(("prompt", "name", "arguments"), CALLS)
def test_chat_tool_call_streams_in_fragments_after_the_thinking(
    client: openai.OpenAI, prompt: str, name: str, arguments: dict[str, Any]
) -> None:
    def call() -> list[ChatCompletionChunk]:
        return list(
            client.chat.completions.create(
                model="m",
                messages=ask(prompt),
                tools=chat_tools(*DEMO_TOOLS),
                stream=True,
            )
        )

    chunks = call()
    first, *middle, last = chunks
    assert first.choices[0].delta.role == "assistant"
    thinking = [c for c in middle if reasoning_of(c) is not None]
    fragments = middle[len(thinking) :]
    assert thinking and middle[: len(thinking)] == thinking
    assert all(c.choices[0].delta.tool_calls for c in fragments)
    assert not any(c.choices[0].delta.content for c in chunks)
    head, *pieces = [c.choices[0].delta.tool_calls[0] for c in fragments]  # type: ignore[index]
    assert head.index == 0 and head.type == "function" and head.id
    assert head.function is not None
    assert (head.function.name, head.function.arguments) == (name, "")
    assert len(pieces) >= 4
    assert all(p.id is None and p.function and p.function.name is None for p in pieces)
    assert last.choices[0].finish_reason == "tool_calls"
    assert assembled(chunks) == [
        {
            "id": head.id,
            "name": name,
            "args": json.dumps(arguments, separators=(",", ":")),
        }
    ]
    reasoning = "".join(reasoning_of(c) or "" for c in thinking)
    assert reasoning.endswith(
        f"\nI will call {name} with {assembled(chunks)[0]['args']}."
    )
    # The same request, the same deltas and call id.
    assert [c.choices[0].delta for c in call()] == [c.choices[0].delta for c in chunks]
    getattr(demo_tools, name)(**arguments)  # arguments the tool takes

    with client.chat.completions.stream(
        model="m", messages=ask(prompt), tools=chat_tools(*DEMO_TOOLS)
    ) as helper:
        message = helper.get_final_completion().choices[0].message
    assert message.tool_calls is not None and len(message.tool_calls) == 1
    assert message.tool_calls[0].function.name == name  # type: ignore[union-attr]
    assert json.loads(message.tool_calls[0].function.arguments) == arguments  # type: ignore[union-attr]


def test_chat_whole_answer_with_a_tool_call(client: openai.OpenAI) -> None:
    prompt = "What time is it in Tokyo?"
    whole = client.chat.completions.create(
        model="m", messages=ask(prompt), tools=chat_tools(*DEMO_TOOLS)
    )
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.model_extra == {
        "reasoning_content": demo_turn(ask(prompt), chat_tools(*DEMO_TOOLS)).reasoning
    }
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert (call.function.name, call.function.arguments) == (  # type: ignore[union-attr]
        "current_time",
        '{"timezone":"Asia/Tokyo"}',
    )


def test_every_tool_named_is_called_in_parallel_unless_told_otherwise(
    client: openai.OpenAI,
) -> None:
    messages = ask("What time is it in Paris? And roll 2 dice.")
    tools = chat_tools(*DEMO_TOOLS)
    both = list(
        client.chat.completions.create(
            model="m", messages=messages, tools=tools, stream=True
        )
    )
    assert [(c["name"], json.loads(c["args"])) for c in assembled(both)] == [
        ("current_time", {"timezone": "Europe/Paris"}),
        ("roll_dice", {"count": 2, "sides": 6}),
    ]
    assert len({c["id"] for c in assembled(both)}) == 2
    one = client.chat.completions.create(
        model="m",
        messages=messages,
        tools=tools,
        stream=True,
        parallel_tool_calls=False,
    )
    assert [c["name"] for c in assembled(list(one))] == ["current_time"]


@pytest.mark.parametrize(
    ("prompt", "functions", "tool_choice", "called"),
    [
        ("Hello there", DEMO_TOOLS, "auto", []),
        ("Hello there", [roll_dice], "auto", ["roll_dice"]),  # the only one offered
        ("Hello there", DEMO_TOOLS, "required", ["current_time"]),
        ("What time is it?", DEMO_TOOLS, "none", []),
        (
            "What time is it?",
            DEMO_TOOLS,
            {"type": "function", "function": {"name": "roll_dice"}},
            ["roll_dice"],
        ),
        ("What time is it? It is forbidden", DEMO_TOOLS, "auto", []),
    ],
)
def test_which_tools_are_called(
    client: openai.OpenAI,
    prompt: str,
    functions: list[Callable[..., Any]],
    tool_choice: Any,
    called: list[str],
) -> None:
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=ask(prompt),
            tools=chat_tools(*functions),
            tool_choice=tool_choice,
            stream=True,
        )
    )
    assert [c["name"] for c in assembled(chunks)] == called
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert (text == "") == bool(called)
    if not called and "forbidden" not in prompt:
        assert text == demo_answer(prompt)
        reasoning = "".join(reasoning_of(c) or "" for c in chunks)
        assert "\nNone of my tools fits, so I will answer in" in reasoning


def test_after_tool_results_the_answer_quotes_them(client: openai.OpenAI) -> None:
    tools = chat_tools(*DEMO_TOOLS)
    messages = ask("What time is it in Tokyo? And roll 2 dice.")
    asked = client.chat.completions.create(model="m", messages=messages, tools=tools)
    calls = asked.choices[0].message.tool_calls or []
    outputs = [
        json.dumps(
            getattr(demo_tools, c.function.name)(**json.loads(c.function.arguments))
        )  # type: ignore[union-attr]
        for c in calls
    ]
    messages += [
        asked.choices[0].message.model_dump(exclude_none=True),
        *(
            {"role": "tool", "tool_call_id": c.id, "content": output}
            for c, output in zip(calls, outputs, strict=True)
        ),
    ]
    chunks = list(
        client.chat.completions.create(
            model="m", messages=messages, tools=tools, stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == (
        "Here is what my tools said.\n"
        f"The tool current_time says: {outputs[0]}\n"
        f"The tool roll_dice says: {outputs[1]}"
    )
    assert outputs[0].startswith('"20') and outputs[0].endswith('+09:00"')
    assert "".join(reasoning_of(c) or "" for c in chunks) == (
        "I have 2 tool results, from current_time and roll_dice.\n"
        "I will quote what the tools said."
    )
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert assembled(chunks) == []


def wire_events(transport: DemoTransport, body: dict[str, Any]) -> list[Any]:
    """The JSON of each event of a streamed Responses answer, as sent."""
    with httpx2.Client(transport=transport, base_url=DEMO_BASE_URL) as http:
        text = http.post("/responses", json=body | {"stream": True}).text
    return [json.loads(line[6:]) for line in text.split("\n") if line[:6] == "data: "]


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({"input": "Hi there"}, "response.reasoning_summary_text.delta"),
        (
            {"input": "Roll 2 dice", "tools": responses_tools(*DEMO_TOOLS)},
            "response.function_call_arguments.delta",
        ),
        ({"input": "Hi there", "max_output_tokens": 3}, "response.incomplete"),
        ({"input": "forbidden"}, "response.incomplete"),
    ],
    ids=["text", "function-call", "length", "content-filter"],
)
def test_responses_events_are_the_sdks_own_event_models(
    transport: RecordingTransport, body: dict[str, Any], kind: str
) -> None:
    """Independent of the client: each event validates against the SDK's union of
    stream events, as the model its ``type`` names."""
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)
    events = wire_events(transport, body | {"model": "m"})
    assert kind in {raw["type"] for raw in events}
    for raw in events:
        event = adapter.validate_python(raw)
        assert event.type == raw["type"]
        assert event.model_fields_set >= set(raw) - {"obfuscation"}


@pytest.mark.parametrize(("prompt", "name", "arguments"), CALLS[::3])
def test_responses_function_call_then_its_output_quoted(
    client: openai.OpenAI, prompt: str, name: str, arguments: dict[str, Any]
) -> None:
    tools = responses_tools(*DEMO_TOOLS)
    events = list(
        client.responses.create(model="m", input=prompt, tools=tools, stream=True)
    )
    assert collapsed([e.type for e in events]) == [
        "response.created",
        "response.in_progress",
        *REASONING_EVENTS,
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    (added,) = [e for e in events if e.type == "response.output_item.added"][1:]
    assert isinstance(added.item, ResponseFunctionToolCall)
    assert (added.item.name, added.item.arguments) == (name, "")
    assert added.item.status == "in_progress" and added.output_index == 1
    pieces = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(pieces) >= 4
    assert {(p.item_id, p.output_index) for p in pieces} == {(added.item.id, 1)}
    text = "".join(p.delta for p in pieces)
    assert json.loads(text) == arguments and events[-3].arguments == text
    completed = events[-1].response
    assert [item.type for item in completed.output] == ["reasoning", "function_call"]
    call = completed.output[1]
    assert isinstance(call, ResponseFunctionToolCall)
    assert (call.call_id, call.name, call.arguments) == (added.item.call_id, name, text)
    assert call.status == "completed" and events[-2].item == call
    usage = completed.usage
    assert usage is not None and usage.output_tokens == len(pieces) + 1 + (
        usage.output_tokens_details.reasoning_tokens
    )
    whole = client.responses.create(model="m", input=prompt, tools=tools)
    assert whole.output[1].model_dump(exclude={"id"}) == call.model_dump(exclude={"id"})

    output = json.dumps(getattr(demo_tools, name)(**arguments))
    history = [
        {"role": "user", "content": prompt},
        *(item.model_dump(exclude_none=True) for item in completed.output),
        {"type": "function_call_output", "call_id": call.call_id, "output": output},
    ]
    answer = list(
        client.responses.create(model="m", input=history, tools=tools, stream=True)
    )
    assert answer[-1].type == "response.completed"
    assert answer[-1].response.output_text == (
        f"Here is what my tools said.\nThe tool {name} says: {output}"
    )
    assert answer[-1].response.output[0].summary[0].text == (
        f"I have 1 tool result, from {name}.\nI will quote what the tools said."
    )


def chat_text(chunks: list[ChatCompletionChunk]) -> list[str]:
    return [
        c.choices[0].delta.content
        for c in chunks
        if c.choices and c.choices[0].delta.content
    ]


ANSWER_TOKENS = demo._TOKEN.findall(demo_answer("Hi there"))


@pytest.mark.parametrize("limit", ["max_completion_tokens", "max_tokens"])
def test_chat_token_limit_cuts_the_answer_with_length(
    client: openai.OpenAI, limit: str
) -> None:
    options: Any = {limit: 5}
    chunks = list(
        client.chat.completions.create(
            model="m", messages=ask("Hi there"), stream=True, **options
        )
    )
    assert chat_text(chunks) == ANSWER_TOKENS[:5]
    assert any(reasoning_of(c) for c in chunks)  # thinking is not cut
    assert chunks[-1].choices[0].finish_reason == "length"
    whole = client.chat.completions.create(
        model="m", messages=ask("Hi there"), **options
    )
    assert whole.choices[0].finish_reason == "length"
    assert whole.choices[0].message.content == "".join(ANSWER_TOKENS[:5])
    enough: Any = {limit: len(ANSWER_TOKENS)}
    chunks = list(
        client.chat.completions.create(
            model="m", messages=ask("Hi there"), stream=True, **enough
        )
    )
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_legacy_completion_token_limit_and_content_filter(
    lax_client: openai.OpenAI,
) -> None:
    chunks = list(
        lax_client.completions.create(
            model="m", prompt="Hi there", max_tokens=5, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == "".join(ANSWER_TOKENS[:5])
    assert chunks[-1].choices[0].finish_reason == "length"
    chunks = list(
        lax_client.completions.create(model="m", prompt="A forbidden word", stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks) == "Hello! I am the"
    assert chunks[-1].choices[0].finish_reason == "content_filter"


def test_chat_content_filter_cuts_after_a_few_tokens(client: openai.OpenAI) -> None:
    prompt = "Tell me something Forbidden."
    chunks = list(
        client.chat.completions.create(model="m", messages=ask(prompt), stream=True)
    )
    assert chat_text(chunks) == ["Hello!", " I", " am", " the"]
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert "".join(reasoning_of(c) or "" for c in chunks).startswith(
        'The user wrote "Tell me'
    )
    whole = client.chat.completions.create(model="m", messages=ask(prompt))
    assert whole.choices[0].finish_reason == "content_filter"
    assert whole.choices[0].message.content == "Hello! I am the"


@pytest.mark.parametrize(
    ("prompt", "limit", "reason", "tokens"),
    [
        ("Hi there", 16, "max_output_tokens", 16),
        ("Is it forbidden?", None, "content_filter", 4),
    ],
)
def test_responses_cut_answer_is_incomplete(
    client: openai.OpenAI, prompt: str, limit: int | None, reason: str, tokens: int
) -> None:
    options: Any = {"max_output_tokens": limit} if limit else {}
    events = list(
        client.responses.create(model="m", input=prompt, stream=True, **options)
    )
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == demo._TOKEN.findall(demo_answer(prompt))[:tokens]
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.status == "incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == reason
    assert last.response.output[-1].status == "incomplete"
    assert last.response.output_text == "".join(deltas)
    assert last.response.max_output_tokens == limit
    whole = client.responses.create(model="m", input=prompt, **options)
    assert whole.status == "incomplete" and whole.output_text == "".join(deltas)


def test_bad_limits_and_tools_are_openais_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match=r"'max_completion_tokens'.*got 0"):
        client.chat.completions.create(
            model="m", messages=ask("x"), max_completion_tokens=0
        )
    with pytest.raises(openai.BadRequestError, match=r"'max_output_tokens'.*got '9'"):
        client.responses.create(model="m", input="x", max_output_tokens="9")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as chat_shape:
        client.responses.create(model="m", input="x", tools=chat_tools(roll_dice))
    assert chat_shape.value.param == "tools[0].name"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError) as responses_shape:
        client.chat.completions.create(
            model="m", messages=ask("x"), tools=responses_tools(roll_dice)
        )
    assert responses_shape.value.param == "tools[0].function"  # type: ignore[attr-defined]


def test_current_time_is_iso_in_the_zone_asked() -> None:
    now = datetime.datetime.now(datetime.UTC)
    tokyo = datetime.datetime.fromisoformat(current_time("Asia/Tokyo"))
    assert tokyo.utcoffset() == datetime.timedelta(hours=9)
    assert abs(tokyo - now) < datetime.timedelta(seconds=5)
    utc = datetime.datetime.fromisoformat(current_time())
    assert utc.tzinfo is not None and utc.utcoffset() == datetime.timedelta(0)
    paris = datetime.datetime.fromisoformat(current_time("Europe/Paris"))
    assert paris.utcoffset() == zoneinfo.ZoneInfo("Europe/Paris").utcoffset(
        now.replace(tzinfo=None)
    )


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", "", "JST"])
def test_current_time_names_the_fix_for_an_unknown_zone(zone: str) -> None:
    with pytest.raises(
        ValueError, match=rf"^Unknown time zone {zone!r}: use an IANA name"
    ):
        current_time(zone)


def test_roll_dice_rolls_within_its_bounds() -> None:
    rolls = roll_dice(20, 100)
    assert len(rolls) == 20 and all(1 <= r <= 100 for r in rolls)
    assert all(isinstance(r, int) for r in rolls)
    (one,) = roll_dice()
    assert 1 <= one <= 6
    assert set(roll_dice(20, 2)) <= {1, 2}


@pytest.mark.parametrize(
    ("count", "sides", "message"),
    [
        (0, 6, "count must be a whole number from 1 to 20, got 0."),
        (21, 6, "count must be a whole number from 1 to 20, got 21."),
        (True, 6, "count must be a whole number from 1 to 20, got True."),
        (1, 1, "sides must be a whole number from 2 to 100, got 1."),
        (1, 101, "sides must be a whole number from 2 to 100, got 101."),
        (1, 6.5, "sides must be a whole number from 2 to 100, got 6.5."),
    ],
)
def test_roll_dice_refuses_what_is_out_of_bounds(
    count: Any, sides: Any, message: str
) -> None:
    with pytest.raises(ValueError) as refused:
        roll_dice(count, sides)
    assert str(refused.value) == message


def test_demo_tools_give_a_schema_and_a_docstring_for_the_model() -> None:
    assert [f.__name__ for f in DEMO_TOOLS] == ["current_time", "roll_dice"]
    assert schema(current_time)["properties"] == {
        "timezone": {"default": "UTC", "title": "Timezone", "type": "string"}
    }
    assert schema(roll_dice)["properties"]["sides"]["default"] == 6
    assert all("Call it whenever" in (f.__doc__ or "") for f in DEMO_TOOLS)
