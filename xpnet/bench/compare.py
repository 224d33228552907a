"""Two benchmark runs side by side: for every tracked figure, slower, faster or within noise.

The figures compared are ratios measured inside each run (xpnet against PyTorch eager
and against the direct NumPy loop, % of the same run's GEMM ceilings), not absolute
samples/s, which drift with the machine and its neighbours. A change is beyond noise
when the two medians are further apart than the two runs' spreads together
(``noise``); each run's spread is measured from its own repeats. Three repeats or
more on both sides are needed for a verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from xpnet.bench.history import RATIO_FIGURES, ROW_KEY

MIN_REPEATS = 3
LABELS = {
    "vs_torch_eager": "vs torch eager",
    "vs_direct": "vs direct NumPy",
    "vs_step": "vs bare step",
    "pct_own": "% own GEMMs",
    "pct_peak": "% peak GEMM",
    "samples_per_s": "samples/s",
}


@dataclass
class Change:
    """One figure of one row in two runs. Every tracked figure is better when higher."""

    row: tuple  # impl, backend, device, batch size
    figure: str
    before: dict  # {"median", "spread"}
    after: dict
    repeats: tuple[int, int]

    @property
    def change(self) -> float:
        """Relative change of the median: -0.10 is 10% lower (worse) than before."""
        return self.after["median"] / self.before["median"] - 1

    @property
    def noise(self) -> float:
        """How far apart the medians may be by noise alone, relative to the median before."""
        before, after = self.before, self.after
        return before["spread"] + after["spread"] * after["median"] / before["median"]

    @property
    def verdict(self) -> str:
        if min(self.repeats) < MIN_REPEATS:
            return "too few repeats"
        if abs(self.change) <= self.noise:
            return "within noise"
        return "faster" if self.change > 0 else "slower"


def _rows(entry: dict, impls: Sequence[str]) -> dict[tuple, dict]:
    return {tuple(row[key] for key in ROW_KEY): row for row in entry["rows"] if row["impl"] in impls}


def compare(
    before: dict, after: dict, figures: Sequence[str] = RATIO_FIGURES, impls: Sequence[str] = ("xpnet",)
) -> list[Change]:
    """The changes of ``figures`` from run ``before`` to run ``after`` (history entries), for the
    rows of ``impls`` both runs have (xpnet's own by default: the peers are the yardsticks)."""
    old, new = _rows(before, impls), _rows(after, impls)
    changes = []
    for key in [k for k in new if k in old]:
        for name in figures:
            a, b = old[key].get(name), new[key].get(name)
            if a and b and a["median"]:
                repeats = (old[key].get("repeats", 0), new[key].get("repeats", 0))
                changes.append(Change(key, name, a, b, repeats))
    return changes


def overall(changes: list[Change]) -> str:
    """One word for a whole comparison: ``slower``, ``faster``, ``slower and faster`` or ``within noise``."""
    verdicts = {c.verdict for c in changes}
    if not changes or verdicts <= {"too few repeats"}:
        return f"no verdict (no figure of the same row in both runs with {MIN_REPEATS} repeats or more)"
    moved = [v for v in ("slower", "faster") if v in verdicts]
    return " and ".join(moved) if moved else "within noise"


def _value(figure: str, value: float) -> str:
    return f"{value:.1f}%" if figure.startswith("pct_") else f"{value:.3f}x"


def _run(entry: dict) -> str:
    commit = (entry.get("commit") or "unknown commit")[:10] + ("+edits" if entry.get("dirty") else "")
    load = entry.get("loadavg") or {}
    start, end = load.get("start"), load.get("end")
    loads = "/".join(f"{x[0]:.1f}" for x in (start, end) if x)
    return f"{commit} ({entry.get('date', '?')}, 1-min load {loads or '?'} on {entry.get('cores', '?')} cores)"


def format_changes(changes: list[Change], before: dict, after: dict) -> str:
    """A line per figure and a summary: ``slower / faster / within noise``."""
    lines = [f"before: {_run(before)}", f"after:  {_run(after)}"]
    if before.get("machine") != after.get("machine"):
        lines.append(f"note: different machines ({before.get('machine')} vs {after.get('machine')})")
    for entry in (before, after):
        end = (entry.get("loadavg") or {}).get("end")
        if end and entry.get("cores") and end[0] > entry["cores"]:
            lines.append(f"note: {_run(entry)} ran on a busy machine: wide spreads, only large changes show")
    for c in changes:
        impl, backend, device, batch = c.row
        lines.append(
            f"  {impl} {backend}/{device} batch {batch:>5}  {LABELS[c.figure]:<15} "
            f"{_value(c.figure, c.before['median']):>8} -> {_value(c.figure, c.after['median']):>8}  "
            f"{100 * c.change:+6.1f}%  noise ±{100 * c.noise:.1f}%  {c.verdict}"
        )
    counts = {v: sum(c.verdict == v for c in changes) for v in ("slower", "faster", "within noise")}
    lines.append(", ".join(f"{k}: {n}" for k, n in counts.items()) + f" (of {len(changes)} figures)")
    return "\n".join(lines)
