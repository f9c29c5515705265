"""The opt-in access rules: a token, a rate limit (memory and Redis), output and
body caps. Both apps under gunicorn+gevent, as deployed."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from django.test import Client

from tests.client import Response, error_of, get_chat, parse_sse, post_json, texts
from tests.conftest import (
    ACCESS_TOKEN,
    MAX_BODY_BYTES,
    MAX_OUTPUT_TOKENS,
    ServerPool,
)
from tests.django_admin import cookies, database_with_admin, login_form
from tests.fake_upstream import Done, FakeUpstream, Sleep, Text
from tests.servers import (
    DJANGO_GUNICORN,
    FLASK_GUNICORN,
    Server,
    ServerKind,
    free_port,
)

GUNICORN_KINDS = [
    pytest.param(FLASK_GUNICORN, id="flask-gunicorn"),
    pytest.param(DJANGO_GUNICORN, id="django-gunicorn"),
]
STREAM_ROUTES = ["/completion", "/completionChat", "/completions/chat", "/api/stream"]
BEARER = {"Authorization": f"Bearer {ACCESS_TOKEN}"}


def call(
    server: Server, path: str, marker: str, headers: dict[str, str] | None = None
) -> Response:
    """One request to a streaming route, GET or POST as the route takes it."""
    if path in ("/completion", "/completionChat"):
        return get_chat(server, f"hi {marker}", path, headers=headers)
    payload = {"prompt": f"hi {marker}", "message": f"hi {marker}"}
    return post_json(server, path, payload, headers)


# --- STREAM_AUTH_TOKEN -------------------------------------------------------------


@pytest.mark.parametrize("kind", GUNICORN_KINDS)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong",
        f"Basic {ACCESS_TOKEN}",
        f"Bearer {ACCESS_TOKEN}x",
        "Bearer",
    ],
    ids=["none", "wrong", "basic", "longer", "empty"],  # the token differs per run
)
def test_without_the_token_every_streaming_route_is_401(
    pool: ServerPool,
    upstream: FakeUpstream,
    kind: ServerKind,
    authorization: str | None,
) -> None:
    server = pool.get(kind, "guarded")
    script = upstream.script(Text("never"), Done())
    headers = {"Authorization": authorization} if authorization else {}
    for path in STREAM_ROUTES:
        response = call(server, path, script.marker, headers)
        assert response[0] == 401, (path, response[2])
        assert response[1]["WWW-Authenticate"].startswith("Bearer")
        assert error_of(response)["type"] == "unauthorized"
        assert ACCESS_TOKEN.encode() not in response[2]
    assert script.requests == []  # refused before any upstream call


@pytest.mark.parametrize("kind", GUNICORN_KINDS)
def test_with_the_token_every_streaming_route_streams(
    pool: ServerPool, upstream: FakeUpstream, kind: ServerKind
) -> None:
    server = pool.get(kind, "guarded")
    for path in STREAM_ROUTES:
        script = upstream.script(Text("fine"), Done())
        status, _, body = call(server, path, script.marker, BEARER)
        assert status == 200, (path, body)
        assert b"fine" in body
    # The page and the health check spend nothing: they stay open.
    for path in ("/", "/healthz", "/assets/chat.js"):
        assert server.request("GET", path)[0] == 200, path


@pytest.mark.parametrize("kind", GUNICORN_KINDS)
def test_a_preflight_allows_the_authorization_header(
    pool: ServerPool, kind: ServerKind
) -> None:
    from tests.conftest import CORS_ORIGIN

    server = pool.get(kind, "guarded")
    status, headers, _ = server.request(
        "OPTIONS",
        "/completions/chat",
        headers={"Origin": CORS_ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert status == 204
    assert "Authorization" in headers["Access-Control-Allow-Headers"]


# --- STREAM_MAX_OUTPUT_TOKENS --------------------------------------------------------


@pytest.mark.parametrize("kind", GUNICORN_KINDS)
def test_the_output_cap_is_sent_to_the_upstream(
    pool: ServerPool, upstream: FakeUpstream, kind: ServerKind
) -> None:
    capped, uncapped = pool.get(kind, "guarded"), pool.get(kind)
    for path, field in [
        ("/completion", "max_tokens"),
        ("/completionChat", "max_completion_tokens"),
        ("/completions/chat", "max_completion_tokens"),
        ("/api/stream", "max_completion_tokens"),
    ]:
        script = upstream.script(Text("a"), Done())
        assert call(capped, path, script.marker, BEARER)[0] == 200
        assert script.wait_for_request().json[field] == MAX_OUTPUT_TOKENS, path
        script = upstream.script(Text("a"), Done())
        assert call(uncapped, path, script.marker)[0] == 200
        sent = script.wait_for_request().json
        assert "max_tokens" not in sent and "max_completion_tokens" not in sent


def test_the_responses_api_gets_its_own_name_for_the_cap(
    pool: ServerPool, upstream: FakeUpstream, tmp_path: Path
) -> None:
    env = {**pool.env("responses"), "STREAM_MAX_OUTPUT_TOKENS": "5"}
    with Server(FLASK_GUNICORN, env, tmp_path / "responses.log") as server:
        script = upstream.script(Text("a"), Done())
        assert get_chat(server, f"hi {script.marker}")[0] == 200
        assert script.wait_for_request().json["max_output_tokens"] == 5


# --- STREAM_MAX_BODY_BYTES ---------------------------------------------------------


@pytest.mark.parametrize("kind", GUNICORN_KINDS)
def test_a_body_over_the_limit_is_refused_before_it_is_read(
    pool: ServerPool, upstream: FakeUpstream, kind: ServerKind
) -> None:
    server = pool.get(kind, "guarded")
    for path in ("/completions/chat", "/api/stream"):
        # Announce 100 MB and send 100 bytes: an answer at all proves the server
        # didn't wait for the rest.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {ACCESS_TOKEN}\r\n"
                "Content-Type: application/json\r\n"
                "Content-Length: 100000000\r\n\r\n".encode()
                + b'{"prompt": "'
                + b"x" * 88
            )
            reply = _read_head_and_some(sock)
        assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
        assert b'"payload_too_large"' in reply


@pytest.mark.parametrize("kind", GUNICORN_KINDS)
def test_a_body_at_the_limit_is_served_and_one_byte_more_is_413(
    pool: ServerPool, upstream: FakeUpstream, kind: ServerKind
) -> None:
    server = pool.get(kind, "guarded")
    script = upstream.script(Text("ok"), Done())
    prefix, suffix = f'{{"prompt": "hi {script.marker}"', "}"
    padding = " " * (MAX_BODY_BYTES - len(prefix) - len(suffix))  # JSON whitespace
    body = (prefix + padding + suffix).encode()
    assert len(body) == MAX_BODY_BYTES
    headers = {"Content-Type": "application/json", **BEARER}
    status, _, reply = server.request("POST", "/completions/chat", body, headers)
    assert status == 200, reply[:300]
    too_long = body[:-1] + b" }"
    status, _, reply = server.request("POST", "/completions/chat", too_long, headers)
    assert status == 413
    assert len(script.requests) == 1


@pytest.mark.parametrize("kind", GUNICORN_KINDS)
def test_a_chunked_body_over_the_limit_is_413(
    pool: ServerPool, kind: ServerKind
) -> None:
    """A chunked body has no length to check: reading stops one byte past the limit."""
    server = pool.get(kind, "guarded")
    chunk = b"x" * 1024
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            "POST /completions/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {ACCESS_TOKEN}\r\n"
            "Content-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        for _ in range(MAX_BODY_BYTES // len(chunk) + 2):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        reply = _read_head_and_some(sock)  # sent no final chunk: not read to the end
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]


def _read_head_and_some(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or b"}}" not in data:
        part = sock.recv(65536)
        if not part:
            break
        data += part
    return data


# --- STREAM_RATE_LIMIT, in memory --------------------------------------------------


@pytest.mark.parametrize("kind", GUNICORN_KINDS)
def test_a_client_over_the_rate_limit_gets_429_with_retry_after(
    pool: ServerPool, upstream: FakeUpstream, kind: ServerKind
) -> None:
    server = pool.get(kind, "rate-limited")  # 3/minute, counted by client address
    script = upstream.script(Text("ok"), Done())
    answers = [call(server, path, script.marker) for path in STREAM_ROUTES]
    assert [status for status, _, _ in answers] == [200, 200, 200, 429]
    assert 1 <= int(answers[-1][1]["Retry-After"]) <= 60
    assert error_of(answers[-1])["type"] == "rate_limited"
    assert len(script.requests) == 3  # the refused one never reached the upstream
    assert server.request("GET", "/healthz")[0] == 200  # not counted, not limited


# --- STREAM_RATE_LIMIT, in Redis ---------------------------------------------------


def test_every_worker_and_app_shares_one_limit_in_redis(
    pool: ServerPool, upstream: FakeUpstream, redis_url: str, tmp_path: Path
) -> None:
    """Two server processes (the Flask app and the Django project) count together."""
    env = {**pool.env("plain"), "STREAM_RATE_LIMIT": "4/minute", "REDIS_URL": redis_url}
    with (
        Server(FLASK_GUNICORN, env, tmp_path / "flask.log") as flask,
        Server(DJANGO_GUNICORN, env, tmp_path / "django.log") as django,
    ):
        servers = [flask, django]
        script = upstream.script(Text("ok"), Done())
        statuses = [
            call(servers[i % 2], "/completionChat", script.marker)[0] for i in range(6)
        ]
        assert statuses == [200, 200, 200, 200, 429, 429]
        assert len(script.requests) == 4
        keys = redis.Redis.from_url(redis_url).keys("*")
        assert keys, "the counters live in Redis"


def test_an_unreachable_redis_refuses_with_503_not_a_free_pass(
    pool: ServerPool, upstream: FakeUpstream, tmp_path: Path
) -> None:
    env = {
        **pool.env("plain"),
        "STREAM_RATE_LIMIT": "4/minute",
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens
    }
    with Server(FLASK_GUNICORN, env, tmp_path / "no-redis.log") as server:
        script = upstream.script(Text("ok"), Done())
        response = call(server, "/completionChat", script.marker)
        assert response[0] == 503, response[2]
        assert error_of(response)["type"] == "rate_limiter_unavailable"
        assert script.requests == []


def test_streams_still_parse_with_every_rule_on(
    pool: ServerPool, upstream: FakeUpstream
) -> None:
    server = pool.get(FLASK_GUNICORN, "guarded")
    script = upstream.script(Text("one "), Text("two"), Done())
    status, _, body = call(server, "/completionChat", script.marker, BEARER)
    assert status == 200
    assert texts(parse_sse(body)) == ["one ", "two"]


# --- The Django way: STREAM_AUTHORIZE, and error pages ---------------------------


def test_django_refuses_anonymous_users_when_sign_in_is_required(
    pool: ServerPool, upstream: FakeUpstream, tmp_path: Path
) -> None:
    env = {
        **pool.env("plain"),
        "DJANGO_STREAM_AUTHORIZE": "django_project.access.signed_in",
    }
    with Server(DJANGO_GUNICORN, env, tmp_path / "signed-in.log") as server:
        script = upstream.script(Text("never"), Done())
        for path in STREAM_ROUTES:
            response = call(server, path, script.marker)
            assert response[0] == 401, (path, response[2])
            assert error_of(response)["type"] == "unauthorized"
        assert script.requests == []
        assert server.request("GET", "/")[0] == 200


def sign_in(server: Server) -> str:
    """Sign in through the admin's login form, as a browser does; the session id."""
    _, headers, page = server.request("GET", "/admin/login/")
    status, headers, body = server.request(
        "POST",
        "/admin/login/",
        login_form(page).encode(),
        {
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"csrftoken={cookies(headers)['csrftoken'].value}",
        },
    )
    assert status == 302, body[:500]
    return cookies(headers)["sessionid"].value


def files_open_in(pid: int) -> list[str]:
    """What the process's descriptors point at (``/proc/PID/fd``)."""
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            targets.append(os.readlink(fd))
        except OSError:  # closed while listing
            continue
    return targets


def test_a_signed_in_stream_holds_no_database_connection(
    pool: ServerPool, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """The session check's connection is closed before the stream, not at its end.

    Under gevent each stream has its own connection: held to the end, a thousand
    streams would hold a thousand. SQLite shows one as an open descriptor.
    """
    env = database_with_admin(
        tmp_path,
        {
            **pool.env("plain"),
            "DJANGO_STREAM_AUTHORIZE": "django_project.access.signed_in",
            "DJANGO_SECRET_KEY": "test-secret-key-for-this-run-only-0123456789",
        },
    )
    database = env["DJANGO_DATABASE_PATH"]
    with Server(DJANGO_GUNICORN, env, tmp_path / "db.log") as server:
        session = sign_in(server)
        script = upstream.script(
            Sleep(1.2), Text("late"), Done()
        )  # under the 2 s timeout
        conn = server.connection()
        try:
            conn.request(
                "GET",
                f"/completionChat?prompt={quote(script.marker)}",
                headers={"Cookie": f"sessionid={session}"},
            )
            with conn.getresponse() as response:
                assert response.status == 200  # signed in: the session was read
                assert response.read(len(b": keep-alive\n\n")) == b": keep-alive\n\n"
                held = [
                    path
                    for path in files_open_in(server.worker_pid())
                    if path.startswith(database)
                ]
                assert held == [], "the stream holds a database connection"
                assert texts(parse_sse(response.read())) == ["late"]
        finally:
            conn.close()


@pytest.mark.django_db
def test_django_serves_a_signed_in_user(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process, with the demo model: a signed-in session streams, none gets 401."""
    from django.conf import settings
    from django.contrib.auth.models import User

    from django_project.access import signed_in
    from django_project.apps import StreamConfig
    from shared.guard import Guard

    monkeypatch.setattr(
        StreamConfig, "guard", Guard(settings.STREAM_SETTINGS, signed_in)
    )
    path = "/completionChat?prompt=hello"
    assert client.get(path, HTTP_HOST="127.0.0.1").status_code == 401
    client.force_login(User.objects.create_user("reader", password="not-used"))
    response = client.get(path, HTTP_HOST="127.0.0.1")
    assert response.status_code == 200
    body = b"".join(response.streaming_content)  # type: ignore[attr-defined]
    assert body.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("debug", ["1", ""], ids=["debug", "no-debug"])
def test_no_django_error_page_shows_the_key(
    pool: ServerPool, tmp_path: Path, debug: str
) -> None:
    """A failure inside the SDK, whose frames hold the key, even with DEBUG on."""
    from tests.conftest import FAKE_API_KEY

    env = {
        **pool.env("plain"),
        "DJANGO_DEBUG": debug,
        "DJANGO_STREAM_AUTHORIZE": "tests.django_hooks.fail_holding_the_key",
    }
    with Server(DJANGO_GUNICORN, env, tmp_path / "debug.log") as server:
        status, headers, body = get_chat(server, "hi")
    assert status == 500
    if debug:  # the debug page, with its traceback, but no key
        assert b"InvalidURL" in body and b"fail_holding_the_key" in body
    else:
        assert b"Traceback" not in body and b"InvalidURL" not in body
    assert FAKE_API_KEY.encode() not in body
    assert FAKE_API_KEY not in str(headers)
    assert FAKE_API_KEY not in server.log()


# --- STREAM_UPSTREAM_MAX_RETRIES ---------------------------------------------------


def test_the_sdk_retries_are_configurable(
    pool: ServerPool, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Retried before the first byte: 3 attempts by default, 1 with no retries."""
    env = {**pool.env("plain"), "STREAM_UPSTREAM_MAX_RETRIES": "0"}
    with Server(FLASK_GUNICORN, env, tmp_path / "no-retries.log") as no_retries:
        for server, attempts in ((pool.get(FLASK_GUNICORN), 3), (no_retries, 1)):
            # retry-after-ms keeps the SDK's back-off short
            script = upstream.script(
                status=503, headers={"retry-after-ms": "5"}, body={"error": "busy"}
            )
            assert get_chat(server, f"hi {script.marker}")[0] == 502
            assert len(script.requests) == attempts


def test_flask_applies_its_authorize_hook_to_every_streaming_route() -> None:
    """In-process, with the demo model: ``create_app(authorize=...)``."""
    from flask_app import create_app
    from shared.config import Settings

    app = create_app(
        {"STREAM_SETTINGS": Settings()},  # no key, no base URL: the demo model
        authorize=lambda request: request.headers.get("X-User") == "ada",
    )
    client = app.test_client()
    for user, status in ((None, 401), ("bob", 401), ("ada", 200)):
        headers = {"X-User": user} if user else {}
        for path in STREAM_ROUTES:
            if path in ("/completion", "/completionChat"):
                response = client.get(f"{path}?prompt=hi", headers=headers)
            else:
                payload = {"prompt": "hi", "message": "hi"}
                response = client.post(path, json=payload, headers=headers)
            assert response.status_code == status, (user, path)
            if status == 401:
                assert response.json == {
                    "error": {
                        "message": "Sign in to use this endpoint.",
                        "type": "unauthorized",
                    }
                }
            response.close()
        assert client.get("/healthz").status_code == 200


# --- Host names (FLASK_TRUSTED_HOSTS) ------------------------------------------


HOSTS = [
    "localhost", "LOCALHOST:8000", "127.0.0.1:80", "[::1]:5000", "[::1]", "[::2]",
    "localhost.", "chat.example.com", "a.chat.example.com", "evilchat.example.com",
    "rebind.attacker.example:8000", "x y", "localhost:abc", "", "[::1", "ex\u00e4mple",
]  # fmt: skip
ALLOWED = [
    ["127.0.0.1", "localhost", "[::1]"],
    [".chat.example.com"],
    ["*"],
    ["CHAT.example.com"],
    [],
]


@pytest.mark.parametrize("allowed", ALLOWED, ids=lambda hosts: ",".join(hosts))
def test_the_flask_host_rules_are_djangos(allowed: list[str]) -> None:
    """The Flask app's host check refuses exactly what Django's ALLOWED_HOSTS does."""
    from django.http.request import split_domain_port, validate_host

    from shared.guard import check_host
    from shared.streaming import StreamError

    for host in HOSTS:
        domain, _ = split_domain_port(host)
        django_allows = bool(domain) and validate_host(domain, allowed)
        try:
            check_host({"HTTP_HOST": host}, allowed)
        except StreamError as error:
            assert error.status == 400
            assert not django_allows, host
        else:
            assert django_allows, host
