"""``python -m xpnet bench`` and ``scripts/bench.py``: run the sweep, print it, write the files."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from xpnet.bench import history
from xpnet.bench.compare import compare, format_changes
from xpnet.bench.options import add_bench_arguments
from xpnet.bench.preflight import preflight
from xpnet.bench.profile import profile_markdown
from xpnet.bench.report import markdown_report, plot
from xpnet.bench.results import BenchResult
from xpnet.bench.sweep import run_bench
from xpnet.bench.table import format_rows
from xpnet.errors import ConfigError, XpnetError
from xpnet.fileio import atomic_write_text

DESCRIPTION = "The speed sweep: samples/s, step time and GFLOP/s per backend, device and batch size."


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated whole numbers, not {text!r}") from None


def _names(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def bench_main(args: argparse.Namespace) -> int:
    """Run ``python -m xpnet bench`` with parsed ``args``; print the table, write the files."""
    batch_sizes = _ints(args.batch_sizes, "--batch-sizes")
    checked = preflight(args, batch_sizes)  # before minutes of measuring: options it would trip on late
    result = run_bench(
        batch_sizes=batch_sizes,
        backends=_names(args.backends),
        impls=_names(args.impls) or [],
        samples=args.samples,
        repeats=args.repeats,
        warmup=args.warmup,
        data=args.data,
        memory=not args.no_memory,
        gemm_size=args.gemm_size,
        pause=args.pause,
        log=None,
        progress=lambda line: print(line, file=sys.stderr, flush=True),  # stdout keeps the table alone
    )
    print(format_rows(result.rows))
    for skip in result.skipped:
        print(f"skipped: {skip}")
    profile_text = profile_markdown(checked.profile) if checked.profile else None
    if profile_text:
        print(profile_text)
    _write_files(args, result, profile_text, checked.notes)
    if checked.history_path is not None:
        _history(args, result, checked)
    return 0


def _write_files(args: argparse.Namespace, result: BenchResult, profile_text: str | None, notes: str | None) -> None:
    if args.json:
        atomic_write_text(args.json, result.to_json())
    if args.png:
        plot(result, args.png)
    if args.markdown:
        atomic_write_text(args.markdown, markdown_report(result, profile_text, notes))


def _history(args: argparse.Namespace, result: BenchResult, checked) -> None:
    """``--compare`` with the stored run (read before the sweep), then ``--history`` appends this one."""
    entry = history.entry_from_result(result, args.machine)
    if checked.before is not None:
        print(format_changes(compare(checked.before, entry), checked.before, entry))
    if args.history is not None:
        history.append(checked.history_path, entry)
        print(f"appended this run to {checked.history_path}")


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/bench.py``: the same options and output as ``python -m xpnet bench``."""
    parser = argparse.ArgumentParser(
        prog="xpnet bench",
        description="The speed sweep: samples/s, step time and GFLOP/s per backend, device and batch size.",
    )
    add_bench_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return bench_main(args)
    except XpnetError as exc:
        parser.exit(2, f"xpnet: error: {exc}\n")


if __name__ == "__main__":
    sys.exit(main())
