"""The Flask app and the Django project answer the same requests with the same bytes."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.conftest import CORS_ORIGIN, ServerPool
from tests.fake_upstream import Done, FakeUpstream, Text, Usage
from tests.servers import DJANGO_DEV, DJANGO_GUNICORN, FLASK_DEV, FLASK_GUNICORN, Server

# Set by each server rather than by the app: the contract excepts Date and Server;
# the two development servers also frame bodies differently (chunked vs close).
SERVER_HEADERS = {"date", "server"}
DEV_SERVER_HEADERS = SERVER_HEADERS | {"connection", "transfer-encoding"}
REBOUND = "rebind.attacker.example"  # an attacker's name, pointed at this server
# A body given as a list of pieces is sent chunked, without a Content-Length.
Request = tuple[str, str, bytes | list[bytes] | None, dict[str, str]]


def requests(fake: FakeUpstream) -> list[Request]:
    script = fake.script(Text("Hi\nthere"), Text("[DONE]"), Usage(2, 3), Done())
    limited = fake.rate_limited(retry_after="3")
    json_type = {"Content-Type": "application/json"}
    marker = quote(script.marker)
    return [
        ("GET", "/", None, {}),
        ("GET", "/assets/chat.js", None, {}),
        ("GET", "/assets/missing.js", None, {}),
        ("GET", "/healthz", None, {}),
        ("GET", f"/completionChat?prompt=a+{script.marker}", None, {}),
        ("GET", f"/completion?prompt=a+{script.marker}", None, {}),
        (
            "POST",
            "/completions/chat",
            f'{{"prompt": "{script.marker}"}}'.encode(),
            json_type,
        ),
        (
            "POST",
            "/api/stream",
            f'{{"message": "{script.marker}"}}'.encode(),
            json_type,
        ),
        (
            "POST",
            "/api/chat",
            b'{"messages": [{"role": "user", "parts": [{"type": "file"}]}]}',
            json_type,
        ),
        ("GET", "/use-chat/missing.js", None, {}),
        ("GET", f"/completionChat?prompt={limited.marker}", None, {}),
        ("GET", "/completionChat", None, {}),
        ("POST", "/completions/chat", b"{", json_type),
        ("POST", "/completions/chat", b"{}", {"Content-Type": "text/plain"}),
        ("PUT", "/api/stream", None, {}),
        ("TRACE", "/api/stream", None, {}),  # a method no route answers
        ("HEAD", f"/completionChat?prompt={marker}", None, {}),
        ("GET", "/completions/chat", None, {"Origin": CORS_ORIGIN}),
        ("GET", "/no/such/path", None, {}),
        ("GET", "/completionChat?prompt=x", None, {"Sec-Fetch-Site": "cross-site"}),
        (
            "OPTIONS",
            "/completions/chat",
            None,
            {"Origin": CORS_ORIGIN, "Access-Control-Request-Method": "POST"},
        ),
        (
            "POST",
            "/completions/chat",
            f'{{"prompt": "{script.marker}"}}'.encode(),
            {**json_type, "Origin": CORS_ORIGIN},
        ),
        (
            "GET",
            f"/completionChat?prompt={marker}",
            None,
            {"Host": REBOUND, "Origin": f"http://{REBOUND}"},
        ),
        ("GET", f"/completionChat?prompt=first+{marker}&prompt=second", None, {}),
        ("GET", f"/completionChat?prompt={marker}&prompt=", None, {}),
        ("GET", f"/completionChat?prompt=%FFhi+{marker}", None, {}),
        ("GET", "/completionChat?" + "a&" * 1000 + f"prompt={marker}", None, {}),
    ]


def chunked_requests(fake: FakeUpstream) -> list[Request]:
    """Bodies without a length: only gunicorn decodes them for both apps."""
    script = fake.script(Text("chunked"), Done())
    body = f'{{"message": "hi {script.marker}"}}'.encode()
    json_type = {"Content-Type": "application/json"}
    return [
        ("POST", "/api/stream", [body[:5], body[5:]], json_type),
        ("POST", "/completions/chat", [b'{"prompt": ', b"1}"], json_type),
    ]


def answer(
    server: Server, request: Request, ignored: set[str]
) -> tuple[int, str, list[tuple[str, str]], bytes]:
    method, path, body, headers = request
    conn = server.connection()
    try:
        if isinstance(body, list):
            conn.request(method, path, iter(body), headers, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        kept = sorted(
            (k.lower(), v) for k, v in response.getheaders() if k.lower() not in ignored
        )
        return response.status, response.reason, kept, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("production", [True, False], ids=["gunicorn", "development"])
def test_flask_and_django_send_the_same_bytes(
    pool: ServerPool, upstream: FakeUpstream, production: bool
) -> None:
    flask = pool.get(FLASK_GUNICORN if production else FLASK_DEV)
    django = pool.get(DJANGO_GUNICORN if production else DJANGO_DEV)
    ignored = SERVER_HEADERS if production else DEV_SERVER_HEADERS
    chunked = chunked_requests(upstream) if production else []
    for request in requests(upstream) + chunked:
        assert answer(flask, request, ignored) == answer(django, request, ignored), (
            request
        )
