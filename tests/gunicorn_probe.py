"""gunicorn settings for tests: the project's ``gunicorn.conf.py`` plus a probe.

``gunicorn -c tests/gunicorn_probe.py ...`` with ``GUNICORN_PROBE_PORT`` set: the
worker also listens on ``127.0.0.1:$GUNICORN_PROBE_PORT`` and answers each
connection with one JSON line, ``{"greenlets": N, "fds": N, ...}``: its live gevent
greenlets (after a garbage collection, not counting the probe's own) and its open
file descriptors. Greenlets can only be counted from inside the process; this keeps
the production config free of test hooks. Start one worker only: two would compete
for the port.
"""

from __future__ import annotations

import runpy
from pathlib import Path

# Every setting and hook of the project's config, as if gunicorn had read it; run
# first, as gunicorn would: it monkey-patches before anything else is imported.
_PROJECT = runpy.run_path(
    str(Path(__file__).resolve().parent.parent / "gunicorn.conf.py")
)
globals().update({k: v for k, v in _PROJECT.items() if not k.startswith("__")})
_project_post_worker_init = _PROJECT.get("post_worker_init")

import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
from collections import Counter  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import greenlet  # noqa: E402


def post_worker_init(worker: Any) -> None:
    """Run the project's hook, then start the probe's listener in this worker."""
    if _project_post_worker_init is not None:
        _project_post_worker_init(worker)
    port = os.environ.get("GUNICORN_PROBE_PORT")
    if port:
        from gevent.server import StreamServer

        StreamServer(("127.0.0.1", int(port)), _answer).start()


def _answer(sock: socket.socket, address: object) -> None:
    gc.collect()
    me = greenlet.getcurrent()
    live = [
        o
        for o in gc.get_objects()
        if isinstance(o, greenlet.greenlet) and not o.dead and o is not me
    ]
    # Spawned tasks (request handlers, relay helpers) are gevent Greenlets; the
    # hub, thread main greenlets and gevent's resolver threads (which come and go
    # with load) are raw greenlets.
    tasks = [g for g in live if isinstance(g, gevent.Greenlet)]
    counts = {
        "greenlets": len(tasks),
        "all_greenlets": len(live),
        "fds": len(os.listdir("/proc/self/fd")),
        # For a failure's message: what the live greenlets run.
        "kinds": dict(Counter(_describe(g) for g in live).most_common(10)),
    }
    sock.sendall(json.dumps(counts).encode() + b"\n")


def _describe(g: greenlet.greenlet) -> str:
    run = getattr(g, "_run", None) or getattr(g, "run", None)
    name = getattr(run, "__qualname__", None) or type(run).__name__
    return f"{type(g).__name__}:{name}"
