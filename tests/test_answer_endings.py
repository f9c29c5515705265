"""How answers end, through real servers: cut, not a stream, refused, incomplete.

A stream ends at ``[DONE]``, at the Responses API's terminal event, or at a clean
end of the body after a finish reason. Anything else was cut short, and a ``200``
whose body is not SSE (a gateway's JSON error, a server that ignored
``stream: true``) is no answer: both are failures, never a short success. A refusal
is never an empty answer, and an answer cut by a token limit says so.
"""

from __future__ import annotations

import json

import pytest

from tests.client import parse_sse, texts
from tests.conftest import ServerPool
from tests.fake_upstream import (
    Done,
    FakeUpstream,
    Finish,
    Raw,
    Refusal,
    Sleep,
    Text,
    Usage,
)
from tests.servers import DJANGO_GUNICORN, FLASK_DEV, FLASK_GUNICORN, Server
from tests.test_upstream_faults import RAW, SSE, ask, assert_error_event_ends

SERVERS = [
    pytest.param(FLASK_GUNICORN, id="flask-gunicorn"),
    pytest.param(DJANGO_GUNICORN, id="django-gunicorn"),
    pytest.param(FLASK_DEV, id="flask-run"),
]
ROLE_ONLY = Raw(b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n')


@pytest.fixture(params=SERVERS)
def app(request: pytest.FixtureRequest, pool: ServerPool) -> Server:
    return pool.get(request.param)


@pytest.fixture(params=SERVERS)
def responses_app(request: pytest.FixtureRequest, pool: ServerPool) -> Server:
    """A server whose chat routes use the Responses API."""
    return pool.get(request.param, "responses")


# --- Cut short ----------------------------------------------------------------------


def test_a_close_delimited_body_that_dies_after_output_is_an_error_event(
    app: Server, upstream: FakeUpstream
) -> None:
    script = upstream.script(Text("The answer is"), Sleep(0.2), close_delimited=True)
    assert_error_event_ends(ask(app, SSE, f"x {script.marker}"), ["The answer is"])


def test_a_close_delimited_body_that_dies_cuts_raw_text_off(
    app: Server, upstream: FakeUpstream
) -> None:
    script = upstream.script(Text("The answer is"), Sleep(0.2), close_delimited=True)
    answer = ask(app, RAW, f"x {script.marker}")
    assert answer.status == 200
    assert (answer.body, answer.complete) == (b"The answer is", False)


@pytest.mark.parametrize("close_delimited", [True, False], ids=["close", "chunked"])
@pytest.mark.parametrize("route", [SSE, RAW], ids=["sse", "raw"])
def test_a_body_that_ends_before_any_output_and_its_end_is_a_502(
    app: Server, upstream: FakeUpstream, route: tuple[str, str], close_delimited: bool
) -> None:
    script = upstream.script(ROLE_ONLY, close_delimited=close_delimited)
    answer = ask(app, route, f"x {script.marker}")
    assert answer.status == 502, answer
    assert json.loads(answer.body)["error"]["type"] == "upstream_error"


def test_a_chunked_body_that_ends_without_done_after_output_is_an_error_event(
    app: Server, upstream: FakeUpstream
) -> None:
    script = upstream.script(Text("partial"), Sleep(0.2))
    assert_error_event_ends(ask(app, SSE, f"x {script.marker}"), ["partial"])


@pytest.mark.parametrize("close_delimited", [True, False], ids=["close", "chunked"])
def test_a_clean_end_after_a_finish_reason_is_a_whole_answer(
    app: Server, upstream: FakeUpstream, close_delimited: bool
) -> None:
    """Some compatible servers send no [DONE]: the finish reason is their end."""
    steps = (Text("whole"), Finish("stop"), Usage(3, 1))
    script = upstream.script(*steps, close_delimited=close_delimited)
    answer = ask(app, SSE, f"x {script.marker}")
    assert answer.status == 200 and answer.complete
    events = parse_sse(answer.body)
    assert texts(events) == ["whole"]
    assert [e.event for e in events][-2:] == ["usage", "message"]
    assert events[-1].data == "[DONE]"
    raw = ask(app, RAW, f"x {script.marker}")
    assert (raw.status, raw.body, raw.complete) == (200, b"whole", True)


def test_a_close_delimited_whole_stream_is_a_whole_answer(
    app: Server, upstream: FakeUpstream
) -> None:
    script = upstream.script(Text("one "), Text("two"), Done(), close_delimited=True)
    answer = ask(app, SSE, f"x {script.marker}")
    assert answer.body == b"data: one \n\ndata: two\n\ndata: [DONE]\n\n"


# --- Not a stream -------------------------------------------------------------------

CREDIT = {"error": {"message": "Your credit balance is too low", "type": "billing"}}


@pytest.mark.parametrize(
    "route", [SSE, RAW, ("GET", "/completion")], ids=["sse", "raw", "legacy"]
)
def test_a_200_json_error_is_a_502_with_its_message(
    app: Server, upstream: FakeUpstream, route: tuple[str, str]
) -> None:
    script = upstream.script(body=CREDIT)
    answer = ask(app, route, f"x {script.marker}")
    assert answer.status == 502, answer
    assert json.loads(answer.body)["error"] == {
        "message": "Your credit balance is too low",
        "type": "upstream_error",
    }


def test_a_json_completion_instead_of_a_stream_is_a_502(
    app: Server, upstream: FakeUpstream
) -> None:
    """A server that ignored ``stream: true`` answers one JSON completion."""
    completion = {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi"},
                "finish_reason": "stop",
            }
        ],
    }
    script = upstream.script(body=completion)
    for route in (SSE, RAW):
        answer = ask(app, route, f"x {script.marker}")
        assert answer.status == 502, answer
        error = json.loads(answer.body)["error"]
        assert error["message"] == "The upstream answered without an event stream."


# --- Refusals and incomplete answers --------------------------------------------------

REFUSAL_STEPS = (
    Refusal("I'm sorry, "),
    Refusal("I can't help\nwith that."),
    Usage(4, 9),
)


def named_events(answer_body: bytes) -> list[tuple[str, str]]:
    return [(e.event, e.data) for e in parse_sse(answer_body)]


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_a_refusal_is_an_event_of_its_own_and_raw_text(
    pool: ServerPool, upstream: FakeUpstream, api: str
) -> None:
    server = pool.get(FLASK_GUNICORN, "plain" if api == "chat" else "responses")
    script = upstream.script(*REFUSAL_STEPS, Done())
    answer = ask(server, SSE, f"x {script.marker}")
    usage = {"prompt_tokens": 4, "completion_tokens": 9, "total_tokens": 13}
    # The Responses API's completed event says why the answer ended; the fake's
    # chat stream sends no finish reason here.
    finish = [("finish", '{"reason": "stop"}')] if api == "responses" else []
    assert named_events(answer.body) == [
        ("refusal", "I'm sorry, "),
        ("refusal", "I can't help\nwith that."),
        *finish,
        ("usage", json.dumps(usage)),
        ("message", "[DONE]"),
    ]
    raw = ask(server, RAW, f"x {script.marker}")
    assert (raw.status, raw.body) == (200, b"I'm sorry, I can't help\nwith that.")


@pytest.mark.parametrize(
    ("reason", "sent"),
    [("max_output_tokens", "length"), ("content_filter", "content_filter")],
)
def test_an_incomplete_responses_answer_says_why_then_its_usage(
    responses_app: Server, upstream: FakeUpstream, reason: str, sent: str
) -> None:
    script = upstream.script(Text("It was the best of"), Usage(12, 5), Finish(reason))
    answer = ask(responses_app, SSE, f"x {script.marker}")
    usage = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    assert named_events(answer.body) == [
        ("message", "It was the best of"),
        ("finish", json.dumps({"reason": sent})),
        ("usage", json.dumps(usage)),
        ("message", "[DONE]"),
    ]
    raw = ask(responses_app, RAW, f"x {script.marker}")
    assert (raw.status, raw.body, raw.complete) == (200, b"It was the best of", True)
