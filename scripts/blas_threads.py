"""One BLAS thread or all of them for small steps: whole ``fit`` epochs side by side, on NumPy.

``xpnet.backend.cpu.SMALL_STEP_MACS`` is where ``fit`` stops running a step on one OpenBLAS
thread. This times the benchmark's network (784-128-64-10, SGD momentum) one epoch at a time,
alternating the two policies on the same batches, and prints each batch size's samples per
second and the ratio of the two (median of the rounds, with their range), and whether the
two ended with equal weights (they do not: the thread count changes OpenBLAS's rounding).

    python scripts/blas_threads.py                    # batches 8 16 32 64 80
    python scripts/blas_threads.py --batches 16 64 --rounds 8
    python scripts/blas_threads.py --batches 64 1024 --rounds 30 --each   # every round's rates too

``--each`` shows how a shared machine moves: on this workplace's 2-core VMs, epochs on all
threads came in two speeds, changing from round to round, while one thread's moved far less
(bench/NOTES.md, issue 21's section).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import xpnet.backend.numpy as numpy_backend
from xpnet.bench.data import load_data
from xpnet.bench.runners import XpnetRunner
from xpnet.bench.targets import Target
from xpnet.bench.workload import PAUSE, step_macs

#: The two policies: the cut above every step here (one thread) and below every step (all threads).
POLICIES = {"one thread": 10**12, "all threads": 0}


def compare(batch_size: int, X, y, rounds: int, each: bool = False) -> str:
    """One line: samples/s of each policy and their ratio, over ``rounds`` timed epochs each;
    ``each``: then every round's samples/s of each policy, in thousands, in the order they ran."""
    runners = {name: XpnetRunner(Target("numpy", "cpu"), X, y, batch_size) for name in POLICIES}
    rates = {name: [] for name in POLICIES}
    saved = numpy_backend.SMALL_STEP_MACS
    try:
        for round_ in range(rounds + 1):  # the first round warms up, untimed
            for name, runner in runners.items():
                numpy_backend.SMALL_STEP_MACS = POLICIES[name]
                time.sleep(PAUSE)  # OpenBLAS's idle threads stop spinning
                start = time.perf_counter()
                runner.epoch()
                if round_:
                    rates[name].append(len(X) / (time.perf_counter() - start))
    finally:
        numpy_backend.SMALL_STEP_MACS = saved
    one, every = (np.array(rates[name]) for name in POLICIES)
    ratio = every / one
    equal = all(np.array_equal(a, b) for a, b in zip(*(runners[name].net.params for name in POLICIES), strict=True))
    summary = (
        f"batch {batch_size:5d}  {step_macs(batch_size):>10,} MACs  one thread {np.median(one):8,.0f}/s  "
        f"all threads {np.median(every):8,.0f}/s  all/one {np.median(ratio):.2f}x "
        f"({ratio.min():.2f}-{ratio.max():.2f})  equal weights: {equal}"
    )
    if not each:
        return summary
    rounds_k = (" ".join(f"{rate / 1e3:.0f}" for rate in series) for series in (one, every))
    return summary + "".join(f"\n  {name:>11}, k/s: {line}" for name, line in zip(POLICIES, rounds_k))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32, 64, 80])
    parser.add_argument("--rounds", type=int, default=5, help="timed epochs per policy and batch size")
    parser.add_argument("--samples", type=int, default=32768, help="training rows (the bench's own count)")
    parser.add_argument("--each", action="store_true", help="also print every round's samples/s")
    args = parser.parse_args()
    X, y, source = load_data(args.samples)
    print(f"{args.samples} {source} rows, current cut SMALL_STEP_MACS = {numpy_backend.SMALL_STEP_MACS:,}")
    for batch_size in args.batches:
        print(compare(batch_size, X, y, args.rounds, args.each), flush=True)


if __name__ == "__main__":
    main()
