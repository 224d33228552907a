"""Layers: one module per kind, each owning its parameters' names, shapes and math.

``dense`` (BP2-BP4 on its lines), ``dropout`` and ``norm`` (LayerNorm); ``base`` holds the
protocol they follow. ``stack`` lays out the layers of a multilayer perceptron from its
architecture (the ``config()`` a model file stores), the one place parameter names come
from: files, checkpoints and ONNX export all read them here.
"""

from __future__ import annotations

from xpnet.activations import Activation
from xpnet.layers.base import Layer, Pass
from xpnet.layers.dense import Dense
from xpnet.layers.dropout import Dropout
from xpnet.layers.norm import LayerNorm
from xpnet.names import Registry

#: Normalisation layers by the name ``norm=`` (``--norm``) takes; "none" adds none.
NORMS = Registry("norm", {"none": None, "layer": LayerNorm})

__all__ = ["NORMS", "Dense", "Dropout", "Layer", "LayerNorm", "Pass", "param_shapes", "stack"]


def stack(sizes: list[int], activations: list[Activation], norm: str = "none", dropout=None) -> list[Layer]:
    """The layers of an MLP: per hidden layer Dense(+activation), then its norm, then dropout;
    the output Dense last. Dense layers are named ``layers.{i}`` (a ``torch.nn.Sequential`` of
    Linear layers' keys, as model files always had them), a norm ``layers.{i}.norm``."""
    norm_kind = NORMS[norm]
    rates = dropout or [0.0] * len(activations)
    layers: list[Layer] = []
    for i, (n_in, n_out, act) in enumerate(zip(sizes, sizes[1:], activations)):
        layers.append(Dense(f"layers.{i}", n_in, n_out, act))
        if i == len(activations) - 1:
            break  # the output layer: its activation goes with the loss, never normalised or dropped
        if norm_kind is not None:
            layers.append(norm_kind(f"layers.{i}.norm", n_out))
        if rates[i]:
            layers.append(Dropout(f"layers.{i}.dropout", rates[i]))
    return layers


def param_shapes(layers: list[Layer]) -> dict[str, tuple[int, ...]]:
    """Every parameter's file name and shape, in the order of the network's flat ``params``."""
    return {name: shape for layer in layers for name, shape in layer.param_shapes().items()}
