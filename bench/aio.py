"""One way to run an asyncio program for the bench's own processes.

The fake upstream, the relay and the load generator must never be the bottleneck,
so they use uvloop when it is installed (``uvicorn[standard]`` brings it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, on uvloop's event loop when available."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
