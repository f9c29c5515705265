"""What the servers send upstream: each API's request body and headers, exactly.

``shared.upstream`` sends its requests through the SDK's ``client.request`` rather
than its typed ``create()`` methods (which cost most of the CPU of opening a
stream): the body must still be what ``create()`` sent, key for key and in the
same order, and the headers still the SDK's own (key, organization, project, user
agent, platform, retry count, timeout), with nothing added.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.client import get_chat, post_json
from tests.conftest import (
    FAKE_API_KEY,
    MAX_OUTPUT_TOKENS,
    ORGANIZATION,
    PROJECT,
    UPSTREAM_TIMEOUT_SECONDS,
    ServerPool,
)
from tests.fake_upstream import Done, FakeUpstream, RecordedRequest, Script, Text
from tests.servers import FLASK_GUNICORN, Server

MODEL, COMPLETION_MODEL = "gpt-4o-mini", "gpt-3.5-turbo-instruct"  # the defaults
INCLUDE_USAGE = {"include_usage": True}
# Set by the HTTP client on every request, or by the bytes sent.
TRANSPORT_HEADERS = {"host", "accept-encoding", "connection", "content-length"}


def sdk_headers(retries_taken: int = 0) -> dict[str, str]:
    """The headers the SDK sends for the servers' configuration ``identified``."""
    client = openai.OpenAI(
        api_key=FAKE_API_KEY, organization=ORGANIZATION, project=PROJECT
    )
    return {
        "authorization": f"Bearer {FAKE_API_KEY}",
        **{name.lower(): str(value) for name, value in client.default_headers.items()},
        "x-stainless-retry-count": str(retries_taken),
        "x-stainless-read-timeout": str(UPSTREAM_TIMEOUT_SECONDS),
    }


def test_the_sdk_headers_are_the_ones_expected() -> None:
    """The expectation itself names the key, organization, project and agent."""
    headers = sdk_headers()
    assert headers["openai-organization"] == ORGANIZATION
    assert headers["openai-project"] == PROJECT
    assert headers["user-agent"] == f"OpenAI/Python {openai.__version__}"
    assert headers["x-stainless-package-version"] == openai.__version__
    assert headers["content-type"] == "application/json"


def assert_sent(request: RecordedRequest, path: str, body: list[Any]) -> None:
    """``request`` went to ``path`` with exactly ``body`` (keys in order) and the
    SDK's headers, nothing more."""
    assert (request.method, request.path) == ("POST", path)
    assert list(request.json.items()) == body
    expected = sdk_headers()
    sent = {name: request.headers.get(name) for name in expected}
    assert sent == expected
    assert set(request.headers) == set(expected) | TRANSPORT_HEADERS


def answered(script: Script) -> RecordedRequest:
    request = script.wait_for_request()
    assert len(script.requests) == 1
    return request


@pytest.fixture
def identified(pool: ServerPool) -> Server:
    return pool.get(FLASK_GUNICORN, "identified")


def test_a_chat_completions_request_is_unchanged(
    identified: Server, upstream: FakeUpstream
) -> None:
    script = upstream.script(Text("hi"), Done())
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": f"hello {script.marker}"},
    ]
    status, _, _ = post_json(identified, "/completions/chat", {"messages": messages})
    assert status == 200
    assert_sent(
        answered(script),
        "/v1/chat/completions",
        [
            ("model", MODEL),
            ("stream", True),
            ("messages", messages),
            ("max_completion_tokens", MAX_OUTPUT_TOKENS),
            ("stream_options", INCLUDE_USAGE),
        ],
    )


def test_a_legacy_completions_request_is_unchanged(
    identified: Server, upstream: FakeUpstream
) -> None:
    script = upstream.script(Text("hi"), Done())
    prompt = f"Once upon {script.marker}"
    status, _, _ = get_chat(identified, prompt, path="/completion")
    assert status == 200
    assert_sent(
        answered(script),
        "/v1/completions",
        [
            ("model", COMPLETION_MODEL),
            ("stream", True),
            ("prompt", prompt),
            ("max_tokens", MAX_OUTPUT_TOKENS),
            ("stream_options", INCLUDE_USAGE),
        ],
    )


def test_a_responses_request_is_unchanged(
    pool: ServerPool, upstream: FakeUpstream
) -> None:
    server = pool.get(FLASK_GUNICORN, "identified-responses")
    script = upstream.script(Text("hi"), Done())
    messages = [{"role": "user", "content": f"hello {script.marker}"}]
    status, _, _ = post_json(server, "/api/stream", {"messages": messages})
    assert status == 200
    assert_sent(
        answered(script),
        "/v1/responses",
        [
            ("model", MODEL),
            ("stream", True),
            ("input", messages),
            ("max_output_tokens", MAX_OUTPUT_TOKENS),
        ],
    )


def test_a_retry_sends_the_same_body_and_counts_itself(
    identified: Server, upstream: FakeUpstream
) -> None:
    """The SDK's retry loop still sends the request: again, after a 503."""
    answer = upstream.script(Text("fine"), Done())
    busy = upstream.script(status=503, headers={"retry-after-ms": "5"}, then=answer)
    messages = [{"role": "user", "content": f"hello {busy.marker}"}]
    status, _, body = post_json(identified, "/api/stream", {"messages": messages})
    assert (status, body) == (200, b"fine")
    first, second = busy.requests
    assert second.json == first.json
    assert second.headers == {**first.headers, "x-stainless-retry-count": "1"}
