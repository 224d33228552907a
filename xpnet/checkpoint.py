"""Reading model files and checkpoints back: checked, then built; nothing in them ever executed.

Weights are stored as ``layers.{i}.weight`` ``(out, in)`` and ``layers.{i}.bias``,
the layout of a ``torch.nn.Sequential`` of ``Linear`` layers. The metadata holds
JSON strings: the architecture, the training configuration, class names, the input
scaling and the xpnet version. A checkpoint (``--resume``) adds the optimizer's
buffers (``optimizer.{k}``), the best weights so far (``best.layers.*``) and the
loop's state (epoch, batch, RNG states). Files are written atomically, and a file
is checked against its own architecture before anything is built from it.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np

from xpnet.backend import RandomGenerator
from xpnet.errors import BackendError, ModelFileError, XpnetError
from xpnet.modelfile import FORMAT, FORMAT_VERSION, save_model
from xpnet.network import MLP
from xpnet.safetensors import load_tensors
from xpnet.scaling import Scaling

#: Largest model file xpnet reads (1 GiB); far above any MLP it trains.
MAX_MODEL_BYTES = 2**30
MAX_LAYERS = 1000

__all__ = ["FORMAT", "FORMAT_VERSION", "ModelFile", "load_model", "save_model"]


class ModelFile:
    """A model file read and checked: its tensors and decoded metadata."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        tensors, metadata = load_tensors(self.path, max_bytes=MAX_MODEL_BYTES)
        self.tensors = tensors
        if metadata.get("format") != FORMAT:
            raise self.error(f"not an xpnet model (format {metadata.get('format')!r}, expected {FORMAT!r})")
        if metadata.get("format_version") != FORMAT_VERSION:
            raise self.error(f"format version {metadata.get('format_version')!r} is not supported by this xpnet")
        self.architecture = self._json(metadata, "architecture", dict)
        self.training = self._json(metadata, "training", dict)
        self.class_names = self._json(metadata, "class_names", list)
        self.scaling = self._json(metadata, "scaling", (dict, type(None)))
        self.history = self._json(metadata, "history", list, default=[])
        self.checkpoint = self._json(metadata, "checkpoint", (dict, type(None)), default=None)
        self.xpnet_version = metadata.get("xpnet_version", "?")
        self.sizes = self._check_sizes()
        if not all(isinstance(name, str) for name in self.class_names):
            raise self.error("class_names must be a list of strings")

    def error(self, problem: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: {problem}; the file is damaged or was not written by xpnet")

    def _json(self, metadata, key, kinds, default=...):
        if key not in metadata:
            if default is not ...:
                return default
            raise self.error(f"metadata lacks {key!r}")
        try:
            value = json.loads(metadata[key])
        except (ValueError, RecursionError):
            raise self.error(f"metadata {key!r} is not valid JSON") from None
        if not isinstance(value, kinds):
            raise self.error(f"metadata {key!r} has the wrong type ({type(value).__name__})")
        return value

    def _check_sizes(self) -> list[int]:
        sizes = self.architecture.get("sizes")
        if (
            not isinstance(sizes, list)
            or not 2 <= len(sizes) <= MAX_LAYERS + 1
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes)
        ):
            raise self.error(f"architecture sizes {str(sizes)[:80]} is not a list of positive layer widths")
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            for name, shape in ((f"layers.{i}.weight", (n_out, n_in)), (f"layers.{i}.bias", (n_out,))):
                tensor = self.tensors.get(name)
                if tensor is None:
                    raise self.error(f"tensor {name!r} is missing")
                if tensor.shape != shape:
                    raise self.error(
                        f"tensor {name!r} has shape {list(tensor.shape)}, the architecture says {list(shape)}"
                    )
                if tensor.dtype.kind != "f":
                    raise self.error(f"tensor {name!r} holds {tensor.dtype}, not floats")
                if not np.all(np.isfinite(tensor)):
                    raise self.error(f"tensor {name!r} holds NaN or infinite values")
        return sizes

    def build(self, backend=None, device=None, dtype=None) -> MLP:
        """The network this file describes, on the chosen backend and device."""
        arch = self.architecture
        activations = arch.get("activations")
        if not isinstance(activations, list) or len(activations) != len(self.sizes) - 1:
            raise self.error("architecture activations must list one activation per layer")
        dropout = arch.get("dropout", 0.0)
        # Checked here because MLP trusts its caller's types: float(None) is a TypeError, not a ConfigError.
        if not all(isinstance(name, str) for name in activations):
            raise self.error("architecture activations must be names such as 'relu'")
        if isinstance(dropout, list) and not all(
            isinstance(rate, (int, float)) and not isinstance(rate, bool) for rate in dropout
        ):
            raise self.error("architecture dropout must list one rate (a number) per layer")
        for key in ("loss", "dtype"):
            if key in arch and not isinstance(arch[key], str):
                raise self.error(f"architecture {key} must be a name, not {str(arch[key])[:40]}")
        try:
            net = MLP(
                self.sizes,
                activation=activations,
                loss=arch.get("loss"),
                dropout=dropout if isinstance(dropout, list) else 0.0,
                backend=backend,
                device=device,
                dtype=dtype or arch.get("dtype", "float32"),
                init=_saved_init(arch.get("init")),
                seed=0,
            )
        except XpnetError as exc:
            if isinstance(exc, (ModelFileError, BackendError)):
                raise
            raise self.error(f"architecture is not valid ({exc})") from None
        net.load_state_dict(self.tensors)
        if self.scaling is not None:
            try:
                net.set_scaling(Scaling.from_dict(self.scaling, num_features=self.sizes[0]))
            except XpnetError as exc:
                raise self.error(str(exc)) from None
        return net

    def resume_state(self) -> dict:
        """The training loop's saved state, every field checked: it steers the resumed run."""
        state = self.checkpoint.get("state") if self.checkpoint else None
        if not isinstance(state, dict):
            raise self.error("checkpoint holds no training-loop state")
        for key, valid in _STATE_CHECKS.items():
            if key in state and not valid(state[key]):
                raise self.error(f"checkpoint state {key!r} is invalid ({str(state[key])[:40]})")
        for key in ("rng_state", "dropout_state"):
            if not RandomGenerator.valid_state(state.get(key)):
                raise self.error(f"checkpoint state {key!r} is not a random generator state")
        return state

    def best_params(self, net: MLP) -> list | None:
        """Device copies of the checkpoint's best-so-far weights, if it has them."""
        if "best.layers.0.weight" not in self.tensors:
            return None
        params = []
        for i in range(net.depth):
            for part in ("weight", "bias"):
                tensor = self.tensors.get(f"best.layers.{i}.{part}")
                if tensor is None or tensor.shape != self.tensors[f"layers.{i}.{part}"].shape:
                    raise self.error(f"best-weights tensor best.layers.{i}.{part} is missing or misshapen")
                params.append(net.backend.upload(tensor, net.dtype))
        return params

    def optimizer_buffers(self, net: MLP, optimizer) -> list:
        """The checkpoint's optimizer buffers, checked against what ``optimizer`` keeps, uploaded."""
        expected = optimizer.buffer_shapes(net.params)
        if not self.checkpoint or self.checkpoint.get("buffers") != len(expected):
            raise self.error(f"checkpoint does not hold the {len(expected)} buffers of a {type(optimizer).__name__}")
        buffers = []
        for k, shape in enumerate(expected):
            tensor = self.tensors.get(f"optimizer.{k}")
            if tensor is None or tuple(tensor.shape) != shape:
                raise self.error(f"optimizer buffer {k} is missing or not shaped {list(shape)}")
            buffers.append(net.backend.upload(tensor, net.dtype))
        return buffers


def _saved_init(init):
    """The saved initialiser names, if they are names; weights are loaded over them anyway."""
    if isinstance(init, list) and all(isinstance(name, str) for name in init):
        return init
    return "auto"


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_STATE_CHECKS = {
    "epoch": _count,
    "batch": _count,
    "best_epoch": _count,
    "bad_epochs": _count,
    "best_val_loss": _number,
    "records": lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
    "partial": lambda v: isinstance(v, list) and len(v) in (0, 4) and all(_number(x) for x in v),
    "stopped_early": lambda v: isinstance(v, bool),
    "interrupted": lambda v: isinstance(v, bool),
    "restored_best": lambda v: isinstance(v, bool),
}


def load_model(path: str | os.PathLike, backend=None, device=None, dtype=None) -> MLP:
    """Read a model file and build its network on ``backend``/``device``."""
    return ModelFile(path).build(backend, device, dtype)
