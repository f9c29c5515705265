"""The contract (../shared/CONTRACT.md), checked over real HTTP against every server.

Each test runs once per server: flask run, runserver, gunicorn+gevent for each app,
and both gunicorn servers again against the TLS upstream.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.client import error_of, get_chat, parse_sse, post_json, texts
from tests.conftest import ALL_KINDS, CORS_ORIGIN, MAX_PROMPT_CHARS, ServerPool
from tests.fake_upstream import (
    Abort,
    Done,
    ErrorEvent,
    FakeUpstream,
    Raw,
    Sleep,
    Text,
    Usage,
)
from tests.servers import Server

SSE_ROUTES = [
    ("GET", "/completion"),
    ("GET", "/completionChat"),
    ("POST", "/completions/chat"),
]
TRICKY_DELTAS = [
    "Hello",
    " two\nlines",
    "crlf\r\nand cr\rend",
    "\n",
    "\n\nevent: error\ndata: forged",
    "data: lookalike",
    ": not a comment",
    "trailing newline\n",
    "  leading spaces",
    "emoji 🎉 and ü",
    "[DONE]",
    "id: 1",
]


def stream(server: Server, method: str, path: str, prompt: str, **kw: object):  # type: ignore[no-untyped-def]
    if method == "GET":
        return get_chat(server, prompt, path, **kw)
    key = "message" if path == "/api/stream" else "prompt"
    return post_json(server, path, {key: prompt}, **kw)


def test_index_page_and_its_assets_are_served(server: Server) -> None:
    status, headers, body = server.request("GET", "/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert b'<script src="assets/chat.js"' in body
    # No inline script, so the policy can forbid it: default-src 'self' alone.
    assert b"<script>" not in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert "script-src" not in headers["Content-Security-Policy"]
    for name, kind in [("chat.js", "text/javascript"), ("chat.css", "text/css")]:
        status, headers, body = server.request("GET", f"/assets/{name}")
        assert (status, headers["Content-Type"]) == (200, f"{kind}; charset=utf-8")
    assert b"textContent" in server.request("GET", "/assets/chat.js")[2]


@pytest.mark.parametrize("name", ["nope.js", "index.html", "..", "chat.js.bak"])
def test_only_the_listed_assets_are_served(server: Server, name: str) -> None:
    status, _, body = server.request("GET", f"/assets/{name}")
    assert (status, json.loads(body)["error"]["type"]) == (404, "not_found")


def test_asset_names_cannot_climb_out(server: Server) -> None:
    status, _, body = server.request("GET", "/assets/..%2Fpyproject.toml")
    assert status == 404 and b"[project]" not in body  # the framework's own 404


def test_healthz_reports_the_upstream_kind(server: Server) -> None:
    status, headers, body = server.request("GET", "/healthz")
    assert status == 200
    assert json.loads(body) == {"status": "ok", "upstream": "openai-compatible"}


@pytest.mark.parametrize(("method", "path"), SSE_ROUTES)
def test_sse_routes_send_the_contract_headers(
    server: Server, fake: FakeUpstream, method: str, path: str
) -> None:
    script = fake.script(Text("hi"), Done())
    status, headers, body = stream(
        server, method, path, f"x {script.marker}", headers={"Accept-Encoding": "gzip"}
    )
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache"
    assert headers["X-Accel-Buffering"] == "no"
    assert "Content-Length" not in headers
    assert "Content-Encoding" not in headers
    assert body == b"data: hi\n\ndata: [DONE]\n\n"


@pytest.mark.parametrize(("method", "path"), SSE_ROUTES)
def test_each_delta_comes_back_exactly_from_a_conforming_parser(
    server: Server, fake: FakeUpstream, method: str, path: str
) -> None:
    script = fake.script(*[Text(d) for d in TRICKY_DELTAS], Usage(7, 12), Done())
    status, _, body = stream(server, method, path, f"tricky {script.marker}")
    assert status == 200
    events = parse_sse(body)
    normalised = [d.replace("\r\n", "\n").replace("\r", "\n") for d in TRICKY_DELTAS]
    expected = [d for d in normalised if d != "[DONE]"]
    expected.insert(normalised.index("[DONE]"), "]")
    expected.insert(normalised.index("[DONE]"), "[DONE")
    assert texts(events) == expected
    assert [e.event for e in events][-2:] == ["usage", "message"]
    assert json.loads(events[-2].data) == {
        "prompt_tokens": 7,
        "completion_tokens": 12,
        "total_tokens": 19,
    }
    assert events[-1].data == "[DONE]"
    assert sum(e.data == "[DONE]" for e in events) == 1


def test_multiline_delta_is_written_as_data_lines_byte_for_byte(
    server: Server, fake: FakeUpstream
) -> None:
    script = fake.script(Text("a\r\nb\rc\n"), Text("[DONE]"), Usage(1, 2), Done())
    _, _, body = get_chat(server, f"bytes {script.marker}")
    assert body == (
        b"data: a\ndata: b\ndata: c\ndata: \n\n"
        b"data: [DONE\n\ndata: ]\n\n"
        b"event: usage\n"
        b'data: {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}\n\n'
        b"data: [DONE]\n\n"
    )


def test_provider_quirks_do_not_break_the_stream(
    server: Server, fake: FakeUpstream
) -> None:
    emoji = "🎉".encode()
    chunk = (
        '{"object":"chat.completion","x_extra":{"a":1},'
        '"choices":[{"index":0,"message":{"content":"%s"}}]}'
    )
    script = fake.script(
        Raw(b": provider comment\r\n\r\n"),
        Raw(b'data: {"id":"1","choices":[],"provider_field":true}\r\n\r\n'),
        Raw(("data: " + chunk % "whole").encode() + b"\r\n\r\n"),
        Raw(b'data: {"choices":[{"index":0,"delta":{"content":"sp'),
        Raw(
            b'lit "},"finish_reason":null}]}\n\ndata: {"choices":[{"delta":{"content":"'
            + emoji[:2]
        ),
        Raw(emoji[2:] + b'"}}]}\n\n'),
        # no [DONE]: the body simply ends after the finish reason
        Raw(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'),
    )
    status, _, body = get_chat(server, f"quirks {script.marker}")
    assert status == 200
    events = parse_sse(body)
    assert texts(events) == ["whole", "split ", "🎉"]
    assert events[-1].data == "[DONE]"


def test_legacy_completion_route_calls_the_completions_api(
    server: Server, fake: FakeUpstream
) -> None:
    script = fake.script(Text("Once"), Text(" upon"), Done())
    _, _, body = get_chat(server, f"tell {script.marker}", "/completion")
    assert texts(parse_sse(body)) == ["Once", " upon"]
    request = script.wait_for_request()
    assert request.path == "/v1/completions"
    assert request.json["model"] == "gpt-3.5-turbo-instruct"
    assert request.json["prompt"] == f"tell {script.marker}"
    assert request.json["stream"] is True


def test_chat_routes_send_the_messages_to_the_chat_api(
    server: Server, fake: FakeUpstream
) -> None:
    script = fake.script(Text("ok"), Done())
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": f"hi {script.marker}"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "more"},
    ]
    status, _, body = post_json(server, "/completions/chat", {"messages": messages})
    assert status == 200 and texts(parse_sse(body)) == ["ok"]
    request = script.wait_for_request()
    assert request.path == "/v1/chat/completions"
    assert request.json["messages"] == messages
    assert request.json["model"] == "gpt-4o-mini"
    assert request.headers["authorization"].startswith("Bearer sk-test-")


def test_raw_text_route_sends_the_deltas_byte_for_byte(
    server: Server, fake: FakeUpstream
) -> None:
    emoji = "👩‍💻".encode()
    script = fake.script(
        Text("line one\r\n"),
        Raw(b'data: {"choices":[{"index":0,"delta":{"content":"' + emoji[:5]),
        Raw(emoji[5:] + b' [DONE]"}}]}\n\n'),
        Text("\n\nevent: error\ndata: x"),
        Usage(1, 1),
        Done(),
    )
    for payload in (
        {"message": f"m {script.marker}"},
        {"messages": [{"role": "user", "content": f"m {script.marker}"}]},
    ):
        status, headers, body = post_json(server, "/api/stream", payload)
        assert status == 200
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
        assert headers["Cache-Control"] == "no-cache"
        assert headers["X-Accel-Buffering"] == "no"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert body == "line one\r\n👩‍💻 [DONE]\n\nevent: error\ndata: x".encode()


BAD_REQUESTS = [
    pytest.param("GET", "/completionChat", None, id="missing-prompt"),
    pytest.param("GET", "/completionChat?prompt=", None, id="empty-prompt"),
    pytest.param("GET", "/completion?prompt=%20%20", None, id="blank-prompt"),
    pytest.param("POST", "/completions/chat", b"{not json", id="bad-json"),
    pytest.param("POST", "/completions/chat", b"[1, 2]", id="not-an-object"),
    pytest.param("POST", "/completions/chat", b'{"prompt": 5}', id="prompt-not-string"),
    pytest.param("POST", "/completions/chat", b'{"messages": []}', id="no-messages"),
    pytest.param(
        "POST", "/completions/chat", b'{"messages": "hi"}', id="messages-not-list"
    ),
    pytest.param(
        "POST",
        "/completions/chat",
        b'{"messages": [{"role": "wizard", "content": "x"}]}',
        id="unknown-role",
    ),
    pytest.param(
        "POST",
        "/completions/chat",
        b'{"messages": [{"role": "user", "content": 3}]}',
        id="content-not-string",
    ),
    pytest.param(
        "POST", "/api/stream", b'{"prompt": "wrong key"}', id="raw-wants-message"
    ),
    pytest.param(
        "POST",
        "/api/stream",
        b'{"message": "' + b"x" * (MAX_PROMPT_CHARS + 1) + b'"}',
        id="too-long",
    ),
    pytest.param(
        "GET",
        "/completionChat?prompt=" + "y" * (MAX_PROMPT_CHARS + 1),
        None,
        id="query-too-long",
    ),
]


@pytest.mark.parametrize(("method", "path", "body"), BAD_REQUESTS)
def test_bad_requests_get_400_without_an_upstream_call(
    server: Server, fake: FakeUpstream, method: str, path: str, body: bytes | None
) -> None:
    before = len(fake.requests)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    response = server.request(method, path, body, headers)
    assert response[0] == 400
    assert error_of(response)["message"]
    assert len(fake.requests) == before


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ],
)
def test_post_routes_take_only_json_bodies(
    server: Server, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    for path in ("/completions/chat", "/api/stream"):
        response = server.request(
            "POST", path, b'{"prompt": "hi", "message": "hi"}', headers
        )
        assert response[0] == 415
        assert error_of(response)["type"] == "unsupported_media_type"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/completionChat", "GET"),
        ("DELETE", "/completion", "GET"),
        ("HEAD", "/completionChat", "GET"),
        ("GET", "/completions/chat", "POST"),
        ("PUT", "/api/stream", "POST"),
    ],
)
def test_wrong_method_gets_405_with_allow(
    server: Server, method: str, path: str, allowed: str
) -> None:
    status, headers, body = server.request(method, path + "?prompt=hi")
    assert status == 405
    assert headers["Allow"] == f"{allowed}, OPTIONS"
    if method != "HEAD":
        assert error_of((status, headers, body))["type"] == "method_not_allowed"


@pytest.mark.parametrize("path", ["/", "/healthz", "/completion", "/completionChat"])
def test_head_gets_405_and_never_calls_the_upstream(
    server: Server, fake: FakeUpstream, path: str
) -> None:
    """Werkzeug would answer HEAD on every GET route, starting a paid completion."""
    script = fake.script(Text("never"), Done())
    status, headers, body = server.request("HEAD", f"{path}?prompt={script.marker}")
    assert (status, headers["Allow"], body) == (405, "GET, OPTIONS", b"")
    assert headers["Content-Type"] == "application/json"
    assert script.requests == []


def test_upstream_400_is_passed_on_with_its_message(
    server: Server, fake: FakeUpstream
) -> None:
    message = "This model's maximum context length is 128000 tokens."
    script = fake.script(
        status=400,
        body={
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "code": "context_length_exceeded",
            }
        },
    )
    response = post_json(
        server, "/completions/chat", {"prompt": f"long {script.marker}"}
    )
    assert response[0] == 400
    assert error_of(response)["message"] == message


def test_upstream_429_is_passed_on_with_retry_after(
    server: Server, fake: FakeUpstream
) -> None:
    script = fake.rate_limited(retry_after="7")
    response = get_chat(server, f"busy {script.marker}")
    assert response[0] == 429
    assert response[1]["Retry-After"] == "7"
    assert error_of(response)["type"] == "rate_limited"


@pytest.mark.parametrize("status", [401, 403, 404, 500, 503])
def test_other_upstream_failures_are_502_without_the_upstream_text(
    server: Server, fake: FakeUpstream, status: int
) -> None:
    from tests.conftest import FAKE_API_KEY

    leak = f"Incorrect API key provided: {FAKE_API_KEY[:12]}****{FAKE_API_KEY[-4:]}"
    script = fake.script(
        status=status,
        headers={"retry-after-ms": "5"},
        body={"error": {"message": leak, "type": "invalid_request_error"}},
    )
    logged_before = len(server.log())
    response = get_chat(server, f"fail {script.marker}")
    assert response[0] == 502
    assert error_of(response)["type"] == "upstream_error"
    assert FAKE_API_KEY[-4:].encode() not in response[2]
    assert b"Incorrect API key" not in response[2]
    # Whoever runs the server is told, in the upstream's words, less the key.
    warning = (
        f"The upstream answered {status} to POST {fake.base_url}/chat/completions: "
        "Incorrect API key provided: [redacted]"
    )
    deadline = time.monotonic() + 5  # the log is written after the answer
    while warning not in server.log()[logged_before:] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert warning in server.log()[logged_before:], server.log()[logged_before:]
    assert FAKE_API_KEY[-4:] not in server.log()


def test_an_upstream_404_says_what_to_check(server: Server, fake: FakeUpstream) -> None:
    """A base URL without its /v1 is the usual cause, or a model name."""
    script = fake.script(status=404, body={"error": {"message": "Not found"}})
    response = get_chat(server, f"fail {script.marker}")
    assert (response[0], error_of(response)) == (
        502,
        {
            "message": "The upstream answered 404. Check the model name, and that "
            "the base URL ends with the API's version path (e.g. /v1).",
            "type": "upstream_error",
        },
    )


@pytest.fixture(params=ALL_KINDS, ids=lambda kind: kind.name)
def unretrying_server(request: pytest.FixtureRequest, pool: ServerPool) -> Server:
    """A server whose SDK doesn't retry: an upstream timeout is one timeout long,
    not three (the retries' own tests are in ``tests/test_upstream_faults.py``)."""
    return pool.get(request.param, "no-retries")


def test_upstream_timeout_before_the_first_byte_is_504(
    unretrying_server: Server, upstream: FakeUpstream
) -> None:
    """Raw text has no keep-alive: its first byte waits for the upstream's."""
    from tests.conftest import UPSTREAM_TIMEOUT_SECONDS

    server, fake = unretrying_server, upstream

    script = fake.script(
        Text("late"), Done(), headers_delay=UPSTREAM_TIMEOUT_SECONDS + 6
    )
    response = post_json(
        server, "/api/stream", {"message": f"slow {script.marker}"}, timeout=60
    )
    assert response[0] == 504
    assert error_of(response)["type"] == "upstream_timeout"


def test_upstream_timeout_after_the_first_keepalive_is_an_error_event(
    unretrying_server: Server, upstream: FakeUpstream
) -> None:
    """SSE: an upstream that holds back its headers is silence like any other, so
    the first keep-alive (a first byte) goes out one interval after the request,
    before a longer upstream timeout can be answered with a status."""
    from tests.conftest import KEEPALIVE_SECONDS, UPSTREAM_TIMEOUT_SECONDS

    server, fake = unretrying_server, upstream

    assert KEEPALIVE_SECONDS < UPSTREAM_TIMEOUT_SECONDS
    script = fake.script(
        Text("late"), Done(), headers_delay=UPSTREAM_TIMEOUT_SECONDS + 6
    )
    status, _, body = post_json(
        server, "/completions/chat", {"prompt": f"slow {script.marker}"}, timeout=60
    )
    assert status == 200
    assert body.startswith(b": keep-alive\n\n") and b"[DONE]" not in body
    events = parse_sse(body)
    assert texts(events) == []
    assert events[-1].event == "error"
    assert json.loads(events[-1].data)["type"] == "upstream_timeout"


def test_upstream_timeout_mid_stream_is_an_error_event(
    server: Server, fake: FakeUpstream
) -> None:
    from tests.conftest import UPSTREAM_TIMEOUT_SECONDS

    script = fake.script(
        Text("early"), Sleep(UPSTREAM_TIMEOUT_SECONDS + 3), Text("late"), Done()
    )
    status, _, body = get_chat(server, f"stall {script.marker}", timeout=30)
    assert status == 200
    events = parse_sse(body)
    assert texts(events) == ["early"]
    assert events[-1].event == "error"
    assert json.loads(events[-1].data)["type"] == "upstream_timeout"
    assert b"[DONE]" not in body


UPSTREAM_FAILURES = [
    pytest.param(Abort(), id="reset"),
    pytest.param(ErrorEvent("The model crashed"), id="error-chunk"),
    pytest.param(Raw(b"data: {not json\n\n"), id="malformed-chunk"),
]


@pytest.mark.parametrize("failure", UPSTREAM_FAILURES)
def test_failure_after_the_first_byte_is_an_error_event_without_done(
    server: Server, fake: FakeUpstream, failure: object
) -> None:
    # The pause lets "partial" reach the server before a reset could discard it.
    script = fake.script(Text("partial"), Sleep(0.3), failure, Text("never"), Done())
    status, _, body = post_json(
        server, "/completions/chat", {"prompt": f"x {script.marker}"}
    )
    assert status == 200
    events = parse_sse(body)
    assert texts(events) == ["partial"]
    assert events[-1].event == "error"
    error = json.loads(events[-1].data)
    assert set(error) == {"message", "type"} and error["message"]
    assert b"[DONE]" not in body


@pytest.mark.parametrize("failure", UPSTREAM_FAILURES)
@pytest.mark.parametrize(("method", "path"), [*SSE_ROUTES, ("POST", "/api/stream")])
def test_failure_before_any_output_gets_a_502_status(
    server: Server, fake: FakeUpstream, failure: object, method: str, path: str
) -> None:
    script = fake.script(
        Raw(b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'),
        # A reset at once may reach the server before it read the headers: the
        # SDK's retries then outlast the keep-alive, and the 200 is sent.
        Sleep(0.05),
        failure,
        Text("never"),
        Done(),
    )
    response = stream(server, method, path, f"x {script.marker}")
    assert response[0] == 502
    assert error_of(response)["type"] in {"upstream_error", "upstream_connection_error"}


def test_raw_text_failure_cuts_the_body_off(server: Server, fake: FakeUpstream) -> None:
    import http.client

    script = fake.script(Text("partial "), Sleep(0.3), Abort())
    conn = server.connection()
    try:
        body = json.dumps({"message": f"x {script.marker}"})
        conn.request("POST", "/api/stream", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200
        with pytest.raises(http.client.IncompleteRead) as caught:
            response.read()
        assert caught.value.partial == b"partial "
    finally:
        conn.close()


def test_silence_is_filled_with_keepalive_comments(
    server: Server, fake: FakeUpstream
) -> None:
    from tests.conftest import KEEPALIVE_SECONDS

    script = fake.script(Text("a"), Sleep(KEEPALIVE_SECONDS * 2.6), Text("b"), Done())
    status, _, body = get_chat(server, f"think {script.marker}")
    assert status == 200
    assert body.startswith(b"data: a\n\n: keep-alive\n\n: keep-alive\n\n")
    assert body.endswith(b"data: b\n\ndata: [DONE]\n\n")
    assert texts(parse_sse(body)) == ["a", "b"]


CROSS_SITE = [
    pytest.param(
        "GET",
        {
            "Sec-Fetch-Site": "cross-site",
            "Sec-Fetch-Mode": "no-cors",
            "Sec-Fetch-Dest": "image",
        },
        id="img",
    ),
    pytest.param(
        "GET",
        {
            "Sec-Fetch-Site": "cross-site",
            "Sec-Fetch-Mode": "cors",
            "Sec-Fetch-Dest": "empty",
            "Origin": "https://evil.example",
            "Accept": "text/event-stream",
        },
        id="eventsource",
    ),
    pytest.param("GET", {"Origin": "http://evil.example"}, id="origin-only"),
    pytest.param("GET", {"Origin": "null"}, id="opaque-origin"),
    pytest.param(
        "POST",
        {
            "Sec-Fetch-Site": "cross-site",
            "Sec-Fetch-Mode": "navigate",
            "Origin": "https://evil.example",
            "Content-Type": "application/x-www-form-urlencoded",
        },
        id="form-post",
    ),
    pytest.param(
        "POST",
        {"Origin": "http://127.0.0.1.evil.example", "Content-Type": "application/json"},
        id="lookalike-origin-json",
    ),
]


@pytest.mark.parametrize(("method", "headers"), CROSS_SITE)
def test_cross_site_requests_are_refused_before_any_upstream_call(
    server: Server, fake: FakeUpstream, method: str, headers: dict[str, str]
) -> None:
    before = len(fake.requests)
    paths = (
        ["/completionChat?prompt=hi", "/completion?prompt=hi"]
        if method == "GET"
        else ["/completions/chat", "/api/stream"]
    )
    for path in paths:
        body = b'{"prompt": "hi", "message": "hi"}' if method == "POST" else None
        response = server.request(method, path, body, headers)
        assert response[0] == 403, path
        assert error_of(response)["type"] == "cross_site_request"
        assert "Access-Control-Allow-Origin" not in response[1]
    assert len(fake.requests) == before


def test_same_origin_browsers_and_plain_clients_are_served(
    server: Server, fake: FakeUpstream
) -> None:
    script = fake.script(Text("ok"), Done())
    own = f"http://127.0.0.1:{server.port}"
    for headers in (
        {},
        {"Sec-Fetch-Site": "same-origin", "Origin": own},
        {"Sec-Fetch-Site": "none"},
    ):
        response = post_json(
            server, "/completions/chat", {"prompt": f"x {script.marker}"}, headers
        )
        assert response[0] == 200, headers
        assert "Access-Control-Allow-Origin" not in response[1]


def test_a_listed_origin_gets_cors_headers_and_a_preflight(
    server: Server, fake: FakeUpstream
) -> None:
    script = fake.script(Text("ok"), Done())
    preflight = server.request(
        "OPTIONS",
        "/completions/chat",
        headers={
            "Origin": CORS_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
            "Sec-Fetch-Site": "cross-site",
        },
    )
    assert preflight[0] == 204
    assert preflight[1]["Access-Control-Allow-Origin"] == CORS_ORIGIN
    assert preflight[1]["Access-Control-Allow-Methods"] == "POST"
    assert "content-type" in preflight[1]["Access-Control-Allow-Headers"].lower()
    response = post_json(
        server,
        "/completions/chat",
        {"prompt": f"x {script.marker}"},
        {"Origin": CORS_ORIGIN, "Sec-Fetch-Site": "cross-site"},
    )
    assert response[0] == 200
    assert response[1]["Access-Control-Allow-Origin"] == CORS_ORIGIN
    assert texts(parse_sse(response[2])) == ["ok"]


def test_an_unlisted_preflight_gets_no_cors_headers(server: Server) -> None:
    status, headers, _ = server.request(
        "OPTIONS",
        "/completions/chat",
        headers={
            "Origin": "https://evil.example",
            "Access-Control-Request-Method": "POST",
        },
    )
    assert status == 204
    assert not [name for name in headers if name.lower().startswith("access-control-")]


def test_a_rebound_host_name_is_refused_before_any_upstream_call(
    server: Server, fake: FakeUpstream
) -> None:
    """DNS rebinding: the attacker's name, pointed at this server, sends a matching
    ``Host`` and ``Origin``; the cross-site rule alone would let it through."""
    script = fake.script(Text("never"), Done())
    host = f"rebind.attacker.example:{server.port}"
    headers = {
        "Host": host,
        "Origin": f"http://{host}",
        "Sec-Fetch-Site": "same-origin",
    }
    for method, path in [*SSE_ROUTES, ("POST", "/api/stream")]:
        response = stream(server, method, path, f"hi {script.marker}", headers=headers)
        assert response[0] == 400, (path, response[2])
        assert error_of(response)["type"] == "invalid_request_error"
    assert script.requests == []
    own = {
        "Host": f"localhost:{server.port}",
        "Origin": f"http://localhost:{server.port}",
    }
    assert get_chat(server, f"hi {script.marker}", headers=own)[0] == 200


@pytest.mark.parametrize(
    ("query", "sent"),
    [
        ("prompt=%FFhi+{marker}", "\ufffdhi {marker}"),
        ("prompt=%ED%A0%80+{marker}", "\ufffd\ufffd\ufffd {marker}"),
        ("p%72ompt=a%2Bb+{marker}&other=1", "a+b {marker}"),
    ],
    ids=["invalid-utf8", "encoded-surrogate", "encoded-name"],
)
def test_a_query_is_decoded_the_same_by_every_server(
    server: Server, fake: FakeUpstream, query: str, sent: str
) -> None:
    script = fake.script(Text("ok"), Done())
    marker = script.marker.replace("[", "%5B").replace("]", "%5D")
    path = "/completionChat?" + query.format(marker=marker)
    assert server.request("GET", path)[0] == 200
    [message] = script.wait_for_request().json["messages"]
    assert message["content"] == sent.format(marker=script.marker)


@pytest.mark.parametrize(
    "query",
    ["prompt=first&prompt=second", "prompt=x&prompt=", "prompt=x&prompt"],
    ids=["two", "second-empty", "second-bare"],
)
def test_a_repeated_prompt_is_a_400(
    server: Server, fake: FakeUpstream, query: str
) -> None:
    before = len(fake.requests)
    for path in ("/completionChat", "/completion"):
        response = server.request("GET", f"{path}?{query}")
        assert response[0] == 400, (path, response[2])
        assert error_of(response)["message"] == "Give one 'prompt', got 2."
    assert len(fake.requests) == before


def test_more_than_a_thousand_query_fields_is_a_400(
    server: Server, fake: FakeUpstream
) -> None:
    script = fake.script(Text("ok"), Done())
    prompt = "prompt=" + script.marker.replace("[", "%5B").replace("]", "%5D")
    at_limit = "/completionChat?" + "a&" * 999 + prompt  # 1,000 fields
    assert server.request("GET", at_limit)[0] == 200
    response = server.request("GET", "/completionChat?" + "a&" * 1000 + prompt)
    assert response[0] == 400
    assert error_of(response)["type"] == "invalid_request_error"
    assert len(script.requests) == 1


def post_chunked(
    server: Server, path: str, body: bytes
) -> tuple[int, dict[str, str], bytes]:
    """A POST whose body is sent in chunks, without a ``Content-Length``."""
    conn = server.connection()
    try:
        headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
        pieces = iter([body[:5], body[5:]])
        conn.request("POST", path, body=pieces, headers=headers, encode_chunked=True)
        with conn.getresponse() as response:
            return response.status, dict(response.headers), response.read()
    finally:
        conn.close()


def test_a_chunked_body_is_read_where_the_server_decodes_it(
    server: Server, fake: FakeUpstream
) -> None:
    """gunicorn and ``flask run`` decode chunked bodies; ``runserver`` can't: 411."""
    script = fake.script(Text("chunked ok"), Done())
    status, headers, body = post_chunked(
        server, "/api/stream", f'{{"message": "hi {script.marker}"}}'.encode()
    )
    if server.name == "django-runserver":
        assert status == 411, body
        assert headers["Content-Type"] == "application/json"
        assert json.loads(body)["error"]["type"] == "length_required"
        assert script.requests == []
    else:
        assert (status, body) == (200, b"chunked ok")
