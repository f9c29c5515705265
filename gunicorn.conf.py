"""gunicorn settings for long-lived streams: gevent workers, no request timeout,
and a shutdown that ends the streams it can't wait for with an error event.

``gunicorn -c gunicorn.conf.py -b 127.0.0.1:8000 "flask_app:create_app()"``
(or ``django_project.wsgi``). Every value can be overridden on the command line.
"""

# Patch before anything imports socket or ssl (the app, the openai client, even
# with --preload): an SSLContext made from the unpatched ssl module fails every
# HTTPS request under gevent with "TypeError: super(type, obj)" in wrap_socket.
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import signal  # noqa: E402
from types import FrameType  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402

bind = os.environ.get("BIND", "127.0.0.1:8000")
# gunicorn's gevent worker, whose own error answers (414, 431, 400) are JSON too.
worker_class = "shared.gunicorn_worker.JsonErrorGeventWorker"
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
    from shared.streaming import end_open_streams  # the app's, already imported

    notice = min(STREAM_END_NOTICE_SECONDS, graceful_timeout / 2)
    gevent.sleep(graceful_timeout - notice)
    while True:  # again and again: a keep-alive connection may start one more
        end_open_streams()
        gevent.sleep(0.25)
