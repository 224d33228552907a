"""The training loop: minibatch SGD with validation, early stopping and resumable state.

Shaped for a GPU: the data is uploaded once; each epoch's permutation is drawn on the host from a
seeded generator and uploaded; batches, all of one size, are cut on the device (the ``n % batch_size``
samples left over sit that epoch out). Metrics are summed on the device and read to the host once
per epoch, which is also where a NaN or infinite loss is caught.
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable
from dataclasses import InitVar, asdict, astuple, dataclass, field
from typing import Any

import numpy as np

from xpnet.checks import is_number, whole
from xpnet.compiled import step_runner
from xpnet.data_parallel import DataParallel
from xpnet.distributed import Communicator
from xpnet.divergence import check_diverged, largest_weight
from xpnet.errors import ConfigError
from xpnet.evaluate import RunningSums, evaluate_sums, zero_sum
from xpnet.inputs import check_inputs, check_targets, check_validation
from xpnet.names import Registry
from xpnet.optim import SGD, Optimizer
from xpnet.precision import LossScaler, loss_scaler
from xpnet.progress import ProgressBar
from xpnet.scaling import Scaling
from xpnet.step import Step
from xpnet.weights import device_weights, validation_weights

#: The validation figures that can pick the kept epoch and drive early stopping: name -> (words, better).
MONITORS = Registry(
    "monitor",
    {
        "val_loss": ("validation loss", operator.lt),  # lowest
        "val_accuracy": ("validation accuracy", operator.gt),  # highest
    },
)


@dataclass
class PartialEpoch:
    """How far an interrupted epoch got: its metric sums so far and the seconds it ran."""

    loss_sum: float
    correct: float
    seen: float
    seconds: float


@dataclass
class History:
    """What ``fit`` did, epoch by epoch, plus what it needs to resume mid-run."""

    records: list[dict] = field(default_factory=list)
    epoch: int = 0  #: epochs completed
    batch: int = 0  #: batches completed in the epoch under way (after an interruption)
    rng_state: dict | None = None  #: shuffling RNG state at the start of the epoch under way
    dropout_state: dict | None = None  #: dropout RNG state, where the backend can say it
    partial: PartialEpoch | None = None  #: the interrupted epoch's progress
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    interrupted: bool = False
    restored_best: bool = False
    #: float16 loss scaling's [scale, good steps in a row, skipped steps], as last read
    loss_scaler: list[float] | None = None
    best_params: list | None = field(default=None, repr=False)  #: device copies of the best weights

    def resume_state(self) -> dict:
        """The JSON-serialisable part of the state (best_params travel as tensors)."""
        state = {k: v for k, v in self.__dict__.items() if k != "best_params"}
        state["partial"] = list(astuple(self.partial)) if self.partial else []
        return state

    @classmethod
    def from_resume_state(cls, state: dict, best_params=None) -> History:
        known = {k: v for k, v in state.items() if k in cls.__dataclass_fields__ and k != "best_params"}
        partial = known.pop("partial", None)
        return cls(**known, partial=PartialEpoch(*partial) if partial else None, best_params=best_params)

    def column(self, key: str) -> list:
        return [record.get(key) for record in self.records]


@dataclass
class EpochTotals:
    """An epoch's sums as the host reads them, in its one read: training, then validation."""

    loss_sum: float
    correct: float
    seen: float
    val_loss_sum: float | None = None
    val_correct: float | None = None
    val_seen: float | None = None
    largest_weight: float = 0.0  #: max |w| after the epoch's last step (NaN once any weight is)
    loss_scaler: list[float] | None = None  #: [scale, good steps, skipped steps] under float16
    compile_seconds: float = 0.0  #: of the epoch's seconds, those spent compiling the step (``xpnet.compiled``)


@dataclass(frozen=True)
class FitOptions:
    """How ``fit`` trains, fixed for the whole call."""

    epochs: int
    batch_size: int
    label_smoothing: float = 0.0
    shuffle: bool = True
    patience: int | None = None
    progress: bool = False
    monitor: str = "val_loss"  #: a key of ``MONITORS``


@dataclass
class _Loop:
    """What every epoch of one ``fit`` call shares: the network, the data on the device, the options."""

    net: Any
    optimizer: Optimizer
    X: Any
    y: Any
    validation: tuple | None  #: (X_val, y_val) on the device: this rank's share
    options: FitOptions
    should_stop: Callable[[], bool] | None
    log: Callable[[str], None] | None  #: where progress lines go (None: quiet)
    parallel: DataParallel  #: this rank's part of each batch, and the collectives (one process: none)
    weights: Any = None  #: each training row's weight on the device (sample and class weights), or None
    scaler_state: InitVar[list | None] = None  #: a resumed run's loss scaling (History.loss_scaler)
    scaler: LossScaler | None = field(init=False, default=None)  #: float16's dynamic loss scaling, or None
    runner: Any = field(init=False, default=None)  #: runs an epoch's steps, eagerly or compiled (``xpnet.compiled``)
    step: Step = field(init=False)  #: one minibatch step (``xpnet.step``)

    def __post_init__(self, scaler_state):
        self.scaler = loss_scaler(self.net, scaler_state)
        self.validation = self.parallel.validation_part(self.validation)  # this rank's share of the validation set
        smoothing = self.options.label_smoothing
        parallel = self.parallel if self.parallel.active else None  # one process: no hooks to call each step
        self.step = Step(self.net, self.optimizer, self.X, self.y, smoothing, self.scaler, parallel, self.weights)
        if self.options.patience is not None and self.validation is None:
            raise ConfigError("patience (early stopping) needs validation data: pass validation_data or --val-split")

    def start_runner(self, compile: bool) -> None:
        """What runs the steps: compiled where asked and the backend compiles (JAX), else one by one."""
        self.runner = step_runner(self, _train_step, compile)

    @property
    def batch_size(self) -> int:
        return self.options.batch_size

    @property
    def epochs(self) -> int:
        return self.options.epochs

    @property
    def steps(self) -> int:
        """Steps per epoch: the ``n % batch_size`` samples a permutation leaves over sit it out."""
        return self.X.shape[0] // self.batch_size

    def stop_requested(self) -> bool:
        """A stop asked for here, or on any rank: every rank stops at the same step."""
        if self.should_stop is None:  # on no rank: the ranks agreed on that at the start
            return False
        return self.parallel.stop_requested(self.should_stop())


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
    monitor: str = "val_loss",
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
    communicator: Communicator | None = None,
    sample_weight=None,
    class_weight=None,
    compile: bool = True,
) -> History:
    """Train ``net`` on ``(X, y)`` for ``epochs`` epochs; return the ``History``.

    ``monitor``: ``val_loss`` (lowest) or ``val_accuracy`` (highest) picks the best epoch, whose
    weights ``restore_best`` puts back; ``patience``: stop after that many epochs without a better one.
    uint8 inputs are scaled to [0, 1] on the device unless the network has a scaling (``net.set_scaling``).
    ``label_smoothing`` softens one-hot training targets (validation metrics use the true labels).
    ``should_stop`` is polled after each step (a signal handler sets it; each chunk of ``compile``d steps, on JAX:
    ``xpnet.compiled``); ``fit`` then returns with ``history.interrupted`` set and the state to continue exactly.
    The calling thread flushes denormals to zero while ``fit`` runs (``Backend.flush_denormals``).
    ``progress``: a bar of the batches on stderr where ``fit`` logs (``xpnet.progress``).
    ``communicator``: data-parallel (``xpnet.distributed``), every rank calling alike, as one process; rank 0 logs.
    ``sample_weight``/``class_weight`` weigh each batch's mean loss (``xpnet.weights``), as ``(X, y, w)`` validation.
    """
    if getattr(X, "streamed", False):  # data read from disk as training goes (``xpnet.streaming.stream``)
        return X.fit(**{name: value for name, value in locals().items() if name != "X"})
    epochs, batch_size, patience = _check_fit_args(net, epochs, batch_size, patience, monitor, label_smoothing)
    X, y, validation, given = _data_on_device(net, X, y, validation_data, verbose, log)
    weights = device_weights(net, given["y"], sample_weight, class_weight)  # None: every row counts alike
    options = FitOptions(epochs, min(batch_size, X.shape[0]), label_smoothing, shuffle, patience, progress, monitor)
    parallel = DataParallel(communicator or Communicator(), options.batch_size)
    log = log if verbose and parallel.communicator.is_root else None
    history, rng = _continue_random_streams(net, history or History(), seed)
    loop = _Loop(
        net, optimizer or SGD(), X, y, validation, options, should_stop, log, parallel, weights, history.loss_scaler
    )
    loop.start_runner(compile)
    backend = net.backend  # a NaN/inf loss is caught below, by value; denormals only slow the steps down
    with backend.activated(), backend.quiet_float_errors(), backend.flush_denormals(), parallel.rank_dropout(net):
        parallel.start(net, loop.optimizer, {**given, "weights": weights}, _agreed(loop, seed, history))
        if not _train_epochs(loop, history, rng, on_epoch_end):
            return history  # interrupted
        if restore_best:  # in the device context too: the copies belong on the network's GPU
            _restore_best(net, history, loop.log, monitor)
    return history


def _train_epochs(loop: _Loop, history: History, rng, on_epoch_end, run_epoch=None) -> bool:
    """Epoch after epoch to the last, or to early stopping (True), or to a stop request (False).

    ``run_epoch`` runs one epoch (``_run_epoch``: data on the device; streamed data has its own)."""
    while history.epoch < loop.epochs:
        totals, seconds = (run_epoch or _run_epoch)(loop, history, rng)
        if history.interrupted:
            return False
        if _end_epoch(loop, history, rng, totals, seconds, on_epoch_end):
            return True  # early stopping
        if loop.stop_requested() and history.epoch < loop.epochs:
            history.interrupted = True
            return False
    return True


def _agreed(loop: _Loop, seed, history: History) -> dict:
    """The settings of this call every rank must share (the data and the network are compared too)."""
    agreed = {key: value for key, value in asdict(loop.options).items() if key != "progress"}  # rank 0's alone
    agreed.update({"seed": seed, "stop requests": loop.should_stop is not None})
    return {**agreed, "resumed at epoch": history.epoch, "resumed at batch": history.batch}


def _continue_random_streams(net, history: History, seed) -> tuple[History, np.random.Generator]:
    """``history``, and the shuffling generator, with the dropout one, where it left them (or fresh from ``seed``)."""
    rng = np.random.default_rng(seed)
    if history.rng_state is not None:
        rng.bit_generator.state = history.rng_state
    if history.dropout_state is not None and net.dropout_rng is not None:
        net.dropout_rng.set_state(history.dropout_state)
    history.interrupted = False
    return history, rng


def _data_on_device(net, X, y, validation_data, verbose, log) -> tuple:
    """``(X, y, (X_val, y_val) or None)`` on the device, checked, with the input scaling settled, and
    the checked arrays as given (host arrays: data-parallel ranks hash these, not copies read back)."""
    X = check_inputs(net, X)
    y = check_targets(net, y, X.shape[0])
    validation_data = check_validation(net, validation_data)
    given = {"X": X, "y": y, "validation": validation_data}
    X, y = net.to_device(X), net.to_device(y, labels=True)
    if net.scaling is None and X.dtype == net.xp.uint8:
        net.set_scaling(Scaling("unit", 0.0, float(np.float32(1 / 255))))  # 0..255 pixels -> [0, 1]
        if verbose:
            log("uint8 inputs and no scaling set: scaling them to [0, 1] (x / 255)")
    validation = None
    if validation_data is not None:
        validation = net.to_device(validation_data[0]), net.to_device(validation_data[1], labels=True)
        validation += validation_weights(net, validation[1], validation_data)  # (weights,) or ()
    return X, y, validation, given


def _run_epoch(loop: _Loop, history: History, rng) -> tuple[EpochTotals | None, float]:
    """The steps of one epoch (from ``history.batch`` on, after an interruption) and its one host read.

    Returns the epoch's totals and seconds; on a stop request it records where the epoch got
    in ``history`` (``interrupted``, ``batch``, ``partial``) and returns ``(None, seconds)``.
    """
    n = loop.X.shape[0]
    history.rng_state = rng.bit_generator.state  # this epoch's, for a checkpoint written mid-epoch
    order = (rng.permutation(n) if loop.options.shuffle else np.arange(n)).astype(np.int32)
    order = loop.net.backend.upload(order)
    return epoch_around(loop, history, lambda sums, first, bar: loop.runner.run(history, order, sums, first, bar))


def epoch_around(loop: _Loop, history: History, run_steps) -> tuple[EpochTotals | None, float]:
    """What every epoch has around its steps, ``run_steps(sums, first, bar)`` (the batches done if a
    stop came, else None): the running sums, the clock and bar, the stop's record, the one host read."""
    net, backend = loop.net, loop.net.backend
    first, partial = history.batch, history.partial
    compiled = getattr(loop.runner, "compile_seconds", 0.0)  # streamed data has no runner
    # An interrupted epoch's sums are the job's: rank 0 carries them on, the others start from zero.
    carried = partial is not None and loop.parallel.communicator.is_root
    sums = RunningSums.resumed(net, partial.loss_sum, partial.correct) if carried else RunningSums.zero(net)
    start = time.perf_counter() - (partial.seconds if partial else 0.0)
    bar = _progress_bar(loop, history.epoch + 1, initial=first)
    with backend.step_policy(loop.parallel.local_batch * net.macs_per_sample):
        stopped = run_steps(sums, first, bar)
        if stopped is not None:
            _close(bar)
            _interrupt(loop, history, sums, stopped, time.perf_counter() - start)
            return None, time.perf_counter() - start
    totals = _read_totals(loop, sums, loop.steps * loop.parallel.local_batch)
    totals.compile_seconds = getattr(loop.runner, "compile_seconds", 0.0) - compiled
    _close(bar)
    return totals, time.perf_counter() - start


def _train_step(loop: _Loop, idx, sums: RunningSums, batch: tuple | None = None) -> None:
    """One minibatch step: ``loop.step`` (``xpnet.step.Step``) on the loop's data as bound now (a
    compiled run puts its traced arrays in ``loop.X`` and ``loop.y`` while it traces the step);
    ``batch``: the batch made ahead (``xpnet.batches``), or None: gathered by the step."""
    loop.step.X, loop.step.y = loop.X, loop.y
    loop.step(idx, sums, batch=batch)


def _interrupt(loop: _Loop, history: History, sums: RunningSums, batches: int, seconds: float) -> None:
    """Record in ``history`` where a stopped epoch got, so ``fit(..., history=history)`` goes on exactly."""
    net = loop.net
    scaler = _scaler_state(loop)
    read = [sums.loss, sums.correct, largest_weight(net, loop.optimizer), *scaler]
    values = net.backend.to_host(net.xp.stack(read)).tolist()
    loss_sum, correct, largest, *scaler = loop.parallel.sum_host(values, root_only=[2, 3, 4, 5])
    history.loss_scaler = scaler or None
    check_diverged({"epoch": history.epoch + 1, "loss": loss_sum}, largest, loop.optimizer)
    history.batch = batches
    history.partial = PartialEpoch(loss_sum, correct, float(batches * loop.batch_size), seconds)
    history.dropout_state = net.dropout_rng.get_state() if net.dropout_rng else None
    history.interrupted = True


def _read_totals(loop: _Loop, sums: RunningSums, seen: int) -> EpochTotals:
    """The epoch's one host read: the training sums, and the validation set's."""
    net, xp = loop.net, loop.net.xp
    device_sums = [sums.loss, sums.correct, zero_sum(xp, net) + float(seen)]
    if loop.validation is not None:
        device_sums += evaluate_sums(net, *loop.validation)
    device_sums.append(largest_weight(net, loop.optimizer))  # a NaN from the epoch's last step shows here
    scaler = _scaler_state(loop)
    values = net.backend.to_host(xp.stack(device_sums + scaler)).tolist()
    # The job's sums, the same on every rank; max |w| and the loss scaling are rank 0's (every rank holds the same).
    root_only = list(range(len(device_sums) - 1, len(values)))
    values = loop.parallel.sum_host(values, root_only=root_only)
    *sums, largest = values[: len(device_sums)]
    return EpochTotals(*sums, largest_weight=largest, loss_scaler=values[len(device_sums) :] or None)


def _scaler_state(loop: _Loop) -> list:
    """float16 loss scaling's state, read with the epoch's sums (nothing without it)."""
    return loop.scaler.state() if loop.scaler is not None else []


def _end_epoch(loop: _Loop, history: History, rng, totals: EpochTotals, seconds: float, on_epoch_end) -> bool:
    """Book the finished epoch into ``history`` (with a per-epoch checkpoint's state), log it, keep the best weights,
    call ``on_epoch_end``; True if early stopping ends training. NaN or inf losses or weights: ``DivergenceError``."""
    net = loop.net
    record = _record(net, history.epoch + 1, totals, seconds, loop.optimizer)
    if totals.loss_scaler is not None:
        history.loss_scaler = totals.loss_scaler
        record["loss_scale"], record["skipped_steps"] = totals.loss_scaler[0], int(totals.loss_scaler[2])
    history.epoch += 1
    history.batch = 0
    history.partial = None
    history.rng_state = rng.bit_generator.state  # the next epoch's, so a per-epoch checkpoint resumes exactly
    history.dropout_state = net.dropout_rng.get_state() if net.dropout_rng else None
    check_diverged(record, totals.largest_weight, loop.optimizer)  # before the record and its checkpoint are kept
    history.records.append(record)
    if loop.log is not None and _worth_logging(record["epoch"], loop.epochs):
        loop.log(format_record(record))
    improved = _track_best(net, history, record, loop.options.monitor if loop.validation is not None else None)
    if on_epoch_end is not None:
        on_epoch_end(history)
    patience = loop.options.patience
    if patience is None or improved or history.bad_epochs < patience:
        return False
    history.stopped_early = True
    if loop.log is not None:
        loop.log(f"early stopping: no better {MONITORS[loop.options.monitor][0]} for {patience} epochs")
    return True


def _restore_best(net, history: History, log, monitor: str) -> None:
    """Put back the weights of the best validation epoch, if training moved past it."""
    if history.best_params is None or history.best_epoch == history.epoch:
        return
    net.params = [net.backend.copy(p) for p in history.best_params]
    history.restored_best = True
    if log is not None:
        words, _ = MONITORS[monitor]
        log(f"restored the weights of epoch {history.best_epoch} (best {words} {_best_record(history)[monitor]:.4f})")


def _worth_logging(epoch: int, epochs: int) -> bool:
    """Every epoch of a short run; about twenty lines of a long one (full-batch runs have thousands)."""
    return epochs <= 50 or epoch % (epochs // 20) == 0 or epoch == epochs


def _check_fit_args(net, epochs, batch_size, patience, monitor, label_smoothing) -> tuple:
    """``(epochs, batch_size, patience)`` as Python ints (NumPy integers pass, bools do not)."""
    _check_monitor(net, monitor)
    whole("epochs", epochs, minimum=0)
    whole("batch_size", batch_size, minimum=1)
    if patience is not None:
        whole("patience", patience, minimum=1)
    if not (is_number(label_smoothing) and 0.0 <= label_smoothing < 1.0):
        raise ConfigError(f"label_smoothing must be in [0, 1), not {label_smoothing!r}")
    return int(epochs), int(batch_size), None if patience is None else int(patience)


def _record(net, epoch: int, totals: EpochTotals, seconds: float, optimizer) -> dict:
    record = {"epoch": epoch, "loss": totals.loss_sum / totals.seen}
    if net.is_classifier:
        record["accuracy"] = totals.correct / totals.seen
    if totals.val_seen is not None:
        record["val_loss"] = totals.val_loss_sum / totals.val_seen
        if net.is_classifier:
            record["val_accuracy"] = totals.val_correct / totals.val_seen
    record["lr"] = optimizer.lr
    record["seconds"] = seconds
    record["samples_per_s"] = totals.seen / seconds if seconds > 0 else float("inf")
    if totals.compile_seconds:  # the one-time compilation, part of ``seconds``
        record["compile_seconds"] = totals.compile_seconds
    return record


def _check_monitor(net, monitor) -> None:
    if monitor not in MONITORS:
        raise ConfigError(f"monitor must be one of {', '.join(MONITORS)}, not {monitor!r}")
    if monitor == "val_accuracy" and not net.is_classifier:
        raise ConfigError("monitor val_accuracy needs a classifier; a regression network is judged by val_loss")


def _best_record(history: History) -> dict | None:
    """The record of the best epoch so far (None before the first validated epoch)."""
    return next((r for r in reversed(history.records) if r["epoch"] == history.best_epoch), None)


def _better(record: dict, history: History, monitor: str) -> bool:
    """Whether ``record`` beats the best epoch so far by ``monitor`` (strictly: ties keep the earlier)."""
    _, better = MONITORS[monitor]
    best = _best_record(history)
    return best is None or better(record[monitor], best[monitor])


def _track_best(net, history, record, monitor: str | None) -> bool:
    """Remember the best weights so far (by ``monitor``; None: no validation); True if this epoch improved.
    ``history.best_val_loss`` is the best epoch's validation loss, whichever figure chose it."""
    if monitor is None:
        return True
    if _better(record, history, monitor):
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
    if "compile_seconds" in record:
        parts.append(f"(compiled in {record['compile_seconds']:.1f} s)")
    return "  ".join(parts)


def _progress_bar(loop: _Loop, epoch: int, initial: int) -> ProgressBar | None:
    """The epoch's progress bar on stderr, if ``fit`` was asked for one and logs (rank 0)."""
    if loop.log is None or not loop.options.progress:
        return None
    return ProgressBar(loop.steps, f"epoch {epoch}/{loop.epochs}", unit_samples=loop.batch_size, initial=initial)


def _close(bar):
    if bar is not None:
        bar.close()
