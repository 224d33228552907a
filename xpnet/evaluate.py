"""Whole-set passes that do not train: metrics summed on the device, and predictions.

Sums stay on the device and are read back once (``RunningSums``); argmax is done in a
form every device can hold (int32), because some (array-api-strict's no_x64) refuse int64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xpnet.backend import row_max
from xpnet.inputs import check_inputs, check_targets
from xpnet.losses import batch_mean
from xpnet.memory import Estimate
from xpnet.weights import device_weights


@dataclass
class RunningSums:
    """Metrics summed on the device, batch by batch, read to the host once.

    Added to step by step, in one order, so that a resumed epoch (which starts from the
    saved partial sums) reports the very same figures as an uninterrupted one. The correct
    predictions may be held back (``pending``) and counted for many steps at once (``settle``):
    they are whole numbers, whose float sum is exact in any order while it stays below 2^24
    (float32's integers), so the count is the one step by step gives, in a few operations a run.
    """

    loss: Any  #: Σ batch loss × batch size
    correct: Any  #: correct predictions (classifiers)
    #: (outputs, truth, one_hot) of the steps whose hits ``settle`` counts; None: each step counts its own
    pending: list | None = field(default=None, repr=False)

    @classmethod
    def zero(cls, net) -> RunningSums:
        zero = zero_sum(net.xp, net)
        return cls(zero, zero)

    @classmethod
    def resumed(cls, net, loss_sum: float, correct: float) -> RunningSums:
        """Sums an interrupted epoch saved on the host, back on the device."""
        return cls(*(net.backend.upload(np.asarray(v), net.dtype) for v in (loss_sum, correct)))

    def add(self, net, cost, out, targets, count, weights=None, one_hot: bool = False) -> None:
        """One batch of ``count`` samples (their weight): its mean loss ``cost`` and outputs against ``targets``;
        ``weights`` (a column, or None) weighs each correct prediction; ``one_hot``: see ``count_correct``."""
        self.loss = self.loss + cost * count
        if not net.is_classifier:
            return
        if self.pending is not None and weights is None:
            self.pending.append((out, targets, one_hot))
        else:
            self.correct = self.correct + count_correct(net, out, targets, weights, one_hot)

    def settle(self, net) -> None:
        """Count the hits of the steps held back (``pending``), all in one go."""
        if not self.pending:
            return
        xp = net.xp
        outs, truths, one_hot = zip(*self.pending)
        self.pending = []
        out, truth = (parts[0] if len(parts) == 1 else xp.concat(parts) for parts in (outs, truths))
        self.correct = self.correct + count_correct(net, out, truth, None, one_hot[0])


def zero_sum(xp, net):
    """A 0-d device array to add sums to, in the network's dtype."""
    return xp.zeros((), dtype=net.dtype, device=net.backend.device_of(net.params[0]))


def count_correct(net, out, targets, weights=None, one_hot: bool = False):
    """Correct predictions in a batch (their summed weights), as a 0-d device array (0 for regression).

    A sample counts as correct when its true class scores the row maximum; this
    avoids argmax, whose int64 result some devices cannot hold. ``one_hot``: the targets
    are exact 0/1 rows (made from class labels), whose product with the scores, summed,
    is the true class's score exactly -- two operations where ``vecdot`` is a dozen on
    PyTorch (array-api-compat's batched matmul); other targets weigh the scores by ``vecdot``.
    """
    xp = net.xp
    if not net.is_classifier:
        return xp.zeros((), dtype=net.dtype, device=net.backend.device_of(out))
    if out.shape[1] == 1:
        hits = (out[:, 0] > 0.5) == (targets[:, 0] > 0.5)
    else:
        score = xp.sum(targets * out, axis=1) if one_hot else xp.vecdot(targets, out)
        hits = score >= row_max(xp, out)
    hits = xp.astype(hits, net.dtype)
    return xp.sum(hits) if weights is None else xp.sum(hits * weights[:, 0])


def _chunks(n: int, size: int) -> list[slice]:
    """Slices covering range(n) in steps of ``size``, none running past the end."""
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def evaluate_sums(net, X, y, weights=None, batch_size: int = 4096) -> list:
    """Device sums over a whole set: [loss x count, correct, count]; nothing read back.

    With ``weights`` (one per row, on the device) each row counts its weight: the weighted sums.
    """
    xp, sums = net.xp, RunningSums.zero(net)
    for rows in _chunks(X.shape[0], batch_size):
        xb, yb = net.prepare(X[rows, ...]), y[rows, ...]
        z, out = net.forward(xb, logits=True)
        targets = net.targets(yb)
        if weights is None:
            sums.add(net, net.loss.value(xp, z, out, targets), out, targets, xb.shape[0])
            continue
        w = xp.reshape(weights[rows], (-1, 1))
        sums.add(net, net.loss.value(xp, z, out, targets, w), out, targets, 1.0, w)  # Σ w_x C_x, Σ w_x hits
    count = zero_sum(xp, net) + float(X.shape[0]) if weights is None else xp.sum(weights)
    return [sums.loss, sums.correct, count]


def evaluate(net, X, y, batch_size: int = 4096, sample_weight=None) -> dict[str, float]:
    """Loss and accuracy (classifiers) or loss, MSE and R² (regression) over ``(X, y)``;
    with ``sample_weight`` (one number >= 0 per row) each is the weighted figure."""
    X = check_inputs(net, X)
    y = check_targets(net, y, X.shape[0])
    evaluate_estimate(net, X, batch_size).check(f"evaluating on {X.shape[0]} samples")
    X, y = net.to_device(X), net.to_device(y, labels=True)
    weights = device_weights(net, y, sample_weight, None)
    xp = net.xp
    if net.is_classifier:
        sums = evaluate_sums(net, X, y, weights, batch_size)
        loss_sum, correct, n = net.backend.to_host(xp.stack(sums)).tolist()
        return {"loss": loss_sum / n, "accuracy": correct / n}
    # Regression: one forward pass gives the loss, the MSE and R² (scikit-learn's weighted forms).
    z, out = _outputs(net, X, batch_size, logits=True)
    targets = net.targets(y)
    w = None if weights is None else xp.reshape(weights, (-1, 1)) / xp.sum(weights)
    residual = batch_mean(xp, (out - targets) ** 2, w)
    centre = xp.mean(targets, axis=0) if w is None else xp.sum(targets * w, axis=0)
    sums = [net.loss.value(xp, z, out, targets, w), residual, batch_mean(xp, (targets - centre) ** 2, w)]
    loss, residual, total = net.backend.to_host(xp.stack(sums)).tolist()
    r2 = 1.0 - residual / total if total > 0 else float("nan")
    return {"loss": loss, "mse": residual / targets.shape[1], "r2": r2}


def _outputs(net, X, batch_size, logits: bool = False):
    """The outputs a^L for ``X`` chunk by chunk; ``(z^L, a^L)`` with ``logits=True``."""
    chunks = [net.forward(net.prepare(X[rows, ...]), logits=logits) for rows in _chunks(X.shape[0], batch_size)]
    if not logits:
        return chunks[0] if len(chunks) == 1 else net.xp.concat(chunks, axis=0)
    if len(chunks) == 1:
        return chunks[0]
    return tuple(net.xp.concat([chunk[i] for chunk in chunks], axis=0) for i in (0, 1))


def _checked_outputs(net, X, batch_size: int):
    """Outputs for ``X`` after its checks and the memory estimate. Host inputs go to the device a
    batch at a time, so predicting never holds a device copy of the whole set."""
    X = check_inputs(net, X)
    predict_estimate(net, X.shape[0], batch_size).check(f"predicting {X.shape[0]} samples")
    if net.backend.owns(X):
        return _outputs(net, X, batch_size)
    chunks = [net.forward(net.prepare(net.to_device(X[rows, ...]))) for rows in _chunks(X.shape[0], batch_size)]
    return chunks[0] if len(chunks) == 1 else net.xp.concat(chunks, axis=0)


def predict_estimate(net, samples: int, batch_size: int) -> Estimate:
    """What predicting ``samples`` inputs holds besides them: one batch's temporaries, the outputs twice."""
    itemsize, batch = np.dtype(net.dtype_name).itemsize, min(batch_size, samples)
    estimate = Estimate().add("one batch on the device", batch * (net.sizes[0] * 2 + 3 * sum(net.sizes[1:])) * itemsize)
    return estimate.add("outputs on the device and the host", 2 * samples * net.num_outputs * itemsize)


def evaluate_estimate(net, X, batch_size: int = 4096) -> Estimate:
    """Evaluating on ``X``: the set on the device in the network's dtype, then a prediction's parts."""
    estimate = predict_estimate(net, X.shape[0], batch_size)
    return estimate.add("the test set on the device", math.prod(X.shape) * np.dtype(net.dtype_name).itemsize)


def labels_from_outputs(outputs: np.ndarray) -> np.ndarray:
    """Host class labels by ``predict``'s rule: the first maximum, or output > 0.5 for one sigmoid."""
    if outputs.shape[1] == 1:
        return (outputs[:, 0] > 0.5).astype(np.int32)
    return np.argmax(outputs, axis=1).astype(np.int32)


def predict_outputs(net, X, batch_size: int = 4096, dtype: str | None = None):
    """Network outputs for ``X``; host arrays in, host arrays out.

    ``dtype="float64"`` computes them in float64 whatever the network's dtype (float32 weights
    upcast exactly): a float32 matmul rounds a row differently with the batch's size (the BLAS
    picks other kernels and blockings for 1, 5 or 20 rows), by ~1e-7 relative; in float64 a row's
    outputs agree across batches to ~1e-15, whatever rows share its batch.
    """
    on_host = not net.backend.owns(X)
    if dtype is None or dtype == net.dtype_name:
        out = _checked_outputs(net, X, batch_size)
    else:
        X = check_inputs(net, X)
        predict_estimate(net, X.shape[0], batch_size).check(f"predicting {X.shape[0]} samples")
        out = _outputs_in(net, X, batch_size, net.backend.dtype(dtype))
    return net.backend.to_host(out) if on_host else out


def _outputs_in(net, X, batch_size, dtype):
    """The forward pass in ``dtype`` (weights, scaling and inputs cast to it), chunk by chunk."""
    xp, backend = net.xp, net.backend
    X = backend.upload(np.asarray(X), dtype) if not backend.owns(X) else xp.astype(X, dtype)
    params = [xp.astype(p, dtype) for p in net.params]
    shift, scale = (0.0, 1.0) if net.scaling is None else (net.scaling.shift, net.scaling.scale)
    shift, scale = (v if np.ndim(v) == 0 else backend.upload(np.asarray(v, np.float64), dtype) for v in (shift, scale))
    chunks = []
    for rows in _chunks(X.shape[0], batch_size):
        chunks.append(net.forward((X[rows, ...] - shift) * scale, params=params, dtype=dtype))
    return chunks[0] if len(chunks) == 1 else xp.concat(chunks, axis=0)


def predict(net, X, batch_size: int = 4096):
    """Class labels (argmax, or output > 0.5 for one sigmoid) for classifiers, else outputs."""
    on_host = not net.backend.owns(X)
    xp = net.xp
    out = _checked_outputs(net, X, batch_size)
    if net.is_classifier:
        out = _argmax_int32(xp, net, out) if out.shape[1] > 1 else xp.astype(out[:, 0] > 0.5, xp.int32)
    return net.backend.to_host(out) if on_host else out


def _argmax_int32(xp, net, out):
    """Each row's first maximum (NaN counting as the maximum, as in NumPy), as int32.

    ``xp.argmax`` returns int64, which some devices cannot hold (array-api-strict's no_x64).
    The first maximum at column j scores k - j on a countdown k, k-1, ..., 1; the row's
    best score gives j back.
    """
    k = out.shape[1]
    top = (out == row_max(xp, out, keepdims=True)) | xp.isnan(out)
    countdown = xp.arange(k, 0, -1, dtype=xp.int32, device=net.backend.device_of(out))
    return k - xp.max(xp.astype(top, xp.int32) * countdown, axis=1)
