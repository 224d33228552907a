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

from xpnet.bench.history import entry_from_result
from xpnet.bench.results import BenchResult

#: (what, impl, backend, the history's paired figure, batch sizes or None for all, target)
TARGETS = [
    ("NumPy vs PyTorch eager", "xpnet", "numpy", "vs_torch_eager", (64, 1024), ">= 1.6x at 64, >= 1.25x at 1024"),
    ("the direct NumPy loop vs PyTorch eager", "direct", "numpy", "vs_torch_eager", (64, 1024), "no target"),
    ("JAX compiled vs jax-scan", "xpnet", "jax", "vs_direct", None, "0.9-1.1x"),
    ("JAX vs PyTorch eager", "xpnet", "jax", "vs_torch_eager", (64, 1024), ">= 2.1x at 64, >= 1.1x at 1024"),
    ("fit over its bare step, NumPy", "xpnet", "numpy", "vs_step", None, ">= 0.9x"),
    ("fit over its bare step, PyTorch", "xpnet", "torch", "vs_step", None, ">= 0.9x"),
]


def target_lines(result: BenchResult) -> list[str]:
    """One line per target: each batch size's median speed ratio (3 decimals) and its spread, as the
    history pairs them (``history.entry_from_result``: repeat i of a row over repeat i of its peer)."""
    figures = {
        (row["impl"], row["backend"], row["batch_size"]): row
        for row in entry_from_result(result)["rows"]
        if row["device"] == "cpu"
    }
    every_batch = sorted({key[2] for key in figures})
    lines = []
    for what, impl, backend, name, batches, target in TARGETS:
        shown = []
        for batch in batches or every_batch:
            paired = figures.get((impl, backend, batch), {}).get(name)
            shown.append(
                f"{batch}: {paired['median']:.3f}x ±{paired['spread']:.0%}" if paired else f"{batch}: not in this run"
            )
        lines.append(f"{what} ({target}): " + ", ".join(shown))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="a bench run's --json file")
    path = parser.parse_args().json
    try:
        with open(path) as file:
            result = json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        parser.error(f"{path}: cannot read a bench result ({error})")
    if not isinstance(result, dict) or "rows" not in result:
        parser.error(f"{path}: no 'rows' in it: not a file from scripts/bench.py --json")
    try:
        lines = target_lines(BenchResult.from_dict(result))
    except (TypeError, KeyError, ValueError, AttributeError) as error:
        parser.error(f"{path}: not a whole file from scripts/bench.py --json ({error!r} missing or wrong)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
