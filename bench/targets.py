"""The servers ``make bench`` compares, and how each is started.

Our two apps run exactly as the README says (the repo's ``gunicorn.conf.py``, one
worker). The baselines run as their users would run them. The naive Flask app and
FastAPI start from ``bench/``, where gunicorn finds no ``gunicorn.conf.py`` to
apply (it reads ``./gunicorn.conf.py`` by default, which patches with gevent).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
BIN = Path(sys.executable).parent
API_KEY = "sk-bench"


@dataclass(frozen=True)
class Upstream:
    """Where the fake OpenAI listens, and its process."""

    port: int
    tls_port: int
    ca_file: Path
    pid: int

    def port_for(self, tls: bool) -> int:
        return self.tls_port if tls else self.port

    def accepted(self, tls: bool) -> int:
        """Connections accepted so far on one listener (its ``GET /stats``)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/stats")
            counts = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        return int(counts["tls" if tls else "plain"])

    def base_url(self, tls: bool) -> str:
        scheme = "https" if tls else "http"
        return f"{scheme}://127.0.0.1:{self.port_for(tls)}/v1"


@dataclass(frozen=True)
class Target:
    """One server to measure; ``command`` is ``None`` for ``direct`` (no server)."""

    name: str
    role: Literal["ours", "baseline", "floor"]
    about: str
    command: tuple[str, ...] | None = None  # {port} and {upstream_port} filled in
    cwd: Path = ROOT
    # "sse": the browser route of an app; "openai": the upstream's own request.
    api: Literal["sse", "openai"] = "sse"
    one_at_a_time: bool = False  # a sync worker: streams queue behind each other
    settings: tuple[tuple[str, str], ...] = ()  # its own environment variables
    redis: bool = False  # REDIS_URL: the bench's own Redis
    beside: str | None = None  # the target whose costs it adds to, for the report

    @property
    def resumable(self) -> bool:
        return ("STREAM_RESUMABLE", "1") in self.settings

    def argv(self, port: int, upstream_port: int) -> list[str]:
        assert self.command is not None
        return [
            part.format(port=port, upstream_port=upstream_port) for part in self.command
        ]

    def env(
        self, upstream: Upstream, tls: bool, redis_url: str | None = None
    ) -> dict[str, str]:
        """The bench's environment, without the settings it sets for each target
        (a ``STREAM_RESUMABLE`` or ``REDIS_URL`` of the shell's would skew a row)."""
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("OPENAI_", "STREAM_"))
            and name not in ("SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS", "REDIS_URL")
        }
        env.update(
            OPENAI_API_KEY=API_KEY,
            OPENAI_BASE_URL=upstream.base_url(tls),
            STREAM_KEEPALIVE_SECONDS="15",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.settings)
        if self.redis:
            if redis_url is None:
                raise ValueError(f"{self.name} needs the bench's Redis: none started")
            env["REDIS_URL"] = redis_url
        if tls:
            env["SSL_CERT_FILE"] = env["NODE_EXTRA_CA_CERTS"] = str(upstream.ca_file)
        return env


def _ours(app: str) -> tuple[str, ...]:
    return (
        str(BIN / "gunicorn"),
        "-c",
        "gunicorn.conf.py",
        "-b",
        "127.0.0.1:{port}",
        "--workers",
        "1",
        app,
    )


def _gunicorn(*options: str) -> tuple[str, ...]:
    gunicorn = (str(BIN / "gunicorn"), "-w", "1", "-b", "127.0.0.1:{port}")
    return (*gunicorn, *options, "naive_flask:app")


TARGETS = (
    Target(
        "flask-gevent",
        "ours",
        "this repo's Flask app, gunicorn + gevent, 1 worker",
        _ours("flask_app:create_app()"),
    ),
    Target(
        "flask-gevent-resumable",
        "ours",
        "flask-gevent with STREAM_RESUMABLE=1: each answer logged in the worker's "
        "memory",
        _ours("flask_app:create_app()"),
        settings=(("STREAM_RESUMABLE", "1"),),
        beside="flask-gevent",
    ),
    Target(
        "flask-gevent-resumable-redis",
        "ours",
        "flask-gevent with STREAM_RESUMABLE=1 and REDIS_URL: each answer logged in "
        "Redis Streams (a redis-server of the bench's own, on the same CPUs)",
        _ours("flask_app:create_app()"),
        settings=(("STREAM_RESUMABLE", "1"),),
        redis=True,
        beside="flask-gevent",
    ),
    Target(
        "django-gevent",
        "ours",
        "this repo's Django project, gunicorn + gevent, 1 worker",
        _ours("django_project.wsgi"),
    ),
    Target(
        "naive-gevent",
        "baseline",
        "blog-post Flask view (bench/naive_flask.py), gunicorn -k gevent, 1 worker",
        _gunicorn("-k", "gevent", "--worker-connections", "2000"),
        cwd=BENCH,
    ),
    Target(
        "naive-sync",
        "baseline",
        "blog-post Flask view, gunicorn's default sync worker, 1 worker",
        _gunicorn("--timeout", "600"),
        cwd=BENCH,
        one_at_a_time=True,
    ),
    Target(
        "fastapi-sse-starlette",
        "baseline",
        "FastAPI + sse-starlette + AsyncOpenAI (bench/fastapi_app.py), uvicorn",
        (
            str(BIN / "uvicorn"),
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "fastapi_app:app",
        ),
        cwd=BENCH,
    ),
    Target(
        "express",
        "baseline",
        "Express 5 + openai npm SDK (bench/express/server.js), node",
        (shutil.which("node") or "node", "server.js", "{port}"),
        cwd=BENCH / "express",
    ),
    Target(
        "relay",
        "floor",
        "bare TCP relay in Python (bench/relay.py): the CPU floor",
        (
            sys.executable,
            "-m",
            "bench.relay",
            "--port",
            "{port}",
            "--upstream-port",
            "{upstream_port}",
        ),
        api="openai",
    ),
    Target(
        "direct",
        "floor",
        "the client straight to the fake upstream: the latency floor",
        api="openai",
    ),
)


def before_targets(checkout: Path) -> list[Target]:
    """This repo's two apps again, as checked out in ``checkout`` (e.g. a
    ``git worktree`` of an older commit): before and after a change, in one run."""
    if not (checkout / "gunicorn.conf.py").is_file():
        raise ValueError(
            f"{checkout} is not a checkout of this repo: no gunicorn.conf.py"
        )
    return [
        dataclasses.replace(
            target,
            name=f"{target.name}-before",
            about=f"{target.about}, as in {checkout}",
            cwd=checkout,
            beside=f"{target.beside}-before" if target.beside else None,
        )
        for target in TARGETS
        if target.role == "ours"
    ]
