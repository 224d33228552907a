"""The training settings: one table of name, default, check and help, read by every way in.

The CLI builds ``python -m xpnet train``'s options from ``TABLE``; recipes are checked
against it when they are defined; ``run_training`` checks the settings it is handed;
a resumed checkpoint's saved settings are checked by it before they steer a run.
A row's ``check`` takes a value (from the command line, a recipe, Python or a file)
and returns it in canonical form (``"Warmup_Cosine"`` -> ``"warmup-cosine"``), or
raises a ConfigError saying what it expected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from xpnet.activations import get_activation
from xpnet.checks import DTYPES, at_least, fraction, is_number, is_whole, non_negative, positive
from xpnet.errors import ConfigError
from xpnet.init import INIT_CHOICES, init_spec
from xpnet.losses import NATURAL_OUTPUT, loss_name
from xpnet.memory import parse_size
from xpnet.names import canonical
from xpnet.registry import ACTIVATIONS, BACKENDS, LOSSES, MONITORS, NORMS, OPTIMIZERS, PRECISIONS, SCHEDULES
from xpnet.scaling import SCALINGS
from xpnet.task import TASKS
from xpnet.weights import BALANCED, parse_class_weight

#: Widest layer (arrays are indexed with int32 on some devices).
MAX_WIDTH = 2**31 - 1


@dataclass(frozen=True)
class Setting:
    """One training setting. ``run`` settings say where or how long to run, not what to
    train: a resumed run may change them. ``recipe``: a recipe may give it. ``base``: it
    has a default every run starts from (in ``BASE_SETTINGS``)."""

    name: str
    default: object
    check: Callable[[object], object]
    help: str
    group: str  #: the ``--help`` section: device, distributed, data, model or optimisation
    parse: Callable[[str], object] = str  #: command-line text -> value, before ``check``
    choices: tuple | None = None  #: listed in ``--help``
    optional: bool = False  #: None (not given) is allowed
    run: bool = False
    recipe: bool = True
    base: bool = True

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def validate(self, value):
        """``value`` in canonical form; ConfigError (the reason only) if it is not valid."""
        if value is None and self.optional:
            return None
        return self.check(value)


# -- checks: each returns the canonical value or raises ConfigError(reason)


def _boolean(value):
    if not isinstance(value, bool):
        raise ConfigError(f"expected true or false, not {value!r}")
    return value


def _text(value):
    if not (isinstance(value, str) and value.strip()):
        raise ConfigError(f"expected a name or a path, not {value!r}")
    return value


def _widths(value):
    if not (isinstance(value, list | tuple) and all(is_whole(n) for n in value)):
        raise ConfigError(f"expected a list of layer widths such as [128, 64], not {str(value)[:40]}")
    if any(n < 1 or n > MAX_WIDTH for n in value):
        raise ConfigError(f"layer widths must be from 1 to {MAX_WIDTH}, not {str(value)[:60]}")
    return [int(n) for n in value]


def _memory_size(value):
    """Bytes, from a whole number or a size such as ``8G`` or ``80%`` (``xpnet.memory.parse_size``)."""
    if isinstance(value, str):
        return parse_size(value, "memory_limit")
    return at_least(1)(value)


def _activation(value):
    if not isinstance(value, str):
        raise ConfigError(f"expected an activation name such as 'relu', not {value!r}")
    return get_activation(value).spec()


def _huber_delta(value):
    if not (is_number(value) and value > 0):
        raise ConfigError(f"expected a number > 0, not {value!r}")
    return float(value)


def _class_weight(value):
    """``balanced`` or ``LABEL=WEIGHT,...`` in canonical form (weights >= 0, as ``%g``)."""
    if not isinstance(value, str):
        raise ConfigError(f"expected balanced or LABEL=WEIGHT pairs such as 0=1,1=5, not {value!r}")
    parsed = parse_class_weight(value)
    if parsed == BALANCED:
        return parsed
    for label, weight in parsed.items():
        if not (is_number(weight) and weight >= 0):
            raise ConfigError(f"the weight of class {label!r} must be a number >= 0, not {weight!r}")
    return ",".join(f"{label}={weight:g}" for label, weight in parsed.items())


def _name(choices, what):
    def check(value):
        return canonical(value, choices, what)

    return check


def _parse_layers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"expected widths such as 128,64, not {text!r}") from None


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"expected a whole number, not {text!r}") from None


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"expected a number, not {text!r}") from None


_ROWS = [
    # name, default, check, help, group, then the details
    Setting(
        "device", None, _text, "cpu (default), cuda or cuda:N; cuda alone means CuPy", "device",
        optional=True, run=True, recipe=False, base=False,
    ),
    Setting(
        "memory_limit", None, _memory_size,
        "refuse work that would need more memory: 512M, 8G, 80%% (default: $XPNET_MEMORY_LIMIT, else 80%% of "
        "what is free)", "device", parse=str, optional=True, run=True, recipe=False, base=False,
    ),
    Setting(
        "backend", None, BACKENDS.canonical, "array library (default: numpy)", "device",
        choices=tuple(BACKENDS), optional=True, run=True, recipe=False, base=False,
    ),
    Setting(
        "distributed", False, _boolean,
        "train data-parallel on the ranks mpiexec started, --batch-size being the global batch "
        "(run as: mpiexec -n R python -m mpi4py -m xpnet train --distributed ...; see README)", "distributed",
        run=True, recipe=False, base=False,
    ),
    Setting(
        "dataset", "fashion-mnist", _text,
        "fashion-mnist (default), mnist, diabetes, friedman1, a .npz/.csv file; or streamed from disk: a folder "
        "with X.npy and y.npy, an X .npy (--target its y .npy) or a .parquet file (--target its label column)",
        "data",
    ),
    Setting(
        "target", None, _text, "a streamed dataset's targets: the Parquet label column, or the y .npy file",
        "data", optional=True, recipe=False,
    ),
    Setting(
        "val_data", None, _text,
        "a streamed dataset's validation (and test) rows, in a file of its kind (default: its last --val-split rows)",
        "data", optional=True, recipe=False,
    ),
    Setting(
        "chunk_rows", 8192, at_least(1), "rows a streamed dataset is read in at a time", "data",
        parse=_parse_int, recipe=False,
    ),
    Setting(
        "shuffle_buffer", 4, at_least(1),
        "chunks of a streamed dataset shuffled together (a buffer of them holding every row: the in-memory order)",
        "data", parse=_parse_int, recipe=False,
    ),
    Setting(
        "data_dir", None, _text, "folder holding the dataset files (searched first)", "data",
        optional=True, run=True, recipe=False, base=False,
    ),
    Setting(
        "task", None, _name(TASKS, "task"),
        "what the targets of a .npz/.csv file are (default: regression for mse with a linear output)", "data",
        choices=TASKS, optional=True, recipe=False,
    ),
    Setting(
        "val_split", 0.1, fraction, "fraction of training data held out for validation", "data",
        parse=_parse_float,
    ),
    Setting("scaling", "unit", _name(SCALINGS, "scaling"), "input scaling", "data", choices=SCALINGS),
    Setting(
        "sample_weight", None, _text,
        "per-sample training weights (>= 0): the array KEY of the .npz dataset (one per row of X or X_train), or "
        "the CSV column KEY (header name or index), which is then no feature", "data", optional=True, recipe=False,
    ),
    Setting(
        "layers", [128, 64], _widths, "hidden layer widths, e.g. 128,64", "model", parse=_parse_layers,
    ),
    Setting(
        "activation", "relu", _activation,
        f"hidden activation: {ACTIVATIONS.listing()} (a slope for leaky: leaky_relu(0.01))", "model",
    ),
    Setting(
        "output", None, _activation,
        "output activation (default: the loss's partner: "
        f"{', '.join(f'{output} for {loss}' for loss, output in NATURAL_OUTPUT.items())})", "model", optional=True,
    ),
    Setting("loss", "cross_entropy", loss_name, LOSSES.listing(), "model"),
    Setting("init", "auto", init_spec, ", ".join(INIT_CHOICES), "model"),
    Setting("dropout", 0.0, fraction, "dropout rate on hidden layers", "model", parse=_parse_float),
    Setting(
        "norm", "none", NORMS.canonical,
        "normalisation after each hidden layer: none (default) or layer (LayerNorm, per sample)", "model",
        choices=tuple(NORMS),
    ),
    Setting(
        "huber_delta", 1.0, _huber_delta, "the huber loss's threshold: quadratic within it, linear beyond", "model",
        parse=_parse_float,
    ),
    Setting(
        "dtype", "float32", _name(DTYPES, "dtype"), "float type of weights and math", "model",
        choices=DTYPES, recipe=False,
    ),
    Setting(
        "precision", "float32", PRECISIONS.canonical,
        "float32 (default); mixed-float16: float16 math, float32 master weights, dynamic loss scaling; "
        "mixed-bfloat16: the same in bfloat16, without scaling (PyTorch only; on a CPU fast only with "
        "AVX512-BF16 or AMX, else many times slower than float32, with a warning)", "model",
        choices=tuple(PRECISIONS), recipe=False,
    ),
    Setting(
        "tf32", False, _boolean,
        "let float32 matmuls on a GPU use TF32 tensor cores (several times faster on Ampere and later; "
        "a 10-bit mantissa; NVIDIA GPUs only: on a CPU it does nothing, with a warning)", "model",
        run=True, recipe=False,
    ),
    Setting(
        "optimizer", "sgd", OPTIMIZERS.canonical, "update rule", "optimisation",
        choices=tuple(OPTIMIZERS),
    ),
    Setting("lr", 0.01, positive, "learning rate", "optimisation", parse=_parse_float),
    Setting("momentum", 0.0, fraction, "SGD momentum", "optimisation", parse=_parse_float),
    Setting("nesterov", False, _boolean, "Nesterov momentum", "optimisation"),
    Setting("beta1", 0.9, fraction, "Adam's β1: decay of the gradient average", "optimisation", parse=_parse_float),
    Setting(
        "beta2", 0.999, fraction, "Adam's β2: decay of the squared-gradient average", "optimisation",
        parse=_parse_float,
    ),
    Setting("eps", 1e-8, positive, "Adam's ε, added to the root of the squared-gradient average", "optimisation",
            parse=_parse_float),
    Setting(
        "weight_decay", 0.0, non_negative, "L2 weight decay (decoupled for adamw)", "optimisation",
        parse=_parse_float,
    ),
    Setting(
        "schedule", "constant", SCHEDULES.canonical, "learning-rate schedule", "optimisation",
        choices=tuple(SCHEDULES),
    ),
    Setting(
        "label_smoothing", 0.0, fraction,
        "label smoothing for cross-entropy targets (the training loss shown includes it, so it "
        "stays above the validation loss)", "optimisation",
        parse=_parse_float,
    ),
    Setting(
        "class_weight", None, _class_weight,
        "classifiers: weigh each class's rows: balanced (n / (classes x class count)) or LABEL=WEIGHT pairs "
        "such as 0=1,1=5 (labels by class number or name; others weigh 1)", "optimisation", optional=True,
    ),
    Setting("batch_size", 64, at_least(1), "samples per step", "optimisation", parse=_parse_int),
    Setting(
        "epochs", 10, at_least(0), "passes over the training data", "optimisation", parse=_parse_int, run=True,
    ),
    Setting(
        "patience", None, at_least(1), "stop after this many epochs without a better --monitor figure", "optimisation",
        parse=_parse_int, optional=True,
    ),
    Setting(
        "monitor", "val_loss", MONITORS.canonical,
        "the validation figure that picks the kept epoch and drives --patience: val_loss (lowest) or "
        "val_accuracy (highest; classifiers)", "optimisation", choices=tuple(MONITORS),
    ),
    Setting(
        "seed", 0, at_least(0), "seed (>= 0) for initial weights, split and shuffling", "optimisation",
        parse=_parse_int,
    ),
]  # fmt: skip

#: Every training setting by name, in ``--help`` order.
TABLE: dict[str, Setting] = {row.name: row for row in _ROWS}
#: Settings no recipe needs to repeat; a recipe overrides them, a flag overrides both.
BASE_SETTINGS = {row.name: row.default for row in _ROWS if row.base}
#: Settings that say where and how long to run, not what to train; a resumed run may change them.
RUN_SETTINGS = tuple(row.name for row in _ROWS if row.run)
#: Settings a recipe may give.
RECIPE_SETTINGS = tuple(row.name for row in _ROWS if row.recipe)


def check_setting(name: str, value, source: str = "setting"):
    """``value`` of setting ``name`` in canonical form; a ConfigError naming both if it is not valid."""
    try:
        return TABLE[name].validate(value)
    except ConfigError as exc:
        raise ConfigError(f"{source} {name!r} = {str(value)[:40]} is not valid: {exc}") from None


def checked(settings: dict, source: str = "setting") -> dict:
    """A copy of ``settings`` with every table setting checked and in canonical form.

    Keys outside the table (``recipe``, the name a run was started from) pass through.
    ``source`` begins an error message, e.g. ``"--resume m.ckpt.safetensors: its setting"``.
    """
    return {key: check_setting(key, value, source) if key in TABLE else value for key, value in settings.items()}


def check_recipe(name: str, settings: dict) -> None:
    """Refuse a recipe naming a setting it may not give or giving a value the table refuses."""
    unknown = sorted(set(settings) - set(RECIPE_SETTINGS))
    if unknown:
        allowed = ", ".join(RECIPE_SETTINGS)
        raise ConfigError(f"recipe {name!r}: unknown settings {', '.join(unknown)}; use only {allowed}")
    checked(settings, f"recipe {name!r}: setting")
