"""The one number check: what counts as a number or a whole number in an argument or a setting.

Also the checks built on it (a whole number at least m, a fraction, a positive number) and
the float types by name: every number and dtype check lives here.

Every check of a number a user passes (``epochs``, ``batch_size``, ``lr``, a scaling
figure, an estimator parameter) asks these, so NumPy scalars (``np.int64(2)`` from
``np.arange``, ``np.float32(0.1)``) pass wherever a Python number does, and a bool
(``True``, ``np.True_``) never passes as 1.
"""

from __future__ import annotations

import math
import numbers

from xpnet.errors import ConfigError

__all__ = [
    "DTYPES",
    "FLOAT32_MAX",
    "at_least",
    "dtype_name",
    "fraction",
    "is_number",
    "is_whole",
    "non_negative",
    "positive",
    "whole",
]

#: The float types weights and math may be in, by name.
DTYPES = ("float32", "float64")
#: Largest finite float32: a value a float32 network must be able to hold.
FLOAT32_MAX = 3.4028234663852886e38


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


def whole(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int; a ConfigError naming ``name`` unless it is a whole number >= ``minimum``."""
    if not (is_whole(value) and value >= minimum):
        raise ConfigError(f"{name} must be a whole number >= {minimum}, not {value!r}")
    return int(value)


def dtype_name(name: str, what: str = "dtype") -> str:
    """``name`` if it is one of ``DTYPES``; a ConfigError listing them otherwise."""
    if name not in DTYPES:
        raise ConfigError(f"{what} must be one of {', '.join(DTYPES)}, not {name!r}")
    return name


# -- checks of a value alone (a setting's): each returns it in canonical form or raises
# -- ConfigError with the reason only (the caller names the setting)


def at_least(minimum: int):
    """A check: a whole number >= ``minimum``."""

    def check(value):
        if not (is_whole(value) and value >= minimum):
            raise ConfigError(f"expected a whole number >= {minimum}, not {value!r}")
        return int(value)  # a NumPy integer stored as a Python int

    return check


def fraction(value) -> float:
    """A number in [0, 1)."""
    if not (is_number(value) and 0.0 <= value < 1.0):
        raise ConfigError(f"expected a number in [0, 1), not {value!r}")
    return float(value)


def positive(value) -> float:
    if not (is_number(value) and value > 0):
        raise ConfigError(f"expected a positive number, not {value!r}")
    return float(value)


def non_negative(value) -> float:
    if not (is_number(value) and value >= 0):
        raise ConfigError(f"expected a number >= 0, not {value!r}")
    return float(value)
