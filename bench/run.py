"""Run every target through the same measurements and report them side by side.

``python -m bench.run [--quick] [--targets a,b] [--phases a,b] [--runs N]``
(``make bench`` runs it; ``--help`` lists every knob).

One fake upstream (plain and TLS) serves the whole run. For each measurement each
target is started afresh, warmed up, measured by the load generator in its own
process, and stopped by its PID. The phases:

1. TTFB over HTTP, then over TLS to the upstream: sequential short answers, so
   connection reuse shows; the upstream counts the connections opened.
2. CPU per chunk: concurrent long answers at full speed; median of several runs,
   since the machine is shared and noisy.
3. Latency and memory: many concurrent streams at a token rate a model would
   produce; the upstream stamps each token so each chunk's delay can be measured.
4. Readers (resumable targets only): many clients resuming one answer at once,
   on the worker producing it and (with Redis) on another, and the Redis
   connections the readers' worker holds for them.

Then, ``--runs`` times over with a fresh server per target each time (medians and
spread in ``bench.capacity``):

5. Opening: server CPU per request for a one-token answer, which is mostly the
   cost of opening a stream.
6. Burst: many streams opened at once; time to first token, and whether the
   server delivers the chunks as fast as the upstream offers them.
7. Capacity: latency and CPU per chunk at several numbers of concurrent streams.

The ``-redis`` targets log to a ``redis-server`` the run starts on 127.0.0.1 (and
stops by its PID), emptied before each of their servers starts; its CPU time is
reported beside theirs.

Everything is bounded: each load has a deadline, and the load generator process is
killed if it overruns it. Ctrl-C or SIGTERM kills every process the run started.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import http.client
import json
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench import capacity, costs, loadgen, procs, redis_server, report
from bench.capacity import Burst, Curves, Level
from bench.loadgen import Load, Outcome
from bench.redis_server import RedisServer
from bench.report import Figures, Readers, percentile
from bench.targets import BENCH, ROOT, TARGETS, Target, Upstream, before_targets

OUT = BENCH / "out"  # logs and the CA file; not committed
START_TIMEOUT_SECONDS = 30.0
OVERRUN_SECONDS = 15.0  # past a load's deadline, the load generator is killed
MAX_WAVES = 10
PHASES = ("ttfb", "cpu", "latency", "readers", "opening", "burst", "capacity")
REPEATED = PHASES[4:]  # a fresh server per target per run
# How a server names its connections to the bench's Redis (``CLIENT SETNAME``):
# the one measured, and a second one producing an answer that the first follows.
SERVER, PRODUCER = "bench-server", "bench-producer"


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
    readers: int = 1000  # resuming one answer at once, opened over ramp_seconds
    reader_tokens: int = 200  # the answer's, at ``rate``
    sync_limit_seconds: float = 15.0  # the deadline when streams queue one by one
    capacity_levels: str = "250,500,1000,2000"  # concurrent streams, at ``rate``
    capacity_tokens: int = 60
    capacity_ramp_seconds: float = 1.0
    burst_streams: int = 1000
    burst_tokens: int = 60  # at ``rate``: 50 ms apart
    opening_cpu_seconds: float = 1.0  # server CPU per opening run, at least
    opening_concurrency: int = 4
    loadgens: int = 2  # load generator processes for the burst and capacity loads

    @property
    def levels(self) -> list[int]:
        return [int(n) for n in self.capacity_levels.split(",")]


QUICK = Scale(
    runs=1,
    cpu_tokens=200,
    ttfb_requests=30,
    streams=200,
    tokens=40,
    readers=200,
    reader_tokens=60,
    capacity_levels="100,200",
    capacity_tokens=40,
    capacity_ramp_seconds=0.5,
    burst_streams=200,
    burst_tokens=20,
    opening_cpu_seconds=0.3,
)


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


Pending = list[multiprocessing.pool.AsyncResult[Outcome]]


class LoadRunner:
    """Runs each load in worker processes, replaced if a load overruns.

    A load can be split over several processes (``parts``), so that the load
    generator keeps up with thousands of streams while the server under test
    has its share of the CPUs.
    """

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.context = multiprocessing.get_context("spawn")
        self.pool = self.context.Pool(processes)

    def start(self, load: Load, parts: int = 1) -> Pending:
        return [
            self.pool.apply_async(loadgen.run, (part,))
            for part in load.split(min(parts, self.processes))
        ]

    def wait(self, pending: Pending, load: Load) -> Outcome:
        deadline = time.monotonic() + load.deadline_seconds + OVERRUN_SECONDS
        outcome = Outcome()
        try:
            for part in pending:
                outcome.merge(part.get(max(deadline - time.monotonic(), 0.0)))
        except multiprocessing.TimeoutError:
            self.close()
            self.pool = self.context.Pool(self.processes)
            raise RuntimeError("the load generator overran its deadline") from None
        return outcome

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
    redis_cpu: float  # seconds, for a target logging to the bench's Redis
    redis_clients: int  # the most connections the server held to it at once

    @property
    def per_chunk(self) -> float:
        """Server CPU seconds per text delta delivered."""
        return self.server_cpu / max(self.outcome.chunks, 1)

    @property
    def redis_per_chunk(self) -> float:
        """Redis's CPU seconds per text delta delivered."""
        return self.redis_cpu / max(self.outcome.chunks, 1)

    def __str__(self) -> str:
        # The upstream's share of one core shows that it was not the bottleneck.
        return (
            f"{self.per_chunk * 1e6:.2f} µs/chunk ({self.outcome.chunks:,} chunks, "
            f"{self.server_cpu:.2f}s CPU in {self.seconds:.1f}s, upstream busy "
            f"{self.upstream_cpu / self.seconds:.0%})"
        )


class Bench:
    """The phases, each measuring one target with a fresh server."""

    def __init__(
        self,
        scale: Scale,
        upstream: Upstream,
        loads: LoadRunner,
        redis: RedisServer | None,
    ) -> None:
        self.scale = scale
        self.upstream = upstream
        self.loads = loads
        self.redis = redis
        self.started_at = time.monotonic()

    def say(self, target: Target, message: str) -> None:
        elapsed = time.monotonic() - self.started_at
        print(f"[{elapsed:5.0f}s] {target.name:<22} {message}", flush=True)

    @contextlib.contextmanager
    def serve(
        self, target: Target, tls: bool, redis_name: str = SERVER, flush: bool = True
    ) -> Iterator[Server]:
        """Start ``target`` (unless it is ``direct``), warm it up, stop it after.

        A target that logs to the bench's Redis names its connections
        ``redis_name`` (to count them apart), on an emptied Redis unless ``flush``
        is false (a second server beside the first).
        """
        upstream_port = self.upstream.port_for(tls)
        if target.command is None:
            yield self.warm(
                Server(target, upstream_port, tls, None, self.upstream.ca_file)
            )
            return
        port = procs.free_port()
        redis = self.redis if target.redis else None
        if redis is not None and flush:
            redis.flush()
        with procs.started(
            target.argv(port, upstream_port),
            cwd=target.cwd,
            env=target.env(
                self.upstream, tls, redis.url(redis_name) if redis else None
            ),
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
        self.check(target, figures.problems, outcome, load.requests, f"TTFB {scheme}")
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
                self.check(
                    target, figures.problems, applied.outcome, load.requests, "CPU"
                )
                if applied.outcome.chunks:
                    figures.cpu_us.append(applied.per_chunk * 1e6)
                    if target.redis:
                        figures.redis_cpu_us.append(applied.redis_per_chunk * 1e6)
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
        self.check(target, figures.problems, outcome, load.requests, "latency")
        if server.pid:
            figures.paced_cpu_us = applied.per_chunk * 1e6
            if target.redis:
                figures.paced_redis_cpu_us = applied.redis_per_chunk * 1e6
                figures.redis_clients = applied.redis_clients
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

    def apply(self, server: Server, load: Load, parts: int = 1) -> Applied:
        """Run ``load`` against ``server``, watching its CPU and memory meanwhile
        (and its connections to the bench's Redis, if it logs there)."""
        pid = server.pid
        redis = self.redis if server.target.redis else None
        cpu = procs.cpu_seconds(pid) if pid else 0.0
        upstream_cpu = procs.cpu_seconds(self.upstream.pid)
        redis_cpu = redis.cpu_seconds() if redis else 0.0
        rss = peak = procs.rss_kib(pid) if pid else 0
        clients = 0
        start = time.monotonic()
        pending = self.loads.start(load, parts)
        while unfinished := [part for part in pending if not part.ready()]:
            if pid:
                peak = max(peak, procs.rss_kib(pid))
            if redis:
                clients = max(clients, redis.clients(SERVER))
            unfinished[0].wait(0.2)
        outcome = self.loads.wait(pending, load)
        return Applied(
            outcome,
            server_cpu=procs.cpu_seconds(pid) - cpu if pid else 0.0,
            upstream_cpu=procs.cpu_seconds(self.upstream.pid) - upstream_cpu,
            seconds=time.monotonic() - start,
            rss_before=rss,
            rss_peak=peak,
            redis_cpu=redis.cpu_seconds() - redis_cpu if redis else 0.0,
            redis_clients=clients,
        )

    def readers(self, target: Target, figures: Figures) -> None:
        """``readers`` clients resuming one answer at once, from its first token.

        On the worker that produces the answer; with Redis, also on another worker
        (a second server sharing the Redis), which follows the answer's log there.
        """
        if not target.resumable:
            return
        self.read_together(target, figures, elsewhere=False)
        if target.redis:
            self.read_together(target, figures, elsewhere=True)

    def read_together(self, target: Target, figures: Figures, elsewhere: bool) -> None:
        """One request starts a paced answer and leaves after its first text event
        (the answer runs on); the readers then open over ``ramp_seconds``, each
        with that event's id as ``Last-Event-ID``, as reloaded pages would: the
        log so far, then the live rest. With Redis, the connections the readers'
        worker holds to it are counted meanwhile (``CLIENT LIST``, by name).
        """
        s = self.scale
        prompt = f"rate:{s.rate:g}:{s.reader_tokens}"
        redis = self.redis if target.redis else None
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(self.serve(target, tls=False))
            producer = server
            if elsewhere:
                producer = stack.enter_context(
                    self.serve(target, tls=False, redis_name=PRODUCER, flush=False)
                )
            before = redis.clients(SERVER) if redis else 0
            load = server.load(
                prompt,
                concurrency=s.readers,
                requests=s.readers,
                ramp_seconds=s.ramp_seconds,
                deadline_seconds=s.reader_tokens / s.rate + s.slack_seconds,
                last_event_id=first_event_id(producer.port, prompt),
                skipped=1,
            )
            applied = self.apply(server, load, parts=s.loadgens)
        where = "another worker" if elsewhere else "the producing worker"
        outcome = applied.outcome
        self.check(
            target, figures.problems, outcome, load.requests, f"readers on {where}"
        )
        if not outcome.ttfb:
            return
        first = [t * 1000 for t in outcome.ttfb]
        live = [t * 1000 for t in outcome.latencies]
        readers = Readers(
            where=where,
            count=s.readers,
            ok=outcome.ok,
            first_ms=(percentile(first, 50), percentile(first, 99)),
            latency_ms=(percentile(live, 50), percentile(live, 99)) if live else None,
            cpu_us=applied.per_chunk * 1e6,
            redis_cpu_us=applied.redis_per_chunk * 1e6 if redis else None,
            redis_clients=(before, applied.redis_clients) if redis else None,
        )
        figures.readers.append(readers)
        self.say(
            target,
            f"{outcome.ok:,}/{s.readers:,} readers OK on {where}, first event p99 "
            f"{readers.first_ms[1]:.1f} ms"
            + (
                f", Redis connections {before} then up to {applied.redis_clients}"
                if redis
                else ""
            )
            + f"; {applied}",
        )

    def repeated(self, rows: list[Curves], phases: list[str]) -> None:
        """The opening, burst and capacity phases, ``runs`` times over.

        Each run starts each target afresh and takes it through the phases in
        turn; runs go round the targets, so a noisy minute on the shared machine
        falls on one run of several targets rather than on every run of one.
        """
        runs = self.scale.runs
        for run in range(1, runs + 1):
            for row in rows:
                target = row.target
                if target.one_at_a_time:
                    if run == 1:
                        row.problems.append("not measured: one stream at a time")
                    continue
                try:
                    with self.serve(target, tls=False) as server:
                        if "opening" in phases and server.pid:
                            self.opening(server, row, run)
                        if "burst" in phases:
                            self.burst(server, row, run)
                        if "capacity" in phases:
                            self.capacity(server, row, run)
                except (RuntimeError, OSError) as exc:
                    row.problems.append(f"run {run}: {exc}")
                    self.say(target, f"run {run} failed: {exc}")

    def opening(self, server: Server, row: Curves, run: int) -> None:
        """Server CPU per one-token answer: a calibration sizes a run to read ticks.

        ``opening_concurrency`` connections send requests one after another on
        keep-alive connections, as many as it takes to use ``opening_cpu_seconds``.
        """
        scale = self.scale
        load = server.load(
            "full:1",
            concurrency=scale.opening_concurrency,
            requests=max(200, scale.opening_concurrency),
            deadline_seconds=60.0,
        )
        calibration = self.apply(server, load)
        answered = max(calibration.outcome.ok, 1)
        per_request = max(calibration.server_cpu / answered, 1e-5)
        requests = math.ceil(scale.opening_cpu_seconds / per_request)
        load = dataclasses.replace(
            load, requests=min(max(requests, 200), 50_000), deadline_seconds=120.0
        )
        applied = self.apply(server, load)
        self.check(
            row.target,
            row.problems,
            applied.outcome,
            load.requests,
            f"run {run}: opening",
        )
        if applied.outcome.ok:
            row.opening_us.append(applied.server_cpu / applied.outcome.ok * 1e6)
            self.say(
                server.target,
                f"opening run {run}: {row.opening_us[-1]:,.0f} µs CPU/request "
                f"({applied.outcome.ok:,} requests, {applied.server_cpu:.2f}s CPU)",
            )

    def burst(self, server: Server, row: Curves, run: int) -> None:
        """``burst_streams`` opened at once: first token, and chunks/s kept up."""
        s = self.scale
        load = server.load(
            f"rate:{s.rate:g}:{s.burst_tokens}",
            concurrency=s.burst_streams,
            requests=s.burst_streams,
            deadline_seconds=s.burst_tokens / s.rate + s.slack_seconds,
        )
        outcome = self.apply(server, load, parts=s.loadgens).outcome
        self.check(
            row.target, row.problems, outcome, load.requests, f"run {run}: burst"
        )
        if not outcome.ttfb:
            return
        first = [t * 1000 for t in outcome.ttfb]
        result = Burst(
            first_p50_ms=percentile(first, 50),
            first_p99_ms=percentile(first, 99),
            delivered=outcome.chunks
            / max(outcome.last_received - outcome.first_sent, 1e-3),
            offered=s.burst_streams * s.burst_tokens * s.rate / (s.burst_tokens - 1),
            ok=outcome.ok,
        )
        row.burst.append(result)
        self.say(
            server.target,
            f"burst run {run}: first token p50 {result.first_p50_ms:.1f} ms, "
            f"p99 {result.first_p99_ms:.1f} ms, {result.delivered:,.0f} of "
            f"{result.offered:,.0f} chunks/s, {outcome.ok:,}/{load.requests:,} OK",
        )

    def capacity(self, server: Server, row: Curves, run: int) -> None:
        """Each number of streams in turn, measured while all of them are open."""
        s = self.scale
        for streams in s.levels:
            load = server.load(
                f"rate:{s.rate:g}:{s.capacity_tokens}",
                concurrency=streams,
                requests=streams,
                ramp_seconds=s.capacity_ramp_seconds,
                deadline_seconds=s.capacity_ramp_seconds
                + s.capacity_tokens / s.rate
                + s.slack_seconds,
            )
            applied = self.apply(server, load, parts=s.loadgens)
            outcome = applied.outcome
            self.check(
                row.target,
                row.problems,
                outcome,
                load.requests,
                f"run {run}: {streams:,} streams",
            )
            if not outcome.latencies:
                row.problems.append(f"run {run}: no chunk at {streams:,} streams")
                continue
            delays = [t * 1000 for t in outcome.latencies]
            level = Level(
                p50_ms=percentile(delays, 50),
                p99_ms=percentile(delays, 99),
                cpu_us=applied.per_chunk * 1e6 if server.pid else None,
                rss_kib=(applied.rss_peak - applied.rss_before) / streams
                if server.pid
                else None,
                all_open_seconds=outcome.all_open_seconds,
                ok=outcome.ok,
                redis_cpu_us=applied.redis_per_chunk * 1e6
                if server.target.redis
                else None,
            )
            row.capacity.setdefault(streams, []).append(level)
            self.say(
                server.target,
                f"capacity run {run}, {streams:,} streams: latency p50 "
                f"{level.p50_ms:.2f} ms, p99 {level.p99_ms:.2f} ms, "
                f"RSS +{report.number(level.rss_kib)} KiB/stream, all open for "
                f"{max(level.all_open_seconds, 0):.1f}s, "
                f"{outcome.ok:,}/{streams:,} OK; {applied}",
            )

    def check(
        self,
        target: Target,
        problems: list[str],
        outcome: Outcome,
        expected: int,
        what: str,
    ) -> None:
        """Note failed requests (the row shows them, the run goes on)."""
        if outcome.ok == expected:
            return
        kinds = ", ".join(f"{n} × {kind}" for kind, n in outcome.errors.most_common(3))
        note = f"{what}: {outcome.ok}/{expected} correct ({kinds})"
        problems.append(note)
        self.say(target, note)


def first_event_id(port: int, prompt: str) -> str:
    """Start a resumable answer to ``prompt``; the id of its first text event.

    The connection is closed after that event: the answer runs on without it.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "GET",
            f"/completionChat?prompt={quote(prompt)}",
            headers={"Accept": "text/event-stream"},
        )
        response = conn.getresponse()
        if response.status != 200 or not response.getheader("X-Stream-Id"):
            raise RuntimeError(
                f"not resumable: HTTP {response.status} without X-Stream-Id "
                "(is STREAM_RESUMABLE in this checkout?)"
            )
        event_id = ""
        while line := response.readline().decode():
            if line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
                return event_id
        raise RuntimeError("the answer ended before its first text event")
    finally:
        conn.close()


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


@contextlib.contextmanager
def bench_redis(targets: list[Target]) -> Iterator[RedisServer | None]:
    """The run's own Redis, if a target logs to one."""
    if not any(target.redis for target in targets):
        yield None
        return
    with redis_server.started(OUT / "redis", OUT / "redis.log") as redis:
        yield redis


def measure(
    scale: Scale, targets: list[Target], phases: list[str]
) -> tuple[list[Figures], list[Curves]]:
    """Run the chosen phases: the single-run ones first, then the repeated ones."""
    rows = [Figures(target) for target in targets]
    curves = [Curves(target) for target in targets]
    loads = LoadRunner(max(1, scale.loadgens))
    try:
        with fake_upstream() as upstream, bench_redis(targets) as redis:
            bench = Bench(scale, upstream, loads, redis)
            single: dict[str, list[Callable[[Target, Figures], None]]] = {
                "ttfb": [
                    functools.partial(bench.ttfb, tls=False),
                    functools.partial(bench.ttfb, tls=True),
                ],
                "cpu": [bench.cpu],
                "latency": [bench.latency],
                "readers": [bench.readers],
            }
            for phase in (p for name in phases for p in single.get(name, [])):
                for figures in rows:
                    try:
                        phase(figures.target, figures)
                    except (RuntimeError, OSError) as exc:
                        figures.problems.append(f"{exc}")
                        bench.say(figures.target, f"failed: {exc}")
            if set(phases) & set(REPEATED):
                bench.repeated(curves, phases)
    finally:
        loads.close()
    return rows, curves


def results_page(
    rows: list[Figures],
    curves: list[Curves],
    scale: Scale,
    phases: list[str],
    made_by: str,
    seconds: float,
) -> str:
    """The tables of the phases that ran, what each column measures, what failed."""
    targets = "\n".join(f"- `{r.target.name}`: {r.target.about}" for r in rows)
    sections = [
        f"""# Benchmark results

Made by {made_by} on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in {seconds / 60:.1f} min,
on {os.cpu_count()} CPUs shared with other work (Linux {platform.release()}, Python
{platform.python_version()}, Node {_node_version()}). Each server runs as one process
(one worker) beside the fake upstream and the load generator, on the same CPUs.
Phases: {", ".join(phases)}.

{targets}"""
    ]
    if set(phases) & {"ttfb", "cpu", "latency"}:
        sections.append(single_run_section(rows, scale))
    if costs.pairs(rows) and set(phases) - {"readers"}:
        sections.append(costs_section(rows, curves, scale, phases))
    if any(r.readers for r in rows):
        sections.append(readers_section(rows, scale))
    if "capacity" in phases:
        sections.append(capacity_section(curves, scale))
    if "burst" in phases:
        sections.append(burst_section(curves, scale))
    if "opening" in phases:
        sections.append(opening_section(curves, scale))
    problems = [f"- `{r.target.name}`: {p}" for r in rows for p in r.problems] + [
        f"- `{c.target.name}`: {p}" for c in curves for p in c.problems
    ]
    sections.append(
        "\n".join(["Requests that did not end correctly:", *problems])
        if problems
        else "Every request ended correctly."
    )
    return "\n\n".join(sections) + "\n"


def single_run_section(rows: list[Figures], s: Scale) -> str:
    cpu_runs = "; ".join(
        f"`{r.target.name}` {', '.join(f'{v:.2f}' for v in r.cpu_us)}"
        for r in rows
        if r.cpu_us
    )
    return f"""## CPU, time to first byte, latency and memory

{report.table(rows, s.streams, s.rate)}

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

CPU per run, full speed (µs/chunk): {cpu_runs or "none"}."""


def costs_section(
    rows: list[Figures], curves: list[Curves], s: Scale, phases: list[str]
) -> str:
    single = set(phases) & {"ttfb", "cpu", "latency"}
    repeated = set(phases) & set(REPEATED)
    tables = [
        costs.costs_table(rows) if single else "",
        costs.repeated_costs_table(curves, s.levels) if repeated else "",
    ]
    shown = "\n\n".join(table for table in tables if table)
    return f"""## What a setting costs, beside the app without it

{shown}

Each target beside the one it changes (its `beside`), both measured in this run:
CPU as the ratio of the two (×1.00: the same), times as milliseconds added to the
other's (raw percentiles, not minus `direct`). From the figures above:

- **CPU per chunk, full speed**: the ratio of the medians of {s.runs} run(s);
  **paced**: of the latency measurement's {s.streams:,} streams.
- **TTFB**, **latency**: p50 / p99 of {s.ttfb_requests} sequential requests, and of
  every chunk of {s.streams:,} streams × {s.rate:g} tokens/s.
- **Redis CPU µs/chunk**: CPU time of the bench's `redis-server` (on the same CPUs,
  not counted in the server's) over the chunks delivered: what the answer logs
  cost Redis. **Redis connections**: the most the server held to it at once during
  the latency measurement (`CLIENT LIST` every 0.2 s, by the name its `REDIS_URL`
  gives them: `?client_name=`).

From the repeated phases (opening, burst, capacity), where each run takes every
target in turn: each cell is the median over {s.runs} run(s) of that run's ratio
(or difference), so that a noisy minute falls on both of its sides. **CPU per
one-token answer**: what opening and closing a stream costs; **first token p99**:
of {s.burst_streams:,} streams opened at once; **CPU per chunk**, **latency p99**:
at each number of concurrent streams of the capacity phase."""


def readers_section(rows: list[Figures], s: Scale) -> str:
    return f"""## Readers: {s.readers:,} clients resuming one answer at once

{costs.readers_table(rows)}

One request starts an answer of {s.reader_tokens} tokens at {s.rate:g} tokens/s
and leaves after its first text event (the answer runs on); {s.readers:,} readers
then open over {s.ramp_seconds:g}s, each with that event's id as `Last-Event-ID` (as
reloaded pages would), and read the log so far, then the live rest: from the worker
producing the answer, and, with Redis, from another worker (a second server of the
same target, sharing the Redis), which follows the answer's log there.

- **readers OK**: readers whose text was exact from the second token on and ended
  with `[DONE]`.
- **first event**: from sending the request to the first event read (from the log).
- **latency**: per chunk the upstream sent after the reader's request, the client's
  receive time minus the upstream's stamp, p50 / p99 (raw, not minus `direct`).
- **CPU µs/chunk**: the readers' worker's CPU time over the chunks they received;
  **Redis CPU µs/chunk**: the bench's `redis-server`'s over the same chunks.
- **Redis connections**: the connections the readers' worker holds to Redis
  (as above), after its warm-up, and at their most while the readers read."""


def capacity_section(curves: list[Curves], s: Scale) -> str:
    best = s.capacity_tokens / s.rate - s.capacity_ramp_seconds
    return f"""## Capacity: latency and CPU against concurrent streams

{capacity.capacity_table(curves, s.levels, s.rate)}

Each cell is the median of {s.runs} run(s), with the runs' min–max in brackets;
each run starts every target afresh and takes it through the opening and burst
phases, then through the numbers of streams in turn. Per run and number of streams:
{s.capacity_tokens} tokens per stream at {s.rate:g} tokens/s, streams opened evenly
over {s.capacity_ramp_seconds:g}s, by {s.loadgens} load generator process(es).

- **latency added p50, p99**: per chunk, the client's receive time minus the time
  the upstream stamped into the token, over all chunks, minus the same percentile
  of `direct` (the median of its runs; its own row shows its values).
- **CPU µs/chunk**: user + system CPU time of the server's processes during the
  load over the chunks delivered; stream setup included, spread over
  {s.capacity_tokens} tokens (as "paced" above).
- **RSS KiB/stream**: peak resident memory during the load minus the same before
  it, over the number of streams; the server already served the smaller loads, so
  pools it grew then are not counted again.
- **all open at once**: from the moment the last stream got its first token to
  the moment the first stream got its last ({best:g}s at best). Less means the
  server opened the streams more slowly than they came (0: never all open at
  once), so its latency was measured with fewer streams open.
- **streams OK**: streams whose text was exact and ended with `[DONE]`, per run."""


def burst_section(curves: list[Curves], s: Scale) -> str:
    return f"""## Burst: {s.burst_streams:,} streams opened at once

{capacity.burst_table(curves)}

{s.burst_streams:,} connections each send one request at the same moment (no
ramp); each answer has {s.burst_tokens} tokens {1000 / s.rate:g} ms apart. Median of
{s.runs} run(s), min–max in brackets.

- **first token p50, p99**: from sending the request to receiving its first text
  delta (the upstream sends it at once): how long the server takes to open them all.
- **chunks/s delivered**: chunks received over the time from the first request to
  the last chunk; **offered**: what the upstream sends if every stream starts at
  once ({s.burst_streams:,} × {s.burst_tokens} chunks over
  {(s.burst_tokens - 1) / s.rate:g}s). `direct` shows what the load generator and
  the upstream reach on their own."""


def opening_section(curves: list[Curves], s: Scale) -> str:
    return f"""## Opening: server CPU per one-token answer

{capacity.opening_table(curves)}

{s.opening_concurrency} connections send requests for a one-token answer one after
another (keep-alive), as many as it takes for the server to use
{s.opening_cpu_seconds:g}s of CPU (sized by a first run of 200, which also warms it
up): user + system CPU time of the server's processes over the requests answered.
With one token per answer, this is what opening and closing a stream costs. Median
of {s.runs} run(s), min–max in brackets."""


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
    parser.add_argument(
        "--phases",
        help="comma-separated subset of: " + ", ".join(PHASES) + " (default: all)",
    )
    for knob in dataclasses.fields(Scale):
        default, quick = knob.default, getattr(QUICK, knob.name)
        parser.add_argument(
            "--" + knob.name.replace("_", "-"),
            type=type(default),
            metavar="N" if isinstance(default, int | float) else "N,N",
            help=f"default {default} (--quick: {quick})",
        )
    parser.add_argument(
        "--before",
        type=Path,
        help="also run this repo's two apps as checked out in this directory"
        " (e.g. `git worktree add /tmp/before COMMIT`), as flask-gevent-before and"
        " django-gevent-before",
    )
    parser.add_argument("--results", type=Path, default=BENCH / "results.md")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "bench.png")
    parser.add_argument(
        "--capacity-plot", type=Path, default=ROOT / "docs" / "bench-capacity.png"
    )
    args = parser.parse_args(argv)
    knobs = {
        knob.name: getattr(args, knob.name)
        for knob in dataclasses.fields(Scale)
        if getattr(args, knob.name) is not None
    }
    scale = dataclasses.replace(QUICK if args.quick else Scale(), **knobs)
    check_scale(parser, scale)
    phases = _chosen(parser, "phases", args.phases, PHASES)
    names = _chosen(parser, "targets", args.targets, [t.name for t in TARGETS])
    if {"burst", "capacity"} & set(phases) and "direct" not in names:
        names.append("direct")  # the floor their latencies are measured against
    targets = [t for t in TARGETS if t.name in names]
    if args.before is not None:
        try:
            befores = before_targets(args.before.resolve())
        except ValueError as exc:
            parser.error(str(exc))
        by_app = {t.name.removesuffix("-before"): t for t in befores}
        # Each beside the app it measures against.
        targets = [
            paired
            for target in targets
            for paired in (target, by_app.get(target.name))
            if paired is not None
        ]

    signal.signal(signal.SIGINT, procs.exit_on_signal)
    signal.signal(signal.SIGTERM, procs.exit_on_signal)
    OUT.mkdir(exist_ok=True)
    start = time.monotonic()
    rows, curves = measure(scale, targets, phases)
    seconds = time.monotonic() - start
    command = shlex.join(["python", "-m", "bench.run", *(argv or sys.argv[1:])])
    made_by = f"`{command}`"
    if os.environ.get("MAKELEVEL"):
        made_by = f"`make bench` ({made_by})"
    page = results_page(rows, curves, scale, phases, made_by, seconds)
    args.results.write_text(page)
    wrote = [args.results]
    if set(phases) & set(REPEATED):
        runs = OUT / "runs.json"
        runs.write_text(json.dumps(capacity.raw(curves), indent=1))
        wrote.append(runs)
    if set(phases) & {"ttfb", "cpu", "latency"}:
        print("\n" + report.table(rows, scale.streams, scale.rate))
        report.plot(rows, scale.streams, scale.rate, args.plot)
        wrote.append(args.plot)
    if "capacity" in phases:
        print("\n" + capacity.capacity_table(curves, scale.levels, scale.rate))
        capacity.plot(curves, scale.levels, scale.rate, args.capacity_plot)
        wrote.append(args.capacity_plot)
    if "burst" in phases:
        print("\n" + capacity.burst_table(curves))
    if "opening" in phases:
        print("\n" + capacity.opening_table(curves))
    if costs.pairs(rows) and set(phases) & {"ttfb", "cpu", "latency"}:
        print("\n" + costs.costs_table(rows))
    if costs.pairs(curves) and set(phases) & set(REPEATED):
        print("\n" + costs.repeated_costs_table(curves, scale.levels))
    if any(row.readers for row in rows):
        print("\n" + costs.readers_table(rows))
    print(f"\nWrote {', '.join(map(str, wrote))} in {seconds / 60:.1f} min.")


def check_scale(parser: argparse.ArgumentParser, scale: Scale) -> None:
    """Refuse knobs that would measure nothing, naming the fix."""
    try:
        levels = scale.levels
    except ValueError:
        parser.error(
            f"--capacity-levels {scale.capacity_levels!r}: use numbers of streams "
            "separated by commas, such as 250,500"
        )
    if not levels or min(levels) < 1:
        parser.error(f"--capacity-levels {scale.capacity_levels!r}: use numbers ≥ 1")
    if scale.capacity_tokens / scale.rate <= scale.capacity_ramp_seconds:
        parser.error(
            f"--capacity-tokens {scale.capacity_tokens} at --rate {scale.rate:g} ends "
            f"the first stream before the {scale.capacity_ramp_seconds:g}s ramp is "
            "over: raise the tokens or shorten --capacity-ramp-seconds"
        )
    if scale.runs < 1 or scale.loadgens < 1 or scale.burst_tokens < 2:
        parser.error("--runs and --loadgens must be ≥ 1, --burst-tokens ≥ 2")


def _chosen(
    parser: argparse.ArgumentParser,
    option: str,
    value: str | None,
    known: Sequence[str],
) -> list[str]:
    """The names in a comma-separated option, in ``known``'s order; all if unset."""
    names = value.split(",") if value else list(known)
    if unknown := set(names) - set(known):
        parser.error(
            f"--{option}: unknown {', '.join(sorted(unknown))}; "
            f"choose from {', '.join(known)}"
        )
    return [name for name in known if name in names]


if __name__ == "__main__":
    main()
