#!/usr/bin/env python
"""Issue 21's targets, read from a bench run's JSON: the median of the repeats' own ratios, ± spread.

    python scripts/bench.py --backends numpy,torch,jax --impls xpnet,direct,torch-eager,jax-scan \\
        --repeats 15 --no-memory --json run.json
    python scripts/bench_targets.py run.json

The table's columns in RESULTS.md are ratios of medians; a target is judged here on the
paired ratios (repeat i of one runner over repeat i of the other, timed back to back), whose
spread shows how far the machine moved during the run (bench/NOTES.md, issue 21's section).
"""

from __future__ import annotations

import argparse
import json
import statistics

from xpnet.bench.noise import paired_ratios, relative_spread

EAGER = ("torch-eager", "torch")
#: (what, the runner judged, the runner it is judged against, batch sizes or None for all, target)
TARGETS = [
    ("NumPy vs PyTorch eager", ("xpnet", "numpy"), EAGER, (64, 1024), ">= 1.6x at 64, >= 1.25x at 1024"),
    ("the direct NumPy loop vs PyTorch eager", ("direct", "numpy"), EAGER, (64, 1024), "no target"),
    ("JAX compiled vs jax-scan", ("xpnet", "jax"), ("jax-scan", "jax"), None, "0.9-1.1x"),
    ("JAX vs PyTorch eager", ("xpnet", "jax"), EAGER, (64, 1024), ">= 2.1x at 64, >= 1.1x at 1024"),
    ("fit over its bare step, NumPy", ("xpnet", "numpy"), ("xpnet-step", "numpy"), None, ">= 0.9x"),
    ("fit over its bare step, PyTorch", ("xpnet", "torch"), ("xpnet-step", "torch"), None, ">= 0.9x"),
]


def target_lines(result: dict) -> list[str]:
    """One line per target: each batch size's median speed ratio (3 decimals) and its spread."""
    times = {
        (r["impl"], r["backend"], r["batch_size"]): r["epoch_times"] for r in result["rows"] if r["device"] == "cpu"
    }
    every_batch = sorted({key[2] for key in times})
    lines = []
    for what, runner, baseline, batches, target in TARGETS:
        figures = []
        for batch in batches or every_batch:
            if (*runner, batch) not in times or (*baseline, batch) not in times:
                figures.append(f"{batch}: not in this run")
                continue
            # A speed ratio: the baseline's epoch time over the judged runner's.
            ratios = paired_ratios(times[(*baseline, batch)], times[(*runner, batch)])
            figures.append(f"{batch}: {statistics.median(ratios):.3f}x ±{relative_spread(ratios):.0%}")
        lines.append(f"{what} ({target}): " + ", ".join(figures))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="a bench run's --json file")
    path = parser.parse_args().json
    try:
        with open(path) as file:
            result = json.load(file)
    except (OSError, json.JSONDecodeError) as error:
        parser.error(f"{path}: cannot read a bench result ({error})")
    if "rows" not in result:
        parser.error(f"{path}: no 'rows' in it: not a file from scripts/bench.py --json")
    print("\n".join(target_lines(result)))


if __name__ == "__main__":
    main()
