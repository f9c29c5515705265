"""What a prompt asks the fake upstream for, and how a client checks the answer.

The prompt is the only input every server under test forwards unchanged, so it
carries the scenario:

- ``full:N``: N tokens, sent as fast as possible (CPU per chunk, time to first
  byte). Token ``i`` is ``"w<i> "``, so the answer is known in advance.
- ``rate:R:N``: N tokens at R tokens per second (latency under load). Token ``i``
  is ``"<send wall-clock time>:<i> "``: the client subtracts the time stamped by the
  upstream from its own clock (same machine, same clock) to get that chunk's latency.

No token contains a line break, so every server frames each delta as one SSE line.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Full:
    tokens: int


@dataclass(frozen=True)
class Rate:
    per_second: float
    tokens: int


Scenario = Full | Rate


def parse(prompt: str) -> Scenario:
    """``full:N`` or ``rate:R:N``; ``ValueError`` for anything else."""
    kind, _, args = prompt.partition(":")
    parts = args.split(":")
    if kind == "full" and len(parts) == 1:
        return Full(int(parts[0]))
    if kind == "rate" and len(parts) == 2:
        return Rate(float(parts[0]), int(parts[1]))
    raise ValueError(f"unknown scenario {prompt!r}: use full:N or rate:R:N")


def full_token(index: int) -> str:
    return f"w{index} "


def rate_token(index: int, sent: float) -> str:
    return f"{sent:.6f}:{index} "


def is_correct(prompt: str, text: str, skipped: int = 0) -> bool:
    """Whether ``text`` is exactly the answer the upstream sent for ``prompt``,
    but for its first ``skipped`` tokens (a reader resuming after them)."""
    scenario = parse(prompt)
    expected = range(skipped, scenario.tokens)
    if isinstance(scenario, Full):
        return text == "".join(full_token(i) for i in expected)
    tokens = text.split(" ")
    if tokens.pop() != "":  # the answer ends with the last token's space
        return False
    indexes = [token.partition(":")[2] for token in tokens]
    return indexes == [str(i) for i in expected]


def arrivals(
    pieces: list[tuple[float, str]], since: float = 0.0
) -> list[tuple[float, float]]:
    """(upstream send time, client receipt time) per ``rate`` token received, of
    the tokens the upstream sent from ``since`` on (a resumed reader's live part:
    the ones before it were waiting in the answer's log)."""
    return [
        (sent, received)
        for received, piece in pieces
        for token in piece.split()
        if (sent := float(token.partition(":")[0])) >= since
    ]
