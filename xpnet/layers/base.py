"""The layer protocol: what every layer of a network says and does.

A layer holds no arrays. The network keeps one flat list of parameters (the list the
optimizers update in place) and hands each layer its own slice of it, in the order of
the layer's ``param_names``. A layer gives:

- ``param_shapes()``: its parameters' file names and shapes, in that order (files,
  ONNX and memory estimates read them);
- ``buffer_shapes()``: its non-trained state (running statistics, say), by file name:
  none of today's layers keeps any;
- ``initial(drawn)``: host arrays to start from (``drawn`` yields the dense layers'
  seeded ``(W, b)`` pairs, so one seed gives one network whatever else it holds);
- ``forward(ctx, params, x)``: its output and a cache for the backward pass;
- ``backward(ctx, params, cache, grad, input_error)``: ``(∂C/∂x, [∂C/∂p, ...])`` from
  ``grad`` = ∂C/∂(its output); ``∂C/∂x`` is None when ``input_error`` is False;
- ``macs()``: multiply-adds per sample of its forward pass;
- ``to_onnx(graph, x, out)``: the ONNX nodes computing it (``xpnet.export``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Pass:
    """What one forward/backward pass shares with its layers."""

    xp: Any  #: the array namespace
    train: bool  #: training: dropout drops units
    master: Any  #: the master dtype: parameters, gradients, outputs
    compute: Any  #: the dtype the passes run in (a half type under mixed precision)
    dropout_mask: Callable[[tuple, float], Any]  #: (shape, rate) -> an inverted-dropout mask

    def to_master(self, array):
        """``array`` in the master dtype (a cast only under mixed precision)."""
        return array if self.master == self.compute else self.xp.astype(array, self.master)

    def to_compute(self, array):
        """``array`` in the compute dtype (a cast only under mixed precision)."""
        return array if self.master == self.compute else self.xp.astype(array, self.compute)


class Layer:
    """One step of a network; see the module docstring for the protocol."""

    #: The parameters' names after the layer's ``prefix``, in the order of its slice of ``params``.
    param_names: tuple[str, ...] = ()

    def __init__(self, prefix: str):
        self.prefix = prefix  #: its parameters' file names start with this (``layers.0``)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def buffer_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def initial(self, drawn: Iterator) -> list[np.ndarray]:
        return []

    def named(self, arrays: list) -> tuple:
        """Its parameters (or their gradients) as a record: ``(W, b)`` with ``.W`` and ``.b`` for a dense layer."""
        return tuple(arrays)

    def forward(self, ctx: Pass, params: list, x):
        raise NotImplementedError

    def backward(self, ctx: Pass, params: list, cache, grad, input_error: bool = True):
        raise NotImplementedError

    def macs(self) -> int:
        return 0

    def to_onnx(self, graph, x: str, out: str | None) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        """A few words for the network's repr."""
        return type(self).__name__
