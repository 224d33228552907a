#!/usr/bin/env python
"""Before and after a change: is xpnet slower, faster, or the same within the noise?

    python scripts/bench_check.py before     # on the code before the change
    ... edit ...
    python scripts/bench_check.py after      # says slower / faster / within noise, figure by figure

A quick sweep (batch sizes 64 and 1024 by default, 5 alternating repeats, no memory
epoch; about a minute on a quiet 2-core machine): xpnet against PyTorch eager and the
direct NumPy loop, and % of the GEMM ceilings, each timed in the same run, so the
comparison holds when the machine's speed drifts between the two runs. The baseline is
kept in .benchmarks/bench-check.jsonl (ignored by git); `after --save` makes the new run
the baseline. The repo's history (bench/history/) is for `python -m xpnet bench --history`.
"""

import argparse
import sys

from xpnet.bench import history
from xpnet.bench.compare import compare, format_changes, overall
from xpnet.bench.sweep import run_bench
from xpnet.bench.table import format_rows
from xpnet.errors import XpnetError

BASELINE = history.project_root() / ".benchmarks" / "bench-check.jsonl"


def quick_sweep(args) -> dict:
    result = run_bench(
        batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
        backends=args.backends.split(",") if args.backends else None,
        samples=args.samples,
        repeats=args.repeats,
        warmup=1,
        memory=False,
        pause=0.15,  # enough for OpenBLAS's idle threads to stop spinning (bench/NOTES.md), and quicker
        log=None,
    )
    print(format_rows(result.rows))
    return history.entry_from_result(result)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("when", choices=("before", "after"))
    parser.add_argument("--batch-sizes", default="64,1024", help="comma-separated (default: %(default)s)")
    parser.add_argument("--backends", default=None, help="comma-separated (default: numpy and torch)")
    parser.add_argument("--samples", type=int, default=8192, help="samples per timed epoch (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats (default: %(default)s)")
    parser.add_argument("--save", action="store_true", help="after: keep this run as the new baseline")
    args = parser.parse_args(argv)
    try:
        if args.when == "after":
            before = history.read(BASELINE)[-1]  # read first: a missing baseline fails before the sweep
        entry = quick_sweep(args)
        if args.when == "after":
            changes = compare(before, entry)
            print(format_changes(changes, before, entry))
            print(f"verdict: {overall(changes)}")
        if args.when == "before" or args.save:
            BASELINE.parent.mkdir(parents=True, exist_ok=True)
            BASELINE.unlink(missing_ok=True)
            history.append(BASELINE, entry)
            print(f"baseline saved to {BASELINE}; run `python scripts/bench_check.py after` after the change")
    except XpnetError as exc:
        parser.exit(2, f"xpnet: error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
