"""The command line: ``python -m xpnet [train|evaluate|predict|export|info|bench|selfcheck] ...``.

With no arguments it trains the default recipe on Fashion-MNIST on the CPU. Every
failure a user can cause ends as ``xpnet: error: ...`` and exit status 2; only a
bug shows a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import signal
import sys
import time
import traceback
from pathlib import Path

import array_api_compat
import numpy as np

from xpnet._version import __version__
from xpnet.backend import available_backends, backend_class, cuda_devices, cuda_libraries, threads
from xpnet.bench.options import add_bench_arguments
from xpnet.checkpoint import ModelFile
from xpnet.data import load_dataset
from xpnet.data.sources import is_streamed_path
from xpnet.distributed import Communicator, connect, launcher_size, transports
from xpnet.errors import ConfigError, DivergenceError, RanksDifferError, XpnetError, for_command_line
from xpnet.evaluate import evaluate_estimate, labels_from_outputs
from xpnet.export import OPSET, export_onnx
from xpnet.fileio import STDOUT, atomic_writer, check_output_path
from xpnet.inputs import check_inputs
from xpnet.memory import limited, memory_limit
from xpnet.predictions import csv_bytes, label_rows, model_bytes, prediction_estimate, read_inputs, value_rows
from xpnet.recipes import RECIPES
from xpnet.run import check_fits, format_test, resolve_settings, resumed_settings, run_training
from xpnet.selfcheck import add_arguments as add_selfcheck_arguments
from xpnet.selfcheck import main as selfcheck_main
from xpnet.settings import TABLE, Setting
from xpnet.stream_run import held_out_data
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


def _add_setting(parser, setting: Setting, recipe_value=None) -> None:
    """The option ``--name`` for a row of the settings table; None (not given) by default.

    ``recipe_value``, where given, is said in the help as what the default recipe takes."""
    text = setting.help
    if recipe_value is not None and "default" not in text:
        shown = ",".join(map(str, recipe_value)) if isinstance(recipe_value, list) else f"{recipe_value}"
        text += f" (default: {shown}, in the default recipe)".replace("%", "%%")
    if isinstance(setting.default, bool):
        parser.add_argument(setting.flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        return
    parser.add_argument(setting.flag, type=_option_type(setting), choices=setting.choices, help=text)


def _add_memory_argument(parser) -> None:
    """``--memory-limit`` for commands outside the settings table (bench), from its row."""
    _add_setting(parser, TABLE["memory_limit"])


def _add_device_arguments(parser) -> None:
    for setting in TABLE.values():
        if setting.group == "device":
            _add_setting(parser, setting)


def _thread_count(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads >= 1, not {text!r}")
    return int(text)


def _add_threads_argument(parser) -> None:
    parser.add_argument(
        "--threads",
        type=_thread_count,
        metavar="N",
        help=f"BLAS threads of this process (default: ${threads.THREADS_VARIABLE}, else the cores this process "
        "may use divided among the ranks on this node; said in the run's first line and in `xpnet info`)",
    )


def _set_threads(args, world: Communicator | None = None) -> threads.ThreadChoice:
    """Choose and set this process's BLAS threads (``xpnet.backend.threads``) before any work."""
    local_size = world.local_size if world is not None and world.size > 1 else None
    backend = getattr(args, "backend", None)
    library = backend_class(backend) if backend else None
    return threads.apply(threads.choose(getattr(args, "threads", None), local_size), library)


def _add_train_arguments(parser) -> None:
    parser.add_argument(
        "--recipe",
        default="default",
        help=f"named configuration to start from: {', '.join(RECIPES)} (default: default; see docs/RECIPES.md)",
    )
    _add_device_arguments(parser)
    _add_threads_argument(parser)
    groups = {"data": parser.add_argument_group("data"), "model": parser.add_argument_group("model")}
    groups["optimisation"] = parser.add_argument_group("optimisation")
    groups["distributed"] = parser.add_argument_group("distributed")
    defaults = resolve_settings("default", {})
    for setting in TABLE.values():
        if setting.group in groups:
            _add_setting(groups[setting.group], setting, defaults.get(setting.name) if setting.recipe else None)
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
    out.add_argument(
        "--no-compile",
        dest="compile_steps",
        action="store_false",
        help="run every training step eagerly (JAX compiles its steps by default; to debug them)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(description="Train dense networks by backpropagation on NumPy, CuPy, PyTorch or JAX.")
    parser.add_argument("--version", action="version", version=f"xpnet {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    train = commands.add_parser("train", help="train a model (the default command)")
    _add_train_arguments(train)
    evaluate = commands.add_parser("evaluate", help="test a saved model on its dataset's test split")
    evaluate.add_argument("model", help="model file (.safetensors)")
    evaluate.add_argument("--dataset", help="dataset to test on (default: the one it was trained on)")
    evaluate.add_argument("--data-dir", help="folder holding the dataset files")
    _add_device_arguments(evaluate)
    _add_threads_argument(evaluate)
    predict = commands.add_parser("predict", help="predict labels for inputs in an IDX or .npz file")
    predict.add_argument("model", help="model file (.safetensors)")
    predict.add_argument("input", help="IDX images (raw or .gz), or .npz holding X")
    predict.add_argument("--out", help="write predictions to this .csv or .npz; - (the default) prints CSV")
    predict.add_argument("--proba", action="store_true", help="also write the output probabilities")
    _add_device_arguments(predict)
    _add_threads_argument(predict)
    export = commands.add_parser("export", help="write a saved model in another format (ONNX)")
    export.add_argument("model", help="model file (.safetensors)")
    export.add_argument("--onnx", metavar="FILE", required=True, help='the ONNX file to write (needs "xpnet[onnx]")')
    info = commands.add_parser("info", help="versions, backends, devices and BLAS")
    _add_threads_argument(info)
    bench = commands.add_parser("bench", help="throughput sweep over batch sizes and devices")
    add_bench_arguments(bench)
    _add_memory_argument(bench)
    selfcheck = commands.add_parser("selfcheck", help="check that xpnet works on this machine (run it first on a GPU)")
    _add_device_arguments(selfcheck)
    add_selfcheck_arguments(selfcheck)
    return parser


def main(argv: list[str] | None = None) -> int:
    program = argv is None  # run as ``python -m xpnet``, not called in-process
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help", "--version"):
        argv = ["train", *argv]
    args = build_parser().parse_args(argv)
    try:
        _check_usage(args)
        with limited(getattr(args, "memory_limit", None)):
            status = _COMMANDS[args.command](args)
        if program:  # the status is decided: a late Ctrl-C must not make the exit a death by SIGINT (status 2)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # an ignored signal stays ignored through shutdown
        return status
    except MemoryError:  # what the estimates in xpnet.memory did not foresee
        print(f"xpnet: error: {_OUT_OF_MEMORY}", file=sys.stderr)
        return 2
    except DivergenceError as exc:
        print(f"xpnet: error: {for_command_line(str(exc))}", file=sys.stderr)
        return 1
    except XpnetError as exc:
        print(f"xpnet: error: {for_command_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, without a checkpoint
        print("xpnet: stopped at once (second interrupt); the last per-epoch checkpoint is kept", file=sys.stderr)
        return 128 + signal.SIGINT


def _check_usage(args) -> None:
    """What the options and the environment say, checked before any work: a bad ``XPNET_MEMORY_LIMIT``
    is a usage error of every command (``xpnet: error:``, exit 2), not a data file's fault or a failed check."""
    if getattr(args, "memory_limit", None) is None:
        memory_limit()  # parses XPNET_MEMORY_LIMIT; ConfigError names it


# -- train --------------------------------------------------------------------------


def _train_command(args) -> int:
    if not args.distributed:
        if launcher_size() > 1:  # one rank of a job started without --distributed: end the job, not train alone
            _refuse_undistributed_rank()
        return _train(args, Communicator())
    world = connect()  # first: from here on a failure on one rank can end the whole job
    if world.size == 1:
        return _train(args, world)  # no mpiexec: one process, as without --distributed
    return _on_every_rank(world, lambda: _train(args, world))


def _refuse_undistributed_rank() -> None:
    """End the whole job (MPI_Abort where MPI is there): its other ranks may be waiting in a collective."""
    message = (
        f"this process is one of the {launcher_size()} ranks mpiexec started, but without --distributed; "
        "give every rank --distributed, or run a single process without mpiexec"
    )
    try:
        world = connect()
    except XpnetError:
        raise ConfigError(message) from None
    _fail_alone(world, message, 2)


def _train(args, world: Communicator) -> int:
    chosen = _set_threads(args, world)
    if world.is_root and not args.quiet:
        print(chosen.describe(), flush=True)
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
            compile_steps=args.compile_steps,
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
            _fail_alone(world, for_command_line(str(exc)), 2)
        if world.is_root:
            print(f"xpnet: error: {for_command_line(str(exc))}", file=sys.stderr)
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
    _set_threads(args)
    saved = ModelFile(args.model)
    net = saved.build(args.backend, args.device)
    dataset = args.dataset or saved.training.get("dataset")
    if not dataset:
        raise ConfigError(f"{args.model}: metadata training.dataset is missing; pass --dataset")
    task = decide_task(net.loss_name, net.activations[-1])
    try:
        if is_streamed_path(dataset):  # its held-out rows, as the training settings chose them
            data = held_out_data(dataset, saved.training, task)
        else:
            data = load_dataset(dataset, data_dir=args.data_dir, progress=False, task=task)
    except XpnetError as exc:
        if args.dataset:
            raise
        raise type(exc)(f"{args.model}: metadata training.dataset: {exc}") from None
    check_fits(net, data, f"dataset {dataset!r}")
    held = sum(getattr(a, "nbytes", 0) for a in (data.X_train, data.y_train, data.X_test, data.y_test))  # streamed: 0
    held += model_bytes(net)
    estimate = evaluate_estimate(net, data.X_test).add("the model and the dataset on the host", held)
    estimate.check(f"evaluating {args.model} on dataset {dataset!r}")
    started = time.perf_counter()
    print(format_test(net.evaluate(data.X_test, data.y_test), time.perf_counter() - started))
    return 0


def _predict_command(args) -> int:
    out = args.out or STDOUT
    check_output_path(out, "--out", stdout=True)  # before any work: a folder or a socket is refused now
    _set_threads(args)
    saved = ModelFile(args.model)
    net = saved.build(args.backend, args.device)
    X = check_inputs(net, read_inputs(Path(args.input), net.sizes[0]), f"{args.input}: X")
    prediction_estimate(net, X).check(f"predicting the {len(X)} samples of {args.input}")
    outputs = np.asarray(net.predict_proba(X)).reshape(len(X), -1)
    bad = np.flatnonzero(~np.all(np.isfinite(outputs), axis=1))
    if bad.size:  # never printed as a prediction
        raise ConfigError(
            f"{args.input}: the model's outputs for {bad.size} sample(s), the first sample {bad[0]}, are NaN or "
            "infinite; no predictions written (are the inputs on the scale the model was trained on?)"
        )
    if net.is_classifier:
        arrays = {"labels": labels_from_outputs(outputs)}
        if args.proba:
            arrays["proba"] = outputs
    else:
        arrays = {"outputs": outputs}
    with atomic_writer(out, stdout=True) as stream:
        if out.endswith(".npz"):
            np.savez(stream, **arrays)
        else:
            rows = label_rows(arrays, saved.class_names) if net.is_classifier else value_rows(arrays["outputs"])
            stream.write(csv_bytes(rows))
    return 0


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
    print(f"  xpnet's {threads.choose(args.threads).describe()}, set by train, evaluate and predict")
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
