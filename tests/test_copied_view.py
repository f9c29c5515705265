"""The Flask example, copied into an app on openai 2 with only ``streaming.py``.

openai 2 reads through ``httpx``, not ``httpx2``: the core must classify its
failures without needing the other one. ``make test`` builds that app's
environment (``.venv-openai2``, from ``tests/openai2/requirements.txt``); the app
runs as a real ``flask run`` process against the fake upstream.
"""

from __future__ import annotations

import json
import shutil
import subprocess
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
ROLE_ONLY = Raw(b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n')


@dataclass(frozen=True)
class CopiedView(ServerKind):
    """``flask run`` of ``copied_view.py`` with the openai 2 environment's python."""

    def command(self, port: int) -> list[str]:
        app = ["--app", "copied_view", "run", "--port", str(port)]
        return [str(OPENAI2_PYTHON), "-m", "flask", *app]


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


def test_the_copied_app_runs_on_openai_2(copied_app: Server) -> None:
    command = "import openai, httpx; print(openai.__version__)"
    version = subprocess.run(
        [str(OPENAI2_PYTHON), "-c", command], capture_output=True, text=True, timeout=60
    ).stdout
    assert version.startswith("2."), version


def test_a_whole_answer_streams(copied_app: Server, upstream: FakeUpstream) -> None:
    script = upstream.script(Text("Hi\n"), Text("there"), Done())
    answer = ask(copied_app, SSE, f"x {script.marker}")
    assert texts(parse_sse(answer.body)) == ["Hi\n", "there"]


def test_a_failure_after_output_is_an_error_event(
    copied_app: Server, upstream: FakeUpstream
) -> None:
    script = upstream.script(Text("partial"), Sleep(0.2), Hangup())
    answer = ask(copied_app, SSE, f"x {script.marker}")
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
