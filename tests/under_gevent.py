"""A pytest plugin that runs a test session under gevent, as gunicorn's gevent
workers run the apps: ``python -m pytest -p tests.under_gevent ...``.

Loaded with ``-p`` it patches before the tests import anything, so the core's
relay takes its gevent path (one greenlet per stream) in-process.
"""

from gevent import monkey

monkey.patch_all()
