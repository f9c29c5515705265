"""Run every target through the same measurements and report them side by side.

``python -m bench.run [--quick] [--targets a,b]`` (``make bench`` runs it).

One fake upstream (plain and TLS) serves the whole run. For each measurement each
target is started afresh, warmed up, measured by the load generator in its own
process, and stopped by its PID. The phases:

1. TTFB over HTTP, then over TLS to the upstream: sequential short answers, so
   connection reuse shows; the upstream counts the connections opened.
2. CPU per chunk: concurrent long answers at full speed; median of several runs,
   since the machine is shared and noisy.
3. Latency and memory: many concurrent streams at a token rate a model would
   produce; the upstream stamps each token so each chunk's delay can be measured.

Everything is bounded: each load has a deadline, and the load generator process is
killed if it overruns it. Ctrl-C or SIGTERM kills every process the run started.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import math
import multiprocessing
import multiprocessing.pool
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import loadgen, procs, report
from bench.loadgen import Load, Outcome
from bench.report import Figures, percentile
from bench.targets import BENCH, ROOT, TARGETS, Target, Upstream

OUT = BENCH / "out"  # logs and the CA file; not committed
START_TIMEOUT_SECONDS = 30.0
OVERRUN_SECONDS = 15.0  # past a load's deadline, the load generator is killed
MAX_WAVES = 10


@dataclass(frozen=True)
class Scale:
    """How much load each phase applies; ``--quick`` shrinks all of it."""

    runs: int = 3
    cpu_streams: int = 50
    cpu_tokens: int = 1000
    cpu_run_seconds: float = 0.5  # server CPU per run, at least: see Bench.cpu
    ttfb_requests: int = 100
    ttfb_tokens: int = 20
    streams: int = 1000
    rate: float = 20.0
    tokens: int = 100
    ramp_seconds: float = 1.0
    slack_seconds: float = 30.0  # a latency load's deadline past its nominal end
    sync_limit_seconds: float = 15.0  # the deadline when streams queue one by one


QUICK = Scale(runs=1, cpu_tokens=200, ttfb_requests=30, streams=200, tokens=40)


@dataclass(frozen=True)
class Server:
    """A running target: where to send requests and which process to measure."""

    target: Target
    port: int
    tls: bool
    pid: int | None
    ca_file: Path

    def load(self, prompt: str, **options: Any) -> Load:
        return Load(
            port=self.port,
            prompt=prompt,
            api=self.target.api,
            ca_file=str(self.ca_file)
            if self.tls and self.target.api == "openai"
            else None,
            **options,
        )


class LoadRunner:
    """Runs each load in one worker process, replaced if a load overruns."""

    def __init__(self) -> None:
        self.context = multiprocessing.get_context("spawn")
        self.pool = self.context.Pool(1)

    def start(self, load: Load) -> multiprocessing.pool.AsyncResult[Outcome]:
        return self.pool.apply_async(loadgen.run, (load,))

    def wait(
        self, pending: multiprocessing.pool.AsyncResult[Outcome], load: Load
    ) -> Outcome:
        try:
            return pending.get(load.deadline_seconds + OVERRUN_SECONDS)
        except multiprocessing.TimeoutError:
            self.close()
            self.pool = self.context.Pool(1)
            raise RuntimeError("the load generator overran its deadline") from None

    def run(self, load: Load) -> Outcome:
        return self.wait(self.start(load), load)

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


@dataclass(frozen=True)
class Applied:
    """One load's outcome, with what it cost the server (and the upstream)."""

    outcome: Outcome
    server_cpu: float  # seconds
    upstream_cpu: float
    seconds: float
    rss_before: int  # KiB
    rss_peak: int

    @property
    def per_chunk(self) -> float:
        """Server CPU seconds per text delta delivered."""
        return self.server_cpu / max(self.outcome.chunks, 1)

    def __str__(self) -> str:
        # The upstream's share of one core shows that it was not the bottleneck.
        return (
            f"{self.per_chunk * 1e6:.2f} µs/chunk ({self.outcome.chunks:,} chunks, "
            f"{self.server_cpu:.2f}s CPU in {self.seconds:.1f}s, upstream busy "
            f"{self.upstream_cpu / self.seconds:.0%})"
        )


class Bench:
    """The phases, each measuring one target with a fresh server."""

    def __init__(self, scale: Scale, upstream: Upstream, loads: LoadRunner) -> None:
        self.scale = scale
        self.upstream = upstream
        self.loads = loads
        self.started_at = time.monotonic()

    def say(self, target: Target, message: str) -> None:
        elapsed = time.monotonic() - self.started_at
        print(f"[{elapsed:5.0f}s] {target.name:<22} {message}", flush=True)

    @contextlib.contextmanager
    def serve(self, target: Target, tls: bool) -> Iterator[Server]:
        """Start ``target`` (unless it is ``direct``), warm it up, stop it after."""
        upstream_port = self.upstream.port_for(tls)
        if target.command is None:
            yield self.warm(
                Server(target, upstream_port, tls, None, self.upstream.ca_file)
            )
            return
        port = procs.free_port()
        with procs.started(
            target.argv(port, upstream_port),
            cwd=target.cwd,
            env=target.env(self.upstream, tls),
            log=OUT / f"{target.name}.log",
        ) as process:
            server = Server(target, port, tls, process.pid, self.upstream.ca_file)
            yield self.warm(server, process)

    def warm(
        self, server: Server, process: subprocess.Popen[bytes] | None = None
    ) -> Server:
        """Wait until a short answer comes back whole, then send a few more."""
        probe = server.load(f"full:{self.scale.ttfb_tokens}", deadline_seconds=5.0)

        def answered() -> bool:
            if process is not None and process.poll() is not None:
                log = OUT / f"{server.target.name}.log"
                raise RuntimeError(f"exited with {process.returncode}; see {log}")
            return loadgen.run(probe).ok == 1

        if not procs.wait_until(answered, START_TIMEOUT_SECONDS, interval=0.2):
            raise RuntimeError(f"no correct answer within {START_TIMEOUT_SECONDS:g}s")
        loadgen.run(dataclasses.replace(probe, requests=5))
        return server

    def ttfb(self, target: Target, figures: Figures, tls: bool) -> None:
        scheme = "TLS" if tls else "HTTP"
        with self.serve(target, tls) as server:
            before = self.upstream.accepted(tls)
            load = server.load(
                f"full:{self.scale.ttfb_tokens}",
                requests=self.scale.ttfb_requests,
                deadline_seconds=60.0,
            )
            outcome = self.loads.run(load)
            figures.new_connections[scheme] = self.upstream.accepted(tls) - before
        self.check(target, figures, outcome, load.requests, f"TTFB {scheme}")
        if outcome.ttfb:
            ms = [t * 1000 for t in outcome.ttfb]
            figures.ttfb_ms[scheme] = (percentile(ms, 50), percentile(ms, 99))
            self.say(
                target,
                f"TTFB {scheme}: p50 {figures.ttfb_ms[scheme][0]:.2f} ms, "
                f"p99 {figures.ttfb_ms[scheme][1]:.2f} ms, "
                f"{figures.new_connections[scheme]} new upstream connections",
            )

    def cpu(self, target: Target, figures: Figures) -> None:
        """µs per chunk over runs of enough waves of streams to read ticks finely.

        ``/proc`` counts CPU time in 10 ms ticks, so a cheap server (the relay) would
        round to a few ticks per wave. A small calibration load (also a full-speed
        warm-up) sets how many waves of ``cpu_streams`` streams each run sends, one
        after another on the same connections, to use about ``cpu_run_seconds``.
        """
        if target.command is None:
            return  # direct: no server, no CPU of its own
        scale = self.scale
        streams = scale.cpu_streams
        with self.serve(target, tls=False) as server:
            load = server.load(
                f"full:{scale.cpu_tokens}",
                concurrency=max(1, streams // 5),
                requests=max(1, streams // 5),
                deadline_seconds=60.0,
            )
            calibration = self.apply(server, load)
            # At least one tick: the relay may use less on a small calibration.
            per_wave = max(calibration.per_chunk * streams * scale.cpu_tokens, 0.01)
            waves = min(MAX_WAVES, max(1, math.ceil(scale.cpu_run_seconds / per_wave)))
            load = dataclasses.replace(
                load,
                concurrency=streams,
                requests=streams * waves,
                deadline_seconds=120.0,
            )
            for run in range(1, scale.runs + 1):
                applied = self.apply(server, load)
                self.check(target, figures, applied.outcome, load.requests, "CPU")
                if applied.outcome.chunks:
                    figures.cpu_us.append(applied.per_chunk * 1e6)
                    self.say(target, f"CPU run {run}/{scale.runs}: {applied}")

    def latency(self, target: Target, figures: Figures) -> None:
        scale = self.scale
        nominal = scale.ramp_seconds + scale.tokens / scale.rate
        deadline = (
            scale.sync_limit_seconds
            if target.one_at_a_time
            else nominal + scale.slack_seconds
        )
        with self.serve(target, tls=False) as server:
            load = server.load(
                f"rate:{scale.rate:g}:{scale.tokens}",
                concurrency=scale.streams,
                requests=scale.streams,
                ramp_seconds=scale.ramp_seconds,
                deadline_seconds=deadline,
            )
            applied = self.apply(server, load)
        outcome = applied.outcome
        figures.streams_ok, figures.done_seconds = outcome.ok, outcome.seconds
        self.check(target, figures, outcome, load.requests, "latency")
        if server.pid:
            figures.paced_cpu_us = applied.per_chunk * 1e6
            if not target.one_at_a_time:
                figures.rss_kib = (
                    applied.rss_peak - applied.rss_before
                ) / scale.streams
        if outcome.latencies:
            ms = [t * 1000 for t in outcome.latencies]
            figures.latency_ms = (percentile(ms, 50), percentile(ms, 99))
            self.say(
                target,
                f"latency p50 {figures.latency_ms[0]:.2f} ms, "
                f"p99 {figures.latency_ms[1]:.2f} ms, "
                f"RSS +{report.number(figures.rss_kib)} KiB/stream, "
                f"{outcome.ok:,}/{load.requests:,} streams correct; "
                f"{applied}",
            )

    def apply(self, server: Server, load: Load) -> Applied:
        """Run ``load`` against ``server``, watching its CPU and memory meanwhile."""
        pid = server.pid
        cpu = procs.cpu_seconds(pid) if pid else 0.0
        upstream_cpu = procs.cpu_seconds(self.upstream.pid)
        rss = peak = procs.rss_kib(pid) if pid else 0
        start = time.monotonic()
        pending = self.loads.start(load)
        while not pending.ready():
            if pid:
                peak = max(peak, procs.rss_kib(pid))
            pending.wait(0.2)
        outcome = self.loads.wait(pending, load)
        return Applied(
            outcome,
            server_cpu=procs.cpu_seconds(pid) - cpu if pid else 0.0,
            upstream_cpu=procs.cpu_seconds(self.upstream.pid) - upstream_cpu,
            seconds=time.monotonic() - start,
            rss_before=rss,
            rss_peak=peak,
        )

    def check(
        self,
        target: Target,
        figures: Figures,
        outcome: Outcome,
        expected: int,
        what: str,
    ) -> None:
        """Note failed requests (the row shows them, the run goes on)."""
        if outcome.ok == expected:
            return
        problems = ", ".join(
            f"{n} × {kind}" for kind, n in outcome.errors.most_common(3)
        )
        note = f"{what}: {outcome.ok}/{expected} correct ({problems})"
        figures.problems.append(note)
        self.say(target, note)


@contextlib.contextmanager
def fake_upstream() -> Iterator[Upstream]:
    upstream = Upstream(procs.free_port(), procs.free_port(), OUT / "ca.pem", 0)
    upstream.ca_file.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "bench.upstream",
        "--port",
        str(upstream.port),
        "--tls-port",
        str(upstream.tls_port),
        "--ca-file",
        str(upstream.ca_file),
    ]
    with procs.started(
        command, cwd=ROOT, env=dict(os.environ), log=OUT / "upstream.log"
    ) as process:

        def listening() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"the fake upstream exited; see {OUT}/upstream.log")
            try:
                upstream.accepted(tls=False)
            except OSError:
                return False
            return True

        if not procs.wait_until(listening, START_TIMEOUT_SECONDS):
            raise RuntimeError("the fake upstream did not start")
        yield dataclasses.replace(upstream, pid=process.pid)


def measure(scale: Scale, targets: list[Target]) -> list[Figures]:
    rows = [Figures(target) for target in targets]
    loads = LoadRunner()
    try:
        with fake_upstream() as upstream:
            bench = Bench(scale, upstream, loads)
            phases: list[Callable[[Target, Figures], None]] = [
                functools.partial(bench.ttfb, tls=False),
                functools.partial(bench.ttfb, tls=True),
                bench.cpu,
                bench.latency,
            ]
            for phase in phases:
                for figures in rows:
                    try:
                        phase(figures.target, figures)
                    except (RuntimeError, OSError) as exc:
                        figures.problems.append(f"{exc}")
                        bench.say(figures.target, f"failed: {exc}")
    finally:
        loads.close()
    return rows


def results_page(
    rows: list[Figures], scale: Scale, made_by: str, seconds: float
) -> str:
    """The table, what each column measures, and what went wrong."""
    s = scale
    targets = "\n".join(f"- `{r.target.name}`: {r.target.about}" for r in rows)
    cpu_runs = "; ".join(
        f"`{r.target.name}` {', '.join(f'{v:.2f}' for v in r.cpu_us)}"
        for r in rows
        if r.cpu_us
    )
    problems = (
        "\n".join(
            ["Requests that did not end correctly:"]
            + [f"- `{r.target.name}`: {p}" for r in rows for p in r.problems]
        )
        if any(r.problems for r in rows)
        else ""
    )
    return f"""# Benchmark results

Made by {made_by} on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in {seconds / 60:.1f} min,
on {os.cpu_count()} CPUs shared with other work (Linux {platform.release()}, Python
{platform.python_version()}, Node {_node_version()}). Each server runs as one process
(one worker) beside the fake upstream and the load generator, on the same CPUs.

{report.table(rows, s.streams, s.rate)}

{targets}

What the columns measure:

- **CPU µs/chunk, full speed**: user + system CPU time of the server's processes
  (gunicorn's master and worker, from `/proc`) per text delta delivered, while
  {s.cpu_streams} concurrent streams of {s.cpu_tokens:,} tokens run as fast as they
  can, in as many waves as it takes to use {s.cpu_run_seconds:g}s of CPU (up to
  {MAX_WAVES}); median of {s.runs} run(s). Fast upstream reads arrive in large
  blocks, which lets a server batch its work.
- **CPU µs/chunk, paced**: the same, during the latency measurement below, where
  deltas arrive one by one as a model sends them; it includes each stream's setup,
  spread over its {s.tokens} tokens. `/proc` counts CPU time in 10 ms ticks, so a
  figure from a few ticks (the relay's at full speed) only says "about zero".
- **TTFB added**: time from sending the request to the first text delta, over
  {s.ttfb_requests} sequential requests of {s.ttfb_tokens} tokens after a warm-up,
  p50 / p99, minus the same for `direct` (whose row shows its own values); with
  the server talking plain HTTP, then TLS, to the upstream.
- **new upstream conns**: connections the upstream accepted during those
  {s.ttfb_requests} requests: 0 means the warm-up's connection was reused.
- **latency added p99**: per chunk, the client's receive time minus the time the
  upstream stamped into the token, p99 over all chunks received, minus `direct`'s
  p99; {s.streams:,} concurrent streams of {s.tokens} tokens at {s.rate:g}
  tokens/s, opened over {s.ramp_seconds:g}s.
- **streams OK, all done in**: streams whose text was exact and ended with `[DONE]`,
  and the time until the last one ended or the deadline passed
  ({s.ramp_seconds + s.tokens / s.rate:g}s at best; the deadline is
  {s.slack_seconds:g}s later, or {s.sync_limit_seconds:g}s for `naive-sync`, which
  serves one stream at a time). A server slow to start streams shows here: its
  latency is then measured with fewer streams open at once.
- **RSS KiB/stream**: peak resident memory of the server's processes while the
  streams are open, minus the same after warm-up, divided by {s.streams:,}.

CPU per run, full speed (µs/chunk): {cpu_runs or "none"}.

{problems or "Every request ended correctly."}
"""


def _node_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    return "not found"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    parser.add_argument(
        "--targets",
        help="comma-separated subset of: " + ", ".join(t.name for t in TARGETS),
    )
    for knob in dataclasses.fields(Scale):
        parser.add_argument(
            "--" + knob.name.replace("_", "-"),
            type=type(knob.default),
            metavar="N",
            help=f"default {knob.default:g} (--quick: {getattr(QUICK, knob.name):g})",
        )
    parser.add_argument("--results", type=Path, default=BENCH / "results.md")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "bench.png")
    args = parser.parse_args(argv)
    knobs = {
        knob.name: getattr(args, knob.name)
        for knob in dataclasses.fields(Scale)
        if getattr(args, knob.name) is not None
    }
    scale = dataclasses.replace(QUICK if args.quick else Scale(), **knobs)
    names = args.targets.split(",") if args.targets else [t.name for t in TARGETS]
    unknown = set(names) - {t.name for t in TARGETS}
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    targets = [t for t in TARGETS if t.name in names]

    signal.signal(signal.SIGINT, procs.exit_on_signal)
    signal.signal(signal.SIGTERM, procs.exit_on_signal)
    OUT.mkdir(exist_ok=True)
    start = time.monotonic()
    rows = measure(scale, targets)
    seconds = time.monotonic() - start
    command = shlex.join(["python", "-m", "bench.run", *(argv or sys.argv[1:])])
    made_by = f"`{command}`"
    if os.environ.get("MAKELEVEL"):
        made_by = f"`make bench` ({made_by})"
    page = results_page(rows, scale, made_by, seconds)
    print("\n" + report.table(rows, scale.streams, scale.rate))
    args.results.write_text(page)
    report.plot(rows, scale.streams, scale.rate, args.plot)
    print(f"\nWrote {args.results} and {args.plot} in {seconds / 60:.1f} min.")


if __name__ == "__main__":
    main()
