"""Rows as text: the aligned table the sweep prints and the Markdown table of the report."""

from __future__ import annotations

from collections.abc import Sequence

from xpnet.bench.results import Row

COLUMNS = (
    ("impl", "impl"),
    ("backend", "backend"),
    ("device", "device"),
    ("batch", "batch_size"),
    ("samples/s", "samples_per_s"),
    ("step ms", "step_ms"),
    ("GFLOP/s", "gflops"),
    ("% peak GEMM", "pct_peak"),
    ("% own GEMMs", "pct_own"),
    ("peak mem", "peak_memory"),
    ("compile s", "compile_s"),
    ("vs torch eager", "vs_torch_eager"),
    ("vs direct NumPy", "vs_direct"),
    ("vs bare step", "vs_step"),
)


def _cell(key: str, value) -> str:
    if value is None:
        return "–"
    if key == "samples_per_s":
        return f"{value:,.0f}"
    if key == "step_ms":
        return f"{value:.3f}"
    if key == "compile_s":
        return f"{value:.2f}"
    if key in ("gflops", "pct_peak", "pct_own"):
        return f"{value:.1f}"
    if key == "peak_memory":
        return format_bytes(value)
    if key.startswith("vs_"):
        return f"{value:.2f}x"
    return str(value)


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units: 512 B, 3.0 MiB."""
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def format_rows(rows: Sequence[Row], header: bool = True) -> str:
    """A plain-text table, one line per row, columns aligned."""
    cells = [[_cell(key, getattr(row, key)) for _, key in COLUMNS] for row in rows]
    widths = [max([len(title)] + [len(line[i]) for line in cells]) for i, (title, _) in enumerate(COLUMNS)]
    lines = []
    if header:
        lines.append("  ".join(title.rjust(w) for (title, _), w in zip(COLUMNS, widths)))
    lines += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table, in the order given (the sweep's: by batch size)."""
    lines = ["| " + " | ".join(title for title, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(key, getattr(row, key)) for _, key in COLUMNS) + " |")
    return "\n".join(lines)
