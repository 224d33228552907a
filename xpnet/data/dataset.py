"""What a loaded dataset is, and the fixed test split of files that bring no test set."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: User files holding only ``X, y``: this fraction (after a shuffle seeded by
#: ``TEST_SEED``) becomes the test set, the same samples on every run.
TEST_FRACTION = 0.2
TEST_SEED = 0


@dataclass
class Dataset:
    """Train and test arrays on the host, plus what the arrays mean.

    ``X_*`` are ``(n, features)`` (uint8 for images, float32 otherwise); ``y_*`` are
    int32 class labels or float32 regression targets.
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str] = field(default_factory=list)
    task: str = "classification"
    #: Per-sample weights of the training rows (``--sample-weight``), float64; None: every row counts 1.
    w_train: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        """Output units: one per class, or one per regression target."""
        if self.task == "classification":
            return len(self.class_names)
        return 1 if self.y_train.ndim == 1 else int(self.y_train.shape[1])

    @property
    def num_features(self) -> int:
        return int(self.X_train.shape[1])


def held_out_rows(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(train, test)``: a seeded ``TEST_FRACTION`` of ``n >= 2`` rows held out for testing."""
    n_test = min(max(1, round(n * TEST_FRACTION)), n - 1)
    order = np.random.default_rng(TEST_SEED).permutation(n)
    return order[: n - n_test], order[n - n_test :]
