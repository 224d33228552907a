#!/usr/bin/env python
"""Time to accuracy: a recipe trained to the end as a user runs it, xpnet and PyTorch eager side by side.

    python scripts/time_to_accuracy.py                          # recipe default, seeds 0,1,2
    python scripts/time_to_accuracy.py --recipe default-long --seeds 0,1,2

Every run is a fresh process, timed from outside from start to exit, so the wall time
is what the user waits for: interpreter start, imports, reading and decoding the
dataset files (nothing decoded is cached between runs), training, testing, saving.
xpnet runs exactly ``python -m xpnet train --recipe R --seed S`` (plus ``--history``,
for the selected epoch); PyTorch runs ``python -m xpnet.bench.torch_recipe``, the same
recipe in PyTorch eager. Runs alternate (xpnet then torch for one seed, the other
order for the next) with an idle pause before each; one untimed one-epoch run of each
comes first, so both start with the files in the page cache and bytecode compiled.
Model selection is xpnet's: the best epoch by the recipe's ``monitor``; the test set is
read once, at the end of each run. The table (date, machine, versions, load) replaces
the one between this recipe's markers in docs/RECIPES.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "RECIPES.md"
RUNNERS = ("xpnet", "torch")
LABELS = {"xpnet": "xpnet (NumPy)", "torch": "PyTorch eager"}
TEST_LINE = re.compile(r"^test\s+loss\s+(\S+)\s+accuracy\s+(\S+)", re.MULTILINE)


@dataclass
class Run:
    """One timed training run: who, which seed, what it reached, how long the user waited."""

    runner: str
    seed: int
    test_accuracy: float
    best_epoch: int
    epochs: int
    val_accuracy: float
    wall: float
    training: float  #: seconds inside the epochs (steps and validation), from the run's own log
    load: float  #: 1-minute load average just before the run


def command(runner: str, recipe: str, seed: int, folder: Path, epochs: int | None = None) -> list[str]:
    """The command line of one run; it writes its model and history into ``folder``."""
    common = ["--recipe", recipe, "--seed", str(seed), *(["--epochs", str(epochs)] if epochs else [])]
    if runner == "xpnet":
        return [sys.executable, "-m", "xpnet", "train", *common, "--history", str(folder / "history.json")]
    return [sys.executable, "-m", "xpnet.bench.torch_recipe", *common, "--out", str(folder / "model.pt")]


def run_once(runner: str, recipe: str, seed: int, pause: float, epochs: int | None = None) -> Run:
    """Run one training process after ``pause`` idle seconds; time it from outside."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryDirectory(prefix="xpnet-tta-") as tmp:
        folder = Path(tmp)
        argv = command(runner, recipe, seed, folder, epochs)
        time.sleep(pause)
        load = os.getloadavg()[0]
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        parse = _parse_xpnet if runner == "xpnet" else _parse_torch
        return Run(runner, seed, wall=wall, load=load, **parse(done.stdout, folder, _monitor(recipe)))


def _monitor(recipe: str) -> str:
    from xpnet.run import resolve_settings

    return resolve_settings(recipe, {})["monitor"]


def _parse_xpnet(stdout: str, folder: Path, monitor: str) -> dict:
    found = TEST_LINE.search(stdout)
    if found is None:
        raise SystemExit(f"no test line in xpnet's output:\n{stdout}")
    records = json.loads((folder / "history.json").read_text())
    return _selected(records, float(found.group(2)), monitor)


def _parse_torch(stdout: str, folder: Path, monitor: str) -> dict:
    result = json.loads(stdout.strip().splitlines()[-1])
    return _selected(result["records"], result["test"]["accuracy"], monitor)


def _selected(records: list[dict], test_accuracy: float, monitor: str = "val_loss") -> dict:
    """The epoch whose weights were kept, as fit keeps it: the first with the lowest validation loss
    (``monitor`` val_loss) or the highest validation accuracy (val_accuracy)."""
    sign = 1.0 if monitor == "val_loss" else -1.0
    best = min(range(len(records)), key=lambda i: (sign * records[i].get(monitor, 0.0), i))
    return {
        "test_accuracy": test_accuracy,
        "best_epoch": best + 1,
        "epochs": len(records),
        "val_accuracy": records[best].get("val_accuracy", float("nan")),
        "training": sum(record["seconds"] for record in records),
    }


def measure(recipe: str, seeds: list[int], runners: list[str], pause: float, epochs=None, log=print) -> list[Run]:
    """Warm-up runs, then every seed with the runners in alternating order (``epochs``: the recipe's
    own unless given)."""
    for runner in runners:
        log(f"warm-up: {runner}, one epoch")
        run_once(runner, recipe, seeds[0], pause, epochs=1)
    runs = []
    for i, seed in enumerate(seeds):
        for runner in runners if i % 2 == 0 else runners[::-1]:
            runs.append(run_once(runner, recipe, seed, pause, epochs))
            log(_run_row(runs[-1]))
    return runs


def _run_row(run: Run) -> str:
    return (
        f"| {LABELS[run.runner]} | {run.seed} | {100 * run.test_accuracy:.2f}% | "
        f"{run.best_epoch} of {run.epochs} ({100 * run.val_accuracy:.2f}%) | {run.wall:.1f} s | "
        f"{run.training:.1f} s | {run.load:.2f} |"
    )


def _spread(values: list[float], fmt: str) -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def summary(runs: list[Run], runners: list[str], threshold: float) -> list[str]:
    """Per runner: median and range of test accuracy and wall time; then the wall-time ratios."""
    every = f"every seed >= {100 * threshold:.1f}%"
    lines = [f"| runner | test accuracy, median (range) | {every} | wall time, median (range) |", "|---|---|---|---|"]
    for runner in runners:
        mine = [run for run in runs if run.runner == runner]
        accuracy = _spread([100 * run.test_accuracy for run in mine], "{:.2f}%")
        every = "yes" if all(run.test_accuracy >= threshold for run in mine) else "no"
        lines.append(f"| {LABELS[runner]} | {accuracy} | {every} | {_spread([run.wall for run in mine], '{:.1f} s')} |")
    if set(runners) >= {"xpnet", "torch"}:
        wall = {(run.runner, run.seed): run.wall for run in runs}
        ratios = [wall["torch", seed] / wall["xpnet", seed] for seed in sorted({run.seed for run in runs})]
        lines += ["", f"PyTorch eager's wall time over xpnet's, seed by seed: {_spread(ratios, '{:.2f}x')}."]
    return lines


def markdown(recipe: str, runs: list[Run], runners: list[str], env: dict, argv: list[str], threshold: float) -> str:
    """The section written into docs/RECIPES.md: how it was made, where, under what load, the tables."""
    loads = [run.load for run in runs]
    lines = [
        f"Recipe `{recipe}`, produced by `{' '.join(['python scripts/time_to_accuracy.py', *argv])}`.",
        f"{env['date']}; {env['cpu']} ({env['cores']} logical cores); BLAS {env['blas']};",
        f"Python {env['python']}, NumPy {env['numpy']}, array-api-compat {env['array_api_compat']}, "
        f"PyTorch {env['torch']}. Load average (1 min) before each run: {min(loads):.2f}-{max(loads):.2f};"
        f" at the end (1/5/15 min): {env['load_average']}.",
        "",
        "| runner | seed | test accuracy | kept epoch (val accuracy) | wall time | in epochs | load |",
        "|---|---|---|---|---|---|---|",
        *(_run_row(run) for run in runs),
        "",
        *summary(runs, runners, threshold),
    ]
    return "\n".join(lines)


def write_section(recipe: str, text: str, doc: Path = DOC) -> None:
    """Put ``text`` between this recipe's markers in ``doc`` (appended at the end the first time)."""
    from xpnet.fileio import write_marked_section

    write_marked_section(doc, f"time-to-accuracy {recipe}", "scripts/time_to_accuracy.py", text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="default", help="the recipe to time (default: default)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    parser.add_argument("--runners", default=",".join(RUNNERS), help="xpnet, torch or both (default: both)")
    parser.add_argument("--pause", type=float, default=2.0, help="idle seconds before each run (default: 2)")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (quick checks)")
    parser.add_argument("--threshold", type=float, default=0.90, help="test accuracy every seed must reach")
    parser.add_argument("--doc", type=Path, default=DOC, help="Markdown file to update (default: docs/RECIPES.md)")
    parser.add_argument("--no-doc", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    runners = [name.strip() for name in args.runners.split(",") if name.strip()]
    if not seeds or not set(runners) <= set(RUNNERS) or not runners:
        parser.error(f"--seeds needs whole numbers and --runners names from {', '.join(RUNNERS)}")
    from xpnet.bench.environment import environment

    runs = measure(args.recipe, seeds, runners, args.pause, args.epochs, log=lambda line: print(line, flush=True))
    text = markdown(args.recipe, runs, runners, environment(), argv, args.threshold)
    print(f"\n{text}")
    if not args.no_doc:
        write_section(args.recipe, text, args.doc)
        print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
