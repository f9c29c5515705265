"""The README's deployment, for real: its nginx block in front of gunicorn+gevent.

nginx runs the README's ``location`` block as written (``tests/nginx.py``), on a
port that is not 80, as a page served from ``https://chat.example.com:8443`` would.
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import UPSTREAM_TIMEOUT_SECONDS, ServerPool
from tests.django_admin import cookies, database_with_admin, login_form, manage
from tests.fake_upstream import Done, FakeUpstream, Sleep, Text
from tests.nginx import Nginx
from tests.servers import DJANGO_GUNICORN, FLASK_GUNICORN, Server

TIMEOUT_SECONDS = 10.0
# Long enough that a held-back first event would show, short of the upstream timeout.
SILENCE_SECONDS = UPSTREAM_TIMEOUT_SECONDS / 2
STREAM_BODY = re.compile(
    rb"data: first\n\n(?:: keep-alive\n\n)*data: second\n\ndata: \[DONE\]\n\n"
)


@pytest.fixture(
    params=[FLASK_GUNICORN, DJANGO_GUNICORN], ids=["flask-gunicorn", "django-gunicorn"]
)
def proxied(
    request: pytest.FixtureRequest, pool: ServerPool, tmp_path: Path
) -> Iterator[tuple[Server, Nginx]]:
    """Each app under gunicorn+gevent, behind the README's nginx block."""
    server = pool.get(request.param)
    with Nginx(server.port, tmp_path) as nginx:
        yield server, nginx


def post_chat(
    nginx: Nginx, prompt: str, headers: dict[str, str]
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=TIMEOUT_SECONDS)
    conn.request(
        "POST",
        "/completions/chat",
        json.dumps({"prompt": prompt}),
        {"Content-Type": "application/json", **headers},
    )
    return conn, conn.getresponse()


def test_the_pages_own_post_streams_through_nginx_on_any_port(
    proxied: tuple[Server, Nginx], upstream: FakeUpstream
) -> None:
    """What the demo page sends: its own origin, port included, and same-origin."""
    _, nginx = proxied
    script = upstream.script(
        Text("first"), Sleep(SILENCE_SECONDS), Text("second"), Done()
    )
    same_origin = {"Origin": nginx.origin, "Sec-Fetch-Site": "same-origin"}
    conn, response = post_chat(nginx, f"x {script.marker}", same_origin)
    try:
        assert response.status == 200, (response.status, response.read(), nginx.log())
        assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        first = response.readline() + response.readline()
        assert first == b"data: first\n\n"
        assert script.requests[-1].finished_at is None, "the first event was held back"
        body = first + response.read()
    finally:
        conn.close()
    assert STREAM_BODY.fullmatch(body), body


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://127.0.0.1:1"},  # the same host on another port
    ],
    ids=["other-site", "other-port"],
)
def test_a_cross_site_post_through_nginx_is_still_refused(
    proxied: tuple[Server, Nginx], upstream: FakeUpstream, headers: dict[str, str]
) -> None:
    _, nginx = proxied
    script = upstream.script(Text("never"), Done())
    conn, response = post_chat(nginx, f"x {script.marker}", headers)
    try:
        status, body = response.status, response.read()
    finally:
        conn.close()
    assert status == 403
    assert json.loads(body)["error"]["type"] == "cross_site_request"
    assert not script.requests


# What the README's deployment sets for Django behind its TLS-terminating nginx.
TLS_PROXY_ENV = {
    "DJANGO_BEHIND_TLS_PROXY": "1",
    "DJANGO_SECRET_KEY": "test-only secret key, long enough for the deploy check " * 2,
}


@pytest.fixture(scope="module")
def django_behind_tls_nginx(
    pool: ServerPool, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Nginx]:
    """Django under gunicorn, with a superuser, behind nginx terminating TLS."""
    directory = tmp_path_factory.mktemp("tls-proxy")
    env = database_with_admin(
        directory,
        {
            **pool.env("demo"),
            **TLS_PROXY_ENV,
            # As with nginx on another machine: gunicorn itself trusts
            # X-Forwarded-Proto only from 127.0.0.1, so Django must be told to.
            "FORWARDED_ALLOW_IPS": "",
        },
    )
    with (
        Server(DJANGO_GUNICORN, env, directory / "gunicorn.log") as server,
        Nginx(server.port, directory, tls=True) as nginx,
    ):
        yield nginx


def test_admin_login_works_behind_a_tls_terminating_proxy(
    django_behind_tls_nginx: Nginx,
) -> None:
    """The project's only sign-in, through https as the README deploys it."""
    nginx = django_behind_tls_nginx
    conn = http.client.HTTPSConnection(
        "127.0.0.1",
        nginx.port,
        timeout=TIMEOUT_SECONDS,
        context=nginx.client_context(),
    )
    try:
        conn.request("GET", "/admin/login/")
        response = conn.getresponse()
        page = response.read()
        assert response.status == 200, page
        csrf_cookie = cookies(response.headers)["csrftoken"]
        conn.request(
            "POST",
            "/admin/login/",
            login_form(page),
            {
                "Content-Type": "application/x-www-form-urlencoded",
                "Cookie": f"csrftoken={csrf_cookie.value}",
                "Origin": nginx.origin,
            },
        )
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert (response.status, response.headers["Location"]) == (302, "/admin/"), body
    assert cookies(response.headers)["sessionid"]["secure"]
    assert csrf_cookie["secure"]


def test_the_deploy_check_finds_the_cookies_secure_behind_a_tls_proxy() -> None:
    done = manage("check", "--deploy", env=TLS_PROXY_ENV)
    report = done.stdout + done.stderr
    assert "security.W012" not in report and "security.W016" not in report, report
    assert "SESSION_COOKIE_SECURE" not in report, report
