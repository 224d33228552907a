"""A dense layer and its activation: z = x W^T + b, a = σ(z), and BP2-BP4 on its lines.

The backward pass of layer l, from ∂C/∂a^l (what the layer above handed down):

    BP2  δ^l = (δ^{l+1} W^{l+1}) ⊙ σ'(z^l)     the σ' half here; the δ W half is ``input_error``
    BP3  ∂C/∂b^l = Σ_batch δ^l
    BP4  ∂C/∂W^l = δ^l^T a^{l-1}

The output layer's δ^L comes from the loss (BP1, ``xpnet.network``), so it enters at
``backward_delta`` and its activation is applied with the loss (``affine``).
"""

from __future__ import annotations

from typing import NamedTuple

from xpnet.activations import Activation
from xpnet.layers.base import Layer, Pass


class DenseCache(NamedTuple):
    x: object  #: the layer's input a^{l-1}
    z: object  #: its pre-activation z^l
    a: object  #: its output a^l (None for the output layer: the loss holds it)


class WeightsBias(NamedTuple):
    """A dense layer's parameters, z = a W^T + b (or their gradients, ∂C/∂W and ∂C/∂b)."""

    W: object
    b: object


class Dense(Layer):
    """``n_in`` -> ``n_out`` with ``activation``; weights ``(n_out, n_in)`` as ``torch.nn.Linear``."""

    param_names = ("weight", "bias")

    def __init__(self, prefix: str, n_in: int, n_out: int, activation: Activation):
        super().__init__(prefix)
        self.n_in, self.n_out, self.activation = n_in, n_out, activation

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {f"{self.prefix}.weight": (self.n_out, self.n_in), f"{self.prefix}.bias": (self.n_out,)}

    def initial(self, drawn):
        return list(next(drawn))

    def named(self, arrays: list) -> WeightsBias:
        return WeightsBias(*arrays)

    def macs(self) -> int:
        return self.n_in * self.n_out

    def affine(self, ctx: Pass, params: list, x):
        """z = x W^T + b."""
        W, b = params
        z = x @ W.T
        z += b  # in place: one pass and no second (batch, n_out) array per layer
        return z

    def cache(self, x, z) -> DenseCache:
        """The output layer's cache: its activation's output belongs to the loss."""
        return DenseCache(x, z, None)

    def forward(self, ctx: Pass, params: list, x):
        z = self.affine(ctx, params, x)
        a = self.activation.forward(ctx.xp, z)
        return a, DenseCache(x, z, a)

    def backward(self, ctx: Pass, params: list, cache: DenseCache, grad, input_error: bool = True):
        delta = self.activation.backward(ctx.xp, cache.z, cache.a, grad)  # BP2: ⊙ σ'(z^l)
        return self.backward_delta(ctx, params, cache, delta, input_error)

    def backward_delta(self, ctx: Pass, params: list, cache: DenseCache, delta, input_error: bool = True):
        """From δ^l itself: ``(δ^l W^l or None, [∂C/∂W^l, ∂C/∂b^l])``."""
        dC_dW = delta.T @ cache.x  # BP4
        dC_db = ctx.xp.sum(delta, axis=0, dtype=ctx.master)  # BP3, summed in the master dtype
        back = delta @ params[0] if input_error else None  # BP2: δ^l W^l, handed to the layer below
        return back, [dC_dW, dC_db]

    def to_onnx(self, graph, x: str, out: str | None) -> str:
        weight, bias = self.param_shapes()
        op = graph.activation_op(self.activation)
        z = out if out is not None and op is None else f"{self.prefix}.z"
        graph.node("Gemm", [x, weight, bias], z, transB=1)
        if op is None:
            return z
        name, attributes = op
        return graph.node(name, [z], out or f"{self.prefix}.a", **attributes)

    def describe(self) -> str:
        return f"{self.n_in}->{self.n_out} {self.activation.spec()}"
