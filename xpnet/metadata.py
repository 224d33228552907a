"""The schema of a model file's metadata: every section, every key, checked before use.

A model file's ``__metadata__`` maps section names to JSON strings. ``decode``
parses each one and checks it against the schema below (types, ranges, finiteness,
lengths, and the relations between sections: one activation per layer, a scaling
per input feature, a class name per output), so that nothing is built or allocated
from a file until all of it is known to be sound. A broken value is refused with a
``ModelFileError`` naming the file and the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from xpnet.activations import get_activation
from xpnet.checks import DTYPES
from xpnet.errors import ConfigError, ModelFileError
from xpnet.init import init_name
from xpnet.layers import NORMS
from xpnet.losses import loss_name
from xpnet.modelfile import CLASS_NAMES, class_names_problem
from xpnet.precision import PRECISIONS
from xpnet.schema import (
    INT64_MAX,
    Bool,
    Custom,
    Either,
    Int,
    Invalid,
    ListOf,
    Node,
    Null,
    Number,
    Record,
    Text,
    check,
    deepest_key,
)
from xpnet.settings import TABLE, Setting

#: Most layers a model file may declare.
MAX_LAYERS = 1000
#: Widest layer a model file may declare (int32 indexing); the tensors must match anyway.
MAX_WIDTH = 2**31 - 1
#: Most epochs of history a file may hold (a JSON header is at most 100 MB anyway).
MAX_RECORDS = 1_000_000
FLOAT32_MAX = 3.4028234663852886e38

_COUNT = Int(0, INT64_MAX)
_RATE = Number(0.0, 1.0, open_high=True)
_ACTIVATION = Text(max_len=64, parse=get_activation, what="an activation name")
_INIT = Text(max_len=64, parse=init_name, what="an initialiser name")
_SCALE_VALUE = Number(-FLOAT32_MAX, FLOAT32_MAX)


def _per_layer(*keys: str):
    """A rule: each list under ``keys`` has one entry per layer."""

    def rule(arch: dict):
        depth = len(arch["sizes"]) - 1
        for key in keys:
            value = arch.get(key)
            if isinstance(value, list) and len(value) != depth:
                return key, f"lists {len(value)} entries but the architecture has {depth} layers"
        return None

    return rule


def _output_not_dropped(arch: dict):
    dropout = arch.get("dropout")
    if isinstance(dropout, list) and dropout and dropout[-1]:
        return f"dropout[{len(dropout) - 1}]", f"is {dropout[-1]}, the output layer's rate; outputs are never dropped"
    return None


ARCHITECTURE = Record(
    {
        "sizes": ListOf(Int(1, MAX_WIDTH), 2, MAX_LAYERS + 1),
        "activations": ListOf(_ACTIVATION, 1, MAX_LAYERS),
        "loss": Text(max_len=64, parse=loss_name, what="a loss name"),
        "init": Either((_INIT, ListOf(_INIT, 1, MAX_LAYERS))),
        "dropout": Either((_RATE, ListOf(_RATE, 1, MAX_LAYERS))),
        "dtype": Text(choices=DTYPES),
        "precision": Text(choices=PRECISIONS),
        "huber_delta": Number(0.0, FLOAT32_MAX, open_low=True),  # the Huber loss's threshold (loss huber only)
        "norm": Text(choices=NORMS),
    },
    optional=frozenset({"loss", "init", "dropout", "dtype", "precision", "huber_delta", "norm"}),
    rules=(_per_layer("activations", "init", "dropout"), _output_not_dropped),
)

#: One epoch of history: the metrics ``fit`` records (a later xpnet may add more numbers).
RECORD = Record(
    {
        "epoch": Int(1, INT64_MAX),
        "loss": Number(),
        "accuracy": Number(0.0, 1.0),
        "val_loss": Number(),
        "val_accuracy": Number(0.0, 1.0),
        "lr": Number(0.0),
        "seconds": Number(0.0),
        "samples_per_s": Number(0.0, finite=False),  # infinite when an epoch took no measurable time
        "compile_seconds": Number(0.0),  # of "seconds", those spent compiling the step (JAX's first epoch)
    },
    optional=frozenset({"accuracy", "val_loss", "val_accuracy", "lr", "seconds", "samples_per_s", "compile_seconds"}),
    extra=Number(finite=False),
    what="an epoch record",
)
HISTORY = ListOf(RECORD, 0, MAX_RECORDS)

#: NumPy's default generator (PCG64): the only shuffling state a checkpoint may carry.
PCG64_STATE = Record(
    {
        "bit_generator": Text(choices=("PCG64",)),
        "state": Record({"state": Int(0, 2**128 - 1), "inc": Int(0, 2**128 - 1)}),
        "has_uint32": Int(0, 1),
        "uinteger": Int(0, 2**32 - 1),
    },
    what="a NumPy PCG64 generator state",
)
#: A PyTorch generator's state: its bytes, and the kind of device it drew on (CPU and CUDA states differ).
TORCH_STATE = Record(
    {"torch": ListOf(Int(0, 255), 1, 1 << 16), "device": Text(choices=("cpu", "cuda"))},
    optional=frozenset({"device"}),
    what="a PyTorch generator state",
)
#: CuPy's dropout stream is not saved; its seed and draw count reseed a resumed run (backend.RandomGenerator).
CUPY_STATE = Record(
    {"cupy": Record({"seed": Either((Null(), _COUNT)), "draws": _COUNT})}, what="a CuPy generator record"
)
#: JAX's dropout key (its whole generator state: a uint32[2] threefry key).
JAX_STATE = Record({"jax_key": ListOf(Int(0, 2**32 - 1), 2, 2)}, what="a JAX generator key")
DROPOUT_STATE = Either((Null(), PCG64_STATE, TORCH_STATE, CUPY_STATE, JAX_STATE))


def _loop_rules(state: dict):
    if state["best_epoch"] > state["epoch"]:
        return "best_epoch", f"is {state['best_epoch']}, after the {state['epoch']} epochs completed"
    if state["batch"] and len(state["partial"]) != 4:
        return "partial", f"must hold the 4 sums of the interrupted epoch (batch {state['batch']})"
    return None


LOOP_STATE = Record(
    {
        "records": HISTORY,
        "epoch": _COUNT,
        "batch": _COUNT,
        "rng_state": Either((Null(), PCG64_STATE)),
        "dropout_state": DROPOUT_STATE,
        "partial": Either((ListOf(Number(), 0, 0), ListOf(Number(0.0), 4, 4))),
        "best_val_loss": Number(0.0, finite=False),  # infinite until a first validation
        "best_epoch": _COUNT,
        "bad_epochs": _COUNT,
        "stopped_early": Bool(),
        "interrupted": Bool(),
        "restored_best": Bool(),
        "loss_scaler": Either((Null(), ListOf(Number(0.0), 3, 3))),  # float16's [scale, good steps, skipped]
    },
    optional=frozenset(
        {"records", "rng_state", "dropout_state", "partial", "stopped_early", "interrupted", "loss_scaler"}
    ),
    rules=(_loop_rules,),
    what="the training loop's state",
)
CHECKPOINT = Record(
    {"state": LOOP_STATE, "optimizer_steps": Int(0, 2**53), "buffers": Int(0, 4 * MAX_LAYERS)},
    what="a checkpoint's state",
)
SCALING = Record(
    {
        "kind": Text(choices=("unit", "symmetric", "standard", "none")),
        "shift": Either((_SCALE_VALUE, ListOf(_SCALE_VALUE, 1, MAX_WIDTH))),
        "scale": Either((_SCALE_VALUE, ListOf(_SCALE_VALUE, 1, MAX_WIDTH))),
    },
    what="an input scaling",
)
_VERSION_TEXT = Text(max_len=64)


@dataclass(frozen=True)
class SettingNode(Node):
    """A training setting, checked by its row of the settings table (``xpnet.settings``).

    JSON the table's checks were not written for (a 400-digit integer, a megabyte
    string, a lone surrogate) is refused here first.
    """

    setting: Setting

    def expects(self) -> str:
        return f"a valid {self.setting.name} ({self.setting.help})"

    def check(self, value, where):
        _SAFE_JSON.check(value, where)
        try:
            return self.setting.validate(value)
        except ConfigError as exc:
            raise Invalid(where, str(exc)) from None
        except (TypeError, ValueError, OverflowError):
            raise self.fail(value, where) from None


#: What any setting's value may be at all: plain numbers, bounded text, a short list of those.
_SAFE_SCALAR = Either((Null(), Bool(), Int(-INT64_MAX, INT64_MAX), Number(finite=False), Text(empty=True)))
_SAFE_JSON = Either((_SAFE_SCALAR, ListOf(_SAFE_SCALAR, 0, MAX_LAYERS)))


def _settings_agree(settings: dict):
    """Settings that only make sense together (as ``fit`` and the optimizers require)."""
    if settings.get("patience") is not None and not settings.get("val_split", TABLE["val_split"].default):
        return "patience", "needs validation data, but val_split is 0"
    if settings.get("nesterov") and not settings.get("momentum"):
        return "nesterov", "needs a momentum > 0"
    return None


#: The training settings a run saves: each key checked by its row of the settings table, all
#: optional (a file written from Python may carry only some, and any others, which are ignored).
TRAINING = Record(
    {name: SettingNode(setting) for name, setting in TABLE.items()} | {"recipe": Either((Null(), Text(max_len=64)))},
    optional=frozenset([*TABLE, "recipe"]),  # recipe: the name a run started from, not a table setting
    extra=Custom("any JSON value", lambda value: True),
    rules=(_settings_agree,),
    what="the training settings",
)

#: Section name -> (schema, required?, default when absent).
SECTIONS: dict[str, tuple[Node, bool, Any]] = {
    "architecture": (ARCHITECTURE, True, None),
    "training": (TRAINING, True, None),
    "class_names": (CLASS_NAMES, True, None),
    "scaling": (Either((Null(), SCALING)), True, None),
    "history": (HISTORY, False, []),
    "checkpoint": (Either((Null(), CHECKPOINT)), False, None),
}


@dataclass
class Metadata:
    """A model file's metadata, decoded and checked."""

    architecture: dict
    training: dict
    class_names: list[str]
    scaling: dict | None
    history: list[dict]
    checkpoint: dict | None
    xpnet_version: str

    @property
    def sizes(self) -> list[int]:
        return self.architecture["sizes"]


def decode(metadata: dict[str, str], name: str) -> Metadata:
    """Every section of ``metadata`` parsed and checked; ``name`` is the file, for messages."""
    try:
        for key in ("format_version", "xpnet_version"):
            if key in metadata:
                check(_VERSION_TEXT, metadata[key], key)
        sections = {}
        for key, (node, required, default) in SECTIONS.items():
            if key not in metadata:
                if required:
                    raise Invalid(key, "is missing")
                sections[key] = default
                continue
            sections[key] = check(node, _parse(metadata[key], key), key)
        _check_across(sections)
    except Invalid as exc:
        raise ModelFileError(
            f"{name}: metadata {exc.where}: {exc.problem}; the file is damaged or was not written by xpnet"
        ) from None
    return Metadata(**sections, xpnet_version=metadata.get("xpnet_version", "?"))


def _parse(text: str, key: str) -> Any:
    """One section's JSON; NaN and Infinity parse (and the schema says where they are wrong)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise Invalid(deepest_key(text, key), "is nested too deeply") from None
    except ValueError as exc:  # including integers over Python's 4300-digit limit
        raise Invalid(key, f"is not valid JSON ({str(exc)[:80]})") from None


def _check_across(sections: dict) -> None:
    """Relations between sections: scaling per input feature, class names per output."""
    sizes = sections["architecture"]["sizes"]
    scaling = sections["scaling"]
    if scaling is not None:
        for key in ("shift", "scale"):
            value = scaling[key]
            if isinstance(value, list) and len(value) != sizes[0]:
                raise Invalid(f"scaling.{key}", f"has {len(value)} values but the model takes {sizes[0]} features")
    problem = class_names_problem(sections["class_names"], sizes[-1])
    if problem:
        raise Invalid("class_names", problem)
