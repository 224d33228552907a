"""Layer normalisation (Ba, Kiros & Hinton 2016), per sample over a layer's units.

For one sample's n units x (a row of the batch):

    μ = mean(x),  σ² = mean((x - μ)²),  x̂ = (x - μ) / sqrt(σ² + ε),  y = γ ⊙ x̂ + β

Statistics are per sample, never across the batch, so a data-parallel job (each rank a
slice of the batch) computes exactly what one process does, and inference needs no
running statistics. The backward pass, for g = ∂C/∂y and ĝ = g ⊙ γ:

    ∂C/∂γ = Σ_batch g ⊙ x̂,   ∂C/∂β = Σ_batch g,
    ∂C/∂x = (ĝ - mean(ĝ) - x̂ ⊙ mean(ĝ ⊙ x̂)) / sqrt(σ² + ε)

Under mixed precision the statistics are taken in the master dtype (float32). The ONNX
form is ``LayerNormalization`` (opset 17), over the last axis, with the same ε.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from xpnet.layers.base import Layer, Pass

#: ε of torch.nn.LayerNorm and ONNX's LayerNormalization by default.
EPS = 1e-5


class NormCache(NamedTuple):
    x_hat: object  #: the normalised input, master dtype
    inv_std: object  #: 1 / sqrt(σ² + ε) per sample, shaped (batch, 1)


class ScaleShift(NamedTuple):
    """A LayerNorm's parameters γ and β (or their gradients)."""

    gamma: object
    beta: object


class LayerNorm(Layer):
    """Normalises each sample's ``width`` units, then scales by γ (``weight``) and shifts by β (``bias``)."""

    param_names = ("weight", "bias")

    def __init__(self, prefix: str, width: int, eps: float = EPS):
        super().__init__(prefix)
        self.width, self.eps = width, eps

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {f"{self.prefix}.weight": (self.width,), f"{self.prefix}.bias": (self.width,)}

    def initial(self, drawn):
        return [np.ones(self.width), np.zeros(self.width)]  # the identity until trained

    def named(self, arrays: list) -> ScaleShift:
        return ScaleShift(*arrays)

    def macs(self) -> int:
        return 2 * self.width

    def forward(self, ctx: Pass, params: list, x):
        xp = ctx.xp
        gamma, beta = (ctx.to_master(p) for p in params)
        x = ctx.to_master(x)
        centred = x - xp.mean(x, axis=1, keepdims=True)
        inv_std = 1.0 / xp.sqrt(xp.mean(centred * centred, axis=1, keepdims=True) + self.eps)
        x_hat = centred * inv_std
        return ctx.to_compute(x_hat * gamma + beta), NormCache(x_hat, inv_std)

    def backward(self, ctx: Pass, params: list, cache: NormCache, grad, input_error: bool = True):
        xp = ctx.xp
        grad = ctx.to_master(grad)
        d_gamma = xp.sum(grad * cache.x_hat, axis=0)
        d_beta = xp.sum(grad, axis=0)
        back = None
        if input_error:
            g = grad * ctx.to_master(params[0])
            mean_g = xp.mean(g, axis=1, keepdims=True)
            mean_gx = xp.mean(g * cache.x_hat, axis=1, keepdims=True)
            back = ctx.to_compute((g - mean_g - cache.x_hat * mean_gx) * cache.inv_std)
        return back, [d_gamma, d_beta]

    def to_onnx(self, graph, x: str, out: str | None) -> str:
        scale, bias = self.param_shapes()
        return graph.node("LayerNormalization", [x, scale, bias], out or f"{self.prefix}.y", axis=-1, epsilon=self.eps)

    def describe(self) -> str:
        return "layer norm"
