"""The one number check: what counts as a number or a whole number in an argument or a setting.

Every check of a number a user passes (``epochs``, ``batch_size``, ``lr``, a scaling
figure, an estimator parameter) asks these, so NumPy scalars (``np.int64(2)`` from
``np.arange``, ``np.float32(0.1)``) pass wherever a Python number does, and a bool
(``True``, ``np.True_``) never passes as 1.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["is_number", "is_whole"]


def _is_bool(value) -> bool:
    # np.bool_ is neither bool nor numbers.Integral, but refuse it by name too, in case a library registers it.
    return isinstance(value, bool) or type(value).__name__ in ("bool_", "bool")


def is_whole(value) -> bool:
    """A whole number: ``int`` or a NumPy integer scalar; not a bool, not ``2.0``."""
    return isinstance(value, numbers.Integral) and not _is_bool(value)


def is_number(value, limit: float = math.inf) -> bool:
    """A finite real number (``int``, ``float`` or a NumPy scalar of either), not a bool, ``|value| <= limit``."""
    if not isinstance(value, numbers.Real) or _is_bool(value):
        return False
    try:
        number = float(value)
    except (OverflowError, TypeError, ValueError):
        return False
    return math.isfinite(number) and abs(number) <= limit
