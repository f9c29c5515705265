"""The Redis that resumable targets log their answers to, started by the bench.

Why one of its own: the answer logs of the ``-redis`` targets must go to a Redis
that nothing else on this machine uses, so that its CPU time and its clients are
theirs alone. It listens on 127.0.0.1 only, keeps nothing on disk, and is stopped
by its PID (``bench.procs``). Its CPU time is read apart from the server's: Redis
may run on another machine, but someone pays for it.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import redis

from bench import procs

START_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class RedisServer:
    """A running ``redis-server``: its URL, and its process to measure."""

    port: int
    pid: int

    def url(self, name: str) -> str:
        """A ``REDIS_URL`` whose connections are named ``name`` (redis-py sends
        ``CLIENT SETNAME``), so that each server's can be counted apart."""
        return f"redis://127.0.0.1:{self.port}/0?client_name={name}"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def flush(self) -> None:
        """Drop every key, so that each server under test starts on an empty Redis."""
        with contextlib.closing(self.client()) as client:
            client.flushall()

    def clients(self, name: str) -> int:
        """Connections open to Redis now named ``name``."""
        with contextlib.closing(self.client()) as client:
            listed = cast(list[dict[str, Any]], client.client_list())  # not awaited
            return sum(1 for each in listed if each.get("name") == name)

    def cpu_seconds(self) -> float:
        return procs.cpu_seconds(self.pid)


@contextlib.contextmanager
def started(workdir: Path, log: Path) -> Iterator[RedisServer]:
    """Debian's ``redis-server`` on a free port for the ``with`` block."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is missing: `apt-get install redis-server` (or run "
            "without the -redis targets)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    port = procs.free_port()
    command = [
        binary,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
    ]
    with procs.started(command, cwd=workdir, env={}, log=log) as process:
        server = RedisServer(port, process.pid)

        def answering() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {log}")
            try:
                server.flush()
            except redis.ConnectionError:
                return False
            return True

        if not procs.wait_until(answering, START_TIMEOUT_SECONDS):
            raise RuntimeError(f"redis-server did not answer; see {log}")
        yield server
