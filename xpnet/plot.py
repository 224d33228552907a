"""Learning curves and a confusion matrix as one PNG (matplotlib is an optional extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xpnet.errors import ConfigError
from xpnet.fileio import atomic_writer

#: Most classes whose confusion matrix is drawn: a larger one is unreadable, and its cells grow as classes squared.
MAX_PLOT_CLASSES = 100


def check_plot_path(path) -> None:
    """Refuse a plot file xpnet cannot write, before any training time is spent on it."""
    if Path(path).suffix.lower() != ".png":
        raise ConfigError(f"--plot {path}: the file name must end in .png")
    _pyplot()


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError('--plot needs matplotlib; install it with: pip install "xpnet[plot]"') from None
    return plt


def _class_count(truth, predicted, class_names) -> int:
    if class_names:
        return len(class_names)
    return int(max(np.max(truth), np.max(predicted))) + 1


def confusion_matrix(truth, predicted, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs; rows are the truth."""
    pairs = np.asarray(truth, dtype=np.int64) * num_classes + np.asarray(predicted, dtype=np.int64)
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def plot_training(path, records: list[dict], truth=None, predicted=None, class_names=None) -> None:
    """Loss and accuracy per epoch (train and validation), and the test confusion matrix
    (up to ``MAX_PLOT_CLASSES`` classes: beyond that no one could read its cells)."""
    check_plot_path(path)
    plt = _pyplot()
    if predicted is not None and _class_count(truth, predicted, class_names) > MAX_PLOT_CLASSES:
        predicted = None
    panels = 3 if predicted is not None else 2
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), constrained_layout=True)
    epochs = [r["epoch"] for r in records]
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-o"), ("val_", "--s")):
            values = [r.get(prefix + metric) for r in records]
            if any(v is not None for v in values):
                ax.plot(epochs, values, style, label=("validation " if prefix else "train ") + metric)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # regression has no accuracy; zero epochs, no curves
            ax.legend()
    if predicted is not None:
        names = list(class_names or range(int(max(np.max(truth), np.max(predicted))) + 1))
        matrix = confusion_matrix(truth, predicted, len(names))
        ax = axes[2]
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(len(names)), [str(n) for n in names], rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), [str(n) for n in names], fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"test confusion matrix (accuracy {np.trace(matrix) / matrix.sum():.3f})")
    with atomic_writer(path) as stream:
        figure.savefig(stream, format="png", dpi=100)
    plt.close(figure)
