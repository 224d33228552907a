"""The command line: ``python -m xpnet [train|evaluate|predict|export|info|bench|selfcheck] ...``.

With no arguments it trains the default recipe on Fashion-MNIST on the CPU. Every
failure a user can cause ends as ``xpnet: error: ...`` and exit status 2; only a
bug shows a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import platform
import signal
import sys
import time
import traceback
from pathlib import Path

import array_api_compat
import numpy as np

from xpnet._version import __version__
from xpnet.backend import available_backends, cuda_devices, cuda_libraries
from xpnet.bench.options import add_bench_arguments
from xpnet.checkpoint import ModelFile
from xpnet.data import load_dataset, read_idx
from xpnet.data.tabular import read_npz_arrays
from xpnet.distributed import Communicator, connect, transports
from xpnet.errors import ConfigError, DivergenceError, RanksDifferError, XpnetError
from xpnet.export import OPSET, export_onnx
from xpnet.fileio import STDOUT, atomic_writer, check_output_path
from xpnet.memory import Estimate, limited
from xpnet.recipes import RECIPES
from xpnet.run import check_fits, format_test, resolve_settings, resumed_settings, run_training
from xpnet.selfcheck import add_arguments as add_selfcheck_arguments
from xpnet.selfcheck import main as selfcheck_main
from xpnet.settings import TABLE, Setting
from xpnet.task import decide_task

_OUT_OF_MEMORY = (
    "out of memory: the system refused an allocation below xpnet's memory limit; free some memory, "
    "or make the run smaller (--batch-size, --layers, the data)"
)
COMMANDS = ("train", "evaluate", "predict", "export", "info", "bench", "selfcheck")


class _Parser(argparse.ArgumentParser):
    """argparse, but named ``xpnet`` in its messages whatever the program path."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("prog", "xpnet")
        super().__init__(*args, **kwargs)


def _option_type(setting: Setting):
    """An argparse type for ``setting``: its parse, then its check, errors as argparse's."""

    def parse(text: str):
        try:
            return setting.validate(setting.parse(text))
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = setting.name
    return parse


def _add_setting(parser, setting: Setting) -> None:
    """The option ``--name`` for a row of the settings table; None (not given) by default."""
    if isinstance(setting.default, bool):
        parser.add_argument(setting.flag, action=argparse.BooleanOptionalAction, default=None, help=setting.help)
        return
    parser.add_argument(setting.flag, type=_option_type(setting), choices=setting.choices, help=setting.help)


def _add_memory_argument(parser) -> None:
    """``--memory-limit`` for commands outside the settings table (bench), from its row."""
    _add_setting(parser, TABLE["memory_limit"])


def _add_device_arguments(parser) -> None:
    for setting in TABLE.values():
        if setting.group == "device":
            _add_setting(parser, setting)


def _add_train_arguments(parser) -> None:
    parser.add_argument(
        "--recipe",
        default="default",
        help=f"named configuration to start from: {', '.join(RECIPES)} (default: default; see docs/RECIPES.md)",
    )
    _add_device_arguments(parser)
    groups = {"data": parser.add_argument_group("data"), "model": parser.add_argument_group("model")}
    groups["optimisation"] = parser.add_argument_group("optimisation")
    groups["distributed"] = parser.add_argument_group("distributed")
    for setting in TABLE.values():
        if setting.group in groups:
            _add_setting(groups[setting.group], setting)
    out = parser.add_argument_group("output")
    out.add_argument("--out", default="xpnet-model.safetensors", help="where to save the trained model")
    out.add_argument("--resume", metavar="CHECKPOINT", help="continue an interrupted run from its checkpoint")
    out.add_argument("--history", metavar="FILE", help="write per-epoch metrics to FILE.json or FILE.csv")
    out.add_argument("--plot", metavar="FILE", help="draw learning curves and a confusion matrix to FILE.png")
    out.add_argument(
        "--tensorboard", metavar="DIR", help='write TensorBoard event files to DIR (needs "xpnet[tensorboard]")'
    )
    out.add_argument("--quiet", action="store_true", help="print only the final result")
    out.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bar (drawn by default when stderr is a terminal, outside CI)",
    )


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
    predict.add_argument("--out", help="write predictions to this .csv or .npz; - (the default) prints CSV")
    predict.add_argument("--proba", action="store_true", help="also write the output probabilities")
    _add_device_arguments(predict)
    export = commands.add_parser("export", help="write a saved model in another format (ONNX)")
    export.add_argument("model", help="model file (.safetensors)")
    export.add_argument("--onnx", metavar="FILE", required=True, help='the ONNX file to write (needs "xpnet[onnx]")')
    commands.add_parser("info", help="versions, backends, devices and BLAS")
    bench = commands.add_parser("bench", help="throughput sweep over batch sizes and devices")
    add_bench_arguments(bench)
    _add_memory_argument(bench)
    selfcheck = commands.add_parser("selfcheck", help="check that xpnet works on this machine (run it first on a GPU)")
    _add_device_arguments(selfcheck)
    add_selfcheck_arguments(selfcheck)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help", "--version"):
        argv = ["train", *argv]
    args = build_parser().parse_args(argv)
    try:
        with limited(getattr(args, "memory_limit", None)):
            return _COMMANDS[args.command](args)
    except MemoryError:  # what the estimates in xpnet.memory did not foresee
        print(f"xpnet: error: {_OUT_OF_MEMORY}", file=sys.stderr)
        return 2
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


def _train_command(args) -> int:
    if not args.distributed:
        return _train(args, Communicator())
    world = connect()  # first: from here on a failure on one rank can end the whole job
    if world.size == 1:
        return _train(args, world)  # no mpiexec: one process, as without --distributed
    return _on_every_rank(world, lambda: _train(args, world))


def _train(args, world: Communicator) -> int:
    overrides = {key: getattr(args, key) for key in TABLE}
    if args.resume:
        settings = resumed_settings(args.resume, overrides)
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
            tensorboard_dir=args.tensorboard,
            progress=args.progress,
            should_stop=stop,
            communicator=world,
        )
    if not result["interrupted"]:
        return 0
    if world.is_root and result["checkpoint"] is None:
        print(
            f"xpnet: interrupted in epoch {result['epochs'] + 1}; --out {args.out} is a stream, so no checkpoint",
            file=sys.stderr,
        )
    elif world.is_root:
        again = f"mpiexec -n {world.size} python -m mpi4py -m xpnet train --distributed" if world.size > 1 else ""
        print(
            f"xpnet: interrupted in epoch {result['epochs'] + 1}; checkpoint saved to {result['checkpoint']}\n"
            f"resume with: {again or 'python -m xpnet train'} --resume {result['checkpoint']} --out {args.out}",
            file=sys.stderr,
        )
    return 128 + (stop.signum or signal.SIGINT)


def _on_every_rank(world: Communicator, train) -> int:
    """``train()`` on this rank of a job. An outcome every rank shares (success, an interruption,
    divergence, ranks refused at start-up) ends the job cleanly with its status; a failure on
    this rank alone ends every rank at once (MPI_Abort), saying which rank and why."""
    try:
        status = train()
    except XpnetError as exc:
        if not isinstance(exc, (DivergenceError, RanksDifferError)):  # not decided from shared numbers
            _fail_alone(world, str(exc), 2)
        if world.is_root:
            print(f"xpnet: error: {exc}", file=sys.stderr)
        status = 1 if isinstance(exc, DivergenceError) else 2
    except KeyboardInterrupt:
        _fail_alone(world, "stopped at once (second interrupt); the last per-epoch checkpoint is kept", 130)
    except MemoryError:
        _fail_alone(world, _OUT_OF_MEMORY, 2)
    except Exception as exc:
        traceback.print_exc()
        _fail_alone(world, f"{type(exc).__name__}: {exc} (a bug in xpnet: please report it)", 1)
    world.finish()
    return status


def _fail_alone(world: Communicator, message: str, status: int) -> None:
    """Say which rank failed and why, then end every rank of the job with ``status``."""
    print(f"xpnet: error: rank {world.rank}: {message}", file=sys.stderr, flush=True)
    world.abort(status)
    raise SystemExit(status)  # where abort cannot end the others (no MPI), this rank still ends


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
    saved = ModelFile(args.model)
    net = saved.build(args.backend, args.device)
    dataset = args.dataset or saved.training.get("dataset")
    if not dataset:
        raise ConfigError(f"{args.model}: metadata training.dataset is missing; pass --dataset")
    task = decide_task(net.loss_name, net.activations[-1])
    try:
        data = load_dataset(dataset, data_dir=args.data_dir, progress=False, task=task)
    except XpnetError as exc:
        if args.dataset:
            raise
        raise type(exc)(f"{args.model}: metadata training.dataset: {exc}") from None
    check_fits(net, data, f"dataset {dataset!r}")
    started = time.perf_counter()
    print(format_test(net.evaluate(data.X_test, data.y_test), time.perf_counter() - started))
    return 0


def _predict_command(args) -> int:
    out = args.out or STDOUT
    check_output_path(out, "--out", stdout=True)  # before any work: a folder or a socket is refused now
    saved = ModelFile(args.model)
    net = saved.build(args.backend, args.device)
    X = _read_inputs(Path(args.input), net.sizes[0])
    _prediction_estimate(net, X).check(f"predicting the {len(X)} samples of {args.input}")
    if net.is_classifier:
        arrays = {"labels": net.predict(X)}
        if args.proba:
            arrays["proba"] = net.predict_proba(X)
    else:
        arrays = {"outputs": np.asarray(net.predict(X)).reshape(len(X), -1)}
    with atomic_writer(out, stdout=True) as stream:
        if out.endswith(".npz"):
            np.savez(stream, **arrays)
        else:
            rows = _label_rows(arrays, saved.class_names) if net.is_classifier else _value_rows(arrays["outputs"])
            stream.write(_csv_bytes(rows))
    return 0


def _prediction_estimate(net, X: np.ndarray) -> Estimate:
    """What predicting ``X`` holds besides it: the inputs on the device, outputs, labels, the CSV text.
    A CSV field costs about 112 bytes at the peak: its Python string in the rows (~60), its slot in
    the row, and the text twice (the csv module's str, then its UTF-8 bytes)."""
    itemsize, outputs = np.dtype(net.dtype_name).itemsize, net.num_outputs
    estimate = Estimate().add("inputs on the device", X.size * itemsize)
    estimate.add("outputs and probabilities", 2 * len(X) * outputs * itemsize)
    return estimate.add("the CSV text", 112 * len(X) * (outputs + 3))


def _label_rows(arrays: dict, names: list[str]) -> list[list]:
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


def _value_rows(outputs: np.ndarray) -> list[list]:
    """CSV rows of a regression model's outputs, one column per output."""
    header = ["index"] + [f"y{j}" for j in range(outputs.shape[1])]
    return [header] + [[i] + [f"{v:.6g}" for v in row] for i, row in enumerate(outputs)]


def _csv_bytes(rows: list[list]) -> bytes:
    """``rows`` as standard CSV (RFC 4180, CRLF line ends) through the csv module: a class name
    holding a comma, a quote or a line break is quoted, and stays one field."""
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    return text.getvalue().encode("utf-8")


def _read_inputs(path: Path, features: int) -> np.ndarray:
    X = read_npz_arrays(path, ("X",))["X"] if path.suffix.lower() == ".npz" else read_idx(path)
    if X.size == 0:
        raise ConfigError(f"{path}: inputs of shape {X.shape} hold no samples; nothing to predict")
    X = X.reshape(X.shape[0], -1) if X.ndim > 1 else X.reshape(1, -1)
    if X.shape[1] != features:
        raise ConfigError(f"{path}: inputs have {X.shape[1]} features but the model takes {features}")
    if X.dtype.kind == "f" and not np.all(np.isfinite(X)):
        raise ConfigError(f"{path}: inputs hold NaN or infinite values")
    return X


def _export_command(args) -> int:
    model = export_onnx(args.model, args.onnx)
    inputs = ", ".join(f"{v.name!r} {_shape(v)}" for v in model.graph.input)
    outputs = ", ".join(f"{v.name!r} {_shape(v)}" for v in model.graph.output)
    print(f"wrote {args.onnx}: ONNX opset {OPSET}, input {inputs}, outputs {outputs}")
    return 0


def _shape(value) -> str:
    dims = [d.dim_param or str(d.dim_value) for d in value.type.tensor_type.shape.dim]
    return "[" + ", ".join(dims) + "]"


def _info_command(args) -> int:
    print(f"xpnet {__version__} on Python {platform.python_version()} ({platform.machine()})")
    print(f"numpy {np.__version__}, array-api-compat {array_api_compat.__version__}")
    print("backends:")
    for name, status in available_backends().items():
        print(f"  {name:17s} {status}")
    print("devices:")
    print("  cpu")
    for line in cuda_devices() or ["no CUDA GPU seen"]:
        print(f"  {line}")
    libraries = cuda_libraries()
    if "NVRTC" in libraries:  # CuPy is installed: what it would load (python -m xpnet selfcheck tests the rest)
        print("CUDA libraries for CuPy: " + ", ".join(f"{name} {state}" for name, state in libraries.items()))
    print(f"BLAS: {_blas_description()}")
    print("distributed (--distributed under mpiexec):")
    for name, status in transports().items():
        print(f"  {name:17s} {status}")
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
    # Deferred: the harness (runners, PyTorch peers, plotting) loads only for this command.
    from xpnet.bench.cli import bench_main

    return bench_main(args)


_COMMANDS = {
    "train": _train_command,
    "evaluate": _evaluate_command,
    "predict": _predict_command,
    "export": _export_command,
    "info": _info_command,
    "bench": _bench_command,
    "selfcheck": selfcheck_main,
}
