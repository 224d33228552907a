"""The arrays a user hands ``fit``, ``predict``, ``evaluate`` and ``gradients``, checked first.

A wrong call through the Python API (a list of strings, a ragged list, the wrong
number of features, an empty set, a label the network has no output for, NaN) raises
a ``ConfigError`` naming the argument and what was wrong, instead of whatever NumPy,
PyTorch or the matmul would raise deep inside. Shapes and dtypes are checked wherever
the array is. Values (finiteness, label range) are checked in host NumPy arrays, where
that costs no synchronisation; arrays already on a GPU are taken as they are, since
reading them back would stall the device (``Backend.audit`` holds fit to one read per epoch).
"""

from __future__ import annotations

import math

import numpy as np
from array_api_compat import array_namespace

from xpnet.errors import ConfigError


def host_numbers(data, name: str) -> np.ndarray:
    """``data`` as a host NumPy array of plain numbers (bools, integers, floats), or a ConfigError naming it."""
    try:
        array = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{name} is not an array of numbers ({exc})") from None
    if array.dtype.kind not in "biuf":
        raise ConfigError(f"{name} must hold numbers, not {array.dtype} ({type(data).__name__})")
    return array


def as_array(net, data, name: str):
    """``data`` as an array: the backend's own, or a host NumPy array of plain numbers."""
    array = data if net.backend.owns(data) else host_numbers(data, name)
    if _kind(array) == "?":  # complex, or a backend's own exotic dtype
        raise ConfigError(f"{name} must hold real numbers, not {array.dtype}")
    return array


def check_inputs(net, X, name: str = "X"):
    """``X`` as ``(samples, features)`` with the network's input width, at least one sample, finite."""
    X = as_array(net, X, name)
    features = net.sizes[0]
    if X.ndim != 2 or X.shape[1] != features:
        raise ConfigError(
            f"{name} has shape {tuple(X.shape)}; the network takes (samples, {features}): one row of "
            f"{features} features per sample"
        )
    if X.shape[0] == 0:
        raise ConfigError(f"{name} holds no samples")
    if _kind(X) == "f" and isinstance(X, np.ndarray):
        low, high = float(np.min(X)), float(np.max(X))  # NaN propagates; no copy of X is made
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ConfigError(f"{name} holds NaN or infinite values")
        _check_range(net, max(-low, high), name)
    return X


def _check_range(net, peak: float, name: str) -> None:
    """Refuse finite inputs the network's dtype cannot hold (1e300 for float32): they would become inf."""
    dtype = np.dtype(net.dtype_name)
    limit = float(np.finfo(dtype).max)
    if peak > limit:
        raise ConfigError(
            f"{name} holds values up to {peak:.3g} in size, beyond what the network's {dtype} holds "
            f"({limit:.3g}); rescale the inputs"
        )


def check_targets(net, y, samples: int, name: str = "y"):
    """``y`` for ``samples`` inputs: class labels each naming an output, or finite targets."""
    y = as_array(net, y, name)
    if y.ndim == 0 or y.shape[0] != samples:
        raise ConfigError(f"{name} has shape {tuple(y.shape)} but X has {samples} samples; give one target per sample")
    if net.is_classifier and _kind(y) in "biu":
        classes = max(net.num_outputs, 2)  # one sigmoid output scores class 1 of classes 0 and 1
        if y.ndim != 1:
            raise ConfigError(f"{name}: class labels must be 1-D, one per sample, not shaped {tuple(y.shape)}")
        low, high = (0, 1) if _kind(y) == "b" or not isinstance(y, np.ndarray) else (y.min(), y.max())
        if low < 0 or high >= classes:
            raise ConfigError(
                f"{name}: labels run from {low:g} to {high:g}, but the network has outputs for classes 0 to "
                f"{classes - 1}; number the classes 0, 1, 2, ... and give the network one output per class"
            )
        return y
    outputs = net.num_outputs
    if not (y.ndim == 1 and outputs == 1) and not (y.ndim == 2 and y.shape[1] == outputs):
        raise ConfigError(
            f"{name} has shape {tuple(y.shape)}; the network has {outputs} output(s), so give "
            f"({samples}, {outputs}) targets" + (" or integer class labels" if net.is_classifier else "")
        )
    if _kind(y) == "f" and isinstance(y, np.ndarray) and not np.all(np.isfinite(y)):
        raise ConfigError(f"{name} holds NaN or infinite values")
    if net.loss_name == "poisson" and isinstance(y, np.ndarray) and np.any(y < 0):
        raise ConfigError(
            f"{name} holds negative values (the smallest is {y.min():g}); the poisson loss models counts and "
            "rates, which are >= 0"
        )
    return y


def check_validation(net, validation_data):
    """``validation_data`` as ``(X_val, y_val)`` or ``(X_val, y_val, weights)``, each checked (the
    weights by ``xpnet.weights``); None stays None."""
    if validation_data is None:
        return None
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
        raise ConfigError("validation_data must be a pair (X_val, y_val) or a triple (X_val, y_val, sample_weight)")
    X_val = as_array(net, validation_data[0], "validation_data[0]")
    if X_val.ndim == 2 and X_val.shape[0] == 0:
        return None  # an empty hold-out (a tiny set and a small split): no validation
    X_val = check_inputs(net, X_val, "validation_data[0]")
    y_val = check_targets(net, validation_data[1], X_val.shape[0], "validation_data[1]")
    return (X_val, y_val, *validation_data[2:])


def _kind(array) -> str:
    """The NumPy dtype kind ('b', 'i', 'u', 'f') of a host or device array."""
    xp = array_namespace(array)
    for kind, test in (("b", "bool"), ("i", "signed integer"), ("u", "unsigned integer"), ("f", "real floating")):
        if xp.isdtype(array.dtype, test):
            return kind
    return "?"
