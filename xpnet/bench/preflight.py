"""What ``python -m xpnet bench`` checks before the sweep starts, so it never fails at the end.

A sweep takes minutes; an option it could only refuse afterwards (an unwritable
``--json``, a missing ``--notes`` file) or one that would crash it midway (a negative
``--gemm-size``, a batch of ten million rows) is refused first, with ``xpnet: error:``
naming the option.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

from xpnet.bench import history
from xpnet.bench.environment import environment
from xpnet.bench.workload import SIZES
from xpnet.errors import ConfigError, DataError
from xpnet.fileio import check_output_path, open_input, read_failure
from xpnet.memory import Estimate, batch_bytes

#: The runners that may hold one step's temporaries at once (xpnet, the direct loop, torch eager).
RUNNERS = 3


@dataclass
class Checked:
    """What the options check read or parsed, for the sweep's end to use as it is."""

    notes: str | None = None  #: the --notes text
    profile: list[int] = field(default_factory=list)  #: the --profile batch sizes
    history_path: Path | None = None  #: where --history/--compare read and append
    before: dict | None = None  #: the stored run --compare names, read and checked


def preflight(args: argparse.Namespace, batch_sizes: list[int]) -> Checked:
    """Every option checked before the sweep (one check, so nothing fails after minutes of measuring):
    numbers, output paths (``xpnet.fileio``'s rule), ``--png``'s suffix, ``--profile``, the memory of
    each batch size, and the history (a regular file, every line checked by its schema)."""
    for option, value, low in (
        ("--samples", args.samples, 1), ("--gemm-size", args.gemm_size, 1), ("--repeats", args.repeats, 1),
        ("--warmup", args.warmup, 0),
    ):  # fmt: skip
        if value is not None and value < low:
            raise ConfigError(f"{option} must be a whole number >= {low}, not {value}")
    if not (math.isfinite(args.pause) and args.pause >= 0):
        raise ConfigError(f"--pause must be a number of seconds >= 0, not {args.pause}")
    checked = Checked(profile=_profile(args.profile))
    for option, sizes in (("--batch-sizes", batch_sizes), ("--profile", checked.profile)):
        for batch in sizes:
            _memory(batch, max(args.samples, batch), args.gemm_size).check(f"bench {option} {batch}")
    for option in ("json", "markdown", "png"):
        if getattr(args, option):
            check_output_path(getattr(args, option), f"--{option}")
    if args.png and Path(args.png).suffix.lower() != ".png":
        raise ConfigError(f"--png {args.png}: the plot is a PNG; give a file name ending in .png")
    checked.notes = _notes(args.notes) if args.notes else None
    if getattr(args, "history", None) is not None or getattr(args, "compare", None) is not None:
        _read_history(args, checked)
    return checked


def _profile(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"--profile must be comma-separated batch sizes >= 1, not {text!r}")
    return sizes


def _read_history(args: argparse.Namespace, checked: Checked) -> None:
    """The history file: its path, every line checked, and the run --compare names, before any work."""
    machine = args.machine or history.machine_name(environment())
    path = Path(args.history) if args.history else history.default_path(machine)
    if args.history:
        check_output_path(path, "--history")
    checked.history_path = path
    if args.compare is not None:
        checked.before = history.find(history.read(path), args.compare)
    elif path.exists() or path.is_symlink():
        history.read(path)  # appended to after the sweep: a damaged or non-regular file is refused now


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
