"""Other upstream setups: unreachable, and the Responses API for the chat routes."""

from __future__ import annotations

import json

import pytest

from tests.client import error_of, parse_sse, post_json, texts
from tests.conftest import ServerPool
from tests.fake_upstream import Done, FakeUpstream, Text, Usage
from tests.servers import ALL_KINDS, DJANGO_GUNICORN, FLASK_GUNICORN, ServerKind


@pytest.mark.parametrize("kind", ALL_KINDS, ids=[k.name for k in ALL_KINDS])
def test_an_unreachable_upstream_is_502(pool: ServerPool, kind: ServerKind) -> None:
    server = pool.get(kind, "refused")
    for path, payload in (
        ("/completions/chat", {"prompt": "hi"}),
        ("/api/stream", {"message": "hi"}),
    ):
        response = post_json(server, path, payload, timeout=30)
        assert response[0] == 502
        assert error_of(response)["type"] == "upstream_connection_error"


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
