"""A training run from settings: data, model, ``fit``, and the files it leaves.

Settings are a flat dict with the CLI's option names (``BASE_SETTINGS``, then a
recipe's, then the user's). ``run_training`` is what ``python -m xpnet train`` and
``scripts/recipes.py`` call; ``run_recipe`` is the same from Python.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xpnet.backend import get_backend
from xpnet.backend.cpu import slow_setting_warnings
from xpnet.build import build_network, build_optimizer
from xpnet.checkpoint import ModelFile, save_model
from xpnet.data import load_dataset, split_rows, train_val_split
from xpnet.data.sources import is_streamed_path
from xpnet.distributed import Communicator, rank_device
from xpnet.errors import BackendError, ConfigError, DataError, DivergenceError, MemoryLimitError
from xpnet.fileio import STDOUT, atomic_write_text, check_output_path, is_stream
from xpnet.memory import DeviceRun, Estimate, device_training_estimate, limited, plot_bytes, training_estimate
from xpnet.plot import MAX_PLOT_CLASSES, check_plot_path, plot_training
from xpnet.precision import get_precision
from xpnet.progress import wanted as progress_wanted
from xpnet.recipes import get_recipe
from xpnet.settings import BASE_SETTINGS, RUN_SETTINGS, check_setting, checked
from xpnet.stream_run import StreamDataset, load_streamed
from xpnet.task import decide_task
from xpnet.tensorboard import TensorBoardWriter, summary_writer_class
from xpnet.train import History, fit
from xpnet.weights import class_weight_of

__all__ = [
    "BASE_SETTINGS",
    "RUN_SETTINGS",
    "check_fits",
    "checkpoint_path",
    "format_test",
    "resolve_settings",
    "resumed_settings",
    "run_recipe",
    "run_training",
    "task_of",
]


def resolve_settings(recipe: str, overrides: dict) -> dict:
    """Base settings, then the recipe's, then every option the user actually gave."""
    chosen = get_recipe(recipe)
    settings = dict(BASE_SETTINGS)
    settings.update(chosen.settings)
    settings.update({key: value for key, value in overrides.items() if value is not None})
    settings["recipe"] = chosen.name
    return settings


def resumed_settings(path: str, overrides: dict) -> dict:
    """The settings a checkpoint was trained with, checked, plus the run settings given now."""
    saved = ModelFile(path)
    if not saved.checkpoint:
        raise ConfigError(f"--resume {path}: this is a final model, not a checkpoint (it ends in .ckpt.safetensors)")
    if "dataset" not in saved.training:
        raise ConfigError(f"--resume {path}: metadata training.dataset is missing; it was not written by xpnet train")
    settings = checked({**BASE_SETTINGS, **saved.training}, f"--resume {path}: its setting")
    settings.update({key: overrides[key] for key in RUN_SETTINGS if overrides.get(key) is not None})
    return settings


def checkpoint_path(out: str | Path) -> Path:
    """Where a run writing ``out`` keeps its resumable checkpoint."""
    out = Path(out)
    stem = out.name.removesuffix(".safetensors")
    return out.with_name(f"{stem}.ckpt.safetensors")


@dataclass(frozen=True)
class _Files:
    """What a run writes: the model, its checkpoint, the history and the plot (each may be None)."""

    out: Path | None
    checkpoint: Path | None
    history: str | Path | None
    plot: str | Path | None


def _within_memory_limit(run):
    """Run under the ``memory_limit`` setting, when the settings give one (``xpnet.memory``)."""

    @functools.wraps(run)
    def limited_run(settings: dict, **options):
        with limited(check_setting("memory_limit", settings.get("memory_limit"))):
            return run(settings, **options)

    return limited_run


@_within_memory_limit
def run_training(
    settings: dict,
    *,
    quiet: bool = True,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    history_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    tensorboard_dir: str | Path | None = None,
    progress: bool | None = None,
    should_stop=None,
    log=None,
    communicator: Communicator | None = None,
    compile_steps: bool = True,
) -> dict:
    """Load data, build, train and test the model ``settings`` describe; save it to ``out``.

    ``settings`` missing from the dict take ``BASE_SETTINGS``' values; every one is checked
    against the table in ``xpnet.settings`` first. ``tensorboard_dir`` gets TensorBoard event
    files; ``progress`` (default: when not quiet and stderr is a terminal outside CI) draws
    a bar of each epoch's batches; ``compile_steps=False`` runs JAX's steps eagerly. Returns
    ``{"test": metrics, "epochs": n, "seconds": s, "device": ..., ...}``. With a ``communicator``
    of several ranks every rank calls this alike and trains its part (``xpnet.train.fit``);
    rank 0 alone prints, tests and writes files (TensorBoard's too); only its result has ``"test"``.
    """
    settings = checked({**BASE_SETTINGS, **settings})
    world = communicator or Communicator()
    if resume and (complete := _finished_run(resume, settings, world)):
        return complete
    quiet = quiet or not world.is_root
    log = log or (lambda message: None if quiet else print(message, flush=True))
    started = time.perf_counter()
    board_dir = tensorboard_dir if world.is_root else None
    files = _check_outputs(out, history_path, plot_path, board_dir) if world.is_root else _Files(None, None, None, None)
    data, split, (net, optimizer, history), communicator = _prepare(settings, resume, quiet, world, files.plot)
    X_train, _, X_val, *_ = split
    log(_start_message(net, history, resume, (len(X_train), len(X_val), len(data.X_test)), communicator, settings))
    checkpoints = _Checkpoints(files.checkpoint, net, optimizer, settings, data.class_names)
    with TensorBoardWriter(board_dir) if board_dir else contextlib.nullcontext() as board:
        try:
            history = fit(
                net,
                optimizer=optimizer,
                **_fit_data(split),
                on_epoch_end=_each_epoch(checkpoints, board),
                should_stop=should_stop,
                history=history,
                communicator=communicator,
                compile=compile_steps,
                **_fit_options(settings, net, quiet, log, progress, data),
            )
        except DivergenceError as exc:
            raise checkpoints.divergence(exc, resume) from None
    result = _result(settings, net, history, files)
    if history.interrupted:
        checkpoints(history)
    elif world.is_root:
        _test_and_save(net, data, history, settings, files, result, started, quiet, log)
    return result


def _finished_run(resume, settings: dict, world: Communicator) -> dict | None:
    """When the checkpoint ``resume`` is of a run that already ended (its epochs done, or stopped
    early), say so and return the run's result: nothing is trained or written. Else None."""
    state = ModelFile(resume).resume_state()
    done, wanted = state["epoch"], settings["epochs"]
    said = f"xpnet: --resume {resume}: the run is complete"
    if state.get("stopped_early"):
        said += f" (it stopped early after epoch {done}, by --patience); nothing to train, no file changed"
    elif done >= wanted and not state.get("batch"):
        said += (
            f" (all {wanted} of its epochs are done); nothing to train, no file changed. "
            f"To train on, ask for more epochs: --epochs {done + 5} trains 5 more"
        )
    else:
        return None
    if world.is_root:
        print(said, file=sys.stderr, flush=True)
    return {"recipe": settings.get("recipe"), "epochs": done, "interrupted": False, "complete": True,
            "checkpoint": str(resume), "history": []}  # fmt: skip


def _start_message(net, history, resume, sizes: tuple, communicator: Communicator, settings: dict) -> str:
    """What a run says before its first epoch: where it resumes, the network, the data, the ranks."""
    lines = [f"resuming {resume} at epoch {history.epoch + 1}, batch {history.batch}"] if history else []
    lines += [f"{net}", "{} training, {} validation, {} test samples".format(*sizes)]
    if settings["label_smoothing"] and net.loss.classification:
        lines.append(
            f"label smoothing {settings['label_smoothing']:g}: the training loss is taken against the smoothed "
            "targets, the validation loss against the true labels, so the first stays above the second"
        )
    if communicator.size > 1:
        batch = settings["batch_size"]
        lines.append(
            f"data-parallel on {communicator.size} ranks through {communicator.describe()}: "
            f"each takes {batch // communicator.size} of every batch of {batch}"
        )
    return "\n".join(lines)


def _result(settings: dict, net, history, files: _Files) -> dict:
    """What ``run_training`` returns before testing: the run's facts and its history."""
    return {
        "recipe": settings.get("recipe"),
        "device": str(net.backend),
        "epochs": history.epoch,
        "interrupted": history.interrupted,
        "checkpoint": str(files.checkpoint) if files.checkpoint else None,
        "history": history.records,
    }


def _each_epoch(*listeners):
    """One ``on_epoch_end`` that calls each listener given (None ones skipped), in order."""
    active = [listener for listener in listeners if listener is not None]

    def ended(history) -> None:
        for listener in active:
            listener(history)

    return ended


def _fit_data(split) -> dict:
    """``fit``'s data from the split: the training rows, their weights, and the validation set (if any)."""
    X_train, y_train, X_val, y_val, w_train, w_val = split
    validation = (X_val, y_val, w_val) if len(X_val) else None
    return {"X": X_train, "y": y_train, "sample_weight": w_train, "validation_data": validation}


def _fit_options(settings: dict, net, quiet: bool, log, progress: bool | None, data) -> dict:
    """``fit``'s keyword arguments that come straight from the settings, the dataset's classes and the verbosity."""
    return {
        "class_weight": class_weight_of(settings, data),
        "epochs": settings["epochs"],
        "batch_size": settings["batch_size"],
        "patience": settings["patience"],
        "monitor": settings["monitor"],
        "label_smoothing": settings["label_smoothing"] if net.loss.classification else 0.0,
        "seed": settings["seed"],
        "verbose": not quiet,
        "progress": not quiet and (progress_wanted() if progress is None else progress),
        "log": log,
    }


def _check_outputs(out, history_path, plot_path, tensorboard_dir) -> _Files:
    """Refuse output paths that cannot be written, before any data is read or time spent."""
    if tensorboard_dir:
        summary_writer_class()  # tensorboardX is installed
        check_output_path(Path(tensorboard_dir) / "events", "--tensorboard")
    if out:
        if str(out) == STDOUT:
            raise ConfigError("--out -: a model cannot go to standard output; give a file name")
        check_output_path(out, "--out")
    if history_path:
        _history_format(history_path)
        check_output_path(history_path, "--history")
    if plot_path:
        check_plot_path(plot_path)
        check_output_path(plot_path, "--plot")
    out = Path(out) if out else None
    # A stream (a FIFO, /dev/null) gets the model only: a checkpoint beside /dev/null would land in /dev.
    checkpoint = checkpoint_path(out) if out and not is_stream(out) else None
    return _Files(out, checkpoint, history_path, plot_path)


def _prepare(settings: dict, resume, quiet: bool, world: Communicator, plot):
    """The run's data, its train/validation split, ``(net, optimizer, history)``, and the transport
    this rank's arrays take (``cuda`` is the GPU of the rank's local rank). The memory the run will
    take is checked against the limit before the network is built."""
    try:
        backend = get_backend(settings.get("backend"), rank_device(settings.get("device"), world))  # fail fast
        backend.use_tf32(settings["tf32"])
        for warning in slow_setting_warnings(backend, settings["precision"], settings["tf32"]) if world.is_root else ():
            print(f"xpnet: warning: {warning}", file=sys.stderr, flush=True)
        communicator = world.for_backend(backend)
        data, split = _load_data(settings, quiet, world)
        on_gpu = backend.gpu_free_memory()
        memory_estimate(settings, data, plot is not None, on_gpu is None).check(f"training on {settings['dataset']!r}")
        if on_gpu is not None:  # the device's part against the device's own free memory
            device_estimate(settings, data, world.size).check_device(
                f"training on {settings['dataset']!r}", on_gpu, backend.device_name
            )
        return data, split, _model_and_optimizer(settings, backend, data, split[0], resume), communicator
    except (ConfigError, DataError, BackendError, MemoryLimitError) as exc:
        if not resume:
            raise
        raise type(exc)(f"--resume {resume}: with the settings it was trained with: {exc}") from None


def _load_data(settings: dict, quiet: bool, world: Communicator | None = None):
    """The dataset, checked against the model's task, and its ``(X_train, y_train, X_val, y_val)``;
    a streamed one's passes over the training rows are shared among the ranks of ``world``."""
    task = task_of(settings)
    if is_streamed_path(settings["dataset"]):  # read from disk as training goes (xpnet.stream_run)
        data, split = load_streamed(settings, task, world)
    else:
        data, split = _load_whole(settings, task, quiet)
    if settings["monitor"] == "val_accuracy" and data.task != "classification":
        raise ConfigError(
            f"--monitor val_accuracy needs a classification dataset; {settings['dataset']!r} is "
            "a regression set, judged by val_loss"
        )
    if settings["patience"] is not None and not len(split[2]):
        raise ConfigError(
            f"patience needs validation samples, but val_split {settings['val_split']:g} holds out none of "
            f"the {len(data.X_train)}; use a larger --val-split"
        )
    return data, split


def _load_whole(settings: dict, task: str, quiet: bool):
    """A dataset loaded into memory, and its seeded train/validation split (the weights follow their rows)."""
    for name in ("target", "val_data"):
        if settings.get(name):
            raise ConfigError(
                f"--{name.replace('_', '-')} (the {name} setting) is for datasets streamed from disk "
                f"(.npy, .parquet, a folder), not {settings['dataset']!r}"
            )
    data = load_dataset(
        settings["dataset"],
        settings.get("data_dir"),
        progress=not quiet,
        task=task,
        sample_weight=settings["sample_weight"],
    )
    decide_task(settings["loss"], settings["output"], given=data.task, source=f"dataset {settings['dataset']!r}")
    split = train_val_split(data.X_train, data.y_train, settings["val_split"], seed=settings["seed"])
    if data.w_train is None:
        return data, (*split, None, None)
    rows = split_rows(len(data.X_train), settings["val_split"], seed=settings["seed"])
    return data, (*split, *(data.w_train[part] for part in rows))


class _Checkpoints:
    """Saves the resumable checkpoint at each epoch's end (``fit``'s ``on_epoch_end``)."""

    def __init__(self, path: Path | None, net, optimizer, settings: dict, class_names: list[str]):
        self.path, self.net, self.optimizer = path, net, optimizer
        self.settings, self.class_names = settings, class_names
        self.saved = False  # by this run: a file left by an earlier run is not this run's last good state

    def __call__(self, state) -> None:
        if self.path is not None:
            save_model(
                self.path,
                self.net,
                training=self.settings,
                class_names=self.class_names,
                history=state,
                optimizer=self.optimizer,
            )
            self.saved = True

    def divergence(self, exc: DivergenceError, resume) -> DivergenceError:
        """``exc``, saying which saved state is still good."""
        kept = f"; the last good checkpoint is {self.path}" if self.saved else ""
        if not self.saved and resume:
            kept = f"; the checkpoint it resumed from, {resume}, is unchanged"
        return DivergenceError(f"{exc}{kept}")


def _test_and_save(net, data, history, settings, files: _Files, result, started, quiet, log) -> None:
    """Test the trained model, then write the model, the history and the plot asked for."""
    test = net.evaluate(data.X_test, data.y_test) if len(data.X_test) else {}  # a stream with no held-out rows
    result["test"] = test
    result["seconds"] = time.perf_counter() - started
    log(format_test(test, result["seconds"]))
    if quiet:
        print(format_test(test, result["seconds"]))
    if files.out is not None:
        save_model(files.out, net, training=settings, class_names=data.class_names, history=history)
        log(f"saved the model to {files.out}")
    if files.history:
        _write_history(files.history, history.records)
    if files.plot:
        predictions = net.predict(data.X_test) if net.is_classifier else None
        plot_training(files.plot, history.records, data.y_test, predictions, data.class_names)
        log(f"saved the plot to {files.plot}")


def _model_and_optimizer(settings: dict, backend, data, X_train, resume):
    """A new network and optimizer as ``settings`` say, or both restored from ``resume``.

    Returns ``(net, optimizer, history)``; ``history`` is None for a new run.
    """
    optimizer = build_optimizer(settings)
    if resume:
        saved = ModelFile(resume)
        net = saved.build(backend, precision=saved.saved_precision)
        check_fits(net, data, f"--resume {resume}: dataset {settings['dataset']!r}")
        steps = saved.checkpoint.get("optimizer_steps", 0)
        optimizer.load_state_arrays(saved.optimizer_buffers(net, optimizer), steps, net.params)
        return net, optimizer, History.from_resume_state(saved.resume_state(), best_params=saved.best_params(net))
    streamed = isinstance(data, StreamDataset)  # its scaling is fitted in one pass over the stream
    net = build_network(settings, data.num_features, data.num_classes, None if streamed else X_train, backend=backend)
    if streamed:
        net.set_scaling(data.fit_scaling(settings.get("scaling") or "unit"))
    return net, optimizer, None


def memory_estimate(settings: dict, data, plotting: bool, on_host: bool = True) -> Estimate:
    """What training ``settings`` on ``data`` will hold on the host at its peak (``xpnet.memory``), plot
    included; ``on_host``: the backend's arrays are host memory too (not a GPU's: ``device_estimate``)."""
    if isinstance(data, StreamDataset):
        return data.memory_estimate(settings, on_host)
    itemsize = np.dtype(settings["dtype"]).itemsize
    sizes = [data.num_features, *settings["layers"], data.num_classes]
    X = data.X_train
    held = sum(array.nbytes for array in (X, data.y_train, data.X_test, data.y_test))
    on_device = X.size * (X.itemsize if X.dtype == np.uint8 else itemsize)  # uint8 stays uint8
    data_bytes = held + X.nbytes + data.y_train.nbytes + (on_device if on_host else 0)  # loaded, split, uploaded
    buffers = build_optimizer(settings).buffers_per_param
    estimate = training_estimate(sizes, itemsize, buffers, data_bytes, len(X), settings["batch_size"], X.itemsize)
    if plotting and data.task == "classification":
        estimate.add("the plot's confusion matrix", plot_bytes(min(data.num_classes, MAX_PLOT_CLASSES)))
    return estimate


def device_estimate(settings: dict, data, ranks: int) -> Estimate:
    """What training ``settings`` on ``data`` will hold on the GPU at its peak (``xpnet.memory``)."""
    if isinstance(data, StreamDataset):
        return data.device_estimate(settings, ranks)
    itemsize = np.dtype(settings["dtype"]).itemsize
    sizes = [data.num_features, *settings["layers"], data.num_classes]
    X, precision = data.X_train, get_precision(settings["precision"])
    uploaded = X.size * (X.itemsize if X.dtype == np.uint8 else itemsize) + data.y_train.size * 4  # labels int32
    half = 2 if precision.mixed else 0
    run = DeviceRun(uploaded, len(X), settings["batch_size"], X.itemsize, half, precision.loss_scaling, ranks)
    return device_training_estimate(sizes, itemsize, build_optimizer(settings).buffers_per_param, run)


def task_of(settings: dict) -> str:
    """The task of the model ``settings`` describe (``xpnet.task.decide_task``'s rule),
    checked against ``--task`` where the user gave one."""
    return decide_task(settings.get("loss") or "cross_entropy", settings.get("output"), given=settings.get("task"))


def format_test(test: dict, seconds: float) -> str:
    metrics = "  ".join(f"{key} {value:.4f}" for key, value in test.items())
    return f"test  {metrics}  ({seconds:.1f} s)"


def _history_format(path) -> str:
    """``json`` or ``csv`` from the file name; anything else is refused up front."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ConfigError(f"--history {path}: the file name must end in .json or .csv")
    return suffix[1:]


def _write_history(path, records: list[dict]) -> None:
    if _history_format(path) == "json":
        atomic_write_text(path, json.dumps(records, indent=2) + "\n")
        return
    columns = list(dict.fromkeys(key for record in records for key in record))
    lines = [",".join(columns)]
    lines += [",".join(f"{record.get(c, '')}" for c in columns) for record in records]
    atomic_write_text(path, "\n".join(lines) + "\n")


def check_fits(net, data, what: str) -> None:
    """Refuse data whose features or classes the network does not take."""
    if data.num_features != net.sizes[0]:
        raise ConfigError(f"{what} has {data.num_features} features but the model takes {net.sizes[0]}")
    if data.num_classes != net.sizes[-1]:
        raise ConfigError(f"{what} has {data.num_classes} classes/targets but the model has {net.sizes[-1]} outputs")


def run_recipe(name: str, **overrides) -> dict:
    """Train recipe ``name`` as ``python -m xpnet train --recipe NAME`` would, quietly.

    ``overrides`` use the settings' names, as in ``run_recipe("default", epochs=5,
    device="cuda")``. Returns ``run_training``'s result; nothing is saved.
    """
    return run_training(resolve_settings(name, overrides), quiet=True)
