"""A training run from settings: data, model, ``fit``, and the files it leaves.

Settings are a flat dict with the CLI's option names (``BASE_SETTINGS``, then a
recipe's, then the user's). ``run_training`` is what ``python -m xpnet train`` and
``scripts/recipes.py`` call; ``run_recipe`` is the same from Python.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from xpnet.errors import ConfigError, DivergenceError

#: Settings no recipe needs to repeat; a recipe overrides them, a flag overrides both.
BASE_SETTINGS = {
    "dataset": "fashion-mnist",
    "task": None,
    "layers": [128, 64],
    "activation": "relu",
    "output": None,
    "loss": "cross_entropy",
    "init": "auto",
    "dropout": 0.0,
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.0,
    "nesterov": False,
    "weight_decay": 0.0,
    "schedule": "constant",
    "batch_size": 64,
    "epochs": 10,
    "val_split": 0.1,
    "patience": None,
    "scaling": "unit",
    "label_smoothing": 0.0,
    "seed": 0,
    "dtype": "float32",
}
#: Settings that say where and how to run, not what to train; a resumed run may change them.
RUN_SETTINGS = ("backend", "device", "data_dir", "epochs")


def resolve_settings(recipe: str, overrides: dict) -> dict:
    """Base settings, then the recipe's, then every option the user actually gave."""
    from xpnet.recipes import get_recipe

    settings = dict(BASE_SETTINGS)
    settings.update(get_recipe(recipe).settings)
    settings.update({key: value for key, value in overrides.items() if value is not None})
    settings["recipe"] = recipe
    return settings


def resumed_settings(path: str, overrides: dict) -> dict:
    """The settings a checkpoint was trained with, checked, plus the run settings given now."""
    from xpnet.checkpoint import ModelFile

    saved = ModelFile(path)
    if not saved.checkpoint:
        raise ConfigError(f"--resume {path}: this is a final model, not a checkpoint (it ends in .ckpt.safetensors)")
    settings = dict(BASE_SETTINGS)
    settings.update(saved.training)
    for key, base in BASE_SETTINGS.items():
        if not _same_kind(settings[key], base):
            raise ConfigError(f"--resume {path}: its setting {key!r} = {str(settings[key])[:40]} is not valid")
    settings.update({key: overrides[key] for key in RUN_SETTINGS if overrides.get(key) is not None})
    return settings


def _same_kind(value, base) -> bool:
    """``value`` has the type ``BASE_SETTINGS`` gives that setting."""
    if base is None:
        return True  # optional settings (task, output, patience) are checked where they are used
    if isinstance(base, bool) or isinstance(value, bool):
        return isinstance(base, bool) and isinstance(value, bool)
    if isinstance(base, float):
        return isinstance(value, (int, float))
    if isinstance(base, list):
        return isinstance(value, list) and all(isinstance(n, int) and not isinstance(n, bool) for n in value)
    return isinstance(value, type(base))


def checkpoint_path(out: str | Path) -> Path:
    """Where a run writing ``out`` keeps its resumable checkpoint."""
    out = Path(out)
    stem = out.name.removesuffix(".safetensors")
    return out.with_name(f"{stem}.ckpt.safetensors")


def run_training(
    settings: dict,
    *,
    quiet: bool = True,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    history_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    should_stop=None,
    log=None,
) -> dict:
    """Load data, build, train and test the model ``settings`` describe; save it to ``out``.

    Returns ``{"test": metrics, "epochs": n, "seconds": s, "device": ..., ...}``.
    """
    from xpnet.backend import get_backend
    from xpnet.checkpoint import save_model
    from xpnet.data import load_dataset, train_val_split
    from xpnet.train import fit

    log = log or (lambda message: None if quiet else print(message, flush=True))
    started = time.perf_counter()
    backend = get_backend(settings.get("backend"), settings.get("device"))  # fail fast, before the data
    if out:
        _check_writable(out, "--out")
    if history_path:
        _history_format(history_path)
    if plot_path:
        from xpnet.plot import check_plot_path

        check_plot_path(plot_path)
    data = load_dataset(
        settings["dataset"], data_dir=settings.get("data_dir"), progress=not quiet, task=task_of(settings)
    )
    X_train, y_train, X_val, y_val = train_val_split(
        data.X_train, data.y_train, settings["val_split"], seed=settings["seed"]
    )
    net, optimizer, history = _model_and_optimizer(settings, backend, data, X_train, resume)
    if history is not None:
        log(f"resuming {resume} at epoch {history.epoch + 1}, batch {history.batch}")
    log(f"{net}\n{len(X_train)} training, {len(X_val)} validation, {len(data.X_test)} test samples")

    out = Path(out) if out else None
    checkpoint = checkpoint_path(out) if out else None

    saved_checkpoint = False  # by this run: a file left by an earlier run is not this run's last good state

    def save_checkpoint(state):
        nonlocal saved_checkpoint
        if checkpoint is not None:
            save_model(
                checkpoint, net, training=settings, class_names=data.class_names, history=state, optimizer=optimizer
            )
            saved_checkpoint = True

    try:
        history = fit(
            net,
            X_train,
            y_train,
            epochs=settings["epochs"],
            batch_size=settings["batch_size"],
            optimizer=optimizer,
            validation_data=(X_val, y_val) if len(X_val) else None,
            patience=settings["patience"],
            label_smoothing=settings["label_smoothing"] if net.loss.classification else 0.0,
            seed=settings["seed"],
            verbose=not quiet,
            progress=not quiet and sys.stderr.isatty(),
            log=log,
            on_epoch_end=save_checkpoint,
            should_stop=should_stop,
            history=history,
        )
    except DivergenceError as exc:
        kept = f"; the last good checkpoint is {checkpoint}" if saved_checkpoint else ""
        if not saved_checkpoint and resume:
            kept = f"; the checkpoint it resumed from, {resume}, is unchanged"
        raise DivergenceError(f"{exc}{kept}") from None
    result = {
        "recipe": settings.get("recipe"),
        "device": str(net.backend),
        "epochs": history.epoch,
        "interrupted": history.interrupted,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "history": history.records,
    }
    if history.interrupted:
        save_checkpoint(history)
        return result

    test = net.evaluate(data.X_test, data.y_test)
    result["test"] = test
    result["seconds"] = time.perf_counter() - started
    log(format_test(test, result["seconds"]))
    if quiet:
        print(format_test(test, result["seconds"]))
    if out is not None:
        save_model(out, net, training=settings, class_names=data.class_names, history=history)
        log(f"saved the model to {out}")
    if history_path:
        _write_history(history_path, history.records)
    if plot_path:
        from xpnet.plot import plot_training

        predictions = net.predict(data.X_test) if net.is_classifier else None
        plot_training(plot_path, history.records, data.y_test, predictions, data.class_names)
        log(f"saved the plot to {plot_path}")
    return result


def _model_and_optimizer(settings: dict, backend, data, X_train, resume):
    """A new network and optimizer as ``settings`` say, or both restored from ``resume``.

    Returns ``(net, optimizer, history)``; ``history`` is None for a new run.
    """
    from xpnet.checkpoint import ModelFile
    from xpnet.data import Scaling
    from xpnet.network import MLP
    from xpnet.optim import get_optimizer
    from xpnet.train import History

    options = {key: settings[key] for key in ("lr", "momentum", "nesterov", "weight_decay", "schedule")}
    optimizer = get_optimizer(settings["optimizer"], **options)
    if resume:
        saved = ModelFile(resume)
        net = saved.build(backend)
        check_fits(net, data, f"--resume {resume}: dataset {settings['dataset']!r}")
        steps = saved.checkpoint.get("optimizer_steps", 0)
        optimizer.load_state_arrays(saved.optimizer_buffers(net, optimizer), steps, net.params)
        return net, optimizer, History.from_resume_state(saved.resume_state(), best_params=saved.best_params(net))
    net = MLP(
        [data.num_features, *settings["layers"], data.num_classes],
        activation=settings["activation"],
        loss=settings["loss"],
        output=settings["output"],
        init=settings["init"],
        dropout=settings["dropout"],
        backend=backend,
        dtype=settings["dtype"],
        seed=settings["seed"],
    )
    if data.task == "regression" and net.loss.classification:
        raise ConfigError(
            f"dataset {settings['dataset']!r} holds regression targets, but --loss {net.loss_name} is for "
            "classes; use --loss mse (with the default linear output)"
        )
    net.set_scaling(Scaling.fit(settings["scaling"], X_train))
    return net, optimizer, None


def task_of(settings: dict) -> str:
    """The task a user file's targets serve: given, or regression for MSE on a linear output."""
    from xpnet.losses import loss_name

    if settings.get("task"):
        return settings["task"]
    output = str(settings.get("output") or "identity").strip().lower()
    mse = loss_name(settings.get("loss") or "cross_entropy") == "mse"
    return "regression" if mse and output in ("identity", "linear") else "classification"


def format_test(test: dict, seconds: float) -> str:
    metrics = "  ".join(f"{key} {value:.4f}" for key, value in test.items())
    return f"test  {metrics}  ({seconds:.1f} s)"


def _check_writable(path, option: str) -> None:
    """Refuse an output path in a folder xpnet cannot write, before training starts."""
    folder = Path(path).absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ConfigError(f"{option} {path}: cannot write in {folder}; choose another path")


def _history_format(path) -> str:
    """``json`` or ``csv`` from the file name; anything else is refused up front."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ConfigError(f"--history {path}: the file name must end in .json or .csv")
    return suffix[1:]


def _write_history(path, records: list[dict]) -> None:
    from xpnet.fileio import atomic_write_text

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
