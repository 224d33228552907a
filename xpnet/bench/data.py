"""The benchmark's data: Fashion-MNIST-shaped uint8 rows, real when installed, random otherwise."""

from __future__ import annotations

import math

import numpy as np

from xpnet.bench.workload import SIZES
from xpnet.data import load_dataset
from xpnet.errors import ConfigError, XpnetError

SOURCES = ("auto", "fashion-mnist", "random")


def load_data(samples: int, source: str = "auto", seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """``samples`` Fashion-MNIST-shaped rows (uint8, 784 features; int32 labels, 10 classes).

    ``source``: ``"auto"`` (real Fashion-MNIST if it is on disk, else random),
    ``"fashion-mnist"``, or ``"random"``. Rows are repeated when asked for more than exist.
    Returns the rows, the labels and the source actually used.
    """
    if source not in SOURCES:
        raise ConfigError(f"bench data must be auto, fashion-mnist or random, not {source!r}")
    if source != "random":
        try:
            data = load_dataset("fashion-mnist", download=False, progress=False)
        except XpnetError:
            if source == "fashion-mnist":
                raise
        else:
            reps = math.ceil(samples / data.X_train.shape[0])
            X = np.tile(data.X_train, (reps, 1))[:samples]
            y = np.tile(data.y_train, reps)[:samples].astype(np.int32)
            return np.ascontiguousarray(X), y, "fashion-mnist"
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (samples, SIZES[0]), dtype=np.uint8)
    y = rng.integers(0, SIZES[-1], samples).astype(np.int32)
    return X, y, "random"
