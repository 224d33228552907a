"""The training loop: minibatch SGD with validation, early stopping and resumable state.

The loop is shaped for a GPU. Data is uploaded once; each epoch's permutation is
drawn on the host from a seeded generator, uploaded once, and batches are cut on
the device. Batches have one fixed size: the ``n % batch_size`` samples left over
by each epoch's permutation sit that epoch out (a fresh permutation next epoch
gives them their turn), so every step has the same shape. Metrics are summed on
the device and read to the host once per epoch, which is also where a NaN or
infinite loss is caught.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from xpnet.data.prep import Scaling
from xpnet.errors import ConfigError, DivergenceError
from xpnet.optim import SGD, Optimizer


@dataclass
class History:
    """What ``fit`` did, epoch by epoch, plus what it needs to resume mid-run."""

    records: list[dict] = field(default_factory=list)
    epoch: int = 0  #: epochs completed
    batch: int = 0  #: batches completed in the epoch under way (after an interruption)
    rng_state: dict | None = None  #: shuffling RNG state at the start of the epoch under way
    dropout_state: dict | None = None  #: dropout RNG state, where the backend can say it
    partial: list[float] = field(default_factory=list)  #: metric sums of the interrupted epoch
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    interrupted: bool = False
    restored_best: bool = False
    best_params: list | None = field(default=None, repr=False)  #: device copies of the best weights

    def resume_state(self) -> dict:
        """The JSON-serialisable part of the state (best_params travel as tensors)."""
        return {k: v for k, v in self.__dict__.items() if k != "best_params"}

    @classmethod
    def from_resume_state(cls, state: dict, best_params=None) -> History:
        known = {k: v for k, v in state.items() if k in cls.__dataclass_fields__ and k != "best_params"}
        return cls(**known, best_params=best_params)

    def column(self, key: str) -> list:
        return [record.get(key) for record in self.records]


def fit(
    net,
    X,
    y,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    optimizer: Optimizer | None = None,
    validation_data: tuple | None = None,
    patience: int | None = None,
    restore_best: bool = True,
    label_smoothing: float = 0.0,
    shuffle: bool = True,
    seed: int | None = 0,
    verbose: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = print,
    on_epoch_end: Callable[[History], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    history: History | None = None,
) -> History:
    """Train ``net`` on ``(X, y)`` for ``epochs`` epochs; return the ``History``.

    ``patience``: stop after that many epochs without a better validation loss and
    put back the best weights. uint8 inputs (images) are scaled to [0, 1] on the device
    unless the network already has a scaling (``net.set_scaling``). ``label_smoothing`` softens one-hot training targets
    (validation metrics use the true labels). ``should_stop`` is polled after every step (a signal
    handler sets it); ``fit`` then returns with ``history.interrupted`` set and the
    state needed to continue, which ``fit(..., history=that)`` does exactly. While ``fit``
    runs, the calling thread flushes float denormals to zero (``Backend.flush_denormals``),
    callbacks included.
    """
    _check_fit_args(epochs, batch_size, patience)
    if not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(f"label_smoothing must be in [0, 1), not {label_smoothing!r}")
    optimizer = optimizer or SGD(lr=0.01)
    xp, backend = net.xp, net.backend
    X, y = net.to_device(X), net.to_device(y, labels=True)
    if net.scaling is None and X.dtype == net.xp.uint8:
        net.set_scaling(Scaling("unit", 0.0, float(np.float32(1 / 255))))  # 0..255 pixels -> [0, 1]
        if verbose:
            log("uint8 inputs and no scaling set: scaling them to [0, 1] (x / 255)")
    n = X.shape[0]
    if y.shape[0] != n:
        raise ConfigError(f"X has {n} samples but y has {y.shape[0]}")
    if n == 0:
        raise ConfigError("the training set is empty")
    batch_size = min(batch_size, n)
    steps = n // batch_size
    if validation_data is not None:
        X_val, y_val = net.to_device(validation_data[0]), net.to_device(validation_data[1], labels=True)
        if X_val.shape[0] == 0:
            validation_data = None
    if patience is not None and validation_data is None:
        raise ConfigError("patience (early stopping) needs validation data: pass validation_data or --val-split")

    history = history or History()
    rng = np.random.default_rng(seed)
    if history.rng_state is not None:
        rng.bit_generator.state = history.rng_state
    if history.dropout_state is not None and net.dropout_rng is not None:
        net.dropout_rng.set_state(history.dropout_state)
    history.interrupted = False

    # A NaN/inf loss is caught below, by value; denormals only slow the steps down.
    with backend.activated(), backend.quiet_float_errors(), backend.flush_denormals():
        while history.epoch < epochs:
            history.rng_state = rng.bit_generator.state
            order = rng.permutation(n) if shuffle else np.arange(n)
            order = backend.upload(order.astype(np.int32))
            first = history.batch
            # Device sums [loss x count, correct]: added to step by step, in one order, so that a
            # resumed epoch (which starts from the saved partial sums) reports the very same figures.
            zero = _zero(xp, net)
            loss_sum, correct = (zero, zero) if not history.partial else _partial_sums(backend, net, history.partial)
            start = time.perf_counter() - (history.partial[3] if history.partial else 0.0)
            bar = _progress_bar(progress, steps, history.epoch + 1, epochs, initial=first)
            with backend.step_policy(batch_size * net.macs_per_sample):
                for b in range(first, steps):
                    optimizer.set_progress(history.epoch + b / steps, epochs)
                    idx = order[b * batch_size : (b + 1) * batch_size]
                    xb, yb = net.prepare(xp.take(X, idx, axis=0)), xp.take(y, idx, axis=0)
                    truth = net.targets(yb)
                    targets = net.targets(yb, label_smoothing) if label_smoothing else truth
                    cost, grads, out = net.backprop(xb, targets, train=True)
                    optimizer.step(net.params, grads)
                    loss_sum, correct = _accumulate(net, loss_sum, correct, cost, out, truth, batch_size)
                    if bar is not None:
                        bar.update(1)
                    if should_stop is not None and should_stop() and b + 1 < steps:
                        history.batch = b + 1
                        partial = backend.to_host(xp.stack([loss_sum, correct])).tolist()
                        history.partial = [*partial, float(history.batch * batch_size), time.perf_counter() - start]
                        history.dropout_state = net.dropout_rng.get_state() if net.dropout_rng else None
                        history.interrupted = True
                        _close(bar)
                        return history
            sums = [loss_sum, correct, zero + float(steps * batch_size)]
            if validation_data is not None:
                sums += evaluate_sums(net, X_val, y_val)
            host = backend.to_host(xp.stack(sums)).tolist()  # the epoch's one host read
            seconds = time.perf_counter() - start
            record = _record(net, history.epoch + 1, host, seconds, optimizer, validation_data is not None)
            _close(bar, record)
            history.epoch += 1
            history.batch = 0
            history.partial = []
            history.rng_state = rng.bit_generator.state  # the next epoch's, so a per-epoch checkpoint resumes exactly
            history.dropout_state = net.dropout_rng.get_state() if net.dropout_rng else None
            if not math.isfinite(record["loss"]):
                raise DivergenceError(
                    f"training diverged in epoch {record['epoch']}: the loss became {record['loss']}; "
                    f"try a smaller learning rate (now {optimizer.base_lr:g})"
                )
            history.records.append(record)
            if verbose and _worth_logging(record["epoch"], epochs):
                log(format_record(record))
            improved = _track_best(net, history, record, validation_data is not None)
            if on_epoch_end is not None:
                on_epoch_end(history)
            if patience is not None and not improved and history.bad_epochs >= patience:
                history.stopped_early = True
                if verbose:
                    log(f"early stopping: no better validation loss for {patience} epochs")
                break
            if should_stop is not None and should_stop() and history.epoch < epochs:
                history.interrupted = True
                return history

    if restore_best and history.best_params is not None and history.best_epoch != history.epoch:
        net.params = [backend.copy(p) for p in history.best_params]
        history.restored_best = True
        if verbose:
            log(
                f"restored the weights of epoch {history.best_epoch} (best validation loss {history.best_val_loss:.4f})"
            )
    return history


def _worth_logging(epoch: int, epochs: int) -> bool:
    """Every epoch of a short run; about twenty lines of a long one (full-batch runs have thousands)."""
    return epochs <= 50 or epoch % (epochs // 20) == 0 or epoch == epochs


def _check_fit_args(epochs, batch_size, patience):
    if not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs must be a whole number >= 0, not {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a whole number >= 1, not {batch_size!r}")
    if patience is not None and (not isinstance(patience, int) or patience < 1):
        raise ConfigError(f"patience must be a whole number >= 1, not {patience!r}")


def _zero(xp, net):
    return xp.zeros((), dtype=net.dtype, device=net.backend.device_of(net.params[0]))


def _partial_sums(backend, net, partial):
    """The loss and correct-count sums saved by an interrupted epoch, back on the device."""
    return [backend.upload(np.asarray(v), net.dtype) for v in partial[:2]]


def _accumulate(net, loss_sum, correct, cost, out, targets, count):
    """One batch added to the device sums: loss x count, and correct predictions (classifiers)."""
    loss_sum = loss_sum + cost * count
    if net.is_classifier:
        correct = correct + count_correct(net, out, targets)
    return loss_sum, correct


def count_correct(net, out, targets):
    """Correct predictions in a batch, as a 0-d device array (0 for regression).

    A sample counts as correct when its true class scores the row maximum; this
    avoids argmax, whose int64 result some devices cannot hold.
    """
    xp = net.xp
    if not net.is_classifier:
        return xp.zeros((), dtype=net.dtype, device=net.backend.device_of(out))
    if out.shape[1] == 1:
        hits = (out[:, 0] > 0.5) == (targets[:, 0] > 0.5)
    else:
        hits = xp.vecdot(targets, out) >= xp.max(out, axis=1)
    return xp.sum(xp.astype(hits, net.dtype))


def _chunks(n: int, size: int) -> list[slice]:
    """Slices covering range(n) in steps of ``size``, none running past the end."""
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def evaluate_sums(net, X, y, batch_size: int = 4096) -> list:
    """Device sums over a whole set: [loss x count, correct, count]; nothing read back."""
    xp = net.xp
    zero = _zero(xp, net)
    loss_sum = correct = zero
    for rows in _chunks(X.shape[0], batch_size):
        xb, yb = net.prepare(X[rows, ...]), y[rows, ...]
        z, out = net.forward(xb, logits=True)
        targets = net.targets(yb)
        cost = net.loss.value(xp, z, out, targets)
        loss_sum, correct = _accumulate(net, loss_sum, correct, cost, out, targets, xb.shape[0])
    return [loss_sum, correct, zero + float(X.shape[0])]


def evaluate(net, X, y, batch_size: int = 4096) -> dict[str, float]:
    """Loss and accuracy (classifiers) or loss, MSE and R² (regression) over ``(X, y)``."""
    X, y = net.to_device(X), net.to_device(y, labels=True)
    if X.shape[0] != y.shape[0]:
        raise ConfigError(f"X has {X.shape[0]} samples but y has {y.shape[0]}")
    if X.shape[0] == 0:
        raise ConfigError("cannot evaluate on an empty set")
    xp, n = net.xp, X.shape[0]
    if net.is_classifier:
        loss_sum, correct, _ = net.backend.to_host(xp.stack(evaluate_sums(net, X, y, batch_size))).tolist()
        return {"loss": loss_sum / n, "accuracy": correct / n}
    # Regression is MSE on a linear output: one forward pass gives the loss, the MSE and R².
    out, targets = _outputs(net, X, batch_size), net.targets(y)
    sums = [net.loss.value(xp, out, out, targets), xp.sum((out - targets) ** 2)]
    sums.append(xp.sum((targets - xp.mean(targets, axis=0)) ** 2))
    loss, residual, total = net.backend.to_host(xp.stack(sums)).tolist()
    r2 = 1.0 - residual / total if total > 0 else float("nan")
    return {"loss": loss, "mse": residual / (n * targets.shape[1]), "r2": r2}


def _outputs(net, X, batch_size):
    chunks = [net.forward(net.prepare(X[rows, ...])) for rows in _chunks(X.shape[0], batch_size)]
    return chunks[0] if len(chunks) == 1 else net.xp.concat(chunks, axis=0)


def predict_outputs(net, X, batch_size: int = 4096):
    """Network outputs for ``X``; host arrays in, host arrays out."""
    on_host = not net.backend.owns(X)
    out = _outputs(net, net.to_device(X), batch_size)
    return net.backend.to_host(out) if on_host else out


def predict(net, X, batch_size: int = 4096):
    """Class labels (argmax, or output > 0.5 for one sigmoid) for classifiers, else outputs."""
    on_host = not net.backend.owns(X)
    xp = net.xp
    out = _outputs(net, net.to_device(X), batch_size)
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
    top = (out == xp.max(out, axis=1, keepdims=True)) | xp.isnan(out)
    countdown = xp.arange(k, 0, -1, dtype=xp.int32, device=net.backend.device_of(out))
    return k - xp.max(xp.astype(top, xp.int32) * countdown, axis=1)


def _record(net, epoch, host, seconds, optimizer, validated) -> dict:
    loss_sum, correct, seen = host[:3]
    record = {"epoch": epoch, "loss": loss_sum / seen}
    if net.is_classifier:
        record["accuracy"] = correct / seen
    if validated:
        record["val_loss"] = host[3] / host[5]
        if net.is_classifier:
            record["val_accuracy"] = host[4] / host[5]
    record["lr"] = optimizer.lr
    record["seconds"] = seconds
    record["samples_per_s"] = seen / seconds if seconds > 0 else float("inf")
    return record


def _track_best(net, history, record, validated) -> bool:
    """Remember the best weights so far (by validation loss); True if this epoch improved."""
    if not validated:
        return True
    if record["val_loss"] < history.best_val_loss:
        history.best_val_loss = record["val_loss"]
        history.best_epoch = record["epoch"]
        history.bad_epochs = 0
        history.best_params = [net.backend.copy(p) for p in net.params]
        return True
    history.bad_epochs += 1
    return False


def format_record(record: dict) -> str:
    """One line of training log for an epoch."""
    parts = [f"epoch {record['epoch']:3d}", f"loss {record['loss']:.4f}"]
    if "accuracy" in record:
        parts.append(f"acc {record['accuracy']:.4f}")
    if "val_loss" in record:
        parts.append(f"val_loss {record['val_loss']:.4f}")
    if "val_accuracy" in record:
        parts.append(f"val_acc {record['val_accuracy']:.4f}")
    parts.append(f"{record['samples_per_s']:,.0f} samples/s")
    return "  ".join(parts)


def _progress_bar(enabled, total, epoch, epochs, initial=0):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False)


def _close(bar, record=None):
    if bar is not None:
        bar.close()
