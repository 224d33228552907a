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
from xpnet.errors import DivergenceError
from xpnet.safetensors import save_tensors

FORMAT = "xpnet-mlp"
FORMAT_VERSION = "1"


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
    for name, tensor in tensors.items():
        if not np.all(np.isfinite(tensor)):
            raise DivergenceError(
                f"not saving {path}: tensor {name!r} holds NaN or infinite values (did training diverge?); "
                "a model file holds finite weights only"
            )
    save_tensors(path, tensors, metadata)
