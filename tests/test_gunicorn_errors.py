"""gunicorn's own answers, to requests no app sees, follow the contract's JSON too.

gunicorn refuses a request line over ``limit_request_line`` (8190 bytes, its highest:
a GET's ``?prompt=`` of a few thousand characters fits), headers over its limits,
and malformed requests, before the app runs. Sent as raw bytes: http.client would
refuse to send some of them.
"""

from __future__ import annotations

import http.client
import json
import socket
from urllib.parse import quote

import pytest

from tests.client import error_of, get_chat, parse_sse, texts
from tests.conftest import ServerPool
from tests.fake_upstream import Done, FakeUpstream, Text
from tests.servers import DJANGO_GUNICORN, FLASK_GUNICORN, Server

LIMIT_REQUEST_LINE = 8190  # gunicorn.conf.py
TIMEOUT_SECONDS = 10.0
ENCODED_E_ACUTE = len(quote("é"))  # 6 bytes in a URL


@pytest.fixture(
    params=[FLASK_GUNICORN, DJANGO_GUNICORN], ids=["flask-gunicorn", "django-gunicorn"]
)
def gunicorn_server(request: pytest.FixtureRequest, pool: ServerPool) -> Server:
    return pool.get(request.param)


def answer(server: Server, request: bytes) -> tuple[int, str, dict[str, str]]:
    """Status, ``Content-Type`` and the contract's error of a raw request's answer."""
    with socket.create_connection(("127.0.0.1", server.port), TIMEOUT_SECONDS) as sock:
        sock.sendall(request)
        with http.client.HTTPResponse(sock, method="GET") as response:
            response.begin()
            body = response.read()
            return response.status, response.headers["Content-Type"], body_error(body)


def body_error(body: bytes) -> dict[str, str]:
    error: dict[str, str] = json.loads(body)["error"]
    assert set(error) == {"message", "type"}, error
    return error


def test_a_get_of_seven_thousand_bytes_is_served(
    gunicorn_server: Server, upstream: FakeUpstream
) -> None:
    script = upstream.script(Text("long "), Text("prompt"), Done())
    prompt = "é" * (7000 // ENCODED_E_ACUTE) + f" {script.marker}"
    assert 7000 < len(f"/completionChat?prompt={quote(prompt)}") < LIMIT_REQUEST_LINE
    status, _, body = get_chat(gunicorn_server, prompt)
    assert status == 200, body
    assert texts(parse_sse(body)) == ["long ", "prompt"]


def test_a_get_over_the_request_line_limit_gets_a_json_414(
    gunicorn_server: Server,
) -> None:
    prompt = "é" * (LIMIT_REQUEST_LINE // ENCODED_E_ACUTE + 1)
    response = get_chat(gunicorn_server, prompt)
    assert response[0] == 414
    error = error_of(response)
    assert error["type"] == "uri_too_long"
    assert "8190" in error["message"] and "POST /completions/chat" in error["message"]


@pytest.mark.parametrize(
    ("request_bytes", "status", "kind"),
    [
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
            431,
            "request_header_fields_too_large",
            id="header-too-large",
        ),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
            400,
            "invalid_request_error",
            id="bad-header-name",
        ),
        pytest.param(
            b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
            400,
            "invalid_request_error",
            id="bad-http-version",
        ),
    ],
)
def test_gunicorns_own_refusals_are_json(
    gunicorn_server: Server, request_bytes: bytes, status: int, kind: str
) -> None:
    got_status, content_type, error = answer(gunicorn_server, request_bytes)
    assert (got_status, content_type, error["type"]) == (
        status,
        "application/json",
        kind,
    )
    assert error["message"]
