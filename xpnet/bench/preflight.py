"""What ``python -m xpnet bench`` checks before the sweep starts, so it never fails at the end.

A sweep takes minutes; an option it could only refuse afterwards (an unwritable
``--json``, a missing ``--notes`` file) or one that would crash it midway (a negative
``--gemm-size``, a batch of ten million rows) is refused first, with ``xpnet: error:``
naming the option.
"""

from __future__ import annotations

import argparse

from xpnet.bench.workload import SIZES
from xpnet.errors import ConfigError, DataError
from xpnet.fileio import check_output_path, open_input, read_failure
from xpnet.memory import Estimate, batch_bytes

#: The runners that may hold one step's temporaries at once (xpnet, the direct loop, torch eager).
RUNNERS = 3


def preflight(args: argparse.Namespace, batch_sizes: list[int]) -> str | None:
    """Check the options the sweep only uses late; returns the ``--notes`` text (read now)."""
    for option, value, low in (("--samples", args.samples, 1), ("--gemm-size", args.gemm_size, 1)):
        if value is not None and value < low:
            raise ConfigError(f"{option} must be a whole number >= {low}, not {value}")
    for batch in batch_sizes:
        _memory(batch, max(args.samples, batch), args.gemm_size).check(f"bench --batch-sizes {batch}")
    for option in ("json", "markdown", "png"):
        if getattr(args, option):
            check_output_path(getattr(args, option), f"--{option}")
    if getattr(args, "history", None):
        check_output_path(args.history, "--history")
    return _notes(args.notes) if args.notes else None


def _memory(batch: int, samples: int, gemm_size: int | None) -> Estimate:
    """One batch size's share of the sweep: its data rows, the runners' steps, the GEMM ceilings."""
    estimate = Estimate().add("data (uint8 rows, tiled)", 2 * samples * SIZES[0])
    estimate.add("the runners' training steps", RUNNERS * batch_bytes(list(SIZES), batch, 4, 1))
    estimate.add("the step's own GEMMs", batch * sum(SIZES) * 4 * 2)
    side = gemm_size or 8192
    return estimate.add("the peak GEMM", 3 * side * side * 4)


def _notes(path: str) -> str:
    try:
        with open_input(path, "a Markdown file") as stream:
            return stream.read().decode("utf-8")
    except OSError as exc:
        raise read_failure(path, exc, "a Markdown file", "--notes") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"--notes {path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
