"""The demo upstream, exercised through the real openai client and raw httpx2."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from shared import demo
from shared.demo import DEMO_BASE_URL, DemoStream, DemoTransport, demo_answer

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


def test_chat_stream(client: openai.OpenAI) -> None:
    chunks = chat_stream(client, usage=True)
    first, *middle, last_choice, usage_chunk = chunks
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == ""
    deltas = [c.choices[0].delta.content for c in middle]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert deltas[:3] == ["Hello!", " I", " am"]
    assert "\n" in deltas and all(c.choices[0].finish_reason is None for c in middle)
    assert last_choice.choices[0].finish_reason == "stop"
    assert last_choice.choices[0].delta.content is None
    assert usage_chunk.choices == []
    assert usage_chunk.usage.completion_tokens == len(deltas)
    assert 60 <= len(deltas) <= 120
    assert usage_chunk.usage.prompt_tokens == 13
    assert usage_chunk.usage.total_tokens == 13 + len(deltas)
    text = "".join(deltas)
    assert text == demo_answer(MESSAGES[-1]["content"])

    again = chat_stream(client, usage=False)
    assert "".join(c.choices[0].delta.content or "" for c in again) == text
    assert all(c.usage is None for c in again) and again[-1].choices

    whole = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.content == text
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and whole.usage.completion_tokens == len(deltas)


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
    assert all(c.object == "text_completion" for c in chunks)
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert chunks[-2].choices[0].finish_reason == "stop" and texts[-1] == ""
    assert "".join(texts) == demo_answer("Say hi")
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == len(texts) - 1
    assert chunks[-1].usage.prompt_tokens == 2
    whole = lax_client.completions.create(model="m", prompt="Say hi")
    assert whole.choices[0].text == demo_answer("Say hi")


@pytest.mark.parametrize(
    "given",
    [
        "Hi there",
        [{"role": "user", "content": [{"type": "input_text", "text": "Hi there"}]}],
    ],
)
def test_responses_stream(client: openai.OpenAI, given: object) -> None:
    stream = client.responses.create(model="gpt-4o-mini", input=given, stream=True)
    events = list(stream)
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == len(events) - 8
    assert {(d.item_id, d.output_index, d.content_index) for d in deltas} == {
        (events[2].item.id, 0, 0)
    }
    text = "".join(d.delta for d in deltas)
    assert text == demo_answer("Hi there") == events[-4].text
    completed = events[-1].response
    assert completed.status == "completed" and completed.output_text == text
    assert completed.id == events[0].response.id
    assert completed.usage is not None
    assert completed.usage.input_tokens == 2
    assert completed.usage.output_tokens == len(deltas)
    assert completed.usage.total_tokens == 2 + len(deltas)

    with client.responses.stream(model="m", input=given) as helper:
        assert helper.get_final_response().output_text == text
    assert client.responses.create(model="m", input=given).output_text == text


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
    assert got[2].choices[0].delta.content == " I"
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
