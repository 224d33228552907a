"""The train/validation split, drawn on the host once per run."""

from __future__ import annotations

import numbers

import numpy as np

from xpnet.errors import ConfigError, DataError
from xpnet.scaling import SCALINGS, Scaling

__all__ = ["SCALINGS", "Scaling", "train_val_split"]  # Scaling lives in the core; re-exported for data users


def train_val_split(
    X: np.ndarray, y: np.ndarray, fraction: float, seed: int | None = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out a random ``fraction`` of the samples for validation: ``(X_tr, y_tr, X_val, y_val)``.

    The shuffle uses ``numpy.random.default_rng(seed)``, so a seed gives the same
    split every run. ``fraction=0`` gives empty validation arrays; at least one
    sample always stays in training.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 <= fraction < 1:
        raise ConfigError(f"val_split: got {fraction!r}; use a fraction in [0, 1), e.g. 0.1")
    if len(X) != len(y):
        raise DataError(f"X has {len(X)} samples but y has {len(y)}; they need one target per sample")
    train, val = split_rows(len(X), fraction, seed)
    return X[train], y[train], X[val], y[val]


def split_rows(n: int, fraction: float, seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """The row indices ``(train, validation)`` that ``train_val_split`` takes (per-row weights follow them)."""
    n_val = min(round(n * float(fraction)), max(n - 1, 0))
    order = np.random.default_rng(seed).permutation(n)
    return order[n_val:], order[:n_val]
