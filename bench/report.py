"""The bench's figures per target, as a markdown table and as a plot.

Kept apart from the measuring so that the table's wording and the plot can change
without touching how anything is measured. Latencies and times to first byte are
shown as what a target adds over ``direct`` (the client talking to the upstream
itself), which is what a user of the proxy would notice.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.targets import Target

COLORS = {"ours": "#1f77b4", "baseline": "#9a9a9a", "floor": "#2ca02c"}


@dataclass(frozen=True)
class Readers:
    """Many clients reading one resumable answer on from its first token."""

    where: str  # which worker they read from: the answer's producer, or another
    count: int
    ok: int  # readers whose text was exact, from the second token to [DONE]
    first_ms: tuple[float, float]  # p50, p99: request to the first event read
    latency_ms: tuple[float, float] | None  # p50, p99 of the tokens sent meanwhile
    cpu_us: float  # server CPU per chunk delivered
    redis_cpu_us: float | None
    redis_clients: tuple[int, int] | None  # before the readers, and at their peak


@dataclass
class Figures:
    """What was measured for one target; ``None`` where it was not measured."""

    target: Target
    cpu_us: list[float] = field(default_factory=list)  # per chunk, one per run
    paced_cpu_us: float | None = None  # per chunk, in the latency phase
    ttfb_ms: dict[str, tuple[float, float]] = field(default_factory=dict)  # p50, p99
    new_connections: dict[str, int] = field(default_factory=dict)
    latency_ms: tuple[float, float] | None = None  # p50, p99
    streams_ok: int | None = None
    done_seconds: float | None = None  # until the last stream ended (or deadline)
    rss_kib: float | None = None  # per open stream
    # The bench's Redis, for the targets that log to it: its CPU per chunk.
    redis_cpu_us: list[float] = field(default_factory=list)  # one per CPU run
    paced_redis_cpu_us: float | None = None
    redis_clients: int | None = None  # the most connections, paced
    readers: list[Readers] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def cpu_median(self) -> float | None:
        return statistics.median(self.cpu_us) if self.cpu_us else None

    @property
    def redis_cpu_median(self) -> float | None:
        return statistics.median(self.redis_cpu_us) if self.redis_cpu_us else None


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def number(value: float | None, digits: int = 1) -> str:
    """``value`` for a table cell: ``—`` when it was not measured."""
    return "—" if value is None else f"{value:,.{digits}f}"


Pick = Callable[[Figures], tuple[float, ...] | None]


def _versus(pick: Pick, row: Figures, floor: Figures | None) -> str:
    """``row``'s values minus ``floor``'s (signed), or as they are without a floor."""
    values = pick(row)
    floors = pick(floor) if floor else None
    if values is None:
        return "—"
    if floors is None:
        return " / ".join(f"{v:,.2f}" for v in values)
    return " / ".join(f"{v - f:+,.2f}" for v, f in zip(values, floors, strict=True))


def table(rows: list[Figures], streams: int, rate: float) -> str:
    """One markdown row per target; ``direct``'s own values are the floors."""
    direct = next((r for r in rows if r.target.name == "direct"), None)
    lines = [
        "| target | CPU µs/chunk, full speed | CPU µs/chunk, paced "
        "| TTFB added p50 / p99, ms (HTTP) | TTFB added p50 / p99, ms (TLS) "
        "| new upstream conns HTTP / TLS "
        f"| latency added p99, ms ({streams:,} streams × {rate:g} tokens/s) "
        "| streams OK, all done in | RSS KiB/stream |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        floor = None if row is direct else direct
        cells = [
            f"`{row.target.name}`" + (" (floor)" if row is direct else ""),
            number(row.cpu_median),
            number(row.paced_cpu_us),
            _versus(lambda f: f.ttfb_ms.get("HTTP"), row, floor),
            _versus(lambda f: f.ttfb_ms.get("TLS"), row, floor),
            " / ".join(str(row.new_connections.get(s, "—")) for s in ("HTTP", "TLS")),
            _versus(lambda f: f.latency_ms[1:] if f.latency_ms else None, row, floor),
            "—"
            if row.streams_ok is None
            else f"{row.streams_ok:,} / {streams:,} in {row.done_seconds:.1f}s",
            number(row.rss_kib),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pyplot() -> Any:
    """matplotlib's pyplot, drawing into files. It is the bench's own dependency
    (``.[bench]``), imported when a plot is drawn: the tables need none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(rows: list[Figures], streams: int, rate: float, path: Path) -> None:
    """CPU per chunk (full speed, paced) and latency p99: log scales, bar per target."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
    _bars(
        axes[0],
        [(r, r.cpu_median, "") for r in rows],
        "server CPU µs per chunk, full speed",
    )
    _bars(
        axes[1],
        [(r, r.paced_cpu_us, "") for r in rows],
        "server CPU µs per chunk, paced",
    )
    _bars(
        axes[2],
        [
            (
                r,
                r.latency_ms[1] if r.latency_ms else None,
                f" ({r.streams_ok:,} done)"
                if r.streams_ok is not None and r.streams_ok != streams
                else "",
            )
            for r in rows
        ],
        "chunk latency p99 in ms, paced",
    )
    fig.suptitle(
        f"Lower is better. Paced: {streams:,} streams at once, {rate:g} tokens/s each",
        fontsize=10,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _bars(ax: Any, bars: list[tuple[Figures, float | None, str]], title: str) -> None:
    """Horizontal bars on a log scale for the targets that have a value."""
    shown = [(r, value, note) for r, value, note in bars if value]
    drawn = ax.barh(
        [r.target.name for r, _, _ in shown],
        [value for _, value, _ in shown],
        color=[COLORS[r.target.role] for r, _, _ in shown],
    )
    for bar, (_, value, note) in zip(drawn, shown, strict=True):
        ax.annotate(
            f"{value:,.0f}{note}" if value >= 100 else f"{value:.3g}{note}",
            (bar.get_width(), bar.get_y() + bar.get_height() / 2),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_title(title, fontsize=10)
    ax.invert_yaxis()
    ax.margins(x=0.3)
