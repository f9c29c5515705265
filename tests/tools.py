"""Tools for the servers of the ``tools`` configurations (``STREAM_TOOLS`` names
them): plain functions, as a user of the apps would write them.

No ``from __future__ import annotations``: the annotations stay real types, as in
``shared/demo_tools.py``.
"""

import os
import time


def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


def broken(reason: str) -> str:
    """Always fails, quoting the server's key as a careless tool might."""
    key = os.environ.get("OPENAI_API_KEY")
    raise ValueError(f"no luck with {reason} (key {key})")


def slow(seconds: float) -> dict[str, float]:
    """Sleeps, then says how long: not a string, so it goes back as JSON."""
    time.sleep(seconds)
    return {"slept": seconds}
