"""Small regression datasets for the ``regression`` recipe: real data, or a documented generated set.

``diabetes`` is scikit-learn's bundled diabetes data (Efron et al. 2004, "Least Angle
Regression"): 442 patients, 10 baseline features (age, sex, BMI, blood pressure and six
blood serum measurements, each mean-centred and scaled by scikit-learn), and a
quantitative measure of disease progression one year later (25 to 346). It ships inside
the scikit-learn wheel, so loading it needs no network; scikit-learn is the optional
extra ``recipes`` (``pip install xpnet[recipes]``), never a core dependency.

``friedman1`` is Friedman's (1991) generated benchmark, written out here so it needs
nothing: 10 features uniform on [0, 1], of which only the first five matter,

    y = 10 sin(π x1 x2) + 20 (x3 - 0.5)² + 10 x4 + 5 x5 + N(0, 1).

Both split off the same seeded 20% test set as user ``X, y`` files do.
"""

from __future__ import annotations

import numpy as np

from xpnet.data.dataset import Dataset, held_out_rows
from xpnet.errors import DataError
from xpnet.names import find

#: Loader names -> functions returning a regression ``Dataset``.
REGRESSION_DATASETS = ("diabetes", "friedman1")


def load_diabetes() -> Dataset:
    """scikit-learn's diabetes data as a regression ``Dataset`` (float32; targets in original units)."""
    try:
        from sklearn.datasets import load_diabetes as sklearn_diabetes
    except ImportError:
        raise DataError(
            "dataset 'diabetes' comes with scikit-learn, which is not installed; "
            "run `pip install xpnet[recipes]` (or `pip install scikit-learn`), or use 'friedman1'"
        ) from None
    data = sklearn_diabetes()
    return _split("diabetes", data.data, data.target)


def load_friedman1(n_samples: int = 2000, noise: float = 1.0, seed: int = 0) -> Dataset:
    """Friedman #1 (see the module docstring): ``n_samples`` rows of 10 features, seeded."""
    if n_samples < 2:
        raise DataError(f"friedman1: n_samples must be at least 2, not {n_samples}")
    rng = np.random.default_rng(seed)
    X = rng.uniform(0.0, 1.0, (n_samples, 10))
    y = (
        10.0 * np.sin(np.pi * X[:, 0] * X[:, 1])
        + 20.0 * (X[:, 2] - 0.5) ** 2
        + 10.0 * X[:, 3]
        + 5.0 * X[:, 4]
        + noise * rng.standard_normal(n_samples)
    )
    return _split("friedman1", X, y)


def load_regression(name: str) -> Dataset:
    """``"diabetes"`` or ``"friedman1"`` by name."""
    key = find(name, REGRESSION_DATASETS)
    if key == "diabetes":
        return load_diabetes()
    if key == "friedman1":
        return load_friedman1()
    raise DataError(f"unknown regression dataset {name!r}; use one of {', '.join(REGRESSION_DATASETS)}")


def _split(name: str, X, y) -> Dataset:
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    train, test = held_out_rows(len(X))
    return Dataset(name, X[train], y[train], X[test], y[test], [], "regression")
