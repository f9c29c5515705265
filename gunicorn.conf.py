"""gunicorn settings for long-lived streams: gevent workers, no request timeout.

``gunicorn -c gunicorn.conf.py -b 127.0.0.1:8000 "flask_app:create_app()"``
(or ``django_project.wsgi``). Every value can be overridden on the command line.
"""

# Patch before anything imports socket or ssl (the app, the openai client, even
# with --preload): an SSLContext made from the unpatched ssl module fails every
# HTTPS request under gevent with "TypeError: super(type, obj)" in wrap_socket.
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402

bind = os.environ.get("BIND", "127.0.0.1:8000")
worker_class = "gevent"
# One gevent worker uses one core; start one per core.
workers = int(os.environ.get("WEB_CONCURRENCY", os.cpu_count() or 1))
# Each open stream holds one connection; the contract promises 1,000 per worker.
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", 2000))
# gevent workers send their heartbeat from the hub, so a long stream never trips the
# worker timeout; the timeout only catches a worker that is truly stuck.
timeout = 60
# On SIGTERM, open streams get this long to finish before the worker exits.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", 30))
keepalive = 5
# Log the path without the query string: ?prompt= is the user's text.
accesslog = "-"
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss'
# No control socket: it would be shared by every gunicorn of this user on the machine.
control_socket_disable = True
