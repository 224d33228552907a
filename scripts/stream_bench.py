#!/usr/bin/env python
"""Streaming against in-memory training: samples/s of ``fit`` at batch 1024, data in the page cache.

Writes a float32 ``X.npy``/``y.npy`` folder (``--rows`` x ``--features``), reads it once so its
pages are cached, then times, alternating in one process, ``--repeats`` pairs of runs: ``fit`` on
the arrays in memory and ``fit`` on ``xpnet.streaming.stream(folder)`` (memory map, chunked
shuffle, background reader), ``--epochs`` epochs each after a warm-up epoch of each. For each
``--blas-threads`` count (the reader thread shares the cores with BLAS), it prints the median
samples/s of both, the ratio of each pair (streaming / in memory) as median and range, and a
markdown block for bench/RESULTS.md with the command that made it.

The figures in bench/RESULTS.md ("Streaming from disk") are to come from, on a quiet machine:

    python scripts/stream_bench.py --rows 400000 --features 784 --layers 256,128 --repeats 5 \
        --blas-threads 1,2

A quick check that it runs (its numbers mean nothing): ``python scripts/stream_bench.py --tiny``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from xpnet.backend import threads
from xpnet.network import MLP
from xpnet.optim import SGD
from xpnet.streaming import stream
from xpnet.train import fit


def _arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--features", type=int, default=784)
    parser.add_argument("--layers", default="256,128")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per run")
    parser.add_argument("--repeats", type=int, default=5, help="pairs of runs (in memory, streamed), alternating")
    parser.add_argument("--chunk-rows", type=int, default=8192)
    parser.add_argument("--shuffle-buffer", type=int, default=4)
    parser.add_argument("--blas-threads", default="2", help="comma-separated BLAS thread counts to compare")
    parser.add_argument("--folder", help="where to write the data (default: a temporary folder)")
    parser.add_argument("--tiny", action="store_true", help="a few seconds' run to see the script works")
    args = parser.parse_args(argv)
    if args.tiny:
        args.rows, args.features, args.layers, args.repeats, args.batch_size = 20_000, 32, "16", 2, 1024
    return args


def _write(folder: Path, rows: int, features: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, features), dtype=np.float32)
    y = (X[:, 0] > 0).astype(np.int32)
    np.save(folder / "X.npy", X)
    np.save(folder / "y.npy", y)
    return np.load(folder / "X.npy"), np.load(folder / "y.npy")  # the pages read once: now in the page cache


def _samples_per_s(args, X, y, data) -> float:
    """One warm-up epoch is run by the caller; this times ``--epochs`` more from a fresh network."""
    net = MLP([args.features, *map(int, args.layers.split(",")), 2], seed=0)
    options = {"epochs": args.epochs, "batch_size": args.batch_size, "optimizer": SGD(lr=0.01), "seed": 0}
    start = time.perf_counter()
    fit(net, X if data is None else data, y if data is None else None, **options)
    seconds = time.perf_counter() - start
    return args.epochs * (args.rows // args.batch_size) * args.batch_size / seconds


def _measure(args, X, y, folder: Path, blas: int) -> dict:
    threads.apply(threads.choose(blas))
    data = stream(str(folder), chunk_rows=args.chunk_rows, buffer_chunks=args.shuffle_buffer)
    for warm in (None, data):  # a warm-up of each: first-call costs (imports, allocator growth) out of the pairs
        _samples_per_s(args, X, y, warm)
    memory, streamed = [], []
    for _ in range(args.repeats):
        memory.append(_samples_per_s(args, X, y, None))
        streamed.append(_samples_per_s(args, X, y, data))
    ratios = [s / m for s, m in zip(streamed, memory)]
    return {"blas": blas, "memory": memory, "streamed": streamed, "ratios": ratios}


def _markdown(args, results: list[dict], argv: list[str]) -> str:
    lines = [
        f"Streaming vs in-memory `fit`, {args.rows:,} x {args.features} float32 rows in the page cache, layers "
        f"{args.layers}, batch {args.batch_size}, chunks of {args.chunk_rows} rows, {args.shuffle_buffer} a buffer, "
        f"{args.repeats} alternating pairs ({platform.processor() or platform.machine()}, "
        f"{threads.usable_cores()} usable cores):",
        "",
        "| BLAS threads | in memory (samples/s, median) | streamed (samples/s, median) | ratio median | ratio range |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        ratios = r["ratios"]
        lines.append(
            f"| {r['blas']} | {statistics.median(r['memory']):,.0f} | {statistics.median(r['streamed']):,.0f} "
            f"| {statistics.median(ratios):.3f} | {min(ratios):.3f}-{max(ratios):.3f} |"
        )
    lines += ["", f"Command: `python scripts/stream_bench.py {' '.join(argv)}`"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _arguments(argv)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.folder or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        X, y = _write(folder, args.rows, args.features)
        results = [_measure(args, X, y, folder, int(blas)) for blas in args.blas_threads.split(",")]
    print(_markdown(args, results, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
