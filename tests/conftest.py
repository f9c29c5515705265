"""Fixtures: fake upstreams (plain and TLS), a forward proxy to them, the apps as
real server processes, and headless Chromium for the page tests.

Every server configuration is started once per session, on first use, and stopped
by its PID when the session ends. Contract tests take the ``server`` fixture, which
is parametrized over the four ways of serving the apps (plus gunicorn+gevent against
the TLS upstream), so one test body covers every server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from playwright.sync_api import Browser, sync_playwright

from tests.chromium import launch
from tests.fake_upstream import PROXY_ONLY_HOST, FakeUpstream
from tests.forward_proxy import ForwardProxy
from tests.servers import (
    ALL_KINDS,
    DJANGO_GUNICORN,
    FLASK_GUNICORN,
    RedisServer,
    Server,
    ServerKind,
    free_port,
    wait_or_kill,
)

# Timing is the benchmark's business: a property must not fail on a busy machine.
settings.register_profile(
    "suite", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("suite")

# Unique per run: a test greps every response and log line for it.
FAKE_API_KEY = f"sk-test-{uuid.uuid4().hex}"
KEEPALIVE_SECONDS = 0.5
UPSTREAM_TIMEOUT_SECONDS = 2.0
# For the crowd configurations: a thousand streams opening at once can keep a worker
# on a busy 2-core machine from its sockets for longer than the 2 s above, and their
# test is about concurrency, not about timeouts.
CROWD_UPSTREAM_TIMEOUT_SECONDS = 30.0
CORS_ORIGIN = "http://allowed.example"
# Low enough that a too-long prompt still fits in a URL (gunicorn refuses request
# lines over 8190 bytes with a 414).
MAX_PROMPT_CHARS = 2000
GRACE = {"GRACEFUL_TIMEOUT": "3"}  # gunicorn's wait for open streams at the end
ACCESS_TOKEN = f"token-{uuid.uuid4().hex}"
MAX_OUTPUT_TOKENS = 7
MAX_BODY_BYTES = 4096
RATE_LIMIT = "3/minute"
# Configurations that turn on the opt-in access rules, over the plain upstream.
ACCESS_CONFIGS = {
    "guarded": {
        "STREAM_AUTH_TOKEN": ACCESS_TOKEN,
        "STREAM_MAX_OUTPUT_TOKENS": str(MAX_OUTPUT_TOKENS),
        "STREAM_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
    },
    "rate-limited": {"STREAM_RATE_LIMIT": RATE_LIMIT},
}
# The SDK sends these as OpenAI-Organization and OpenAI-Project.
ORGANIZATION, PROJECT = "org-test-identified", "proj_test_identified"
# Configurations whose upstream requests carry every optional part, for
# tests/test_upstream_requests.py: an organization, a project and an output cap.
IDENTIFIED = {
    "OPENAI_ORG_ID": ORGANIZATION,
    "OPENAI_PROJECT_ID": PROJECT,
    "STREAM_MAX_OUTPUT_TOKENS": str(MAX_OUTPUT_TOKENS),
}
# The configurations "tools" and "tools-responses": the server runs tests/tools.py's
# functions, a hanging one is given up after a second, and keep-alives come often
# enough to be seen while a tool runs. Their tests play chained scripts, one model
# call after another: the longer upstream timeout keeps a loaded machine from making
# the SDK send a call again, which would play the next call's script to it.
TOOLS_KEEPALIVE_SECONDS = 0.2
TOOLS = {
    "STREAM_TOOLS": "tests.tools.add,tests.tools.broken,tests.tools.slow",
    "STREAM_MAX_STEPS": "3",
    "STREAM_TOOL_TIMEOUT_SECONDS": "1",
    "STREAM_KEEPALIVE_SECONDS": str(TOOLS_KEEPALIVE_SECONDS),
    "STREAM_UPSTREAM_TIMEOUT_SECONDS": "10",
}
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
# Keys that look like nothing a pattern could recognise: only their values can be
# redacted. Each one is the key of the configuration ``key-NAME``.
ODD_KEYS = {
    "hex": uuid.uuid4().hex,  # Azure's shape: 32 hex digits
    "fireworks": f"fw_{uuid.uuid4().hex[:20]}",
    "jwt": f"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ{uuid.uuid4().hex}fQ.{uuid.uuid4().hex}",
}
# A keep-alive long enough that "one interval after the request, not two" can't be
# mistaken on a loaded machine, and an upstream allowed to be silent for longer.
LONG_KEEPALIVE_SECONDS = 2.0
LONG_KEEPALIVE = {
    "STREAM_KEEPALIVE_SECONDS": str(LONG_KEEPALIVE_SECONDS),
    "STREAM_UPSTREAM_TIMEOUT_SECONDS": "10",
}
# The configurations "resumable" (each process's memory), "resumable-redis" (one
# Redis for every server in it) and "resumable-guarded" (memory, and the token):
# answers that outlive their connection, abandoned and expired in seconds.
RESUME_ABANDON_SECONDS = 4  # longer than a page reload on a busy machine
RESUME_TTL_SECONDS = 3
RESUMABLE_KEEPALIVE_SECONDS = 0.2
RESUMABLE = {
    "STREAM_RESUMABLE": "1",
    "STREAM_RESUME_ABANDON_SECONDS": str(RESUME_ABANDON_SECONDS),
    "STREAM_RESUME_TTL_SECONDS": str(RESUME_TTL_SECONDS),
    "STREAM_KEEPALIVE_SECONDS": str(RESUMABLE_KEEPALIVE_SECONDS),
}
# Answer logs in a database of their own: the rate limit's tests count keys in 0.
RESUMABLE_REDIS_DB = 1


class ServerPool:
    """Starts each (kind, configuration) once and keeps it for the session."""

    def __init__(
        self, upstreams: dict[str, FakeUpstream], proxy: ForwardProxy, log_dir: Path
    ) -> None:
        self._upstreams = upstreams
        self._proxy = proxy
        self._log_dir = log_dir
        self._servers: dict[tuple[str, str], Server] = {}
        self._redis: RedisServer | None = None

    def get(self, kind: ServerKind, config: str = "plain") -> Server:
        key = (kind.name, config)
        if key not in self._servers:
            env = self.env(config)
            log = self._log_dir / f"{kind.name}-{config}.log"
            self._servers[key] = Server(kind, env, log).start()
        return self._servers[key]

    def redis_url(self, db: int = 0) -> str:
        """The session's one Redis, started on first use, stopped after the servers."""
        if self._redis is None:
            self._redis = RedisServer(self._log_dir / "redis").start()
        return self._redis.url(db)

    def env(self, config: str) -> dict[str, str]:
        """The environment of a server in ``config`` (see ``get``)."""
        if config == "demo":  # no key and no base URL: the built-in demo model
            return {"STREAM_KEEPALIVE_SECONDS": str(KEEPALIVE_SECONDS), **GRACE}
        env = {
            "OPENAI_API_KEY": FAKE_API_KEY,
            "STREAM_KEEPALIVE_SECONDS": str(KEEPALIVE_SECONDS),
            "STREAM_UPSTREAM_TIMEOUT_SECONDS": str(UPSTREAM_TIMEOUT_SECONDS),
            "STREAM_CORS_ORIGINS": CORS_ORIGIN,
            "STREAM_MAX_PROMPT_CHARS": str(MAX_PROMPT_CHARS),
            **GRACE,
        }
        if config == "refused":  # nothing listens there
            env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{free_port()}/v1"
            return env
        if config.endswith("crowd"):  # "crowd" and "tls-crowd"
            env["STREAM_UPSTREAM_TIMEOUT_SECONDS"] = str(CROWD_UPSTREAM_TIMEOUT_SECONDS)
        upstream = self.upstream(config)
        env["OPENAI_BASE_URL"] = upstream.base_url
        env.update(ACCESS_CONFIGS.get(config, {}))
        if config == "long-keepalive":
            env.update(LONG_KEEPALIVE)
        if config.startswith("key-"):
            env["OPENAI_API_KEY"] = ODD_KEYS[config.removeprefix("key-")]
        if config == "no-key":  # a local server that needs none
            del env["OPENAI_API_KEY"]
        if upstream.ca_file:
            env["SSL_CERT_FILE"] = str(upstream.ca_file)
        if config.startswith("tools"):  # "tools" and "tools-responses"
            env.update(TOOLS)
        # "responses", "identified-responses" and "tools-responses"
        if config.endswith("responses"):
            env["OPENAI_CHAT_API"] = "responses"
        if config.startswith("identified"):
            env.update(IDENTIFIED)
        if config.startswith("resumable"):
            env.update(RESUMABLE)
        if config == "resumable-redis":
            env["REDIS_URL"] = self.redis_url(RESUMABLE_REDIS_DB)
        if config == "resumable-guarded":
            env["STREAM_AUTH_TOKEN"] = ACCESS_TOKEN
        if config == "no-retries":
            env["STREAM_UPSTREAM_MAX_RETRIES"] = "0"
        if config.endswith("proxied"):  # "proxied" and "tls-proxied"
            scheme = "https" if upstream.ca_file else "http"
            env["OPENAI_BASE_URL"] = f"{scheme}://{PROXY_ONLY_HOST}/v1"
        return env | self._proxy_env(config)

    def _proxy_env(self, config: str) -> dict[str, str]:
        """The proxy variables of ``config``, each in both cases, the others empty
        (urllib lets a lower-case variable override its upper-case form)."""
        proxy = self._proxy.url
        wanted = {
            "proxied": {"http_proxy": proxy},
            "tls-proxied": {"https_proxy": proxy},
            "no-proxy": {"http_proxy": proxy, "no_proxy": "127.0.0.1"},
        }.get(config)
        if wanted is None:
            return {}
        env: dict[str, str] = {}
        for name in PROXY_VARIABLES:
            env[name] = env[name.upper()] = wanted.get(name, "")
        return env

    def upstream(self, config: str) -> FakeUpstream:
        """The fake upstream that servers in ``config`` talk to."""
        return self._upstreams["tls" if config.startswith("tls") else "plain"]

    def all(self) -> list[Server]:
        return list(self._servers.values())

    def stop(self) -> None:
        """Every server at once: each waits out its own graceful shutdown."""
        for server in self._servers.values():
            server.begin_stopping()
        for server in self._servers.values():
            if server.process is not None:
                wait_or_kill(server.process)
        if self._redis is not None:
            self._redis.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium for the page tests of one module."""
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(tls=False) as fake:
        yield fake


@pytest.fixture(scope="session")
def tls_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(tls=True) as fake:
        yield fake


@pytest.fixture(scope="session")
def proxy(upstream: FakeUpstream, tls_upstream: FakeUpstream) -> Iterator[ForwardProxy]:
    """A forward proxy to the fake upstreams (plain requests and CONNECT tunnels)."""
    with ForwardProxy(upstream.port, tls_upstream.port) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def pool(
    upstream: FakeUpstream,
    tls_upstream: FakeUpstream,
    proxy: ForwardProxy,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerPool]:
    pool = ServerPool(
        {"plain": upstream, "tls": tls_upstream},
        proxy,
        tmp_path_factory.mktemp("server-logs"),
    )
    yield pool
    pool.stop()


@pytest.fixture(scope="session")
def redis_url(pool: ServerPool) -> str:
    """A real Redis on 127.0.0.1, one for the whole session, stopped by its PID."""
    return pool.redis_url()


SERVER_PARAMS = [
    *[pytest.param((kind, "plain"), id=kind.name) for kind in ALL_KINDS],
    pytest.param((FLASK_GUNICORN, "tls"), id="flask-gunicorn-tls"),
    pytest.param((DJANGO_GUNICORN, "tls"), id="django-gunicorn-tls"),
]


@pytest.fixture(params=SERVER_PARAMS)
def server(request: pytest.FixtureRequest, pool: ServerPool) -> Server:
    """Each of the four servers against the plain upstream, and gunicorn over TLS."""
    kind, config = request.param
    return pool.get(kind, config)


@pytest.fixture
def fake(
    server: Server, upstream: FakeUpstream, tls_upstream: FakeUpstream
) -> FakeUpstream:
    """The fake upstream that ``server`` talks to."""
    return tls_upstream if server.env.get("SSL_CERT_FILE") else upstream
