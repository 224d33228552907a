"""Reading model files and checkpoints back: checked, then built; nothing in them ever executed.

Weights are stored as ``layers.{i}.weight`` ``(out, in)`` and ``layers.{i}.bias``,
the layout of a ``torch.nn.Sequential`` of ``Linear`` layers (a LayerNorm's as
``layers.{i}.norm.weight`` and ``.bias``; ``xpnet.layers`` names them all). The metadata holds
JSON strings: the architecture, the training configuration, class names, the input
scaling and the xpnet version. A checkpoint (``--resume``) adds the optimizer's
buffers (``optimizer.{k}``), the best weights so far (``best.layers.*``) and the
loop's state (epoch, batch, RNG states). Files are written atomically, and a file
is checked against its own architecture before anything is built from it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from xpnet.errors import BackendError, ModelFileError, XpnetError
from xpnet.memory import require
from xpnet.metadata import MAX_LAYERS, decode
from xpnet.modelfile import FORMAT, FORMAT_VERSION, check_path, save_model
from xpnet.network import MLP, architecture_shapes
from xpnet.safetensors import load_tensors
from xpnet.scaling import Scaling

#: Largest model file xpnet reads (1 GiB); far above any MLP it trains.
MAX_MODEL_BYTES = 2**30

__all__ = ["FORMAT", "FORMAT_VERSION", "MAX_LAYERS", "MAX_MODEL_BYTES", "ModelFile", "load_model", "save_model"]


class ModelFile:
    """A model file read and checked: its tensors and decoded metadata.

    Every metadata section is checked against ``xpnet.metadata``'s schema, and every
    tensor's shape against the architecture, before a single tensor is allocated;
    the tensors must then hold finite floats (best weights and optimizer state too).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with contextlib.suppress(OSError):  # a missing file is load_tensors' to report
            require(os.stat(self.path).st_size, f"reading {self.path}")
        self.tensors, _ = load_tensors(self.path, max_bytes=MAX_MODEL_BYTES, check_header=self._check_header)
        for name, tensor in self.tensors.items():
            if tensor.dtype.kind != "f":
                raise self.error(f"tensor {name!r} holds {tensor.dtype}, not floats")
            if not np.all(np.isfinite(tensor)):
                raise self.error(f"tensor {name!r} holds NaN or infinite values")

    def _check_header(self, metadata: dict, shapes: dict) -> None:
        """Everything that can be checked before the tensors are read: all of the metadata, every shape."""
        if metadata.get("format") != FORMAT:
            raise self.error(f"not an xpnet model (format {str(metadata.get('format'))[:40]!r}, expected {FORMAT!r})")
        if metadata.get("format_version") != FORMAT_VERSION:
            version = str(metadata.get("format_version"))[:40]
            raise self.error(f"format version {version!r} is not supported by this xpnet")
        meta = decode(metadata, str(self.path))
        self.architecture, self.training, self.class_names = meta.architecture, meta.training, meta.class_names
        self.scaling, self.history, self.checkpoint = meta.scaling, meta.history, meta.checkpoint
        self.xpnet_version = meta.xpnet_version
        self.sizes = meta.sizes
        self.param_shapes = architecture_shapes(self.architecture)
        for name, shape in self.param_shapes.items():
            if name not in shapes:
                raise self.error(f"tensor {name!r} is missing")
            if shapes[name] != shape:
                raise self.error(f"tensor {name!r} has shape {list(shapes[name])}, the architecture says {list(shape)}")

    def error(self, problem: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: {problem}; the file is damaged or was not written by xpnet")

    def build(self, backend=None, device=None, dtype=None, precision: str = "float32") -> MLP:
        """The network this file describes, on the chosen backend and device.

        It computes in ``precision``: float32 by default, whatever it was trained in (the file
        holds float32 weights, and a mixed-bfloat16 model must load on NumPy too); a resumed
        run asks for the precision it was trained in (``saved_precision``).
        """
        options = {"dtype": dtype} if dtype else {}
        try:
            net = MLP.from_config(self.architecture, backend=backend, device=device, precision=precision, **options)
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

    @property
    def saved_precision(self) -> str:
        """The precision the model was trained in (float32 for files from before mixed precision)."""
        return self.architecture.get("precision", "float32")

    def resume_state(self) -> dict:
        """The training loop's saved state, every field checked: it steers the resumed run."""
        if not self.checkpoint:
            raise self.error("checkpoint holds no training-loop state")
        return self.checkpoint["state"]

    def best_params(self, net: MLP) -> list | None:
        """Device copies of the checkpoint's best-so-far weights, if it has them."""
        if not any(name.startswith("best.") for name in self.tensors):
            return None
        params = []
        for name, shape in self.param_shapes.items():
            tensor = self.tensors.get(f"best.{name}")
            if tensor is None or tensor.shape != shape:
                raise self.error(f"best-weights tensor best.{name} is missing or misshapen")
            params.append(net.backend.upload(tensor, net.dtype))
        return params

    def optimizer_buffers(self, net: MLP, optimizer) -> list:
        """The checkpoint's optimizer buffers, checked against what ``optimizer`` keeps, uploaded."""
        expected = optimizer.buffer_shapes(net.params)
        held = self.checkpoint.get("buffers") if self.checkpoint else None
        if held != len(expected):
            raise self.error(
                f"metadata checkpoint.buffers is {held}, but {type(optimizer).__name__} keeps {len(expected)} "
                "buffers for this network"
            )
        buffers = []
        for k, shape in enumerate(expected):
            tensor = self.tensors.get(f"optimizer.{k}")
            if tensor is None or tuple(tensor.shape) != shape:
                raise self.error(f"optimizer buffer {k} is missing or not shaped {list(shape)}")
            buffers.append(net.backend.upload(tensor, net.dtype))
        return buffers


def load_model(path: str | os.PathLike, backend=None, device=None, dtype=None, precision: str = "float32") -> MLP:
    """Read a model file and build its network on ``backend``/``device``, computing in ``precision``."""
    check_path(path, "load_model: path")
    return ModelFile(path).build(backend, device, dtype, precision)
