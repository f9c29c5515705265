"""Start the apps as real server processes, the way the contract says to run them.

Each server is started once per test session (``conftest.py``) and stopped by its
PID at the end. Its output goes to a file that tests read (to check that no secret
reaches a log line).
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0


@dataclass(frozen=True)
class ServerKind:
    """One of the contract's four ways to serve an app."""

    name: str
    framework: str  # "flask" or "django"
    production: bool  # gunicorn+gevent, or the framework's development server
    extra_args: tuple[str, ...] = ()
    config: str = "gunicorn.conf.py"  # gunicorn's -c file, from the repository root

    def command(self, port: int) -> list[str]:
        if not self.production:
            if self.framework == "flask":
                return [
                    str(BIN / "flask"),
                    "--app",
                    "flask_app",
                    "run",
                    "--port",
                    str(port),
                    *self.extra_args,
                ]
            return [
                sys.executable,
                "manage.py",
                "runserver",
                f"127.0.0.1:{port}",
                "--noreload",
            ]
        target = (
            "flask_app:create_app()"
            if self.framework == "flask"
            else "django_project.wsgi"
        )
        return [
            str(BIN / "gunicorn"),
            "-c",
            self.config,
            "-b",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            *self.extra_args,
            target,
        ]


FLASK_DEV = ServerKind("flask-run", "flask", production=False)
DJANGO_DEV = ServerKind("django-runserver", "django", production=False)
FLASK_GUNICORN = ServerKind("flask-gunicorn", "flask", production=True)
DJANGO_GUNICORN = ServerKind("django-gunicorn", "django", production=True)
ALL_KINDS = (FLASK_DEV, DJANGO_DEV, FLASK_GUNICORN, DJANGO_GUNICORN)
# The app imported in gunicorn's master before the fork: the gevent/TLS trap.
FLASK_GUNICORN_PRELOAD = ServerKind(
    "flask-gunicorn-preload", "flask", production=True, extra_args=("--preload",)
)
DJANGO_GUNICORN_PRELOAD = ServerKind(
    "django-gunicorn-preload", "django", production=True, extra_args=("--preload",)
)
# A worker timeout far shorter than a stream: gevent workers must not cut it.
FLASK_GUNICORN_SHORT_TIMEOUT = ServerKind(
    "flask-gunicorn-timeout-1s", "flask", production=True, extra_args=("--timeout", "1")
)


@dataclass
class Server:
    """A running server process on 127.0.0.1."""

    kind: ServerKind
    env: dict[str, str]
    log_path: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    # The server speaks TLS itself (e.g. gunicorn --certfile): how to trust it.
    tls: ssl.SSLContext | None = field(default=None, repr=False)
    cwd: Path = ROOT  # where the command runs
    # What GET /healthz answers once the app is up: 404 in an app without that route.
    ready_status: int = 200
    # False: the process gets ``env`` alone, as from a fresh shell (no variable of
    # this test session, such as pytest-django's DJANGO_SETTINGS_MODULE).
    inherit_env: bool = True

    @property
    def name(self) -> str:
        return self.kind.name

    def start(self) -> Server:
        self.port = free_port()
        inherited = os.environ if self.inherit_env else {}
        env = {**inherited, **self.env, "PYTHONUNBUFFERED": "1"}
        for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
            if name not in self.env:
                env.pop(name, None)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.kind.command(self.port),
                cwd=self.cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log()}")
            try:
                if self.request("GET", "/healthz")[0] == self.ready_status:
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"{self.name} did not answer within {START_TIMEOUT_SECONDS}s"
        )

    def __enter__(self) -> Server:
        """``with Server(...) as server``: started now, stopped at the end."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period: only the process we started."""
        stop_process(self.process, signal.SIGTERM)

    def begin_stopping(self) -> None:
        """SIGTERM without waiting: servers stopped together take one grace period."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def connection(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        if self.tls is not None:
            return http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=timeout, context=self.tls
            )
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One whole request: status, headers and the body read to its end."""
        conn = self.connection(timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            with conn.getresponse() as response:  # closed even if the body is cut off
                return response.status, response.headers, response.read()
        finally:
            conn.close()

    def worker_pid(self) -> int:
        """The PID that serves requests: gunicorn's single worker, or the server."""
        assert self.process is not None
        if not self.kind.production:
            return self.process.pid
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return int(children.read_text().split()[0])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[bytes] | None, stop: signal.Signals) -> None:
    """``stop``, then SIGKILL after a grace period, to a process a test started."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(stop)
    wait_or_kill(process)


def wait_or_kill(process: subprocess.Popen[bytes]) -> None:
    """Wait a grace period for a process told to stop, then SIGKILL it."""
    try:
        process.wait(STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT_SECONDS)


@dataclass
class DemoUpstream:
    """``python -m shared.demo_server`` as a process: the offline model over HTTP.

    Its log (stderr) has one line per request and per streamed answer's end; tests
    read it to count upstream calls and to see when a client left.
    """

    log_path: Path
    args: tuple[str, ...] = ()  # e.g. ("--token-delay", "0.05")
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> DemoUpstream:
        self.port = free_port()
        module = [sys.executable, "-m", "shared.demo_server"]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*module, "--port", str(self.port), *self.args],
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:  # logged once it listens
            self.wait_for_log("Demo upstream on ", timeout=START_TIMEOUT_SECONDS)
        except AssertionError:
            self.stop()
            raise
        return self

    def __enter__(self) -> DemoUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        stop_process(self.process, signal.SIGTERM)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_size(self) -> int:
        """Where the log ends now: ``wait_for_log(..., since=)`` looks after it."""
        return len(self.log())

    def wait_for_log(
        self, pattern: str, since: int = 0, timeout: float = 5.0
    ) -> re.Match[str]:
        """The first match of the regex ``pattern`` in the log after ``since``."""
        deadline = time.monotonic() + timeout
        while True:
            if match := re.search(pattern, self.log()[since:]):
                return match
            exited = self.process is None or self.process.poll() is not None
            assert not exited, f"the demo upstream exited:\n{self.log()}"
            assert time.monotonic() < deadline, (
                f"no {pattern!r} in the demo upstream's log within {timeout}s:\n"
                f"{self.log()[since:]}"
            )
            time.sleep(0.02)


@dataclass
class RedisServer:
    """A real Redis on 127.0.0.1 (Debian's ``redis-server``), nothing saved to disk."""

    workdir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def url(self, db: int = 0) -> str:
        """Its URL; a test that wants keys of its own takes a database of its own."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is missing: `make test` installs it")
        self.port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                *("--bind", "127.0.0.1", "--port", str(self.port)),
                *("--save", "", "--appendonly", "no", "--dir", str(self.workdir)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        client = redis.Redis.from_url(self.url(), socket_timeout=1)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    assert self.process is not None
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        stop_process(self.process, signal.SIGTERM)
