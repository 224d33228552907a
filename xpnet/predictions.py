"""What ``python -m xpnet predict`` reads and writes: its inputs (an IDX or ``.npz`` file,
checked against the model), its memory estimate, and its rows as standard CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from xpnet.data import read_idx
from xpnet.data.tabular import read_npz_arrays
from xpnet.errors import ConfigError
from xpnet.evaluate import predict_estimate
from xpnet.memory import Estimate, parameter_count


def prediction_estimate(net, X: np.ndarray) -> Estimate:
    """What predicting ``X`` holds: the inputs and the model, a batch on the device, outputs, labels, the CSV.
    A CSV field costs about 112 bytes at the peak: its Python string in the rows (~60), its slot in
    the row, and the text twice (the csv module's str, then its UTF-8 bytes)."""
    estimate = predict_estimate(net, len(X), 4096).add("labels", 4 * len(X))
    estimate.add("the inputs and the model", X.nbytes + model_bytes(net))
    return estimate.add("the CSV text", 112 * len(X) * (net.num_outputs + 3))


def model_bytes(net) -> int:
    """The bytes of a network's parameters in its own dtype."""
    return parameter_count(net.sizes) * np.dtype(net.dtype_name).itemsize


def label_rows(arrays: dict, names: list[str]) -> list[list]:
    """CSV rows of predicted classes, their names, and the probabilities if asked for."""
    proba = arrays.get("proba")
    header = ["index", "label"] + (["class"] if names else [])
    if proba is not None:
        header += [f"p{j}" for j in range(proba.shape[1])]
    rows = [header]
    for i, label in enumerate(np.asarray(arrays["labels"]).tolist()):
        row = [i, label]
        if names:
            row.append(names[label] if 0 <= label < len(names) else "")
        if proba is not None:
            row += [f"{p:.6g}" for p in proba[i]]
        rows.append(row)
    return rows


def value_rows(outputs: np.ndarray) -> list[list]:
    """CSV rows of a regression model's outputs, one column per output."""
    header = ["index"] + [f"y{j}" for j in range(outputs.shape[1])]
    return [header] + [[i] + [f"{v:.6g}" for v in row] for i, row in enumerate(outputs)]


def csv_bytes(rows: list[list]) -> bytes:
    """``rows`` as standard CSV (RFC 4180, CRLF line ends) through the csv module: a class name
    holding a comma, a quote or a line break is quoted, and stays one field."""
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    return text.getvalue().encode("utf-8")


def read_inputs(path: Path, features: int) -> np.ndarray:
    X = read_npz_arrays(path, ("X",))["X"] if path.suffix.lower() == ".npz" else read_idx(path, "the INPUT path")
    if X.size == 0:
        raise ConfigError(f"{path}: inputs of shape {X.shape} hold no samples; nothing to predict")
    X = X.reshape(X.shape[0], -1) if X.ndim > 1 else X.reshape(1, -1)
    if X.shape[1] != features:
        raise ConfigError(f"{path}: inputs have {X.shape[1]} features but the model takes {features}")
    if X.dtype.kind == "f" and not np.all(np.isfinite(X)):
        raise ConfigError(f"{path}: inputs hold NaN or infinite values")
    return X
