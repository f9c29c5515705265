"""Start, measure and stop the processes the bench owns, by PID only.

Why here: other servers run on this machine, so nothing is ever found or stopped
by name. Each process is started in its own session and stopped by its PID (then
by its own process group, which holds only what it started, such as gunicorn's
workers). CPU time and RSS are read from ``/proc`` for the process and all of its
descendants, so a gunicorn master and its worker count as one server.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

STOP_TIMEOUT_SECONDS = 5.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_running: set[subprocess.Popen[bytes]] = set()  # for exit_on_signal


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def started(
    command: list[str], *, cwd: Path, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` for the ``with`` block; it is always stopped at the end."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _running.add(process)
    try:
        yield process
    finally:
        stop(process)
        _running.discard(process)


def exit_on_signal(signum: int, frame: object) -> None:
    """A SIGINT/SIGTERM handler: kill what this process started, then exit at once.

    Raising an exception instead would unwind from wherever the signal landed,
    possibly inside a lock of multiprocessing's pool, and hang there.
    """
    for process in list(_running):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    for child in multiprocessing.active_children():  # the load generator
        child.kill()
    print(f"\nStopped by signal {signum}.", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process, then SIGKILL whatever is left of its process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # its group is its PID: see started()
    process.wait(STOP_TIMEOUT_SECONDS)


def tree(pid: int) -> list[int]:
    """``pid`` and all of its live descendants."""
    pids, index = [pid], 0
    while index < len(pids):
        for task in Path(f"/proc/{pids[index]}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                pids += map(int, task.read_text().split())
        index += 1
    return pids


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` and its descendants."""
    ticks = 0
    for each in tree(pid):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{each}/stat").read_text()
            fields = stat.rpartition(")")[2].split()  # the name may hold spaces
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants, in KiB."""
    total = 0
    for each in tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def wait_until(
    ready: Callable[[], bool], timeout: float, interval: float = 0.1
) -> bool:
    """Call ``ready`` until it returns true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        time.sleep(interval)
    return False
