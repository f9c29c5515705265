"""A Django project with a real user, as an operator sets one up: ``manage.py``
commands, a superuser in a SQLite file of the test's own, the admin's login form."""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

from tests.servers import ROOT

ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "a long test password"
_CSRF_INPUT = re.compile(rb'name="csrfmiddlewaretoken" value="([^"]+)"')


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python manage.py ARGS`` from the repository root, with ``env`` added."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def database_with_admin(directory: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` with a new SQLite database in ``directory`` holding a superuser."""
    env = {**env, "DJANGO_DATABASE_PATH": str(directory / "db.sqlite3")}
    superuser = ("--noinput", "--username", ADMIN_USERNAME, "--email", "a@example.com")
    password = {"DJANGO_SUPERUSER_PASSWORD": ADMIN_PASSWORD}
    for command in [("migrate", "--noinput"), ("createsuperuser", *superuser)]:
        done = manage(*command, env={**env, **password})
        assert done.returncode == 0, done.stderr
    return env


def cookies(headers: http.client.HTTPMessage) -> SimpleCookie:
    """The cookies a response sets."""
    jar: SimpleCookie = SimpleCookie()
    for header in headers.get_all("Set-Cookie") or []:
        jar.load(header)
    return jar


def login_form(page: bytes) -> str:
    """The admin login form of ``page``, filled in as the superuser, URL-encoded."""
    token = _CSRF_INPUT.search(page)
    assert token is not None, page[:500]
    return urlencode(
        {
            "csrfmiddlewaretoken": token[1].decode(),
            "username": ADMIN_USERNAME,
            "password": ADMIN_PASSWORD,
            "next": "/admin/",
        }
    )
