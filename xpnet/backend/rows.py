"""Reductions along the rows of a narrow (samples, classes) array, where NumPy's own is slow."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
from array_api_compat import is_numpy_namespace


def row_max(xp: ModuleType, x: Any, keepdims: bool = False):
    """``xp.max(x, axis=1, keepdims=keepdims)`` of a 2-D ``x``, the same numbers, sooner on NumPy.

    NumPy reduces a C-ordered (samples, classes) array row by row, a short inner loop per row:
    at 1024 x 10 float32 that took 46 us, where the transpose copied and reduced down its
    columns, elementwise across all rows at once, took 6.7 us (2.2 against 4.0 us at 64 rows).
    A maximum is the same in any order it is taken (NaN propagates either way), so only the
    time changes. Softmax, its cross-entropy and the count of correct predictions each take
    one, every step. Other libraries reduce along rows as they are.
    """
    if not is_numpy_namespace(xp):
        return xp.max(x, axis=1, keepdims=keepdims)
    top = np.max(np.ascontiguousarray(x.T), axis=0)  # the copy C-ordered: rows become columns
    return top[:, None] if keepdims else top
