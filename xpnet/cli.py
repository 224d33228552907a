"""The command line: ``python -m xpnet [train|evaluate|predict|info|bench] ...``.

With no arguments it trains the default recipe on Fashion-MNIST on the CPU. Every
failure a user can cause ends as ``xpnet: error: ...`` and exit status 2; only a
bug shows a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path

import numpy as np

from xpnet import __version__
from xpnet.backend import BACKENDS
from xpnet.bench import add_bench_arguments, bench_main
from xpnet.errors import ConfigError, DivergenceError, XpnetError

COMMANDS = ("train", "evaluate", "predict", "info", "bench")

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


class _Parser(argparse.ArgumentParser):
    """argparse, but named ``xpnet`` in its messages whatever the program path."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("prog", "xpnet")
        super().__init__(*args, **kwargs)


def _layers(text: str) -> list[int]:
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths such as 128,64, not {text!r}") from None
    if any(n < 1 for n in layers):
        raise argparse.ArgumentTypeError(f"layer widths must be >= 1, not {text!r}")
    return layers


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, not {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, not {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), not {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), not {text!r}")
    return value


def _add_device_arguments(parser) -> None:
    parser.add_argument("--device", help="cpu (default), cuda or cuda:N; cuda alone means CuPy")
    parser.add_argument("--backend", choices=BACKENDS, help="array library (default: numpy)")


def _add_train_arguments(parser) -> None:
    from xpnet.recipes import RECIPES

    parser.add_argument(
        "--recipe",
        default="default",
        help=f"named configuration to start from: {', '.join(RECIPES)} (default: default; see docs/RECIPES.md)",
    )
    _add_device_arguments(parser)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", help="fashion-mnist (default), mnist, diabetes, friedman1, or a .npz/.csv file")
    data.add_argument("--data-dir", help="folder holding the dataset files (searched first)")
    data.add_argument(
        "--task",
        choices=("classification", "regression"),
        help="what the targets of a .npz/.csv file are (default: regression for mse with a linear output)",
    )
    data.add_argument("--val-split", type=_fraction, help="fraction of training data held out for validation")
    data.add_argument("--scaling", choices=("unit", "symmetric", "standard", "none"), help="input scaling")
    model = parser.add_argument_group("model")
    model.add_argument("--layers", type=_layers, help="hidden layer widths, e.g. 128,64")
    model.add_argument("--activation", help="hidden activation: relu, leaky_relu(0.01), sigmoid, tanh, identity")
    model.add_argument("--output", help="output activation (default: the loss's partner: softmax, sigmoid, identity)")
    model.add_argument("--loss", help="cross_entropy, mse or binary_cross_entropy")
    model.add_argument("--init", help="auto, he_normal, glorot_uniform, standard_normal, ...")
    model.add_argument("--dropout", type=_fraction, help="dropout rate on hidden layers")
    model.add_argument("--dtype", choices=("float32", "float64"), help="float type of weights and math")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), help="update rule")
    optim.add_argument("--lr", type=float, help="learning rate")
    optim.add_argument("--momentum", type=_fraction, help="SGD momentum")
    optim.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None, help="Nesterov momentum")
    optim.add_argument("--weight-decay", type=float, help="L2 weight decay (decoupled for adamw)")
    optim.add_argument("--schedule", help="constant, step, cosine or warmup-cosine")
    optim.add_argument("--label-smoothing", type=_fraction, help="label smoothing for cross-entropy targets")
    optim.add_argument("--batch-size", type=_positive_int, help="samples per step")
    optim.add_argument("--epochs", type=_count, help="passes over the training data")
    optim.add_argument("--patience", type=_positive_int, help="stop after this many epochs without a better val loss")
    optim.add_argument("--seed", type=_count, help="seed (>= 0) for initial weights, split and shuffling")
    out = parser.add_argument_group("output")
    out.add_argument("--out", default="xpnet-model.safetensors", help="where to save the trained model")
    out.add_argument("--resume", metavar="CHECKPOINT", help="continue an interrupted run from its checkpoint")
    out.add_argument("--history", metavar="FILE", help="write per-epoch metrics to FILE.json or FILE.csv")
    out.add_argument("--plot", metavar="FILE", help="draw learning curves and a confusion matrix to FILE.png")
    out.add_argument("--quiet", action="store_true", help="print only the final result")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(description="Train dense networks by backpropagation on NumPy, CuPy or PyTorch.")
    parser.add_argument("--version", action="version", version=f"xpnet {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    train = commands.add_parser("train", help="train a model (the default command)")
    _add_train_arguments(train)
    evaluate = commands.add_parser("evaluate", help="test a saved model on its dataset's test split")
    evaluate.add_argument("model", help="model file (.safetensors)")
    evaluate.add_argument("--dataset", help="dataset to test on (default: the one it was trained on)")
    evaluate.add_argument("--data-dir", help="folder holding the dataset files")
    _add_device_arguments(evaluate)
    predict = commands.add_parser("predict", help="predict labels for inputs in an IDX or .npz file")
    predict.add_argument("model", help="model file (.safetensors)")
    predict.add_argument("input", help="IDX images (raw or .gz), or .npz holding X")
    predict.add_argument("--out", help="write predictions to this .csv or .npz (default: print CSV)")
    predict.add_argument("--proba", action="store_true", help="also write the output probabilities")
    _add_device_arguments(predict)
    commands.add_parser("info", help="versions, backends, devices and BLAS")
    bench = commands.add_parser("bench", help="throughput sweep over batch sizes and devices")
    add_bench_arguments(bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help", "--version"):
        argv = ["train", *argv]
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except DivergenceError as exc:
        print(f"xpnet: error: {exc}", file=sys.stderr)
        return 1
    except XpnetError as exc:
        print(f"xpnet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, without a checkpoint
        print("xpnet: stopped at once (second interrupt); the last per-epoch checkpoint is kept", file=sys.stderr)
        return 128 + signal.SIGINT


# -- train --------------------------------------------------------------------------


def resolve_settings(recipe: str, overrides: dict) -> dict:
    """Base settings, then the recipe's, then every option the user actually gave."""
    from xpnet.recipes import get_recipe

    settings = dict(BASE_SETTINGS)
    settings.update(get_recipe(recipe).settings)
    settings.update({key: value for key, value in overrides.items() if value is not None})
    settings["recipe"] = recipe
    return settings


def _train_command(args) -> int:
    overrides = {key: getattr(args, key) for key in (*BASE_SETTINGS, "backend", "device", "data_dir")}
    if args.resume:
        settings = _resumed_settings(args.resume, overrides)
    else:
        settings = resolve_settings(args.recipe, overrides)
    stop = _StopFlag()
    with stop.installed():
        result = run_training(
            settings,
            quiet=args.quiet,
            out=args.out,
            resume=args.resume,
            history_path=args.history,
            plot_path=args.plot,
            should_stop=stop,
        )
    if result["interrupted"]:
        print(
            f"xpnet: interrupted in epoch {result['epochs'] + 1}; checkpoint saved to {result['checkpoint']}\n"
            f"resume with: python -m xpnet train --resume {result['checkpoint']} --out {args.out}",
            file=sys.stderr,
        )
        return 128 + (stop.signum or signal.SIGINT)
    return 0


def _resumed_settings(path: str, overrides: dict) -> dict:
    from xpnet.checkpoint import ModelFile

    saved = ModelFile(path)
    if not saved.checkpoint:
        raise ConfigError(f"--resume {path}: this is a final model, not a checkpoint (it ends in .ckpt.safetensors)")
    settings = dict(saved.training)
    settings.update({key: overrides[key] for key in RUN_SETTINGS if overrides.get(key) is not None})
    return settings


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
        settings["dataset"], data_dir=settings.get("data_dir"), progress=not quiet, task=_task(settings)
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
    log(_format_test(test, result["seconds"]))
    if quiet:
        print(_format_test(test, result["seconds"]))
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
        _check_fits(net, data, f"--resume {resume}: dataset {settings['dataset']!r}")
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


def _task(settings: dict) -> str:
    """The task a user file's targets serve: given, or regression for MSE on a linear output."""
    from xpnet.losses import loss_name

    if settings.get("task"):
        return settings["task"]
    output = str(settings.get("output") or "identity").strip().lower()
    mse = loss_name(settings.get("loss") or "cross_entropy") == "mse"
    return "regression" if mse and output in ("identity", "linear") else "classification"


def _format_test(test: dict, seconds: float) -> str:
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


class _StopFlag:
    """Turns the first SIGINT/SIGTERM into a polite request to stop after this step."""

    def __init__(self):
        self.signum = None

    def __call__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    @contextlib.contextmanager
    def installed(self):
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


# -- evaluate / predict / info ---------------------------------------------------------


def _evaluate_command(args) -> int:
    from xpnet.checkpoint import ModelFile
    from xpnet.data import load_dataset

    saved = ModelFile(args.model)
    net = saved.build(args.backend, args.device)
    dataset = args.dataset or saved.training.get("dataset")
    if not dataset:
        raise ConfigError(f"{args.model} does not say which dataset it was trained on; pass --dataset")
    data = load_dataset(dataset, data_dir=args.data_dir, progress=False, task=_task(saved.training))
    _check_fits(net, data, f"dataset {dataset!r}")
    started = time.perf_counter()
    print(_format_test(net.evaluate(data.X_test, data.y_test), time.perf_counter() - started))
    return 0


def _predict_command(args) -> int:
    from xpnet.checkpoint import ModelFile

    saved = ModelFile(args.model)
    net = saved.build(args.backend, args.device)
    X = _read_inputs(Path(args.input), net.sizes[0])
    if not net.is_classifier:
        rows = _value_rows(net.predict(X))
    else:
        rows = _label_rows(net.predict(X), net.predict_proba(X) if args.proba else None, saved.class_names, args)
        if rows is None:
            return 0
    text = "\n".join(rows) + "\n"
    if args.out:
        from xpnet.fileio import atomic_write_text

        atomic_write_text(args.out, text)
    else:
        sys.stdout.write(text)
    return 0


def _label_rows(labels, proba, names, args) -> list[str] | None:
    """CSV rows of predicted classes (and probabilities); None once written as .npz."""
    if args.out and args.out.endswith(".npz"):
        from xpnet.fileio import atomic_writer

        arrays = {"labels": labels} if proba is None else {"labels": labels, "proba": proba}
        with atomic_writer(args.out) as stream:
            np.savez(stream, **arrays)
        return None
    header = "index,label" + (",class" if names else "")
    if proba is not None:
        header += "".join(f",p{j}" for j in range(proba.shape[1]))
    rows = [header]
    for i, label in enumerate(np.asarray(labels).tolist()):
        row = f"{i},{label}"
        if names and 0 <= label < len(names):
            row += f",{names[label]}"
        if proba is not None:
            row += "".join(f",{p:.6g}" for p in proba[i])
        rows.append(row)
    return rows


def _value_rows(outputs) -> list[str]:
    """CSV rows of a regression model's outputs, one column per output."""
    outputs = np.asarray(outputs).reshape(len(outputs), -1)
    header = "index," + ",".join(f"y{j}" for j in range(outputs.shape[1]))
    return [header] + [f"{i}," + ",".join(f"{v:.6g}" for v in row) for i, row in enumerate(outputs)]


def _check_fits(net, data, what: str) -> None:
    """Refuse data whose features or classes the network does not take."""
    if data.num_features != net.sizes[0]:
        raise ConfigError(f"{what} has {data.num_features} features but the model takes {net.sizes[0]}")
    if data.num_classes != net.sizes[-1]:
        raise ConfigError(f"{what} has {data.num_classes} classes/targets but the model has {net.sizes[-1]} outputs")


def _read_inputs(path: Path, features: int) -> np.ndarray:
    from xpnet.data import read_idx
    from xpnet.data.tabular import read_npz_arrays

    X = read_npz_arrays(path, ("X",))["X"] if path.suffix.lower() == ".npz" else read_idx(path)
    X = X.reshape(X.shape[0], -1) if X.ndim > 1 else X.reshape(1, -1)
    if X.shape[1] != features:
        raise ConfigError(f"{path}: inputs have {X.shape[1]} features but the model takes {features}")
    if X.dtype.kind == "f" and not np.all(np.isfinite(X)):
        raise ConfigError(f"{path}: inputs hold NaN or infinite values")
    return X


def _info_command(args) -> int:
    import array_api_compat

    from xpnet.backend import available_backends, cuda_devices

    print(f"xpnet {__version__} on Python {platform.python_version()} ({platform.machine()})")
    print(f"numpy {np.__version__}, array-api-compat {array_api_compat.__version__}")
    print("backends:")
    for name, status in available_backends().items():
        print(f"  {name:17s} {status}")
    print("devices:")
    print("  cpu")
    for line in cuda_devices() or ["no CUDA GPU seen"]:
        print(f"  {line}")
    print(f"BLAS: {_blas_description()}")
    return 0


def _blas_description() -> str:
    try:
        from threadpoolctl import threadpool_info

        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if pools:
            return "; ".join(f"{p['internal_api']} {p['version']} ({p['num_threads']} threads)" for p in pools)
    except ImportError:
        pass
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        return "unknown"


def _bench_command(args) -> int:
    return bench_main(args) or 0


_COMMANDS = {
    "train": _train_command,
    "evaluate": _evaluate_command,
    "predict": _predict_command,
    "info": _info_command,
    "bench": _bench_command,
}
