#!/usr/bin/env python
"""Why ``check_sample_weight_equivalence_on_dense_data`` fails in float32: the figures docs/SKLEARN.md gives.

    python scripts/float32_weights.py

On the check's own data (15 rows with integer weights 0-4, against the rows repeated that often,
27 of them), it prints:

- how many of the repeated rows' hidden pre-activations ``z = x Wᵀ + b``, computed in float32 as
  the dense layer computes them, differ from the same rows' in the 15-row batch (the BLAS rounds
  a row by the kernel of its blocking that takes it, which depends on its batch-mates);
- the check's comparison (``rtol=1e-7``, ``atol=1e-9``) for xpnet's estimators and scikit-learn's
  MLP, each trained in float32 and in float64 with default parameters (scikit-learn's MLP trains
  in its input's type, so it gets float32 ``X`` for float32).

The figures depend on the BLAS and the CPU; the check's verdicts say whether they exceed 1e-7.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.utils import shuffle

from xpnet.estimators import XpnetClassifier, XpnetRegressor


def check_data():
    """The check's data: ``(X, y, weights)`` shuffled as it shuffles them, and the repeated rows."""
    rng = np.random.RandomState(42)
    X, y, weights = rng.rand(15, 30), rng.randint(0, 3, size=15), rng.randint(0, 5, size=15)
    X_repeated, y_repeated = X.repeat(weights, axis=0), y.repeat(weights)
    X_weighted, y_weighted, weights = shuffle(X, y, weights, random_state=0)
    return X, (X_weighted, y_weighted, weights), (X_repeated, y_repeated)


def hidden_rounding(X_weighted, X_repeated) -> str:
    """How the float32 hidden pre-activations of the repeated rows differ from the weighted batch's."""
    net = XpnetClassifier(max_iter=1, random_state=0).fit(X_weighted, np.arange(15) % 3).model_
    W, b = (np.asarray(p) for p in net.params[:2])
    z_weighted = X_weighted.astype(np.float32) @ W.T + b
    z_repeated = X_repeated.astype(np.float32) @ W.T + b
    same_row = [int(np.flatnonzero((X_weighted == row).all(axis=1))[0]) for row in X_repeated]
    differ = z_repeated != z_weighted[same_row]
    largest = float(np.max(np.abs(z_repeated - z_weighted[same_row])))
    return (
        f"hidden z in float32: {int(differ.sum())} of {differ.size} values ({int(differ.any(axis=1).sum())} of "
        f"{len(X_repeated)} repeated rows) differ from the same rows' in the 15-row batch, by up to {largest:.2g}"
    )


def comparison(make, dtype, X, weighted, repeated) -> str:
    """The check's comparison for the estimator ``make(dtype)`` builds, trained on ``dtype`` data."""
    X_weighted, y_weighted, weights = weighted
    X_repeated, y_repeated = repeated
    with_weights = make(dtype).fit(X_weighted.astype(dtype), y_weighted, sample_weight=weights)
    with_repeats = make(dtype).fit(X_repeated.astype(dtype), y_repeated)
    method = "predict_proba" if hasattr(with_weights, "predict_proba") else "predict"
    mine, theirs = (getattr(fitted, method)(X.astype(dtype)) for fitted in (with_weights, with_repeats))
    passes = np.allclose(mine, theirs, rtol=1e-7, atol=1e-9)
    largest = float(np.max(np.abs(mine - theirs) / np.abs(theirs)))
    return f"{'passes' if passes else 'FAILS '} ({method} up to {largest:.2g} apart, relative)"


def main() -> int:
    warnings.simplefilter("ignore", ConvergenceWarning)
    X, weighted, repeated = check_data()
    print(hidden_rounding(weighted[0], repeated[0]))
    contenders = {
        "XpnetClassifier": lambda dtype: XpnetClassifier(dtype=np.dtype(dtype).name, random_state=0),
        "XpnetRegressor": lambda dtype: XpnetRegressor(dtype=np.dtype(dtype).name, random_state=0),
        "MLPClassifier": lambda dtype: MLPClassifier(random_state=0),
        "MLPRegressor": lambda dtype: MLPRegressor(random_state=0),
    }
    for name, make in contenders.items():
        for dtype in (np.float32, np.float64):
            print(f"{name:16} {np.dtype(dtype).name}: {comparison(make, dtype, X, weighted, repeated)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
