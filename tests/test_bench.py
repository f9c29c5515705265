"""The bench's own parts that decide what a resumable target's figures mean: how a
resumed reader's answer is checked and timed, where a target's settings come from,
the Redis it starts, and the costs table's ratios. ``make bench`` runs the rest."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import redis

from bench import redis_server, scenario
from bench.targets import TARGETS, Target, Upstream

UPSTREAM = Upstream(port=1, tls_port=2, ca_file=Path("ca.pem"), pid=0)


def target(name: str) -> Target:
    return next(t for t in TARGETS if t.name == name)


def test_a_resumed_reader_is_correct_without_the_tokens_it_skipped() -> None:
    after_first = "".join(scenario.full_token(i) for i in range(1, 3))
    assert scenario.is_correct("full:3", after_first, skipped=1)
    assert not scenario.is_correct("full:3", after_first)
    stamped = "".join(scenario.rate_token(i, 5.0) for i in range(1, 3))
    assert scenario.is_correct("rate:20:3", stamped, skipped=1)
    assert not scenario.is_correct("rate:20:3", stamped, skipped=2)


def test_a_resumed_readers_latency_counts_only_tokens_sent_after_its_request() -> None:
    backlog, live = scenario.rate_token(1, 10.0), scenario.rate_token(2, 12.0)
    pieces = [(11.0, backlog), (12.5, live)]
    assert scenario.arrivals(pieces, since=11.0) == [(12.0, 12.5)]
    assert scenario.arrivals(pieces) == [(10.0, 11.0), (12.0, 12.5)]


def test_a_target_gets_its_own_settings_not_the_shells(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAM_RESUMABLE", "1")
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:6379/0")
    default = target("flask-gevent").env(UPSTREAM, tls=False)
    assert "STREAM_RESUMABLE" not in default and "REDIS_URL" not in default
    memory = target("flask-gevent-resumable").env(UPSTREAM, tls=False)
    assert memory["STREAM_RESUMABLE"] == "1" and "REDIS_URL" not in memory
    url = "redis://127.0.0.1:7/0?client_name=x"
    logged = target("flask-gevent-resumable-redis").env(UPSTREAM, False, url)
    assert logged["STREAM_RESUMABLE"] == "1" and logged["REDIS_URL"] == url
    with pytest.raises(ValueError, match="needs the bench's Redis"):
        target("flask-gevent-resumable-redis").env(UPSTREAM, tls=False)


def test_the_benchs_redis_counts_a_servers_connections_by_name(
    tmp_path: Path,
) -> None:
    with redis_server.started(tmp_path / "redis", tmp_path / "redis.log") as server:
        named = redis.Redis.from_url(server.url("bench-server"))
        with contextlib.closing(named):
            named.set("key", "value")
            assert server.clients("bench-server") == 1
            assert server.clients("bench-producer") == 0
            server.flush()
            assert named.get("key") is None
        pid = server.pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped by its PID, and reaped


def test_costs_take_each_runs_ratio_then_the_median() -> None:
    from bench.capacity import Curves
    from bench.costs import repeated_costs_table

    base = Curves(target("flask-gevent"), opening_us=[100.0, 200.0, 400.0])
    resumable = Curves(
        target("flask-gevent-resumable"), opening_us=[110.0, 260.0, 420.0]
    )
    row = repeated_costs_table([base, resumable], [100]).splitlines()[2]
    # Per run ×1.10, ×1.30, ×1.05: the median is ×1.10 (the medians' ratio, 1.30,
    # would be the noise of run 2).
    assert row.startswith("| `flask-gevent-resumable` | `flask-gevent` | ×1.10 |")
