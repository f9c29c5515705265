"""The figures of the capacity, burst and opening phases: medians, tables, a plot.

Why apart from ``bench.report``: these phases repeat whole runs (a fresh server per
target per run) and report the median of the runs with their spread, per number of
open streams, where the older table has one figure per target. Latencies are shown
as what a target adds over ``direct``'s median at the same load, as in that table.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.report import number, pyplot
from bench.targets import Target


@dataclass(frozen=True)
class Level:
    """One run at one number of concurrent streams."""

    p50_ms: float  # chunk latency: client receipt minus the upstream's stamp
    p99_ms: float
    cpu_us: float | None  # server CPU per chunk delivered, stream setup included
    rss_kib: float | None  # peak RSS growth per stream
    all_open_seconds: float  # how long all streams were open at once (< 0: never)
    ok: int  # streams whose text was exact
    redis_cpu_us: float | None = None  # the bench's Redis, per chunk delivered


@dataclass(frozen=True)
class Burst:
    """One run of streams all opened at once."""

    first_p50_ms: float  # request sent to first text delta
    first_p99_ms: float
    delivered: float  # chunks/s, from the first request to the last delta
    offered: float  # chunks/s the upstream sends if every stream starts at once
    ok: int


@dataclass
class Curves:
    """What the repeated phases measured for one target, one entry per run."""

    target: Target
    capacity: dict[int, list[Level]] = field(default_factory=dict)
    burst: list[Burst] = field(default_factory=list)
    opening_us: list[float] = field(default_factory=list)  # server CPU per request
    problems: list[str] = field(default_factory=list)


def raw(rows: list[Curves]) -> dict[str, Any]:
    """Every run's figures by target, for ``bench/out/runs.json``."""
    return {
        row.target.name: {
            "capacity": {
                str(n): [dataclasses.asdict(level) for level in levels]
                for n, levels in row.capacity.items()
            },
            "burst": [dataclasses.asdict(burst) for burst in row.burst],
            "opening_us": row.opening_us,
            "problems": row.problems,
        }
        for row in rows
    }


def median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def spread(values: Sequence[float | None], digits: int = 1) -> str:
    """``median (min–max)`` of the runs, or the one value of a single run."""
    known = [v for v in values if v is not None]
    if not known:
        return "—"
    mid = number(statistics.median(known), digits)
    if len(known) == 1:
        return mid
    return f"{mid} ({min(known):,.{digits}f}–{max(known):,.{digits}f})"


def added(values: list[float], floor: float | None) -> list[float]:
    """``values`` minus ``direct``'s median, or as they are without a floor."""
    return values if floor is None else [v - floor for v in values]


Pick = Callable[[Level], float | None]


def p50(level: Level) -> float | None:
    return level.p50_ms


def p99(level: Level) -> float | None:
    return level.p99_ms


def cpu(level: Level) -> float | None:
    return level.cpu_us


def picked(row: Curves, streams: int, pick: Pick) -> list[float]:
    """``pick`` of each run of ``row`` at ``streams``, where it was measured."""
    return [v for level in row.capacity.get(streams, []) if (v := pick(level))]


def latency_added(
    rows: list[Curves], row: Curves, streams: int, pick: Pick
) -> list[float]:
    """``pick`` of each run minus ``direct``'s median (``direct``: its own values)."""
    values = picked(row, streams, pick)
    direct = next((r for r in rows if r.target.command is None), None)
    if direct is None or row is direct:
        return values
    return added(values, median(picked(direct, streams, pick)))


def capacity_table(rows: list[Curves], levels: Sequence[int], rate: float) -> str:
    """One row per target and number of streams: latency added, CPU, memory."""
    lines = [
        f"| target | streams × {rate:g} tokens/s | latency added p50, ms "
        "| latency added p99, ms | CPU µs/chunk | RSS KiB/stream "
        "| all open at once, s | streams OK |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for streams in levels:
        for row in rows:
            runs = row.capacity.get(streams, [])
            if not runs:
                continue
            is_floor = row.target.command is None
            cells = [
                f"`{row.target.name}`" + (" (floor, own values)" if is_floor else ""),
                f"{streams:,}",
                spread(latency_added(rows, row, streams, p50), 2),
                spread(latency_added(rows, row, streams, p99), 1),
                spread([level.cpu_us for level in runs]),
                spread([level.rss_kib for level in runs]),
                spread([max(level.all_open_seconds, 0.0) for level in runs]),
                " / ".join(str(level.ok) for level in runs),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def burst_table(rows: list[Curves]) -> str:
    lines = [
        "| target | first token p50, ms | first token p99, ms "
        "| chunks/s delivered | offered | streams OK |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        if not row.burst:
            continue
        runs = row.burst
        cells = [
            f"`{row.target.name}`" + (" (floor)" if row.target.command is None else ""),
            spread([b.first_p50_ms for b in runs], 1),
            spread([b.first_p99_ms for b in runs], 1),
            spread([b.delivered for b in runs], 0),
            number(median([b.offered for b in runs]), 0),
            " / ".join(str(b.ok) for b in runs),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def opening_table(rows: list[Curves]) -> str:
    lines = ["| target | server CPU µs per request |", "|---|--:|"]
    lines += [
        f"| `{row.target.name}` | {spread(row.opening_us, 0)} |"
        for row in rows
        if row.opening_us
    ]
    return "\n".join(lines)


def plot(rows: list[Curves], levels: Sequence[int], rate: float, path: Path) -> None:
    """Latency added (p50, p99) and CPU per chunk against open streams; log scales.

    Each point is the median of the runs; the bars span the runs' min and max.
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), layout="constrained")
    panels: list[tuple[str, Pick, bool]] = [
        ("chunk latency added p50, ms", p50, True),
        ("chunk latency added p99, ms", p99, True),
        ("server CPU µs per chunk", cpu, False),
    ]
    styles = ["-", "--", ":", "-."]
    for ax, (title, pick, is_latency) in zip(axes, panels, strict=True):
        for index, row in enumerate(rows):
            if row.target.command is None and not is_latency:
                continue  # direct has no server
            _line(ax, row, rows, levels, pick, is_latency, styles[index % 4])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(list(levels), [f"{n:,}" for n in levels])
        ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
        ax.set_xlabel(f"concurrent streams × {rate:g} tokens/s")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        "Lower is better. Median of the runs, bars from min to max; latency minus "
        "direct's (direct: its own), clipped at 0.1 ms",
        fontsize=10,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _line(
    ax: Any,
    row: Curves,
    rows: list[Curves],
    levels: Sequence[int],
    pick: Pick,
    is_latency: bool,
    style: str,
) -> None:
    """One target's medians with min–max bars, where it was measured."""
    xs: list[int] = []
    mids: list[float] = []
    lows: list[float] = []
    highs: list[float] = []
    for streams in levels:
        if is_latency:
            known = latency_added(rows, row, streams, pick)
        else:
            known = picked(row, streams, pick)
        if not known:
            continue
        known = [max(v, 0.1) for v in known]
        mid = statistics.median(known)
        xs.append(streams)
        mids.append(mid)
        lows.append(mid - min(known))
        highs.append(max(known) - mid)
    if xs:
        ax.errorbar(
            xs,
            mids,
            yerr=[lows, highs],
            label=row.target.name,
            linestyle=style,
            marker="o",
            capsize=3,
        )
