"""Writing model files and checkpoints: what goes into the one safetensors file, under which keys.

The writer needs only what a network says of itself (``config()``, ``state_dict()``,
its scaling), so the network can save itself without the reader (``checkpoint``),
which builds networks, being imported by it.
"""

from __future__ import annotations

import json
import os

import numpy as np

from xpnet._version import __version__
from xpnet.errors import ConfigError, DivergenceError
from xpnet.safetensors import save_tensors
from xpnet.schema import Invalid, ListOf, Text, check

FORMAT = "xpnet-mlp"
FORMAT_VERSION = "1"
#: Most class names a model file may hold (the data readers' own limit on labels).
MAX_CLASSES = 100_000
#: The class names of a model file, and of what a caller asks to write (save_model, export_onnx).
CLASS_NAMES = ListOf(Text(max_len=1000, empty=True, what="a class name"), 0, MAX_CLASSES)


def class_names_problem(names: list, outputs: int) -> str | None:
    """What is wrong with ``names`` for a model of ``outputs`` outputs (one sigmoid output: two names)."""
    if names and len(names) != outputs and not (outputs == 1 and len(names) == 2):
        return f"lists {len(names)} names but the model has {outputs} outputs"
    return None


def check_class_names(names, outputs: int, where: str = "class_names") -> list[str]:
    """``names`` a caller passes, by the rule the file's reader applies; ConfigError naming ``where``."""
    if names is None:
        return []
    if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)):
        raise ConfigError(f"{where} must be a list of strings, one per class, not {type(names).__name__}")
    try:
        names = check(CLASS_NAMES, list(names), where)
    except Invalid as exc:
        raise ConfigError(str(exc)) from None
    problem = class_names_problem(names, outputs)
    if problem:
        raise ConfigError(f"{where} {problem}")
    return names


def check_finite(tensors: dict, what: str) -> None:
    """Refuse weights holding NaN or infinities: a model file (or an export) holds finite weights only."""
    for name, tensor in tensors.items():
        if not np.all(np.isfinite(tensor)):
            raise DivergenceError(
                f"not {what}: tensor {name!r} holds NaN or infinite values (did training diverge?); "
                "a model file holds finite weights only"
            )


def check_path(path, what: str) -> None:
    """A path argument of a public call: a str or os.PathLike, else a ConfigError naming ``what``."""
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"{what} must be a file path (str or os.PathLike), not {type(path).__name__}")


def save_model(
    path: str | os.PathLike,
    net,
    *,
    training: dict | None = None,
    class_names: list[str] | None = None,
    history=None,
    optimizer=None,
) -> None:
    """Write ``net`` to ``path``; with ``history`` and ``optimizer``, a resumable checkpoint."""
    check_path(path, "save_model: path")
    if training is not None and not isinstance(training, dict):
        raise ConfigError(f"save_model: training must be a dict, not {type(training).__name__}")
    class_names = check_class_names(class_names, net.num_outputs, "save_model: class_names")
    tensors = net.state_dict()
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "xpnet_version": __version__,
        "architecture": json.dumps(net.config()),
        "training": json.dumps(training or {}),
        "class_names": json.dumps(list(class_names or [])),
        "scaling": json.dumps(net.scaling.to_dict() if net.scaling is not None else None),
    }
    if history is not None:
        metadata["history"] = json.dumps(history.records)
    if optimizer is not None and history is not None:
        buffers = net.backend.to_host_many(optimizer.state_arrays())
        tensors.update({f"optimizer.{k}": buffer for k, buffer in enumerate(buffers)})
        if history.best_params is not None:
            best = net.backend.to_host_many(history.best_params)
            tensors.update({f"best.{name}": array for name, array in zip(net.param_names, best)})
        metadata["checkpoint"] = json.dumps(
            {"state": history.resume_state(), "optimizer_steps": optimizer.steps, "buffers": len(buffers)}
        )
    check_finite(tensors, f"saving {path}")
    save_tensors(path, tensors, metadata)
