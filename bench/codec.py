"""``python -m bench.codec --before DIR``: the core's CPU per chunk, parsing and
encoding, this checkout's against another's, in one process.

What a change to the decoder or the encoders costs is a few percent of a chunk's
CPU; ``make bench``'s servers measure it along with the relay, the WSGI server and a
shared machine's noise, whose spread is larger. Here both versions of
``shared/streaming.py`` are loaded side by side (under their own names) and take
turns, in short rounds, on the same raw SSE reads of a chat completion: ten text
chunks per read, as a fast upstream's reads arrive. ``time.process_time`` counts
this process's CPU; the minimum and the median of the rounds are reported, and
their ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
CHUNK = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "gpt-4o-mini",
    "system_fingerprint": "fp_1",
    "choices": [
        {
            "index": 0,
            "delta": {"content": " token"},
            "logprobs": None,
            "finish_reason": None,
        }
    ],
}
CHUNKS_PER_READ = 10
READ = (f"data: {json.dumps(CHUNK)}\n\n" * CHUNKS_PER_READ).encode()


def load(name: str, checkout: Path) -> ModuleType:
    """``shared/streaming.py`` of ``checkout``, imported as ``name``."""
    path = checkout / "shared" / "streaming.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def round_of(streaming: ModuleType, reads: int) -> float:
    """CPU µs per chunk to parse ``reads`` reads and encode their events as SSE."""
    decoder, encoder = streaming._SseDecoder(), streaming.SseEncoder()
    started = time.process_time()
    for _ in range(reads):
        encoder.encode(decoder.feed(READ))
    return (time.process_time() - started) / (reads * CHUNKS_PER_READ) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="a checkout")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--reads", type=int, default=4000, help="per round")
    args = parser.parse_args()
    versions = {"after": load("streaming_after", ROOT)}
    versions["before"] = load("streaming_before", args.before)
    rounds: dict[str, list[float]] = {name: [] for name in versions}
    for _ in range(args.rounds):
        for name, streaming in versions.items():
            rounds[name].append(round_of(streaming, args.reads))
    for name, figures in rounds.items():
        low, middle = min(figures), statistics.median(figures)
        print(f"{name:>6}: min {low:.2f} µs/chunk, median {middle:.2f}")
    for measure in (min, statistics.median):
        ratio = measure(rounds["after"]) / measure(rounds["before"])
        print(f"after / before, {measure.__name__}: {ratio:.2f}")


if __name__ == "__main__":
    main()
