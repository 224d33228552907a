"""Number and dtype checks, in one place: what counts as a number, a whole number, a float type.

Every setting, optimizer hyperparameter, estimator parameter and saved scaling asks these
questions the same way: a bool is not a number, NaN and infinities are not numbers, an
integer too large for a float is not one either, and NumPy scalars count as Python's.
"""

from __future__ import annotations

import math
import numbers

from xpnet.errors import ConfigError

#: The float types weights and math may be in, by name.
DTYPES = ("float32", "float64")
#: Largest finite float32: a value a float32 network must be able to hold.
FLOAT32_MAX = 3.4028234663852886e38


def is_number(value, limit: float = math.inf) -> bool:
    """A finite real number (not a bool) of magnitude at most ``limit``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value) and abs(float(value)) <= limit
    except OverflowError:  # an int beyond any float
        return False


def is_whole(value, minimum: int = 0) -> bool:
    """A whole number (not a bool, not 1.0) >= ``minimum``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def whole(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int; a ConfigError naming ``name`` unless it is a whole number >= ``minimum``."""
    if not is_whole(value, minimum):
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
        if not is_whole(value, minimum):
            raise ConfigError(f"expected a whole number >= {minimum}, not {value!r}")
        return value

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
