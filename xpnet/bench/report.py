"""A sweep's results as files: JSON (``BenchResult.to_json``), a Markdown report and a PNG plot."""

from __future__ import annotations

import os

from xpnet.bench.environment import cpu_label
from xpnet.bench.results import BenchResult, Row
from xpnet.bench.table import markdown_table
from xpnet.bench.workload import MOMENTUM, flops_per_sample
from xpnet.fileio import atomic_writer


def _header(result: BenchResult) -> list[str]:
    env, opts = result.environment, result.options
    lines = [
        "# xpnet benchmark results",
        "",
        f"Produced by `python -m xpnet bench` on {env['date']}. Network 784-128-64-10, ReLU, softmax",
        f"cross-entropy, SGD momentum {MOMENTUM}, float32; {flops_per_sample():,} FLOPs per training sample.",
        f"Data: {opts['data']} ({opts['samples']:,} samples, uint8 resident on the device);",
        f"one epoch per timing, median of {opts['repeats']} alternating repeats after {opts['warmup']} warm-up,",
        f"a garbage collection and {opts.get('pause', 0):g} s idle before each timed epoch.",
        "",
        f"- CPU: {cpu_label(env)} ({env['cores']} logical cores)",
        f"- BLAS: {env['blas']}",
        f"- Load average (1/5/15 min) when the run ended: {env['load_average']} on {env['cores']} cores",
        f"- Python {env['python']}, NumPy {env['numpy']}, array-api-compat {env['array_api_compat']}, "
        f"PyTorch {env['torch']}, CuPy {env['cupy']}",
    ]
    if "gpu" in env:
        lines.append(f"- GPU: {env['gpu']}")
    return lines


def markdown_report(result: BenchResult, profile_text: str | None = None, notes: str | None = None) -> str:
    """bench/RESULTS.md: how and where it ran, the ceilings, the table, the profile, the notes."""
    lines = [*_header(result), "", "## Ceilings (GFLOP/s, measured in this run)", ""]
    for label, ceiling in result.ceilings.items():
        own = ", ".join(f"{b}: {g:.1f}" for b, g in ceiling["own"].items())
        lines.append(f"- {label}: peak square GEMM {ceiling['peak']:.1f}; the step's own GEMMs by batch size: {own}")
    if result.skipped:
        lines += ["", "Skipped here:", ""] + [f"- {s}" for s in result.skipped]
    lines += [
        "",
        "## Throughput",
        "",
        "`vs torch eager`: samples/s over PyTorch eager's on the same device in the same run;",
        "`vs direct NumPy`: xpnet over the same math written straight in NumPy (the array-API indirection);",
        "`vs bare step`: xpnet's `fit` epochs over its own step in a bare loop on the same batches (`fit`'s overhead);",
        "`compile s`: the one-time tracing and XLA compilation (JAX), timed where it happens, in the untimed",
        "warm-up epoch, so in none of the epochs above; – where nothing is compiled.",
        "",
        markdown_table(result.rows),
        "",
        "![throughput](results.png)",
    ]
    if profile_text:
        lines += ["", "## Where the time goes (xpnet on NumPy, one training step, by phase)", "", profile_text]
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def plot(result: BenchResult, path: str | os.PathLike) -> None:
    """Throughput vs batch size, one line per implementation and backend/device, ceilings dashed."""
    import matplotlib  # optional (the plot extra): only when a PNG is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    series: dict[str, list[Row]] = {}
    for row in result.rows:
        series.setdefault(f"{row.impl} {row.backend}/{row.device}", []).append(row)
    for label, rows in series.items():
        ax.plot([r.batch_size for r in rows], [r.samples_per_s for r in rows], marker="o", label=label)
    flops = flops_per_sample()
    for label, ceiling in result.ceilings.items():
        ax.axhline(ceiling["peak"] * 1e9 / flops, linestyle="--", color="grey", linewidth=1)
        ax.annotate(f"{label} peak GEMM", (min(r.batch_size for r in result.rows), ceiling["peak"] * 1e9 / flops))
        own = sorted(ceiling["own"].items())
        ax.plot([b for b, _ in own], [g * 1e9 / flops for _, g in own], linestyle=":", label=f"{label} own GEMMs")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("training samples/s")
    ax.set_title("xpnet 784-128-64-10 training throughput")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_writer(path) as stream:  # the old plot stays whole until the new one is complete
            fig.savefig(stream, format="png", dpi=110)
    finally:
        plt.close(fig)
