"""The options of ``python -m xpnet bench``: light on purpose, as the product CLI imports it.

Defining the options needs no runner, no PyTorch and no plotting, so ``python -m xpnet
train`` builds its parser without loading the harness (``xpnet.bench.cli`` runs it).
"""

from __future__ import annotations

import argparse

from xpnet.bench.workload import BATCH_SIZES, IMPLS, PAUSE


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m xpnet bench`` (the CLI registers them on its subparser)."""
    parser.add_argument(
        "--batch-sizes", default=",".join(map(str, BATCH_SIZES)), help="comma-separated (default: %(default)s)"
    )
    parser.add_argument(
        "--backends",
        default=None,
        help="comma-separated among numpy, torch, cupy, array-api-strict, jax, each on every device kind it has,"
        " or on one: jax/cuda (default: numpy, torch, cupy)",
    )
    parser.add_argument(
        "--impls",
        default=",".join(IMPLS),
        help=f"comma-separated among {', '.join(IMPLS)} (default: all); xpnet-step, fit's own step in a bare "
        "loop, comes with xpnet wherever xpnet runs eagerly",
    )
    parser.add_argument("--samples", type=int, default=32768, help="samples per timed epoch (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per row; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs first (default: %(default)s)")
    parser.add_argument("--data", default="auto", choices=("auto", "fashion-mnist", "random"))
    parser.add_argument(
        "--gemm-size", type=int, default=None, help="side of the peak GEMM (default 2048 CPU, 8192 GPU)"
    )
    parser.add_argument(
        "--pause", type=float, default=PAUSE, help="idle seconds before each timed epoch (default: %(default)s)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the (untimed) peak-memory epoch")
    parser.add_argument("--profile", default=None, help="also profile xpnet's step phase by phase at these batch sizes")
    parser.add_argument("--json", default=None, help="write the results as JSON here")
    parser.add_argument("--markdown", default=None, help="write a Markdown report here")
    parser.add_argument("--notes", default=None, help="a Markdown file appended to the report")
    parser.add_argument("--png", default=None, help="write the throughput plot to this .png file")
    history = parser.add_argument_group("history (see bench/HISTORY.md)")
    history.add_argument(
        "--history",
        nargs="?",
        const="",
        default=None,
        metavar="FILE",
        help="append this run to the benchmark history (default FILE: bench/history/<machine>.jsonl)",
    )
    history.add_argument(
        "--compare",
        nargs="?",
        const="last",
        default=None,
        metavar="REF",
        help="compare this run with a stored one: the last (default) or the newest of commit REF",
    )
    history.add_argument("--machine", default=None, help="the machine's name in the history (default: CPU and GPU)")
