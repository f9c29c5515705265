"""``python -m bench.opening``: the CPU it costs to open one upstream stream.

Each way below opens a one-token answer from ``bench.upstream`` (a process of its
own, so that its CPU is not counted), reads it to its end and closes it, many times;
``time.process_time`` counts this process's CPU. The ways take turns in short
batches and each reports the median of its batches: the machine is shared, and a
burst of load from elsewhere then weighs on every way alike.

- ``create``: the SDK's typed method, as ``shared.upstream`` called it before,
  ``client.chat.completions.with_streaming_response.create(...)``.
- ``upstream``: what ``shared.upstream.Upstream.chat_opener`` does now.
- ``transport``: the same request, built once, through ``LeanTransport`` alone: the
  floor, without the SDK and httpx2's client.
- ``flask-text``, ``flask-sse``: a whole request to the Flask app in this process,
  called as a WSGI server calls it, ``POST /api/stream`` and ``POST
  /completions/chat``: routing, guard, validation, relay and all (``--app``).

``--profile`` adds cProfile's view of ``upstream`` (and, with ``--app``, of
``flask-text``, in every thread), summed by where the code lives. ``--gevent``
patches the process first, as gunicorn's gevent worker does.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and "--gevent" in sys.argv:  # before socket is imported
    from gevent import monkey

    monkey.patch_all()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

import httpx2  # noqa: E402

from bench.run import OUT, fake_upstream  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.transport import LeanTransport  # noqa: E402
from shared.upstream import Upstream  # noqa: E402

API_KEY = "sk-bench-opening-0000000000000000"
PROMPT = "full:1"  # bench.scenario: a one-token answer
MESSAGES = [{"role": "user", "content": PROMPT}]
Way = Callable[[], None]
# Where profiled code lives, first match wins: (substring of its file, label).
PLACES = [
    ("/openai/", "openai SDK"),
    ("/httpx2/", "httpx2 (client, URL, headers)"),
    ("/pydantic", "pydantic (the SDK's request options)"),
    ("/werkzeug/", "Werkzeug"),
    ("/flask/", "Flask"),
    ("/gevent/", "gevent"),
    ("shared/streaming.py", "shared.streaming (relay)"),
    ("shared/transport.py", "shared.transport"),
    ("shared/guard.py", "shared.guard"),
    ("shared/validation.py", "shared.validation"),
    ("shared/upstream.py", "shared.upstream"),
    ("flask_app/", "flask_app views"),
    ("/json/", "json"),
    ("threading.py", "threading, queue"),
    ("queue.py", "threading, queue"),
]
# C functions whose time under the profiler's wall clock is not all this process's
# CPU: socket calls (on loopback, a send also runs the receiving side of TCP in
# the kernel; a recv waits for the upstream), and waits for a thread or greenlet.
SOCKET_CALLS = ("recv", "recv_into", "send", "sendall")
WAITS = ("poll", "select", "acquire", "wait", "switch")
WAITED = "waits for a thread or greenlet"


def direct_ways(upstream: Upstream) -> dict[str, Way]:
    """The three ways of opening a stream, each from open to close."""
    client = upstream.client

    def create() -> None:
        opened = client.chat.completions.with_streaming_response.create(  # type: ignore[call-overload]
            model=upstream.settings.model,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        _read(opened.__enter__())

    def now() -> None:
        _read(upstream.chat_opener(MESSAGES)())

    request = _sent_request(upstream)
    transport = LeanTransport()

    def transport_alone() -> None:
        _read(transport.handle_request(request))

    return {"create": create, "upstream": now, "transport": transport_alone}


def _sent_request(upstream: Upstream) -> httpx2.Request:
    """The request ``chat_opener`` sends, as the SDK built it."""
    response = upstream.chat_opener(MESSAGES)()
    _read(response)
    request: httpx2.Request = response.request
    return request


def _read(response: Any) -> None:
    for _ in response.iter_bytes():
        pass
    response.close()


def app_ways(settings: Settings) -> dict[str, Way]:
    """Whole requests to the Flask app, called as a WSGI server calls it."""
    from flask_app import create_app

    app = create_app({"STREAM_SETTINGS": settings})
    return {
        "flask-text": _wsgi_call(app, "/api/stream", {"message": PROMPT}),
        "flask-sse": _wsgi_call(app, "/completions/chat", {"prompt": PROMPT}),
    }


def _wsgi_call(app: Any, path: str, payload: object) -> Way:
    """One POST of ``payload`` to ``app``, its body read to the end and closed.

    The environ is built once: what is measured is the app's work, not a client's.
    """
    from werkzeug.test import EnvironBuilder

    body = json.dumps(payload).encode()
    environ = EnvironBuilder(path=path, method="POST", data=body).get_environ()
    environ["CONTENT_TYPE"] = "application/json"

    def call() -> None:
        statuses: list[str] = []
        answer = app(
            {**environ, "wsgi.input": io.BytesIO(body)},
            lambda status, headers, exc_info=None: statuses.append(status),
        )
        try:
            answered = b"".join(answer)
        finally:
            answer.close()
        assert statuses == ["200 OK"] and answered, (statuses, answered)

    return call


def measure(ways: dict[str, Way], batches: int, size: int) -> dict[str, list[float]]:
    """CPU µs per call of each way, per batch; the ways take turns."""
    for way in ways.values():  # warm up: connections, caches, imports
        for _ in range(size):
            way()
    results: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(batches):
        for name, way in ways.items():
            start = time.process_time()
            for _ in range(size):
                way()
            results[name].append((time.process_time() - start) / size * 1e6)
    return results


def report(results: dict[str, list[float]]) -> str:
    lines = [
        "| way | CPU µs per call, median | middle half of batches |",
        "|---|--:|--:|",
    ]
    for name, samples in results.items():
        low, _, high = statistics.quantiles(samples, n=4)
        median = statistics.median(samples)
        lines.append(f"| `{name}` | {median:.0f} | {low:.0f}–{high:.0f} |")
    return "\n".join(lines)


@contextlib.contextmanager
def profiled_threads() -> Iterator[list[cProfile.Profile]]:
    """Profile the calling thread and every thread started meanwhile.

    cProfile sees one thread only; the relay reads the upstream in a helper thread.
    """
    profiles = [cProfile.Profile()]
    run = threading.Thread.run

    def profiled_run(thread: threading.Thread) -> None:
        profile = cProfile.Profile()
        profiles.append(profile)
        profile.runcall(run, thread)

    threading.Thread.run = profiled_run  # type: ignore[method-assign,assignment]
    profiles[0].enable()
    try:
        yield profiles
    finally:
        profiles[0].disable()
        threading.Thread.run = run  # type: ignore[method-assign]


def profile(way: Way, calls: int, top: int) -> str:
    """Where ``way``'s time goes: summed by place, then its costliest functions."""
    with profiled_threads() as profiles:
        for _ in range(calls):
            way()
    stats = pstats.Stats(profiles[0])
    for other in profiles[1:]:
        stats.add(other)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    by_place: dict[str, float] = defaultdict(float)
    for (filename, _, function), (_, _, own, _, _) in raw.items():
        by_place[_place(filename, function)] += own
    waited = by_place.pop(WAITED, 0.0)
    total = sum(by_place.values())
    lines = [
        f"{calls} calls; own time under the profiler (wall clock, and its own "
        "overhead per function call: compare the shares, of all but the waits):",
        "",
        "| where | profiled µs per call | share |",
        "|---|--:|--:|",
    ]
    for place, seconds in sorted(by_place.items(), key=lambda item: -item[1]):
        share = seconds / total
        lines.append(f"| {place} | {seconds / calls * 1e6:.0f} | {share:.0%} |")
    lines.append(f"| {WAITED} | {waited / calls * 1e6:.0f} | — |")
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(top)
    return "\n".join(lines) + "\n\n" + out.getvalue()


def _place(filename: str, function: str) -> str:
    if filename == "~":  # a C function: "<method 'recv' of ...>", "<built-in ...>"
        quoted = function.split("'")
        name = quoted[1] if len(quoted) > 1 else function.strip("<>").split(".")[-1]
        if name in SOCKET_CALLS:
            return "socket calls (kernel, and the wait for the upstream)"
        return WAITED if name in WAITS else "other C calls"
    for fragment, label in PLACES:
        if fragment in filename:
            return label
    return "other Python"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--size", type=int, default=200, help="calls per batch")
    parser.add_argument("--app", action="store_true", help="also the Flask app")
    parser.add_argument("--profile", type=int, default=0, metavar="CALLS")
    parser.add_argument("--top", type=int, default=25, help="functions listed")
    parser.add_argument("--gevent", action="store_true", help="monkey-patch first")
    args = parser.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    with fake_upstream() as fake:
        settings = Settings(api_key=API_KEY, base_url=fake.base_url(tls=False))
        upstream = Upstream(settings)
        ways = direct_ways(upstream)
        if args.app:
            ways |= app_ways(settings)
        print(report(measure(ways, args.batches, args.size)), flush=True)
        for name in ("upstream", "flask-text") if args.profile else ():
            if name in ways:
                print(f"\n## {name}\n\n{profile(ways[name], args.profile, args.top)}")


if __name__ == "__main__":
    main()
