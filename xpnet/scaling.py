"""Input scaling: part of a model, fitted on the host once per run, saved in its file.

A ``Scaling`` is two numbers (or two per-feature vectors), ``shift`` and ``scale``,
applied as ``(X - shift) * scale``. ``apply`` is the host reference; the training
loop applies the same pair on the device. The pair is saved with the model so that
prediction scales new inputs exactly as training did, which is why ``from_dict``
validates what it reads: model files are untrusted input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xpnet.checks import FLOAT32_MAX, is_number
from xpnet.errors import ConfigError, DataError

SCALINGS = ("unit", "symmetric", "standard", "none")

#: Features whose standard deviation is below this are left unscaled (scale 1):
#: dividing a constant feature by ~0 would blow up any test value that differs.
STD_FLOOR = 1e-8

Param = float | np.ndarray


@dataclass
class Scaling:
    """``(X - shift) * scale``, with ``shift``/``scale`` floats or 1-D float32 arrays.

    kinds: ``unit`` maps the training range to [0, 1] (uint8 images: exactly x/255),
    ``symmetric`` to [-1, 1], ``standard`` gives each feature mean 0 and std 1,
    ``none`` leaves the data as it is.
    """

    kind: str = "none"
    shift: Param = 0.0
    scale: Param = 1.0

    @classmethod
    def fit(cls, kind: str, X_train: np.ndarray) -> Scaling:
        """Choose ``shift`` and ``scale`` from the training features only."""
        if kind not in SCALINGS:
            raise ConfigError(f"scaling: got {kind!r}; use one of {', '.join(SCALINGS)}")
        X = np.asarray(X_train)
        if kind == "none":
            return cls("none", 0.0, 1.0)
        if X.size == 0:
            raise DataError("cannot fit the input scaling on an empty training set; check the data")
        if kind in ("unit", "symmetric"):
            if X.dtype == np.uint8:
                low, high = 0.0, 255.0
            else:
                low, high = float(X.min()), float(X.max())
            width = high - low if high > low else 1.0
            if kind == "unit":
                return cls("unit", low, float(np.float32(1.0 / width)))
            return cls("symmetric", (low + high) / 2, float(np.float32(2.0 / width)))
        return cls.from_moments(*_mean_std(X.reshape(X.shape[0], -1)))

    @classmethod
    def from_moments(cls, mean: np.ndarray, std: np.ndarray) -> Scaling:
        """``standard`` scaling from per-feature means and standard deviations (float64), however summed."""
        scale = np.where(std > STD_FLOOR, 1.0 / np.maximum(std, STD_FLOOR), 1.0)
        return cls("standard", mean.astype(np.float32), scale.astype(np.float32))

    def apply(self, X: np.ndarray) -> np.ndarray:
        """Scale ``X`` on the host; returns float32."""
        X = np.asarray(X)
        for name, value in (("shift", self.shift), ("scale", self.scale)):
            if isinstance(value, np.ndarray) and X.ndim >= 1 and value.shape[0] != X.shape[-1]:
                raise DataError(
                    f"input has {X.shape[-1]} features but the scaling {name} has {value.shape[0]}; "
                    "use data with the features the model was trained on"
                )
        shift = np.asarray(self.shift, dtype=np.float32)
        scale = np.asarray(self.scale, dtype=np.float32)
        return ((X.astype(np.float32) - shift) * scale).astype(np.float32, copy=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (arrays become lists of floats)."""
        return {"kind": self.kind, "shift": _to_json(self.shift), "scale": _to_json(self.scale)}

    @classmethod
    def from_dict(cls, d: Any, num_features: int | None = None) -> Scaling:
        """Rebuild a ``Scaling`` from ``to_dict`` output read back from a file, checking every field."""
        if not isinstance(d, dict):
            raise DataError(f"scaling: expected a mapping, got {type(d).__name__}; the model file is corrupt")
        extra = set(d) - {"kind", "shift", "scale"}
        missing = {"kind", "shift", "scale"} - set(d)
        if missing or extra:
            raise DataError(
                f"scaling: keys {sorted(d, key=str)} should be exactly kind, shift, scale; the model file "
                "is corrupt or from another program"
            )
        kind = d["kind"]
        if not isinstance(kind, str) or kind not in SCALINGS:
            raise DataError(f"scaling: kind {kind!r} is not one of {', '.join(SCALINGS)}; the model file is corrupt")
        shift = _from_json(d["shift"], "shift", num_features)
        scale = _from_json(d["scale"], "scale", num_features)
        if isinstance(shift, np.ndarray) and isinstance(scale, np.ndarray) and shift.shape != scale.shape:
            raise DataError(
                f"scaling: shift has {shift.shape[0]} values but scale has {scale.shape[0]}; the model file is corrupt"
            )
        return cls(kind, shift, scale)


def _mean_std(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation in float64, two passes over row blocks.

    The same figures as ``flat.astype(np.float64).std(axis=0)`` without the float64 copy of the
    whole training set, which made ``standard`` scaling cost ~1.5 s of a 20-second run.
    """
    count, width = flat.shape
    rows = max(1, 2**17 // max(width, 1))  # about 1 MB of float64 per block
    total = np.zeros(width)
    for start in range(0, count, rows):
        total += flat[start : start + rows].sum(axis=0, dtype=np.float64)
    mean = total / count
    squares = np.zeros(width)
    for start in range(0, count, rows):
        deviation = flat[start : start + rows].astype(np.float64)
        deviation -= mean
        squares += np.einsum("ij,ij->j", deviation, deviation)
    return mean, np.sqrt(squares / count)


def _to_json(value: Param) -> float | list[float]:
    if isinstance(value, np.ndarray):
        return [float(v) for v in value]
    return float(value)


def _from_json(value: Any, name: str, num_features: int | None) -> Param:
    if is_number(value, FLOAT32_MAX):
        return float(value)
    if isinstance(value, list) and value and all(is_number(v, FLOAT32_MAX) for v in value):
        if num_features is not None and len(value) != num_features:
            raise DataError(
                f"scaling: {name} has {len(value)} values but the model takes {num_features} features; "
                "the model file is corrupt"
            )
        return np.asarray(value, dtype=np.float32)
    raise DataError(
        f"scaling: {name} must be a finite number or a non-empty list of finite numbers, "
        f"got {type(value).__name__}; the model file is corrupt"
    )
