#!/usr/bin/env python
"""The benchmark history in bench/history/: plot it, import pytest-benchmark runs, compare runs.

    python scripts/bench_history.py plot                 # bench/history-<machine>-cpu.png (and -gpu.png)
    python scripts/bench_history.py import .benchmarks/Linux-*/0001_*.json
    python scripts/bench_history.py compare [BEFORE] [AFTER]   # two stored runs (default: the last two)
    python scripts/bench_history.py list

Runs are appended by `python -m xpnet bench --history` (see bench/HISTORY.md).
"""

import argparse
import sys
from pathlib import Path

from xpnet.bench import history
from xpnet.bench.compare import compare, format_changes, overall
from xpnet.bench.environment import environment
from xpnet.bench.pytest_import import read_pytest_benchmark
from xpnet.bench.trend import plot_trend
from xpnet.errors import DataError, XpnetError


def _this_machine(args) -> Path:
    return Path(args.history) if args.history else history.default_path(history.machine_name(environment()))


def plot(args) -> None:
    files = (
        [Path(args.history)] if args.history else sorted((history.project_root() / "bench" / "history").glob("*.jsonl"))
    )
    for path in files:
        entries = history.read(path)
        for kind, gpu in (("cpu", False), ("gpu", True)):
            out = Path(args.out_dir) / f"history-{path.stem}-{kind}.png"
            if plot_trend(entries, out, gpu):
                print(f"{out}: {len(entries)} runs")


def import_runs(args) -> None:
    for name in args.files:
        entry = read_pytest_benchmark(name, args.machine)
        path = Path(args.history) if args.history else history.default_path(entry["machine"])
        history.append(path, entry)
        print(f"{name}: {len(entry['rows'])} rows of commit {(entry['commit'] or '?')[:10]} appended to {path}")


def compare_runs(args) -> None:
    entries = history.read(_this_machine(args))
    if not args.before and len(entries) < 2:
        raise DataError("the history has fewer than two runs to compare")
    before = history.find(entries, args.before) if args.before else entries[-2]
    after = history.find(entries, args.after)
    changes = compare(before, after)
    print(format_changes(changes, before, after))
    print(f"verdict: {overall(changes)}")


def list_runs(args) -> None:
    for entry in history.read(_this_machine(args)):
        load = (entry.get("loadavg") or {}).get("end")
        commit = (entry.get("commit") or "?")[:10] + ("+edits" if entry.get("dirty") else "")
        load_text = f"{load[0]:.2f}" if load else "?"
        print(
            f"{commit}  {entry.get('date')}  {entry.get('source')}  {len(entry['rows'])} rows  1-min load {load_text}"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--history", help="a history file (default: bench/history/<this machine>.jsonl)")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("plot", help="each tracked figure over commits, as PNGs")
    p.add_argument("--out-dir", default=str(history.project_root() / "bench"), help="where the PNGs go")
    p = commands.add_parser("import", help="append pytest-benchmark JSON files of bench/ to the history")
    p.add_argument("files", nargs="+")
    p.add_argument("--machine", help="the machine's name in the history (default: from the JSON's CPU)")
    p = commands.add_parser("compare", help="compare two stored runs")
    p.add_argument("before", nargs="?", help="a commit (default: the run before the last)")
    p.add_argument("after", nargs="?", help="a commit (default: the last run)")
    commands.add_parser("list", help="the stored runs, oldest first")
    args = parser.parse_args(argv)
    try:
        {"plot": plot, "import": import_runs, "compare": compare_runs, "list": list_runs}[args.command](args)
    except XpnetError as exc:
        parser.exit(2, f"xpnet: error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
