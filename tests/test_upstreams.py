"""Other upstream setups: unreachable, and the Responses API for the chat routes."""

from __future__ import annotations

import json

import pytest

from tests.client import error_of, parse_sse, post_json, texts
from tests.conftest import ServerPool
from tests.fake_upstream import Done, FakeUpstream, Text, Usage
from tests.servers import (
    ALL_KINDS,
    DJANGO_GUNICORN,
    DJANGO_GUNICORN_PRELOAD,
    FLASK_GUNICORN,
    FLASK_GUNICORN_PRELOAD,
    ServerKind,
)


@pytest.mark.parametrize("kind", ALL_KINDS, ids=[k.name for k in ALL_KINDS])
def test_an_unreachable_upstream_is_a_502_or_an_error_event(
    pool: ServerPool, kind: ServerKind
) -> None:
    """Raw text waits for the SDK's retries; SSE sends its first keep-alive first.

    The retries' backoff (about 1 s in all) outlasts the 0.5 s keep-alive interval,
    which counts from the request: on the SSE routes the failure comes after the
    first byte, as an ``event: error``.
    """
    server = pool.get(kind, "refused")
    response = post_json(server, "/api/stream", {"message": "hi"}, timeout=30)
    assert response[0] == 502
    assert error_of(response)["type"] == "upstream_connection_error"
    status, _, body = post_json(
        server, "/completions/chat", {"prompt": "hi"}, timeout=30
    )
    assert status == 200 and body.startswith(b": keep-alive\n\n")
    events = parse_sse(body)
    assert events[-1].event == "error" and b"[DONE]" not in body
    assert json.loads(events[-1].data)["type"] == "upstream_connection_error"


@pytest.mark.parametrize(
    "kind", [FLASK_GUNICORN, DJANGO_GUNICORN], ids=["flask", "django"]
)
def test_chat_routes_can_use_the_responses_api(
    pool: ServerPool, upstream: FakeUpstream, kind: ServerKind
) -> None:
    server = pool.get(kind, "responses")
    script = upstream.script(Text("Hel"), Text("lo\nyou"), Usage(4, 2), Done())
    messages = [{"role": "user", "content": f"hi {script.marker}"}]
    status, _, body = post_json(server, "/completions/chat", {"messages": messages})
    assert status == 200
    events = parse_sse(body)
    assert texts(events) == ["Hel", "lo\nyou"]
    assert [e.event for e in events][-2:] == ["usage", "message"]
    assert json.loads(events[-2].data) == {
        "prompt_tokens": 4,
        "completion_tokens": 2,
        "total_tokens": 6,
    }
    assert events[-1].data == "[DONE]"
    request = script.wait_for_request()
    assert request.path == "/v1/responses"
    assert request.json["input"] == messages
    status, _, raw = post_json(server, "/api/stream", {"message": f"x {script.marker}"})
    assert (status, raw) == (200, b"Hello\nyou")


@pytest.mark.parametrize(
    "kind",
    [FLASK_GUNICORN_PRELOAD, DJANGO_GUNICORN_PRELOAD],
    ids=["flask", "django"],
)
def test_tls_upstream_works_when_gunicorn_preloads_the_app(
    pool: ServerPool, tls_upstream: FakeUpstream, kind: ServerKind
) -> None:
    """The app is imported before the fork, yet its client's TLS works under gevent."""
    server = pool.get(kind, "tls")
    script = tls_upstream.script(Text("secure"), Text(" hello"), Done())
    status, _, body = post_json(server, "/completions/chat", {"prompt": script.marker})
    assert status == 200, body
    assert texts(parse_sse(body)) == ["secure", " hello"]
    assert "TypeError" not in server.log()


@pytest.mark.parametrize("kind", ALL_KINDS, ids=[k.name for k in ALL_KINDS])
def test_without_a_key_the_demo_model_answers(
    pool: ServerPool, kind: ServerKind
) -> None:
    server = pool.get(kind, "demo")
    assert json.loads(server.request("GET", "/healthz")[2])["upstream"] == "demo"
    status, headers, body = post_json(server, "/completions/chat", {"prompt": "Hello"})
    assert status == 200
    events = parse_sse(body)
    answer = "".join(texts(events))
    assert "demo" in answer and "Hello" in answer
    assert len(texts(events)) > 10  # streamed in many deltas, not one block
    assert [e.event for e in events][-2:] == ["usage", "message"]
    assert events[-1].data == "[DONE]"
    again = post_json(server, "/api/stream", {"message": "Hello"})[2].decode()
    assert again == answer  # deterministic
    assert "offline demo model" in server.log()  # the server says so at start


@pytest.mark.parametrize("kind", ALL_KINDS, ids=[k.name for k in ALL_KINDS])
def test_a_base_url_without_a_key_sends_a_placeholder_key(
    pool: ServerPool, upstream: FakeUpstream, kind: ServerKind
) -> None:
    server = pool.get(kind, "no-key")
    health = json.loads(server.request("GET", "/healthz")[2])
    assert health["upstream"] == "openai-compatible"
    script = upstream.script(Text("local"), Done())
    status, _, body = post_json(server, "/completions/chat", {"prompt": script.marker})
    assert (status, texts(parse_sse(body))) == (200, ["local"])
    assert script.wait_for_request().headers["authorization"] == "Bearer no-key-needed"
