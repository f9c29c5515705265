"""gunicorn settings for long-lived streams: gevent workers, no request timeout,
and a shutdown that ends the streams it can't wait for with an error event.

``gunicorn -c gunicorn.conf.py -b 127.0.0.1:8000 "flask_app:create_app()"``
(or ``django_project.wsgi``). Every value can be overridden on the command line.

It also works copied alone beside an app that has this repo's ``streaming.py``
(as ``streaming.py``, or as ``anything.streaming``): it finds what it needs by
name, and does without this repo's JSON error worker.
"""

# Patch before anything imports socket or ssl (the app, the openai client, even
# with --preload): an SSLContext made from the unpatched ssl module fails every
# HTTPS request under gevent with "TypeError: super(type, obj)" in wrap_socket.
from gevent import monkey

monkey.patch_all()

import importlib  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from types import FrameType, ModuleType  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402

bind = os.environ.get("BIND", "127.0.0.1:8000")


def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:  # copied into an app without it
        return None


# gunicorn's gevent worker; in this repo, one whose own error answers (414, 431,
# 400) are JSON too.
worker_class = (
    "shared.gunicorn_worker.JsonErrorGeventWorker"
    if _module("shared.gunicorn_worker")
    else "gevent"
)
# gunicorn's highest limit (the default is 4094 bytes): a GET's ?prompt= of a few
# thousand characters fits. Longer prompts go in a POST body; 0 (no limit) would let
# one request line grow without bound.
limit_request_line = 8190
# One gevent worker uses one core; start one per core.
workers = int(os.environ.get("WEB_CONCURRENCY", os.cpu_count() or 1))
# Each open stream holds one connection; the contract promises 1,000 per worker.
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", 2000))
# gevent workers send their heartbeat from the hub, so a long stream never trips the
# worker timeout; the timeout only catches a worker that is truly stuck.
timeout = 60
# On SIGTERM, open streams get this long to finish before the worker exits.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", 30))
# Streams still open this long before graceful_timeout runs out (at most half of it)
# are ended with an error event: see post_worker_init.
STREAM_END_NOTICE_SECONDS = 2.0
keepalive = 5
# Log the path without the query string: ?prompt= is the user's text.
accesslog = "-"
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss'
# No control socket: it would be shared by every gunicorn of this user on the machine.
control_socket_disable = True


def on_starting(server: Any) -> None:
    """Read the settings once, in the master, before it listens: a bad value stops
    gunicorn with one line naming it, not with a traceback from every worker."""
    for module_name, class_name in (
        ("shared.config", "Settings"),  # this repo's apps
        ("streaming", "StreamSettings"),  # a copied view
    ):
        module = _module(module_name)
        if module is not None:
            getattr(module, class_name).from_env_or_exit()
            return


def post_worker_init(worker: Any) -> None:
    """On SIGTERM, end the streams still open shortly before graceful_timeout.

    gunicorn stops accepting and waits up to ``graceful_timeout`` for open requests,
    then kills the worker: a longer stream would just stop, with no error event and
    maybe halfway through a frame, so that its client can't tell it failed. Ended
    here, each gets a whole ``event: error`` (``server_shutdown``; a raw text body is
    cut off without its final chunk) and its upstream response is closed.
    """
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if callable(previous):
            previous(signum, frame)  # gunicorn's own: stop accepting, then wait
        gevent.spawn(_end_streams_in_time, float(worker.cfg.graceful_timeout))

    signal.signal(signal.SIGTERM, on_sigterm)


def _end_streams_in_time(graceful_timeout: float) -> None:
    notice = min(STREAM_END_NOTICE_SECONDS, graceful_timeout / 2)
    gevent.sleep(graceful_timeout - notice)
    while True:  # again and again: a keep-alive connection may start one more
        for module in _streaming_modules():
            module.end_open_streams()
        gevent.sleep(0.25)


def worker_exit(server: Any, worker: Any) -> None:
    """Let a stopping worker's resumable answers (``STREAM_RESUMABLE=1``) finish.

    They run in no request, so gunicorn waits for none of them: the worker would
    exit with them half done. Here it waits until each has ended, on its own or
    ended by ``_end_streams_in_time`` shortly before ``graceful_timeout``, its log
    then ending with ``server_shutdown`` for its readers, wherever they are.
    """
    resumable = sys.modules.get("shared.resumable")
    if resumable is not None:
        resumable.wait_for_answers(float(worker.cfg.graceful_timeout))


def _streaming_modules() -> list[ModuleType]:
    """The app's streaming core, already imported: ``shared.streaming`` in this
    repo, ``streaming`` (or ``yourapp.streaming``) where a view was copied."""
    return [
        module
        for name, module in list(sys.modules.items())
        if (name == "streaming" or name.endswith(".streaming"))
        and callable(getattr(module, "end_open_streams", None))
    ]
