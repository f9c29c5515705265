"""The key never leaves the server: not in a response, a page, or a log line."""

from __future__ import annotations

import http.client
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.client import get_chat, post_json
from tests.conftest import FAKE_API_KEY, ODD_KEYS, ServerPool
from tests.fake_upstream import (
    RECEIVED_KEY,
    Abort,
    Done,
    ErrorEvent,
    FakeUpstream,
    Script,
    Text,
)
from tests.servers import (
    ALL_KINDS,
    DJANGO_GUNICORN,
    FLASK_GUNICORN,
    Server,
    ServerKind,
)


def test_the_key_appears_in_no_response_and_no_log_line(
    pool: ServerPool, upstream: FakeUpstream
) -> None:
    # The upstream quotes the key back, as OpenAI's 401 message does in part.
    echo = {
        "error": {
            "message": f"Incorrect API key provided: {FAKE_API_KEY}",
            "type": "auth",
        }
    }
    scripts = [
        upstream.script(Text("fine"), Done()),
        upstream.script(Text("partial"), Abort()),
        upstream.script(status=401, body=echo),
        upstream.script(status=400, body=echo),
        upstream.script(status=429, headers={"retry-after-ms": "5"}, body=echo),
        upstream.script(status=500, headers={"retry-after-ms": "5"}, body=echo),
    ]
    servers = [pool.get(kind) for kind in ALL_KINDS]
    refused = [pool.get(kind, "refused") for kind in ALL_KINDS]
    # An unreachable upstream fails alike whatever the script: one is enough.
    plans = [(server, scripts) for server in servers]
    plans += [(server, scripts[:1]) for server in refused]
    with ThreadPoolExecutor(len(plans)) as threads:  # the servers side by side
        answers = [
            answer
            for answered in threads.map(lambda plan: _answers(*plan), plans)
            for answer in answered
        ]
    # Its own scripts' requests: other tests' servers use other keys.
    requests = [r for script in scripts for r in script.requests]
    assert requests and all(
        r.headers.get("authorization") == f"Bearer {FAKE_API_KEY}" for r in requests
    ), "the servers should use the key with the upstream"
    secret_parts = [FAKE_API_KEY.encode(), FAKE_API_KEY[-12:].encode()]
    for answer in answers:
        assert not any(part in answer for part in secret_parts), answer[:300]
    for server in servers + refused:
        log = server.log()
        assert log, server.name
        assert FAKE_API_KEY[-12:] not in log, server.name


def _answers(server: Server, scripts: list[Script]) -> list[bytes]:
    """Everything ``server`` answered: pages, errors, and each route for each
    script, headers included."""
    answers: list[bytes] = []
    for path in ("/", "/healthz", "/nope"):
        status, headers, body = server.request("GET", path)
        answers.append(str(headers).encode() + body)
    for script in scripts:
        ui_message = {
            "role": "user",
            "parts": [{"type": "text", "text": script.marker}],
        }
        for response in (
            get_chat(server, f"k {script.marker}"),
            post_json(server, "/completions/chat", {"prompt": f"k {script.marker}"}),
            post_json(server, "/api/chat", {"messages": [ui_message]}),
        ):
            answers.append(str(response[1]).encode() + response[2])
        try:
            message = {"message": f"k {script.marker}"}
            answers.append(post_json(server, "/api/stream", message)[2])
        except Exception as exc:  # a cut-off raw body: its text must not leak either
            answers.append(repr(exc).encode())
    return answers


@pytest.mark.parametrize("key_name", ODD_KEYS.keys())
@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(FLASK_GUNICORN, id="flask"),
        pytest.param(DJANGO_GUNICORN, id="django"),
    ],
)
def test_a_key_that_looks_like_nothing_is_still_never_passed_on(
    pool: ServerPool, upstream: FakeUpstream, kind: ServerKind, key_name: str
) -> None:
    """Hex, ``fw_...`` or a JWT: no pattern knows them, so their values are removed."""
    server = pool.get(kind, f"key-{key_name}")
    key = ODD_KEYS[key_name]
    quoted = f"Invalid deployment for key {RECEIVED_KEY} (region mismatch)"
    body = {"error": {"message": quoted, "type": "invalid_request_error"}}
    scripts = {
        "400": upstream.script(status=400, body=body),
        "200-json-error": upstream.script(body=body),
        "error-chunk-first": upstream.script(ErrorEvent(quoted)),
        "error-chunk-midway": upstream.script(Text("a"), ErrorEvent(quoted)),
    }
    log_start = len(server.log())
    answers: list[tuple[str, str, bytes]] = []
    for name, script in scripts.items():
        prompt = f"k {script.marker}"
        for path, response in [
            ("GET", get_chat(server, prompt)),
            ("SSE", post_json(server, "/completions/chat", {"prompt": prompt})),
        ]:
            answers.append((name, path, str(response[1]).encode() + response[2]))
        try:
            raw = post_json(server, "/api/stream", {"message": prompt})[2]
        except http.client.IncompleteRead as cut:  # a cut-off raw body
            raw = cut.partial
        answers.append((name, "RAW", raw))
        received = script.wait_for_request().headers["authorization"]
        assert received == f"Bearer {key}", "the server should send the odd key"
    for name, path, answer in answers:
        assert key.encode() not in answer, (name, path, answer[-300:])
        if name != "error-chunk-midway" or path != "RAW":  # the message is passed on
            assert b"Invalid deployment for key [redacted]" in answer, (
                name,
                path,
                answer,
            )
    sentinel = f"/after-the-odd-key-{uuid.uuid4().hex}"
    server.request("GET", sentinel)  # its access log line comes after theirs
    deadline = time.monotonic() + 5
    while sentinel not in (log := server.log()[log_start:]):
        assert time.monotonic() < deadline, "the sentinel should be logged"
        time.sleep(0.05)
    assert key not in log
