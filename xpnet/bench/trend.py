"""Each tracked figure over commits, the way asv shows one: a PNG per history and device kind.

One panel per figure (the in-run ratios, then absolute samples/s), one line per xpnet
row (backend/device and batch size), the repeats' spread as error bars. CPU rows and GPU
rows never share a plot: their figures answer different questions.
"""

from __future__ import annotations

import os

from xpnet.bench.compare import LABELS
from xpnet.bench.history import FIGURES


def is_gpu(device: str) -> bool:
    return device != "cpu"


def series(entries: list[dict], gpu: bool, impl: str = "xpnet") -> dict[str, dict[str, list]]:
    """figure -> line label -> ``[(run index, median, spread), ...]`` for ``impl``'s rows of one device kind."""
    out: dict[str, dict[str, list]] = {name: {} for name in FIGURES}
    for index, entry in enumerate(entries):
        for row in entry["rows"]:
            if row["impl"] != impl or is_gpu(row["device"]) != gpu:
                continue
            label = f"{row['backend']}/{row['device']} batch {row['batch_size']}"
            for name in FIGURES:
                if row.get(name):
                    out[name].setdefault(label, []).append((index, row[name]["median"], row[name]["spread"]))
    return {name: lines for name, lines in out.items() if lines}


def run_label(entry: dict) -> str:
    commit = (entry.get("commit") or "?")[:7] + ("+" if entry.get("dirty") else "")
    return f"{commit}\n{(entry.get('date') or '')[:10]}"


def plot_trend(entries: list[dict], path: str | os.PathLike, gpu: bool = False) -> bool:
    """Draw the figures of ``entries`` (one history, oldest first) to ``path``; False if it has no such rows."""
    panels = series(entries, gpu)
    if not panels:
        return False
    import matplotlib  # optional (the plot extra): only when a PNG is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.6 * len(panels)), sharex=True, squeeze=False)
    labels = sorted({label for lines in panels.values() for label in lines})
    palette = plt.get_cmap("tab20")
    colors = {label: palette(i % 20) for i, label in enumerate(labels)}  # one colour per row in every panel
    for ax, (name, lines) in zip(axes[:, 0], panels.items()):
        for label, points in sorted(lines.items()):
            x, y, spread = zip(*points)
            yerr = [m * s for m, s in zip(y, spread)]
            ax.errorbar(x, y, yerr=yerr, marker="o", capsize=3, color=colors[label], label=label)
        ax.set_ylabel(LABELS[name] + (" (absolute)" if name == "samples_per_s" else ""), fontsize=8)
        if name == "samples_per_s":
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    handles = [plt.Line2D([], [], color=colors[label], marker="o", label=label) for label in labels]
    axes[0, 0].legend(handles=handles, fontsize=7, ncol=2)
    axes[-1, 0].set_xticks(range(len(entries)), [run_label(e) for e in entries], fontsize=7)
    machine = entries[-1].get("machine", "?")
    axes[0, 0].set_title(f"xpnet benchmark history, {'GPU' if gpu else 'CPU'} rows, {machine} (error bars: spread)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
