"""The examples, copied into an app with only ``streaming.py`` beside them.

The Flask one runs on openai 2, which reads through ``httpx``, not ``httpx2``: the
core must classify its failures without needing the other one. ``make test`` builds
that app's environment (``.venv-openai2``, from ``tests/openai2/requirements.txt``);
the app runs as a real ``flask run`` process against the fake upstream. The Django
one is mounted by a project's ``urls.py``, as its docstring says, under
``runserver``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.client import parse_sse, texts
from tests.fake_upstream import Done, FakeUpstream, Hangup, Raw, Sleep, Text
from tests.servers import ROOT, Server, ServerKind
from tests.test_upstream_faults import RAW, ask, assert_error_event_ends

OPENAI2_PYTHON = ROOT / ".venv-openai2" / "bin" / "python"
SSE = ("GET", "/chat")
# The Flask example, plus a raw text twin and a health check for the server.
COPIED_VIEW = """from flask import Response, request

from flask_view import app, client, json_error
from streaming import TEXT_HEADERS, StreamError, open_upstream, text_stream


@app.post("/api/stream")
def text() -> Response:
    try:
        chunks = open_upstream(
            lambda: client().chat.completions.with_streaming_response.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": request.get_json()["message"]}],
                stream=True,
            )
        )
        body = text_stream(chunks)
    except StreamError as error:
        return json_error(error)
    return Response(body, headers=TEXT_HEADERS)


@app.get("/healthz")
def healthz() -> str:
    return "ok"
"""
# The smallest Django project that mounts the Django example, with a health check.
DJANGO_SETTINGS = """SECRET_KEY = "copied-view-test"
ALLOWED_HOSTS = ["127.0.0.1"]
ROOT_URLCONF = "copied_urls"
"""
DJANGO_URLS = """from django.http import HttpRequest, HttpResponse
from django.urls import path

import django_view


def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


urlpatterns = [path("chat", django_view.chat), path("healthz", healthz)]
"""
ROLE_ONLY = Raw(b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n')


@dataclass(frozen=True)
class CopiedView(ServerKind):
    """``flask run`` of ``copied_view.py`` with the openai 2 environment's python."""

    def command(self, port: int) -> list[str]:
        app = ["--app", "copied_view", "run", "--port", str(port)]
        return [str(OPENAI2_PYTHON), "-m", "flask", *app]


@dataclass(frozen=True)
class CopiedDjangoView(ServerKind):
    """``runserver`` of the project above, with this repo's python (openai 3)."""

    def command(self, port: int) -> list[str]:
        address = f"127.0.0.1:{port}"
        return [sys.executable, "-m", "django", "runserver", address, "--noreload"]


@pytest.fixture(scope="module")
def copied_app(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    if not OPENAI2_PYTHON.exists():
        pytest.skip(
            f"{OPENAI2_PYTHON} is missing: `make test` builds it (or run "
            "`make .venv-openai2/.installed`)"
        )
    folder = tmp_path_factory.mktemp("copied-view")
    shutil.copy(ROOT / "shared" / "streaming.py", folder / "streaming.py")
    shutil.copy(ROOT / "examples" / "flask_view.py", folder / "flask_view.py")
    (folder / "copied_view.py").write_text(COPIED_VIEW)
    env = {"OPENAI_API_KEY": "sk-copied-view", "OPENAI_BASE_URL": upstream.base_url}
    kind = CopiedView("copied-view-openai2", "flask", production=False)
    with Server(kind, env, folder / "server.log", cwd=folder) as server:
        yield server


@pytest.fixture(scope="module")
def copied_django_app(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("copied-django-view")
    shutil.copy(ROOT / "shared" / "streaming.py", folder / "streaming.py")
    shutil.copy(ROOT / "examples" / "django_view.py", folder / "django_view.py")
    (folder / "copied_settings.py").write_text(DJANGO_SETTINGS)
    (folder / "copied_urls.py").write_text(DJANGO_URLS)
    env = {
        "OPENAI_API_KEY": "sk-copied-view",
        "OPENAI_BASE_URL": upstream.base_url,
        "DJANGO_SETTINGS_MODULE": "copied_settings",
    }
    kind = CopiedDjangoView("copied-view-django", "django", production=False)
    with Server(kind, env, folder / "server.log", cwd=folder) as server:
        yield server


@pytest.fixture(params=["flask", "django"])
def copied_sse_app(request: pytest.FixtureRequest) -> Server:
    """Either example, each in its own copied app."""
    name = "copied_app" if request.param == "flask" else "copied_django_app"
    server: Server = request.getfixturevalue(name)
    return server


def test_the_copied_app_runs_on_openai_2(copied_app: Server) -> None:
    command = "import openai, httpx; print(openai.__version__)"
    version = subprocess.run(
        [str(OPENAI2_PYTHON), "-c", command], capture_output=True, text=True, timeout=60
    ).stdout
    assert version.startswith("2."), version


def test_a_whole_answer_streams(copied_sse_app: Server, upstream: FakeUpstream) -> None:
    script = upstream.script(Text("Hi\n"), Text("there"), Done())
    answer = ask(copied_sse_app, SSE, f"x {script.marker}")
    assert texts(parse_sse(answer.body)) == ["Hi\n", "there"]


def test_head_and_an_empty_prompt_are_refused_before_any_upstream_call(
    copied_sse_app: Server, upstream: FakeUpstream
) -> None:
    script = upstream.script(Text("never"), Done())
    status, headers, _ = copied_sse_app.request("HEAD", f"/chat?prompt={script.marker}")
    assert (status, headers["Allow"]) == (405, "GET")
    status, headers, body = copied_sse_app.request("GET", "/chat?prompt=")
    assert (status, headers["Content-Type"]) == (400, "application/json")
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert script.requests == []


def test_a_failure_after_output_is_an_error_event(
    copied_sse_app: Server, upstream: FakeUpstream
) -> None:
    script = upstream.script(Text("partial"), Sleep(0.2), Hangup())
    answer = ask(copied_sse_app, SSE, f"x {script.marker}")
    assert_error_event_ends(answer, ["partial"])
    error = json.loads(parse_sse(answer.body)[-1].data)
    assert error["type"] == "upstream_connection_error"


def test_a_failure_after_output_cuts_raw_text_off(
    copied_app: Server, upstream: FakeUpstream
) -> None:
    script = upstream.script(Text("partial"), Sleep(0.2), Hangup())
    answer = ask(copied_app, RAW, f"x {script.marker}")
    assert (answer.status, answer.body, answer.complete) == (200, b"partial", False)


@pytest.mark.parametrize("route", [SSE, RAW], ids=["sse", "raw"])
def test_a_failure_before_any_output_is_a_502(
    copied_app: Server, upstream: FakeUpstream, route: tuple[str, str]
) -> None:
    script = upstream.script(ROLE_ONLY, Sleep(0.2), Hangup())
    answer = ask(copied_app, route, f"x {script.marker}")
    assert answer.status == 502, answer
    assert json.loads(answer.body)["error"]["type"] == "upstream_connection_error"
