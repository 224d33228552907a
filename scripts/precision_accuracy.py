#!/usr/bin/env python
"""Mixed precision against float32: a recipe trained in each precision, same seeds, test accuracy side by side.

    python scripts/precision_accuracy.py                                  # default recipe, torch, seeds 0,1,2
    python scripts/precision_accuracy.py --backend numpy --precisions float32,mixed-float16 --seeds 0

Each run goes through the CLI's own training function (``xpnet.run.run_training``) with the
recipe's settings and ``--precision``; everything else (seed, split, shuffling, initial
weights) is the same, so the difference is the precision's. The table (date, machine,
versions) replaces the one between this recipe's markers in docs/RECIPES.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "RECIPES.md"


def train(recipe: str, backend: str, precision: str, seed: int) -> tuple[float, float]:
    """Test accuracy and wall seconds of one run of ``recipe`` (data loading included)."""
    from xpnet.run import resolve_settings, run_training

    settings = resolve_settings(recipe, {"backend": backend, "precision": precision, "seed": seed})
    started = time.perf_counter()
    result = run_training(settings, quiet=True)
    return result["test"]["accuracy"], time.perf_counter() - started


def markdown(recipe: str, backend: str, results: dict, argv: list[str], tolerance: float) -> str:
    """The per-seed table and each precision's median gap to float32."""
    import numpy as np

    import xpnet

    seeds = sorted(next(iter(results.values())))
    lines = [
        f"Recipe `{recipe}` on {backend}, produced by `{' '.join(['python scripts/precision_accuracy.py', *argv])}`.",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.machine()}; Python "
        f"{platform.python_version()}, NumPy {np.__version__}, xpnet {xpnet.__version__}{_torch_version()}.",
        "",
        "| precision | " + " | ".join(f"seed {s}" for s in seeds) + " | median | vs float32 (median gap) |",
        "|---|" + "---:|" * (len(seeds) + 2),
    ]
    base = results.get("float32")
    for precision, runs in results.items():
        cells = [f"{100 * runs[s][0]:.2f}% ({runs[s][1]:.0f} s)" for s in seeds]
        median = statistics.median(runs[s][0] for s in seeds)
        gap = "" if base is None or precision == "float32" else _gap(runs, base, seeds, tolerance)
        lines.append(f"| {precision} | " + " | ".join(cells) + f" | {100 * median:.2f}% | {gap} |")
    return "\n".join(lines)


def _gap(runs: dict, base: dict, seeds: list[int], tolerance: float) -> str:
    gaps = [100 * (runs[s][0] - base[s][0]) for s in seeds]
    median = statistics.median(gaps)
    verdict = "within" if abs(median) <= tolerance else "outside"
    return f"{median:+.2f} points ({min(gaps):+.2f} to {max(gaps):+.2f}), {verdict} {tolerance} points"


def _torch_version() -> str:
    try:
        import torch
    except ImportError:
        return ""
    return f", PyTorch {torch.__version__}"


def write_section(recipe: str, backend: str, text: str, doc: Path = DOC) -> None:
    """Put ``text`` between this recipe and backend's markers in ``doc`` (appended the first time)."""
    from xpnet.fileio import write_marked_section

    write_marked_section(doc, f"precision {recipe} {backend}", "scripts/precision_accuracy.py", text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="default", help="the recipe to train (default: default)")
    parser.add_argument("--backend", default="torch", help="array library (default: torch, which has bfloat16)")
    parser.add_argument("--precisions", default="float32,mixed-bfloat16", help="comma-separated, float32 first")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    parser.add_argument("--tolerance", type=float, default=0.3, help="points of accuracy a mixed run may lose")
    parser.add_argument("--doc", type=Path, default=DOC, help="Markdown file to update")
    parser.add_argument("--no-doc", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, dict[int, tuple[float, float]]] = {}
    for seed in seeds:  # precisions alternate within each seed, so a busy spell touches all alike
        for precision in args.precisions.split(","):
            accuracy, seconds = train(args.recipe, args.backend, precision, seed)
            results.setdefault(precision, {})[seed] = (accuracy, seconds)
            print(f"{precision} seed {seed}: {100 * accuracy:.2f}% in {seconds:.0f} s", flush=True)
    text = markdown(args.recipe, args.backend, results, argv, args.tolerance)
    print(text)
    if not args.no_doc:
        write_section(args.recipe, args.backend, text, args.doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
