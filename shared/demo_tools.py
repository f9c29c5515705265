"""Two harmless example tools that the demo model knows how to call.

Plain functions, as any tool offered to a model: the server builds each one's JSON
schema from its name, annotated parameters (with their defaults) and docstring, so
the docstring is written for the model. They touch no file, network or secret.
No ``from __future__ import annotations`` here: the annotations stay real types,
for schema builders that read ``inspect.signature`` without evaluating strings.
"""

import datetime
import random
import zoneinfo
from collections.abc import Callable
from typing import Any

__all__ = ["DEMO_TOOLS", "current_time", "roll_dice"]

MAX_DICE = 20
MAX_SIDES = 100


def current_time(timezone: str = "UTC") -> str:
    """The current date and time in a time zone, as ISO 8601 text.

    Call it whenever the user asks what time or date it is, here or anywhere.
    ``timezone`` is an IANA time zone name such as "Asia/Tokyo", "Europe/Paris" or
    "America/New_York" (not a city alone, nor an abbreviation like "JST"); the
    default is "UTC".
    """
    try:
        zone = zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError) as error:
        raise ValueError(
            f"Unknown time zone {timezone!r}: use an IANA name such as "
            "'Europe/Paris', 'Asia/Tokyo' or 'UTC'."
        ) from error
    return datetime.datetime.now(zone).isoformat(timespec="seconds")


def roll_dice(count: int = 1, sides: int = 6) -> list[int]:
    """Roll fair dice and return each die's face, in the order rolled.

    Call it whenever the user asks to roll dice or wants a random number.
    ``count`` is how many dice (1 to 20, default 1); ``sides`` how many faces each
    die has (2 to 100, default 6: an ordinary die; 20 for a d20).
    """
    _check_range("count", count, 1, MAX_DICE)
    _check_range("sides", sides, 2, MAX_SIDES)
    return [random.randint(1, sides) for _ in range(count)]


def _check_range(name: str, value: object, low: int, high: int) -> None:
    """A whole number from ``low`` to ``high``, or a ``ValueError`` saying so."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not low <= value <= high
    ):
        raise ValueError(
            f"{name} must be a whole number from {low} to {high}, got {value!r}."
        )


DEMO_TOOLS: list[Callable[..., Any]] = [current_time, roll_dice]
