"""The views copied into brand-new apps exactly as README.md's "Copy a view" says.

The README's console blocks are found by their ``<!-- copy: NAME -->`` markers and
their ``$`` lines run as written, with bash: a fresh virtualenv from the install
line, then, beside a new Flask ``app.py`` and a new ``startproject``, the file copies
and the lines the README adds to ``app.py`` and ``urls.py``. The servers are the
README's own commands (on a free port), run from the project's folder against the
demo model over HTTP (``python -m shared.demo_server``), whose log counts the
upstream calls and says when a client left. Every check goes through HTTP.

Nothing the README does not say is done to the copies, but one addition: a view
broken on purpose, in its own file and registered by its own line in ``app.py``, to
see how a bug in a copied view is reported. The Flask view runs once more on
openai 2 (``.venv-openai2``, built by ``make test``) against the fake upstream,
whose scripts break a stream at chosen points.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

from shared.demo import _TOKEN, demo_turn
from shared.streaming import sse_event
from tests.client import parse_sse, texts
from tests.fake_upstream import Done, FakeUpstream, Hangup, Raw, Sleep, Text
from tests.servers import ROOT, DemoUpstream, Server, ServerKind, free_port
from tests.test_upstream_faults import RAW, ask, assert_error_event_ends

INSTALL_TIMEOUT_SECONDS = 600.0
# The install line's time, and the start of the servers it is built for.
pytestmark = [pytest.mark.servers, pytest.mark.timeout(INSTALL_TIMEOUT_SECONDS + 120)]

README = ROOT / "README.md"
OPENAI2_VENV = ROOT / ".venv-openai2"
# What pip says when it can't reach its index (each retry, then the failure).
UNREACHABLE_INDEX = re.compile(
    r"connection broken by|Failed to establish a new connection"
    r"|Temporary failure in name resolution|Network is unreachable"
    r"|ConnectTimeoutError|Read timed out"
)
NEW_FLASK_APP = "from flask import Flask\n\napp = Flask(__name__)\n"
BUGGY_VIEW_LINES = (
    "\n"
    "# Not the README's: this test's view with a typo, to see how a bug is reported.\n"
    "import buggy_view  # noqa: E402\n"
    "\n"
    "app.register_blueprint(buggy_view.bp)  # GET /buggy?prompt=...\n"
)
# The raw text twin of the Flask view, for the openai 2 checks (not the README's).
TEXT_VIEW = '''"""POST /api/stream {"message": ...}: the answer as raw text."""

from flask import Blueprint, Response, request

from flask_view import client, json_error
from streaming import TEXT_HEADERS, StreamError, open_upstream, text_stream

bp = Blueprint("text", __name__)


@bp.post("/api/stream")
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
'''
TEXT_VIEW_LINES = (
    "\n# Not the README's: the raw text route of the openai 2 checks.\n"
    "import text_view  # noqa: E402\n\napp.register_blueprint(text_view.bp)\n"
)
# Variables of this test session that a new shell would not have.
SESSION_PREFIXES = ("DJANGO_", "OPENAI_", "STREAM_", "PYTEST_", "PYTHON")
SESSION_NAMES = ("VIRTUAL_ENV",)
PROMPT = 'Say "hi" to a copied view,\nplease ✓'
CORS_ORIGIN = "http://allowed.example"
SILENCE_SECONDS = 60
# Short, so that the first keep-alive (and with it the headers) comes soon; where
# the client's socket is watched, longer than the bound on noticing that it left, so
# that a keep-alive write can't be what notices.
SILENT_KEEPALIVE_SECONDS = 1.0
WATCHED_KEEPALIVE_SECONDS = 3.0
GRACEFUL_TIMEOUT_SECONDS = 4
CANCEL_BOUND_SECONDS = 1.0  # the contract's, under gunicorn and flask run
MARGIN_SECONDS = 0.5  # a busy 2-core machine
CHAT_CALL = re.compile(r'"POST /v1/chat/completions" 200')
CLIENT_LEFT = "answer ended: client left after 0 events"
BAD_SETTING = "Bad setting: STREAM_KEEPALIVE_SECONDS must be a number above 0"
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"


# --- The README's blocks --------------------------------------------------------------


def readme_block(name: str) -> str:
    """The fenced block right after ``<!-- copy: NAME -->`` in README.md."""
    pattern = rf"<!-- copy: {re.escape(name)} -->\n+```[\w-]*\n(.*?)^```"
    match = re.search(pattern, README.read_text(), re.DOTALL | re.MULTILINE)
    assert match, f"README.md has no block marked <!-- copy: {name} -->"
    return match.group(1)


def dollar_lines(name: str) -> list[str]:
    """The commands of a console block: its ``$`` lines, without the prompt."""
    lines = readme_block(name).splitlines()
    commands = [line.removeprefix("$ ") for line in lines if line.startswith("$ ")]
    assert commands, f"the {name!r} block has no '$ ' line"
    return commands


def readme_line(name: str, needle: str) -> str:
    """The one command of block ``name`` that contains ``needle``."""
    found = [line for line in dollar_lines(name) if needle in line]
    assert len(found) == 1, f"not one {needle!r} line in the {name!r} block: {found}"
    return found[0]


def readme_command(name: str, needle: str) -> tuple[str, ...]:
    """:func:`readme_line` as argv."""
    return tuple(shlex.split(readme_line(name, needle), comments=True))


def with_port(argv: Sequence[str], port: int) -> list[str]:
    """``argv`` with its port (``8000``, or the one in ``127.0.0.1:8000``) replaced."""
    replaced = [re.sub(r"^((?:[\w.]+:)?)\d{2,5}$", rf"\g<1>{port}", a) for a in argv]
    changed = [a for a, b in zip(argv, replaced, strict=True) if a != b]
    assert len(changed) == 1, f"not one port in {argv}"
    return replaced


def try_env(base_url: str) -> dict[str, str]:
    """The variables the README's ``try`` block exports, with ``base_url``."""
    (export,) = [line for line in dollar_lines("try") if line.startswith("export ")]
    variables = dict(item.split("=", 1) for item in shlex.split(export)[1:])
    assert set(variables) == {"OPENAI_BASE_URL", "OPENAI_API_KEY"}, export
    return variables | {"OPENAI_BASE_URL": base_url}


def fresh_shell() -> dict[str, str]:
    """This process's environment without the test session's own variables."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(SESSION_PREFIXES) and name not in SESSION_NAMES
    }


def run_lines(
    name: str, cwd: Path, env: Mapping[str, str], timeout: float = 120.0
) -> None:
    """Run block ``name``'s ``$`` lines with bash, one by one; fail on any failure."""
    for line in dollar_lines(name):
        returncode, output = run_bounded(["bash", "-c", line], cwd, env, timeout)
        assert returncode == 0, f"`{line}` failed ({returncode}):\n{output}"


def run_bounded(
    argv: Sequence[str], cwd: Path, env: Mapping[str, str], timeout: float
) -> tuple[int | None, str]:
    """Exit status (``None`` if killed at ``timeout``) and output of ``argv``.

    The command runs in a session of its own, killed whole at the deadline: a
    command line's children (pip's, gunicorn's workers) must not outlive it.
    """
    with subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    ) as process:
        try:
            output, _ = process.communicate(timeout=timeout)
            returncode: int | None = process.returncode
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            returncode = None
    return returncode, output.decode(errors="replace")


# --- The copies -----------------------------------------------------------------------


def install(folder: Path) -> None:
    """The README's install lines, in ``folder``, with this Python as ``python3``.

    Skipped only when pip can't reach its index; any other failure fails.
    """
    shims = folder.parent / f"{folder.name}-bin"
    shims.mkdir()
    (shims / "python3").symlink_to(sys.executable)
    env = fresh_shell()
    env["PATH"] = f"{shims}{os.pathsep}{env.get('PATH', '')}"
    deadline = time.monotonic() + INSTALL_TIMEOUT_SECONDS
    for line in dollar_lines("install"):
        left = max(deadline - time.monotonic(), 1.0)
        returncode, output = run_bounded(["bash", "-c", line], folder, env, left)
        if returncode == 0:
            continue
        if UNREACHABLE_INDEX.search(output):
            pytest.skip(f"pip can't reach its package index for `{line}`:\n{output}")
        verdict = (
            "took over the time" if returncode is None else f"failed ({returncode})"
        )
        pytest.fail(f"`{line}` {verdict}:\n{output}")


def buggy_view(flask_view: str) -> str:
    """The README's Flask view on its own route, with a typo in ``create(...)``."""
    for old, new in (
        ('Blueprint("chat"', 'Blueprint("buggy"'),
        ('.get("/chat")', '.get("/buggy")'),
        ("stream_options=", "stream_option="),
    ):
        assert flask_view.count(old) == 1, f"no single {old!r} in the Flask view"
        flask_view = flask_view.replace(old, new)
    return flask_view


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new project folder with the venv, a new Flask app and a new Django project,
    the views copied into both as the README says, and ``migrate`` run."""
    folder = tmp_path_factory.mktemp("project")
    install(folder)
    shell = fresh_shell() | {"REPO": str(ROOT)}
    (folder / "app.py").write_text(f"{NEW_FLASK_APP}\n{readme_block('flask-app')}")
    run_lines("flask-files", folder, shell)
    run_lines("django-files", folder, shell)
    run_lines("use-chat-files", folder, shell)
    with (folder / "app.py").open("a") as app:
        app.write(f"\n{readme_block('use-chat-flask-app')}")
    with (folder / "mysite" / "urls.py").open("a") as urls:
        urls.write(f"\n{readme_block('django-urls')}")
        urls.write(f"\n{readme_block('use-chat-django-urls')}")
    (folder / "buggy_view.py").write_text(
        buggy_view((folder / "flask_view.py").read_text())
    )
    with (folder / "app.py").open("a") as app:
        app.write(BUGGY_VIEW_LINES)
    migrate = readme_line("deploy", "migrate")
    returncode, output = run_bounded(["bash", "-c", migrate], folder, shell, 120)
    assert returncode == 0, f"`{migrate}` failed:\n{output}"
    return folder


# --- The servers ----------------------------------------------------------------------


@dataclass(frozen=True)
class ReadmeCommand(ServerKind):
    """A server command of the README, on the port it is given."""

    argv: tuple[str, ...] = ()

    def command(self, port: int) -> list[str]:
        return with_port(self.argv, port)


@dataclass(frozen=True)
class Setup:
    """One server of the copied project: the README's line that starts it (found by
    ``needle`` in block ``block``), its upstream, and its own variables."""

    block: str
    needle: str
    framework: str  # "flask" or "django"
    upstream: str  # "demo", or "silent": 60 s before the first token
    env: Mapping[str, str] = field(default_factory=dict)
    api_key: bool = True

    def kind(self, name: str) -> ReadmeCommand:
        return readme_server(name, self.block, self.needle, self.framework)


def readme_server(name: str, block: str, needle: str, framework: str) -> ReadmeCommand:
    """The server of block ``block``'s line with ``needle``; gunicorn if deployed."""
    argv = readme_command(block, needle)
    return ReadmeCommand(name, framework, block == "deploy", argv=argv)


FLASK_RUN = ("try", "flask --app", "flask")
RUNSERVER = ("try", "manage.py runserver", "django")
FLASK_GUNICORN = ("deploy", "app:app", "flask")
DJANGO_GUNICORN = ("deploy", "mysite.wsgi", "django")
LISTED = {"STREAM_CORS_ORIGINS": CORS_ORIGIN}
SILENT = {"STREAM_KEEPALIVE_SECONDS": str(SILENT_KEEPALIVE_SECONDS)}
WATCHED = {"STREAM_KEEPALIVE_SECONDS": str(WATCHED_KEEPALIVE_SECONDS)}
SETUPS = {
    "flask-run": Setup(*FLASK_RUN, "demo", LISTED),
    "runserver": Setup(*RUNSERVER, "demo", LISTED),
    "flask-gunicorn": Setup(*FLASK_GUNICORN, "demo", LISTED),
    "django-gunicorn": Setup(*DJANGO_GUNICORN, "demo", LISTED),
    "flask-run-silent": Setup(*FLASK_RUN, "silent", WATCHED),
    "runserver-silent": Setup(*RUNSERVER, "silent", SILENT),
    "django-gunicorn-silent": Setup(*DJANGO_GUNICORN, "silent", WATCHED),
    "flask-run-no-key": Setup(*FLASK_RUN, "demo", api_key=False),
    # Started by the SIGTERM test, which stops it.
    "flask-gunicorn-sigterm": Setup(
        *FLASK_GUNICORN,
        "silent",
        {**SILENT, "GRACEFUL_TIMEOUT": str(GRACEFUL_TIMEOUT_SECONDS)},
    ),
}
ALL_FOUR = ["flask-run", "runserver", "flask-gunicorn", "django-gunicorn"]


class Copies:
    """The copied project's servers, each started on first use and kept for the
    module; and the two demo upstreams they talk to."""

    def __init__(
        self, project: Path, upstreams: Mapping[str, DemoUpstream], logs: Path
    ) -> None:
        self.project = project
        self.upstreams = upstreams
        self._logs = logs
        self._servers: dict[str, Server] = {}

    def server(self, name: str) -> Server:
        if name not in self._servers:
            self._servers[name] = self.start(name)
        return self._servers[name]

    def start(self, name: str) -> Server:
        """A new server of setup ``name``: the caller stops it."""
        setup = SETUPS[name]
        server = Server(
            setup.kind(name),
            self.env(name),
            self._logs / f"{name}.log",
            cwd=self.project,
            ready_status=404,
            inherit_env=False,
        )
        return server.start()

    def env(self, name: str) -> dict[str, str]:
        """A new shell's variables, the README's exports and the setup's own; one
        gunicorn worker, not one per core."""
        setup = SETUPS[name]
        exports = try_env(self.upstreams[setup.upstream].base_url)
        if not setup.api_key:
            del exports["OPENAI_API_KEY"]
        return fresh_shell() | exports | {"WEB_CONCURRENCY": "1", **setup.env}

    def stop(self) -> None:
        """Every server at once: each waits out its own graceful shutdown."""
        for server in self._servers.values():
            server.begin_stopping()
        for server in self._servers.values():
            server.stop()


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("copy-logs")


@pytest.fixture(scope="module")
def demo(logs: Path) -> Iterator[DemoUpstream]:
    """The demo model, a little faster than its default pace."""
    with DemoUpstream(logs / "demo.log", ("--token-delay", "0.005")) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def silent(logs: Path) -> Iterator[DemoUpstream]:
    """The demo model thinking for a minute before its first token."""
    args = ("--silence", str(SILENCE_SECONDS))
    with DemoUpstream(logs / "silent.log", args) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def copies(
    project: Path, demo: DemoUpstream, silent: DemoUpstream, logs: Path
) -> Iterator[Copies]:
    pool = Copies(project, {"demo": demo, "silent": silent}, logs)
    yield pool
    pool.stop()


def chat_calls(upstream: DemoUpstream, since: int) -> int:
    """How many chat completions the upstream was asked for since ``since``."""
    return len(CHAT_CALL.findall(upstream.log()[since:]))


def expected_sse(prompt: str) -> bytes:
    """The demo model's answer to ``prompt`` as the view must send it: its thinking
    as reasoning events and its text as text events, a token each, the finish
    reason, the usage (thinking tokens count), then ``[DONE]``."""
    turn = demo_turn([{"role": "user", "content": prompt}])
    thinking = _TOKEN.findall(turn.reasoning)
    tokens = _TOKEN.findall(turn.text)
    prompt_tokens, completion_tokens = len(prompt.split()), len(thinking + tokens)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return (
        b"".join(sse_event(token, "reasoning") for token in thinking)
        + b"".join(map(sse_event, tokens))
        + f'event: finish\ndata: {{"reason": "{turn.finish}"}}\n\n'.encode()
        + f"event: usage\ndata: {json.dumps(usage)}\n\n".encode()
        + b"data: [DONE]\n\n"
    )


def post_use_chat(
    server: Server, parts: list[dict[str, str]], headers: dict[str, str] | None = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """What ``useChat`` posts: one user message of ``parts``."""
    message = {"id": "u1", "role": "user", "parts": parts}
    body = {"id": "c1", "trigger": "submit-message", "messages": [message]}
    headers = {"Content-Type": "application/json", **(headers or {})}
    return server.request("POST", "/api/chat", json.dumps(body).encode(), headers)


def get_chat(
    server: Server, headers: dict[str, str] | None = None, path: str = "/chat"
) -> tuple[int, http.client.HTTPMessage, bytes]:
    return server.request("GET", f"{path}?prompt={quote(PROMPT)}", headers=headers)


# --- The install ----------------------------------------------------------------------


def test_the_fresh_venv_has_openai_3(project: Path) -> None:
    command = [".venv/bin/python", "-c", "import openai; print(openai.__version__)"]
    returncode, version = run_bounded(command, project, fresh_shell(), 60)
    assert returncode == 0, version
    assert version.startswith("3."), version


# --- Streaming, under the four servers ------------------------------------------------


@pytest.mark.parametrize("name", ALL_FOUR)
def test_the_answer_streams_byte_for_byte(copies: Copies, name: str) -> None:
    status, headers, body = get_chat(copies.server(name))
    assert status == 200, body
    assert headers["Content-Type"] == SSE_CONTENT_TYPE
    assert headers["Cache-Control"] == "no-cache"
    assert body == expected_sse(PROMPT)


@pytest.mark.parametrize("name", ALL_FOUR)
def test_the_use_chat_view_answers_in_the_ui_message_stream(
    copies: Copies, name: str
) -> None:
    status, headers, body = post_use_chat(
        copies.server(name), [{"type": "text", "text": PROMPT}]
    )
    assert status == 200, body
    assert headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert headers["Content-Type"] == SSE_CONTENT_TYPE
    frames = body.split(b"\n\n")
    assert frames[-2:] == [b"data: [DONE]", b""]
    parts = [json.loads(frame.removeprefix(b"data: ")) for frame in frames[:-2]]
    turn = demo_turn([{"role": "user", "content": PROMPT}])
    deltas = {
        kind: "".join(p["delta"] for p in parts if p["type"] == f"{kind}-delta")
        for kind in ("reasoning", "text")
    }
    assert deltas == {"reasoning": turn.reasoning, "text": turn.text}
    assert [p["type"] for p in parts[:2]] == ["start", "start-step"]
    assert parts[-2:-1] == [{"type": "finish-step"}]
    assert parts[-1]["messageMetadata"]["finishReason"] == turn.finish


@pytest.mark.parametrize("name", ALL_FOUR)
def test_the_use_chat_view_refuses_before_any_upstream_call(
    copies: Copies, demo: DemoUpstream, name: str
) -> None:
    server = copies.server(name)
    since = demo.log_size()
    text = {"type": "text", "text": PROMPT}
    status, _, body = post_use_chat(server, [{"type": "file", "url": "x"}])
    assert (status, "'file'" in json.loads(body)["error"]["message"]) == (400, True)
    status, _, body = post_use_chat(server, [text], {"Content-Type": "text/plain"})
    assert status == 415, body
    status, _, body = post_use_chat(server, [text], {"Sec-Fetch-Site": "cross-site"})
    assert status == 403, body
    assert chat_calls(demo, since) == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
    ],
    ids=["origin", "sec-fetch-site", "both"],
)
@pytest.mark.parametrize("name", ALL_FOUR)
def test_another_site_is_refused_before_any_upstream_call(
    copies: Copies, demo: DemoUpstream, name: str, headers: dict[str, str]
) -> None:
    server = copies.server(name)
    since = demo.log_size()
    status, response_headers, body = get_chat(server, headers)
    assert status == 403, body
    assert response_headers["Content-Type"] == "application/json"
    assert json.loads(body)["error"]["type"] == "cross_site_request"
    assert chat_calls(demo, since) == 0


@pytest.mark.parametrize("name", ALL_FOUR)
def test_the_same_site_and_a_listed_origin_get_the_answer(
    copies: Copies, name: str
) -> None:
    server = copies.server(name)
    for origin in (f"http://127.0.0.1:{server.port}", CORS_ORIGIN):
        status, _, body = get_chat(server, {"Origin": origin})
        assert (status, body) == (200, expected_sse(PROMPT)), origin


@pytest.mark.parametrize("name", ALL_FOUR)
def test_head_is_refused_before_any_upstream_call(
    copies: Copies, demo: DemoUpstream, name: str
) -> None:
    since = demo.log_size()
    path = f"/chat?prompt={quote(PROMPT)}"
    status, headers, _ = copies.server(name).request("HEAD", path)
    assert (status, headers["Allow"]) == (405, "GET")
    assert chat_calls(demo, since) == 0


# --- A client that leaves, a shutdown -------------------------------------------------


def open_silent_stream(server: Server) -> socket.socket:
    """A GET /chat on a raw socket, read until the first keep-alive: the response
    has begun, the upstream is thinking."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    head = f"GET /chat?prompt=think HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n"
    sock.sendall(head.encode())
    received = b""
    while b": keep-alive" not in received:
        data = sock.recv(65536)
        assert data, f"the server closed the stream early: {received!r}"
        received += data
    assert received.startswith(b"HTTP/1.1 200 "), received
    return sock


@pytest.mark.parametrize(
    ("name", "bound"),
    [
        ("flask-run-silent", CANCEL_BOUND_SECONDS),
        ("django-gunicorn-silent", CANCEL_BOUND_SECONDS),
        # At a keep-alive write: the first to a closed socket succeeds, the next fails.
        ("runserver-silent", 2 * SILENT_KEEPALIVE_SECONDS + CANCEL_BOUND_SECONDS),
    ],
)
def test_a_client_leaving_during_silence_stops_the_model(
    copies: Copies, silent: DemoUpstream, name: str, bound: float
) -> None:
    server = copies.server(name)
    since = silent.log_size()
    sock = open_silent_stream(server)
    try:
        assert chat_calls(silent, since) == 1
        assert CLIENT_LEFT not in silent.log()[since:]
    finally:
        left_at = time.monotonic()
        sock.close()
    silent.wait_for_log(CLIENT_LEFT, since, timeout=bound + 10)
    assert time.monotonic() - left_at <= bound + MARGIN_SECONDS


def test_sigterm_ends_an_open_stream_with_an_error_event(copies: Copies) -> None:
    """The copied gunicorn.conf.py ends the streams it can't wait for."""
    server = copies.start("flask-gunicorn-sigterm")
    try:
        body, complete = stream_through_sigterm(server)
        assert complete, f"the stream was cut: {body!r}"
        assert body.endswith(b"\n\n"), body
        events = parse_sse(body)
        assert events[-1].event == "error", body
        assert json.loads(events[-1].data)["type"] == "server_shutdown"
        assert server.process is not None
        assert server.process.wait(GRACEFUL_TIMEOUT_SECONDS + 5) == 0
    finally:
        server.stop()
    for failure in ("Traceback", "ModuleNotFoundError"):
        assert failure not in server.log(), server.log()


def stream_through_sigterm(server: Server) -> tuple[bytes, bool]:
    """Open a stream, SIGTERM gunicorn's master once its first keep-alive came:
    the body read to its end, and whether that end was a proper one."""
    assert server.process is not None
    conn = server.connection(timeout=GRACEFUL_TIMEOUT_SECONDS + 5)
    with closing(conn):
        conn.request("GET", "/chat?prompt=think")
        with conn.getresponse() as response:
            assert response.status == 200
            first = response.read1()
            assert first == b": keep-alive\n\n"
            server.process.send_signal(signal.SIGTERM)
            try:
                return first + response.read(), True
            except http.client.IncompleteRead as cut:
                return first + cut.partial, False


# --- Mistakes -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["flask-run", "flask-gunicorn"])
def test_a_bug_in_a_view_is_a_500_with_its_traceback(copies: Copies, name: str) -> None:
    server = copies.server(name)
    since = len(server.log())
    status, _, body = get_chat(server, path="/buggy")
    assert status == 500, body
    assert b"The upstream failed" not in body
    log = wait_for_server_log(server, since, "TypeError")
    assert "Traceback" in log and "stream_option" in log, log
    assert "The upstream failed" not in log


def test_a_missing_api_key_is_a_500_with_the_sdk_message_the_readme_quotes(
    copies: Copies, demo: DemoUpstream
) -> None:
    server = copies.server("flask-run-no-key")
    since, demo_since = len(server.log()), demo.log_size()
    status, _, body = get_chat(server)
    assert status == 500, body
    wait_for_server_log(server, since, readme_missing_key_message())
    assert chat_calls(demo, demo_since) == 0


def readme_missing_key_message() -> str:
    """What the README says the view logs when ``OPENAI_API_KEY`` is unset."""
    text = " ".join(README.read_text().split())
    match = re.search(
        r"without it the view answers `500` and logs the SDK's \"(.+?)\"", text
    )
    assert match, "the README no longer says what a missing key logs"
    return match.group(1)


@pytest.mark.parametrize("name", ["flask-run", "flask-gunicorn"])
def test_a_bad_setting_stops_the_server_before_it_listens(
    copies: Copies, name: str
) -> None:
    setup = SETUPS[name]
    argv = setup.kind(name).command(free_port())
    env = copies.env(name) | {"STREAM_KEEPALIVE_SECONDS": "abc"}
    returncode, output = run_bounded(argv, copies.project, env, timeout=30)
    assert returncode not in (0, None), output
    lines = [line for line in output.splitlines() if "Bad setting" in line]
    assert len(lines) == 1, output
    assert lines[0].startswith(BAD_SETTING) and lines[0].endswith("got 'abc'"), output
    assert "Traceback" not in output and "Listening at" not in output, output


def wait_for_server_log(
    server: Server, since: int, needle: str, timeout: float = 5.0
) -> str:
    """The server's log after ``since`` once it has ``needle``."""
    deadline = time.monotonic() + timeout
    while needle not in (log := server.log()[since:]):
        assert time.monotonic() < deadline, f"no {needle!r} in the log:\n{log}"
        time.sleep(0.05)
    return log


# --- The Flask view on openai 2 -------------------------------------------------------

SSE = ("GET", "/chat")
ROLE_ONLY = Raw(b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n')


@pytest.fixture(scope="module")
def openai2_app(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A new Flask app with the view, as the README says, in the openai 2 venv (as
    the project's ``.venv``), under the README's ``flask run``."""
    if not (OPENAI2_VENV / "bin" / "python").exists():
        pytest.skip(
            f"{OPENAI2_VENV} is missing: `make test` builds it (or run "
            "`make .venv-openai2/.installed`)"
        )
    folder = tmp_path_factory.mktemp("openai2-project")
    (folder / ".venv").symlink_to(OPENAI2_VENV)
    (folder / "app.py").write_text(f"{NEW_FLASK_APP}\n{readme_block('flask-app')}")
    run_lines("flask-files", folder, fresh_shell() | {"REPO": str(ROOT)})
    (folder / "text_view.py").write_text(TEXT_VIEW)
    with (folder / "app.py").open("a") as app:
        app.write(TEXT_VIEW_LINES)
    kind = readme_server("openai2-flask-run", *FLASK_RUN)
    env = fresh_shell() | try_env(upstream.base_url)
    log = folder.parent / f"{folder.name}.log"
    server = Server(kind, env, log, cwd=folder, ready_status=404, inherit_env=False)
    with server:
        yield server


def test_the_openai_2_app_runs_on_openai_2(openai2_app: Server) -> None:
    command = [".venv/bin/python", "-c", "import openai; print(openai.__version__)"]
    returncode, version = run_bounded(command, openai2_app.cwd, fresh_shell(), 60)
    assert returncode == 0, version
    assert version.startswith("2."), version


def test_on_openai_2_a_whole_answer_streams(
    openai2_app: Server, upstream: FakeUpstream
) -> None:
    script = upstream.script(Text("Hi\n"), Text("there"), Done())
    answer = ask(openai2_app, SSE, f"x {script.marker}")
    assert texts(parse_sse(answer.body)) == ["Hi\n", "there"]


def test_on_openai_2_head_and_an_empty_prompt_are_refused_before_any_upstream_call(
    openai2_app: Server, upstream: FakeUpstream
) -> None:
    script = upstream.script(Text("never"), Done())
    status, headers, _ = openai2_app.request("HEAD", f"/chat?prompt={script.marker}")
    assert (status, headers["Allow"]) == (405, "GET")
    status, headers, body = openai2_app.request("GET", "/chat?prompt=")
    assert (status, headers["Content-Type"]) == (400, "application/json")
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert script.requests == []


def test_on_openai_2_a_failure_after_output_is_an_error_event(
    openai2_app: Server, upstream: FakeUpstream
) -> None:
    script = upstream.script(Text("partial"), Sleep(0.2), Hangup())
    answer = ask(openai2_app, SSE, f"x {script.marker}")
    assert_error_event_ends(answer, ["partial"])
    error = json.loads(parse_sse(answer.body)[-1].data)
    assert error["type"] == "upstream_connection_error"


def test_on_openai_2_a_failure_after_output_cuts_raw_text_off(
    openai2_app: Server, upstream: FakeUpstream
) -> None:
    script = upstream.script(Text("partial"), Sleep(0.2), Hangup())
    answer = ask(openai2_app, RAW, f"x {script.marker}")
    assert (answer.status, answer.body, answer.complete) == (200, b"partial", False)


@pytest.mark.parametrize("route", [SSE, RAW], ids=["sse", "raw"])
def test_on_openai_2_a_failure_before_any_output_is_a_502(
    openai2_app: Server, upstream: FakeUpstream, route: tuple[str, str]
) -> None:
    script = upstream.script(ROLE_ONLY, Sleep(0.2), Hangup())
    answer = ask(openai2_app, route, f"x {script.marker}")
    assert answer.status == 502, answer
    assert json.loads(answer.body)["error"]["type"] == "upstream_connection_error"
