"""Per-client rate limiting of the streaming routes (``STREAM_RATE_LIMIT``).

Every streamed answer spends the key, so a client that loops on a route spends it
as fast as the upstream allows. The ``limits`` library keeps the counters: in the
process's memory by default (each gunicorn worker then counts on its own), or in
Redis when ``REDIS_URL`` is set, so that every worker and machine shares one limit.

The storage is created on first use, not at import: under gunicorn that is inside
the worker, after gevent has patched ``socket`` and after ``fork`` (a Redis
connection pool opened before it would be shared by every worker).
"""

from __future__ import annotations

import logging
import math
import threading
import time

from limits import RateLimitItem, parse_many
from limits.storage import Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from shared.streaming import StreamError

log = logging.getLogger(__name__)

STORAGE_TIMEOUT_SECONDS = 2.0


class RateLimiter:
    """Counts each client's requests in a moving window; refuses those over it."""

    def __init__(self, limit: str, redis_url: str | None = None) -> None:
        self._items: list[RateLimitItem] = parse_many(limit)
        self._storage_url = redis_url or "memory://"
        self._limiter: MovingWindowRateLimiter | None = None
        self._lock = threading.Lock()

    @property
    def limiter(self) -> MovingWindowRateLimiter:
        if self._limiter is None:
            with self._lock:
                if self._limiter is None:
                    storage = storage_from_string(
                        self._storage_url, **self._storage_options()
                    )
                    assert isinstance(storage, Storage)  # not an asyncio one
                    self._limiter = MovingWindowRateLimiter(storage)
        return self._limiter

    def _storage_options(self) -> dict[str, float]:
        if self._storage_url.startswith("memory"):
            return {}
        # A Redis that hangs must not hang every request with it.
        return {
            "socket_timeout": STORAGE_TIMEOUT_SECONDS,
            "socket_connect_timeout": STORAGE_TIMEOUT_SECONDS,
        }

    def check(self, client: str) -> None:
        """Count one request of ``client``; raise a 429 with ``Retry-After`` if over.

        Fails closed: if the storage (Redis) can't be reached, the request is refused
        with 503 rather than let through uncounted.
        """
        try:
            for item in self._items:
                if not self.limiter.hit(item, "stream", client):
                    retry_after = self._seconds_until_allowed(item, client)
                    raise StreamError(
                        429,
                        f"Too many requests: the limit is {item}. Retry in "
                        f"{retry_after} s.",
                        "rate_limited",
                        {"Retry-After": str(retry_after)},
                    )
        except StreamError:
            raise
        except Exception:
            log.exception("The rate limiter's storage failed")
            raise StreamError(
                503,
                "The rate limiter is unavailable; try again shortly.",
                "rate_limiter_unavailable",
                {"Retry-After": "1"},
            ) from None

    def _seconds_until_allowed(self, item: RateLimitItem, client: str) -> int:
        reset_time = self.limiter.get_window_stats(item, "stream", client).reset_time
        return max(1, math.ceil(reset_time - time.time()))
