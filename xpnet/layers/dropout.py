"""Inverted dropout: in training, each unit is kept with probability 1 - p and scaled by 1/(1 - p).

The mask is drawn on the device by the network's generator (``Pass.dropout_mask``), one
per training pass, in layer order; outside training the layer passes its input through.
"""

from __future__ import annotations

from xpnet.layers.base import Layer, Pass


class Dropout(Layer):
    def __init__(self, prefix: str, rate: float):
        super().__init__(prefix)
        self.rate = rate

    def forward(self, ctx: Pass, params: list, x):
        if not ctx.train:
            return x, None
        mask = ctx.dropout_mask(x.shape, self.rate)
        return x * mask, mask

    def backward(self, ctx: Pass, params: list, mask, grad, input_error: bool = True):
        return (grad if mask is None else grad * mask), []

    def to_onnx(self, graph, x: str, out: str | None) -> str:
        return x  # inference: nothing to compute

    def describe(self) -> str:
        return f"dropout {self.rate:g}"
