"""Sample and class weights: checked on the host, turned into each row's share of its batch.

The weighted loss of a batch is the weighted mean C = Σ_x w_x C_x / Σ_batch w, so BP1
scales row x's error by w_x / Σ_batch w instead of 1/N (``xpnet.losses``): weight 2 is the
row given twice. ``class_weight`` multiplies the weight of every row of a class:
``"balanced"`` gives class c the weight n / (k n_c) (scikit-learn's ``compute_class_weight``),
a mapping ``{label: weight}`` its own (labels it does not name keep 1).

Data-parallel training stays equal to one process: every rank holds all the weights and
the global batch's rows, so each computes the global batch's weight sum itself and scales
its rows by R / Σ_batch w; the mean over the R ranks of the gradients then is the one
process's gradient (``batch_shares``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from xpnet.backend import device_constant
from xpnet.errors import ConfigError
from xpnet.inputs import host_numbers

BALANCED = "balanced"


def check_sample_weight(weights, samples: int, name: str = "sample_weight") -> np.ndarray:
    """``weights`` as a float64 host array of one number >= 0 per sample, not all zero."""
    array = host_numbers(weights, name)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1 or array.shape[0] != samples:
        raise ConfigError(f"{name} has shape {array.shape}; give one weight per sample ({samples},)")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ConfigError(f"{name} holds NaN or infinite values")
    if np.any(array < 0):
        raise ConfigError(f"{name} holds negative values (the smallest is {array.min():g}); weights must be >= 0")
    if not np.any(array > 0):
        raise ConfigError(f"{name} is zero for every sample: nothing would be learned; give some weight > 0")
    return array


def class_weights(class_weight, labels: np.ndarray, classes: int, name: str = "class_weight") -> np.ndarray:
    """One weight per class index 0..classes-1 from ``"balanced"`` or ``{index: weight}``.

    ``labels`` are the training rows' class indices; "balanced" counts them (a class with no
    rows keeps 1: it weighs nothing either way).
    """
    if isinstance(class_weight, str):
        if class_weight.strip().lower() != BALANCED:
            raise ConfigError(f"{name} must be 'balanced' or a mapping {{label: weight}}, not {class_weight!r}")
        counts = np.bincount(labels, minlength=classes).astype(np.float64)
        present = counts > 0
        result = np.ones(classes)
        result[present] = labels.shape[0] / (np.count_nonzero(present) * counts[present])
        return result
    if not isinstance(class_weight, Mapping):
        raise ConfigError(f"{name} must be 'balanced' or a mapping {{label: weight}}, not {class_weight!r}")
    result = np.ones(classes)
    for label, weight in class_weight.items():
        index = _class_index(label, classes, name)
        if isinstance(weight, bool) or not isinstance(weight, (int, float, np.number)) or not weight >= 0:
            raise ConfigError(f"{name}[{label!r}] must be a number >= 0, not {weight!r}")
        if not np.isfinite(weight):
            raise ConfigError(f"{name}[{label!r}] must be finite, not {weight!r}")
        result[index] = float(weight)
    return result


def _class_index(label, classes: int, name: str) -> int:
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)) or not 0 <= label < classes:
        raise ConfigError(
            f"{name} names the label {label!r}, but the classes are numbered 0 to {classes - 1}; "
            "give {class index: weight}"
        )
    return int(label)


def row_weights(sample_weight, class_weight, labels, classes: int, samples: int, where: str = "") -> np.ndarray | None:
    """Each row's weight (``sample_weight`` times its class's weight), or None when neither is given.

    ``labels`` are the class indices (host) or None where the targets are no class labels;
    ``where`` prefixes the argument names in messages (``validation_data``, say).
    """
    if sample_weight is None and class_weight is None:
        return None
    weights = (
        np.ones(samples)
        if sample_weight is None
        else check_sample_weight(sample_weight, samples, where + "sample_weight")
    )
    if class_weight is None:
        return weights
    if labels is None:
        raise ConfigError("class_weight needs class labels as targets (integers 0..k-1), one per sample")
    labels = np.asarray(labels).astype(np.int64)
    weights = weights * class_weights(class_weight, labels, classes)[labels]
    if not np.any(weights > 0):
        raise ConfigError(f"{where}sample_weight times class_weight is zero for every sample; give some weight > 0")
    return weights


def batch_shares(xp, weights, batch, rows, ranks: int = 1):
    """This rank's rows' shares of the global batch's weight, R w_x / Σ_batch w, as a column.

    ``batch`` indexes the global batch's rows, ``rows`` this rank's part of them; the mean of
    the R ranks' gradients divides the R out again. A batch of weight 0 gets shares 0 (no step).
    """
    total = xp.sum(xp.take(weights, batch, axis=0))
    tiny = device_constant(xp, float(np.finfo(np.float32).tiny), total)
    shares = xp.take(weights, rows, axis=0) * (float(ranks) / xp.maximum(total, tiny))
    return xp.reshape(shares, (-1, 1))


def parse_class_weight(text: str):
    """``--class-weight``: ``balanced``, or ``LABEL=WEIGHT`` pairs such as ``0=1,1=5`` -> a mapping."""
    text = str(text).strip()
    if text.lower() == BALANCED:
        return BALANCED
    mapping = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        label, sep, weight = part.partition("=")
        try:
            if not sep:
                raise ValueError
            mapping[label.strip()] = float(weight)
        except ValueError:
            raise ConfigError(f"expected 'balanced' or LABEL=WEIGHT pairs such as 0=1,1=5, not {text!r}") from None
    if not mapping:
        raise ConfigError(f"expected 'balanced' or LABEL=WEIGHT pairs such as 0=1,1=5, not {text!r}")
    return mapping


def device_weights(net, y, sample_weight, class_weight, where: str = ""):
    """The rows' weights on ``net``'s device in its dtype (None when neither weight is given).

    ``y`` are the checked targets; ``class_weight`` needs them to be class indices.
    """
    labels = None
    if class_weight is not None:
        host_y = y if isinstance(y, np.ndarray) else net.backend.to_host(y)
        if net.is_classifier and host_y.ndim == 1 and host_y.dtype.kind in "biu":
            labels = host_y
    weights = row_weights(sample_weight, class_weight, labels, max(net.num_outputs, 2), y.shape[0], where)
    return None if weights is None else net.backend.upload(weights, net.dtype)


def validation_weights(net, y_val, validation_data) -> tuple:
    """``(weights,)`` on the device for ``(X_val, y_val, weights)`` validation data, else ``()``."""
    if len(validation_data) < 3 or validation_data[2] is None:
        return ()
    return (device_weights(net, y_val, validation_data[2], None, "validation_data "),)


def class_weight_of(settings: dict, data):
    """``--class-weight`` for ``fit``: ``"balanced"``, ``{class number: weight}`` (class names allowed), or None."""
    text = settings.get("class_weight")
    if text is None:
        return None
    parsed = parse_class_weight(text)
    if parsed == BALANCED:
        return parsed
    names = data.class_names
    weights = {}
    for label, weight in parsed.items():
        if label in names:
            weights[names.index(label)] = weight
        elif label.isdigit() and int(label) < len(names):
            weights[int(label)] = weight
        else:
            known = ", ".join(names[:20]) or "none: it is a regression set"
            raise ConfigError(
                f"--class-weight {text}: {label!r} is not a class of dataset {settings['dataset']!r} (classes: {known})"
            )
    return weights
