"""What a setting costs: a target beside the one it changes, measured in one run.

Why apart: the other tables compare servers with ``direct``; a user choosing
``STREAM_RESUMABLE=1`` asks what it adds to the app they already run. So each
target with a ``beside`` (``flask-gevent-resumable`` beside ``flask-gevent``) gets
its CPU figures as ratios to the other's and its times as milliseconds added to
the other's, both from the same run on the same machine. Where the phases repeat
(opening, burst, capacity: runs go round the targets), each run's ratio is taken
within that run, and the median of those is shown: a noisy minute on a shared
machine then falls on both sides of a ratio.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import TypeVar

from bench.capacity import Curves, Level
from bench.report import Figures, Readers, number

Paired = Callable[[float, float], float]
Row = TypeVar("Row", Figures, Curves)


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "—"
    return f"×{value / base:.2f}"


def _added(values: tuple[float, ...] | None, bases: tuple[float, ...] | None) -> str:
    if values is None or bases is None:
        return "—"
    return " / ".join(f"{v - b:+,.2f}" for v, b in zip(values, bases, strict=True))


def _by_run(values: Sequence[float], bases: Sequence[float], pair: Paired) -> float:
    """The median of ``pair`` within each run; of the medians if a run is missing
    on one side (a failed run), as runs can then no longer be told apart."""
    if len(values) == len(bases):
        return statistics.median(pair(v, b) for v, b in zip(values, bases, strict=True))
    return pair(statistics.median(values), statistics.median(bases))


def _run_ratio(values: Sequence[float | None], bases: Sequence[float | None]) -> str:
    if None in values or None in bases or not values or not bases:
        return "—"
    known = [v for v in values if v is not None]
    floors = [b for b in bases if b is not None]
    return f"×{_by_run(known, floors, lambda v, b: v / b):.2f}"


def _run_added(values: Sequence[float], bases: Sequence[float]) -> str:
    if not values or not bases:
        return "—"
    return f"{_by_run(values, bases, lambda v, b: v - b):+,.0f}"


def pairs(rows: list[Row]) -> list[tuple[Row, Row]]:
    """(target, the target it is beside) for each such pair that was measured."""
    by_name = {row.target.name: row for row in rows}
    return [
        (row, by_name[row.target.beside])
        for row in rows
        if row.target.beside in by_name
    ]


def costs_table(rows: list[Figures]) -> str:
    """Per pair, from the single-run phases: CPU as ratios, times as ms added."""
    lines = [
        "| target | beside | CPU per chunk, full speed | CPU per chunk, paced "
        "| TTFB p50 / p99, ms added (HTTP) | latency p50 / p99, ms added "
        "| RSS per stream | Redis CPU µs/chunk, full speed / paced "
        "| Redis connections |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row, base in pairs(rows):
        cells = [
            f"`{row.target.name}`",
            f"`{base.target.name}`",
            _ratio(row.cpu_median, base.cpu_median),
            _ratio(row.paced_cpu_us, base.paced_cpu_us),
            _added(row.ttfb_ms.get("HTTP"), base.ttfb_ms.get("HTTP")),
            _added(row.latency_ms, base.latency_ms),
            _ratio(row.rss_kib, base.rss_kib),
            f"{number(row.redis_cpu_median)} / {number(row.paced_redis_cpu_us)}"
            if row.target.redis
            else "—",
            "—" if row.redis_clients is None else str(row.redis_clients),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def repeated_costs_table(curves: list[Curves], levels: Sequence[int]) -> str:
    """Per pair, from the repeated phases: the median of each run's own ratio."""
    at = " · ".join(f"{n:,}" for n in levels)
    lines = [
        "| target | beside | CPU per one-token answer "
        "| first token p99, ms added (burst) "
        f"| CPU per chunk at {at} streams | latency p99, ms added, at {at} "
        f"| Redis CPU µs/chunk at {at} |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for row, base in pairs(curves):
        cells = [
            f"`{row.target.name}`",
            f"`{base.target.name}`",
            _run_ratio(row.opening_us, base.opening_us),
            _run_added(
                [b.first_p99_ms for b in row.burst],
                [b.first_p99_ms for b in base.burst],
            ),
            _per_level(row, base, levels, lambda r, b: _run_ratio(_cpu(r), _cpu(b))),
            _per_level(row, base, levels, lambda r, b: _run_added(_p99(r), _p99(b))),
            " · ".join(
                number(statistics.median(redis)) if (redis := _redis(row, n)) else "—"
                for n in levels
            )
            if row.target.redis
            else "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _per_level(
    row: Curves,
    base: Curves,
    levels: Sequence[int],
    cell: Callable[[list[Level], list[Level]], str],
) -> str:
    return " · ".join(
        cell(row.capacity.get(n, []), base.capacity.get(n, [])) for n in levels
    )


def _cpu(levels: list[Level]) -> list[float | None]:
    return [level.cpu_us for level in levels]


def _p99(levels: list[Level]) -> list[float]:
    return [level.p99_ms for level in levels]


def _redis(row: Curves, streams: int) -> list[float]:
    return [
        level.redis_cpu_us
        for level in row.capacity.get(streams, [])
        if level.redis_cpu_us is not None
    ]


def readers_table(rows: list[Figures]) -> str:
    """One row per resumable target and worker read from: many readers at once."""
    lines = [
        "| target | reading from | readers OK | first event p50 / p99, ms "
        "| latency p50 / p99, ms | CPU µs/chunk | Redis CPU µs/chunk "
        "| Redis connections: before / with the readers |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        for readers in row.readers:
            lines.append(_readers_row(row, readers))
    return "\n".join(lines)


def _readers_row(row: Figures, readers: Readers) -> str:
    clients = readers.redis_clients
    cells = [
        f"`{row.target.name}`",
        readers.where,
        f"{readers.ok:,} / {readers.count:,}",
        " / ".join(f"{v:,.1f}" for v in readers.first_ms),
        " / ".join(f"{v:,.1f}" for v in readers.latency_ms)
        if readers.latency_ms
        else "—",
        number(readers.cpu_us),
        number(readers.redis_cpu_us),
        "—" if clients is None else f"{clients[0]} / {clients[1]}",
    ]
    return "| " + " | ".join(cells) + " |"
