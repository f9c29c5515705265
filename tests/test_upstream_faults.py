"""Upstream faults, retries and the key, against both apps under gunicorn+gevent.

``test_contract.py`` already runs the common faults on every server (a hang before
the first byte and between chunks, a reset, an error chunk, a malformed chunk, 429,
5xx, upstream text kept out of 502s) and ``test_upstreams.py`` an unreachable
upstream. These add what they leave out: an orderly but abrupt close, the raw-text
route cut off by each kind of fault, what the SDK's retries may and may not do, and
the key quoted back by the upstream on every error path, the way OpenAI quotes it.
"""

from __future__ import annotations

import http.client
import json
import re
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import quote

import pytest

from tests.client import parse_sse, texts
from tests.conftest import FAKE_API_KEY, UPSTREAM_TIMEOUT_SECONDS, ServerPool
from tests.fake_upstream import (
    Abort,
    Done,
    ErrorEvent,
    FakeUpstream,
    Hangup,
    Raw,
    Script,
    Sleep,
    Step,
    Text,
)
from tests.servers import DJANGO_GUNICORN, FLASK_GUNICORN, Server, ServerKind

APPS = [
    pytest.param(FLASK_GUNICORN, id="flask"),
    pytest.param(DJANGO_GUNICORN, id="django"),
]
SSE = ("POST", "/completions/chat")
RAW = ("POST", "/api/stream")
# The SDK retries 408, 409, 429 and 5xx: this keeps its waits short.
RETRY_FAST = {"retry-after-ms": "5"}
# Longer than the SDK's first backoff (0.5 s at most): a retry would be seen in it.
NO_RETRY_WAIT_SECONDS = 2.5


@pytest.fixture(params=APPS)
def app(request: pytest.FixtureRequest, pool: ServerPool) -> Server:
    """Each app under gunicorn+gevent, against the plain fake upstream."""
    kind: ServerKind = request.param
    return pool.get(kind)


@dataclass
class Answer:
    """One whole response, or as much of it as came before the body was cut off."""

    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes
    complete: bool  # False: the chunked body ended without its final chunk

    def everything(self) -> str:
        """Status line, headers and body: where a secret must not be."""
        head = f"HTTP/1.1 {self.status} {self.reason}\r\n{self.headers}"
        return head + self.body.decode("utf-8", "replace")


def ask(server: Server, route: tuple[str, str], prompt: str) -> Answer:
    method, path = route
    body = None
    headers: dict[str, str] = {}
    if method == "GET":
        path = f"{path}?prompt={quote(prompt)}"
    else:
        key = "message" if path == "/api/stream" else "prompt"
        body = json.dumps({key: prompt}).encode()
        headers["Content-Type"] = "application/json"
    conn = server.connection(timeout=20)
    try:
        conn.request(method, path, body, headers)
        with conn.getresponse() as response:
            try:
                data, complete = response.read(), True
            except http.client.IncompleteRead as cut:
                data, complete = cut.partial, False
            return Answer(
                response.status, response.reason, response.headers, data, complete
            )
    finally:
        conn.close()


def assert_error_event_ends(answer: Answer, before: list[str]) -> None:
    """200, the text that came before the fault, then ``event: error`` and no more."""
    assert answer.status == 200, answer
    assert answer.complete, "an SSE failure ends the body properly"
    events = parse_sse(answer.body)
    assert texts(events) == before
    assert events[-1].event == "error", answer.body
    error = json.loads(events[-1].data)
    assert set(error) == {"message", "type"} and error["message"]
    assert b"[DONE]" not in answer.body


# --- Faults ------------------------------------------------------------------------


def test_an_abrupt_close_after_output_is_an_error_event_without_done(
    app: Server, upstream: FakeUpstream
) -> None:
    """A FIN without the chunked body's last chunk is a failure, not an end."""
    script = upstream.script(Text("partial"), Sleep(0.2), Hangup(), Text("never"))
    assert_error_event_ends(ask(app, SSE, f"x {script.marker}"), ["partial"])


@pytest.mark.parametrize("route", [SSE, RAW], ids=["sse", "raw"])
def test_an_abrupt_close_before_any_output_is_502(
    app: Server, upstream: FakeUpstream, route: tuple[str, str]
) -> None:
    role_only = b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
    script = upstream.script(Raw(role_only), Hangup(), Text("never"))
    answer = ask(app, route, f"x {script.marker}")
    assert answer.status == 502
    assert json.loads(answer.body)["error"]["type"] in {
        "upstream_error",
        "upstream_connection_error",
    }


RAW_FAULTS = [
    pytest.param((Hangup(),), id="abrupt-close"),
    pytest.param((ErrorEvent("The model crashed"),), id="error-chunk"),
    pytest.param((Raw(b"data: {not json\n\n"),), id="malformed-chunk"),
    pytest.param(
        (Raw(b'data: {"object": "error", "message": "The model crashed"}\n\n'),),
        id="flat-error-object",
    ),
    pytest.param((Sleep(UPSTREAM_TIMEOUT_SECONDS + 1.5),), id="stall"),
]


@pytest.mark.parametrize("fault", RAW_FAULTS)
def test_a_raw_text_failure_after_output_cuts_the_body_off(
    app: Server, upstream: FakeUpstream, fault: tuple[Step, ...]
) -> None:
    """The text so far, then no final chunk: never a silently shortened answer."""
    script = upstream.script(Text("partial "), Sleep(0.2), *fault, Text("never"))
    answer = ask(app, RAW, f"x {script.marker}")
    assert answer.status == 200
    assert (answer.body, answer.complete) == (b"partial ", False)


# --- Retries -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 500, 429])
@pytest.mark.parametrize("route", [SSE, RAW], ids=["sse", "raw"])
def test_a_failed_first_attempt_is_retried_into_one_whole_answer(
    app: Server, upstream: FakeUpstream, route: tuple[str, str], status: int
) -> None:
    """The SDK retries before the first byte: one answer, neither lost nor doubled."""
    answer_script = upstream.script(Text("one "), Text("answer"), Done())
    script = upstream.script(status=status, headers=RETRY_FAST, then=answer_script)
    answer = ask(app, route, f"x {script.marker}")
    assert answer.status == 200 and answer.complete
    if route == SSE:
        assert answer.body == b"data: one \n\ndata: answer\n\ndata: [DONE]\n\n"
    else:
        assert answer.body == b"one answer"
    assert len(script.requests) == 2


def test_output_is_never_replayed_after_a_failure(
    app: Server, upstream: FakeUpstream
) -> None:
    """Once a byte reached the client, a failure is reported, never retried."""
    replay = upstream.script(Text("REPLAYED"), Done())
    scripts: list[Script] = []
    for route in (SSE, RAW):
        for fault in (Abort(), Hangup()):
            script = upstream.script(
                Text("one "), Text("two"), Sleep(0.2), fault, then=replay
            )
            scripts.append(script)
            answer = ask(app, route, f"x {script.marker}")
            if route == SSE:
                assert_error_event_ends(answer, ["one ", "two"])
            else:
                assert answer.status == 200
                assert (answer.body, answer.complete) == (b"one two", False)
    deadline = time.monotonic() + NO_RETRY_WAIT_SECONDS
    while time.monotonic() < deadline:  # a retry would come within the wait
        assert [len(s.requests) for s in scripts] == [1] * len(scripts)
        time.sleep(0.05)
    assert [len(s.requests) for s in scripts] == [1] * len(scripts)
    assert not replay.requests


def warm_the_pool(server: Server, upstream: FakeUpstream, streams: int = 4) -> None:
    """Leave several pooled upstream connections: streams that overlap in time."""
    script = upstream.script(Text("warm"), Sleep(0.3), Done())
    with ThreadPoolExecutor(streams) as executor:
        prompts = [f"x {script.marker}"] * streams
        answers = list(executor.map(lambda p: ask(server, SSE, p), prompts))
    assert [a.status for a in answers] == [200] * streams


@pytest.mark.parametrize("unanswered", [Hangup(), Abort()], ids=["fin", "rst"])
@pytest.mark.parametrize(
    ("config", "copies"),
    [("no-retries", 1), ("plain", 3)],
    ids=["max-retries-0", "max-retries-2"],
)
@pytest.mark.parametrize("kind", APPS)
def test_a_request_the_upstream_hung_up_on_is_sent_again_only_by_the_sdk(
    pool: ServerPool,
    upstream: FakeUpstream,
    kind: ServerKind,
    config: str,
    copies: int,
    unanswered: Hangup | Abort,
) -> None:
    """The upstream read the prompt, then closed: 1 + STREAM_UPSTREAM_MAX_RETRIES
    copies in all, however many pooled connections there were to try."""
    server = pool.get(kind, config)
    warm_the_pool(server, upstream)
    script = upstream.script(unanswered=unanswered)
    answer = ask(server, SSE, f"x {script.marker}")
    if copies == 1:
        assert answer.status == 502, answer
        error = json.loads(answer.body)["error"]
    else:
        # The SDK's backoff between retries (about 1 s in all) outlasts the 0.5 s
        # keep-alive interval, which counts from the request: the failure comes
        # after the first byte.
        assert_error_event_ends(answer, [])
        error = json.loads(parse_sse(answer.body)[-1].data)
    assert error["type"] == "upstream_connection_error"
    time.sleep(0.5)  # the copies are all in before the answer; none trails it
    assert len(script.requests) == copies


# --- The key -----------------------------------------------------------------------

LAST4 = FAKE_API_KEY[-4:]
# How an upstream may quote the key: whole, in a header, or masked as OpenAI does
# ("sk-proj-" then stars then the last four), also abbreviated with an ellipsis.
QUOTED_KEYS = {
    "whole": FAKE_API_KEY,
    "bearer": f"Bearer {FAKE_API_KEY}",
    "openai-masked": f"{FAKE_API_KEY[:8]}{'*' * 39}{LAST4}",
    "ellipsis-masked": f"{FAKE_API_KEY[:8]}****...{LAST4}",
}
KEY_HINT = "You can find your API key at https://platform.openai.com/account/api-keys."
# The last four anywhere they are not part of a longer word or number.
_LAST4_ALONE = re.compile(rf"(?<![0-9A-Za-z]){re.escape(LAST4)}(?![0-9A-Za-z])")


def key_message(quoted: str) -> str:
    return f"Incorrect API key provided: {quoted}. {KEY_HINT}"


def leaks(text: str) -> list[str]:
    """The parts of the key (or the header carrying it) found in ``text``."""
    found = [
        name
        for name, part in [
            ("key", FAKE_API_KEY),
            ("authorization", f"Bearer {FAKE_API_KEY}"),
            ("key-tail", FAKE_API_KEY[-8:]),
            ("masked-key", FAKE_API_KEY[:8] + "*"),
        ]
        if part in text
    ]
    return found + (["last-4"] if _LAST4_ALONE.search(text) else [])


def _error(message: str) -> dict[str, object]:
    return {"error": {"message": message, "type": "invalid_request_error"}}


def _failed_response(message: str) -> Raw:
    """The Responses API's ``response.failed`` event, quoting ``message``."""
    response = {
        "id": "resp_fake",
        "object": "response",
        "status": "failed",
        "model": "gpt-4o-mini",
        "output": [],
        "error": {"code": "server_error", "message": message},
    }
    event = {"type": "response.failed", "sequence_number": 9, "response": response}
    return Raw(f"event: response.failed\ndata: {json.dumps(event)}\n\n".encode())


def _responses_error(message: str) -> Raw:
    """The Responses API's ``error`` event, quoting ``message``."""
    event = {
        "type": "error",
        "code": "invalid_api_key",
        "message": message,
        "param": None,
        "sequence_number": 9,
    }
    return Raw(f"event: error\ndata: {json.dumps(event)}\n\n".encode())


def _malformed(message: str) -> Raw:
    return Raw(f'data: {{"error": "{message}" oops\n\n'.encode())


Echo = Callable[[FakeUpstream, str], Script]  # a script quoting the given message


def _status(code: int) -> Echo:
    return lambda fake, m: fake.script(status=code, headers=RETRY_FAST, body=_error(m))


def _fault(fault: Callable[[str], Step], *before: Step) -> Echo:
    return lambda fake, m: fake.script(*before, fault(m))


# The server configuration, the status the client gets (200: the failure comes after
# output, as an error event or a cut-off body), and the echo.
ECHOES = [
    pytest.param("plain", 502, _status(401), id="401"),
    pytest.param("plain", 502, _status(403), id="403"),
    pytest.param("plain", 400, _status(400), id="400"),
    pytest.param("plain", 502, _status(404), id="404"),
    pytest.param("plain", 502, _status(500), id="500"),
    pytest.param("plain", 502, _fault(ErrorEvent), id="error-chunk-first"),
    pytest.param("plain", 200, _fault(ErrorEvent, Text("a")), id="error-chunk-midway"),
    pytest.param("plain", 502, _fault(_malformed), id="malformed-first"),
    pytest.param("plain", 200, _fault(_malformed, Text("a")), id="malformed-midway"),
    pytest.param(
        "responses", 502, _fault(_failed_response), id="response-failed-first"
    ),
    pytest.param(
        "responses",
        200,
        _fault(_failed_response, Text("a")),
        id="response-failed-midway",
    ),
    pytest.param(
        "responses",
        200,
        _fault(_responses_error, Text("a")),
        id="responses-error-midway",
    ),
]
ECHO_ROUTES = {
    "plain": [("GET", "/completionChat"), ("GET", "/completion"), SSE, RAW],
    "responses": [SSE, RAW],  # the chat routes are the ones on the Responses API
}


def wait_for_log_line(server: Server, needle: str, timeout: float = 5.0) -> str:
    """The server's log once it holds ``needle`` (log lines are written async)."""
    deadline = time.monotonic() + timeout
    while needle not in (log := server.log()):
        assert time.monotonic() < deadline, f"{needle!r} not logged in {timeout}s"
        time.sleep(0.05)
    return log


@pytest.mark.parametrize(("config", "status", "echo"), ECHOES)
@pytest.mark.parametrize("kind", APPS)
def test_a_key_quoted_by_the_upstream_appears_in_no_response_and_no_log_line(
    pool: ServerPool,
    upstream: FakeUpstream,
    kind: ServerKind,
    config: str,
    status: int,
    echo: Echo,
) -> None:
    server = pool.get(kind, config)
    log_start = len(server.log())
    problems: list[tuple[str, str, list[str], str]] = []
    for form, quoted in QUOTED_KEYS.items():
        script = echo(upstream, key_message(quoted))
        for route in ECHO_ROUTES[config]:
            answer = ask(server, route, script.marker)
            failed = answer.status == status and (
                status != 200 or not answer.complete or b"event: error" in answer.body
            )
            assert failed, (form, route, answer)  # the fault was met, not missed
            if found := leaks(everything := answer.everything()):
                problems.append((form, " ".join(route), found, everything))
        request = script.wait_for_request()
        assert request.headers["authorization"] == f"Bearer {FAKE_API_KEY}"
    sentinel = f"/after-the-echoes-{uuid.uuid4().hex}"
    ask(server, ("GET", sentinel), "x")  # its access log line comes after theirs
    log = wait_for_log_line(server, sentinel)[log_start:]
    problems += [
        ("-", "log", found, line) for line in log.splitlines() if (found := leaks(line))
    ]
    assert not problems, "\n".join(map(str, problems))


@pytest.mark.parametrize("kind", APPS)
def test_an_upstream_400_keeps_its_message_without_the_key(
    pool: ServerPool, upstream: FakeUpstream, kind: ServerKind
) -> None:
    """The contract passes a 400's message on: all of it but the credential."""
    server = pool.get(kind)
    context = "This model's maximum context length is 128000 tokens."
    for form, quoted in QUOTED_KEYS.items():
        message = f"{context} {key_message(quoted)}"
        script = upstream.script(status=400, body=_error(message))
        answer = ask(server, SSE, script.marker)
        assert answer.status == 400, form
        passed = json.loads(answer.body)["error"]["message"]
        assert not leaks(passed), (form, passed)
        assert passed.startswith(f"{context} Incorrect API key provided: "), passed
        assert passed.endswith(f". {KEY_HINT}"), (form, passed)
