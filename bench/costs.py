"""What a setting costs: a target beside the one it changes, measured in one run.

Why apart: the other tables compare servers with ``direct``; a user choosing
``STREAM_RESUMABLE=1`` asks what it adds to the app they already run. So each
target with a ``beside`` (``flask-gevent-resumable`` beside ``flask-gevent``) gets
its CPU figures as ratios to the other's and its times as milliseconds added to
the other's, both from the same run on the same machine, where the noise of a
shared machine falls on both.
"""

from __future__ import annotations

from bench.capacity import Curves, median
from bench.report import Figures, number


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "—"
    return f"×{value / base:.2f}"


def _added(values: tuple[float, ...] | None, bases: tuple[float, ...] | None) -> str:
    if values is None or bases is None:
        return "—"
    return " / ".join(f"{v - b:+,.2f}" for v, b in zip(values, bases, strict=True))


def pairs(rows: list[Figures]) -> list[tuple[Figures, Figures]]:
    """(target, the target it is beside) for each such pair that was measured."""
    by_name = {row.target.name: row for row in rows}
    return [
        (row, by_name[row.target.beside])
        for row in rows
        if row.target.beside in by_name
    ]


def costs_table(rows: list[Figures], curves: list[Curves]) -> str:
    """Per pair: CPU as ratios, times as ms added, Redis's own CPU per chunk."""
    opening = {c.target.name: median(c.opening_us) for c in curves}
    lines = [
        "| target | beside | CPU per chunk, full speed | CPU per chunk, paced "
        "| CPU per one-token answer | TTFB p50 / p99, ms added (HTTP) "
        "| latency p50 / p99, ms added | RSS per stream "
        "| Redis CPU µs/chunk, full speed / paced |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row, base in pairs(rows):
        cells = [
            f"`{row.target.name}`",
            f"`{base.target.name}`",
            _ratio(row.cpu_median, base.cpu_median),
            _ratio(row.paced_cpu_us, base.paced_cpu_us),
            _ratio(opening.get(row.target.name), opening.get(base.target.name)),
            _added(row.ttfb_ms.get("HTTP"), base.ttfb_ms.get("HTTP")),
            _added(row.latency_ms, base.latency_ms),
            _ratio(row.rss_kib, base.rss_kib),
            f"{number(row.redis_cpu_median)} / {number(row.paced_redis_cpu_us)}"
            if row.target.redis
            else "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readers_table(rows: list[Figures]) -> str:
    """One row per resumable target: many readers of one answer at once."""
    lines = [
        "| target | readers OK | first event p50 / p99, ms "
        "| latency p50 / p99, ms | CPU µs/chunk | Redis CPU µs/chunk "
        "| Redis connections: before / with the readers |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        if (readers := row.readers) is None:
            continue
        clients = readers.redis_clients
        cells = [
            f"`{row.target.name}`",
            f"{readers.ok:,} / {readers.count:,}",
            " / ".join(f"{v:,.1f}" for v in readers.first_ms),
            " / ".join(f"{v:,.1f}" for v in readers.latency_ms)
            if readers.latency_ms
            else "—",
            number(readers.cpu_us),
            number(readers.redis_cpu_us),
            "—" if clients is None else f"{clients[0]} / {clients[1]}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
