"""Activation functions: each knows its value and its local derivative, nothing else.

``forward(xp, z)`` gives ``a = σ(z)``; ``backward(xp, z, a, grad_a)`` gives
``∂C/∂z = grad_a ⊙ σ'(z)`` (a Jacobian-vector product for softmax). Both are
written against the array API, so they run on any backend unchanged.

``backward`` may write its result into ``grad_a`` (in place where the array type
allows it): callers pass a temporary of their own, and the backward pass saves one
batch-sized array per layer. ReLU's backward runs as one fused kernel on CuPy.
"""

from __future__ import annotations

from dataclasses import dataclass

from xpnet.backend import define_kernel, device_constant, fused_kernel, row_max
from xpnet.errors import ConfigError
from xpnet.names import Registry


class Activation:
    name = "activation"
    #: The ONNX operator computing it and its attributes (``xpnet.export``); None: no node needed
    #: (identity); False: it has no ONNX form (export refuses it).
    onnx: tuple[str, dict] | bool | None = False

    def forward(self, xp, z):
        raise NotImplementedError

    def backward(self, xp, z, a, grad_a):
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.spec()

    def spec(self) -> str:
        """The string ``get_activation`` turns back into this activation."""
        return self.name


class Identity(Activation):
    name = "identity"
    onnx = None

    def forward(self, xp, z):
        return z

    def backward(self, xp, z, a, grad_a):
        return grad_a


class Sigmoid(Activation):
    """σ(z) = 1 / (1 + e^-z), computed as (1 + tanh(z/2)) / 2: no overflow for any z."""

    name = "sigmoid"
    onnx = ("Sigmoid", {})

    def forward(self, xp, z):
        return 0.5 * (xp.tanh(0.5 * z) + 1.0)

    def backward(self, xp, z, a, grad_a):
        grad_a *= a * (1.0 - a)
        return grad_a


class Tanh(Activation):
    name = "tanh"
    onnx = ("Tanh", {})

    def forward(self, xp, z):
        return xp.tanh(z)

    def backward(self, xp, z, a, grad_a):
        grad_a *= 1.0 - a * a
        return grad_a


class ReLU(Activation):
    name = "relu"
    onnx = ("Relu", {})

    def forward(self, xp, z):
        # A device-resident 0, not 0.0: array-api-compat would copy 0.0 to the GPU every call.
        return xp.maximum(z, device_constant(xp, 0.0, z))

    #: The fused CuPy form of ``backward``: grad ⊙ step(z), in place.
    KERNEL = define_kernel("relu_backward", "T z", "T grad", "if (!(z > 0)) grad = 0;")

    def backward(self, xp, z, a, grad_a):
        kernel = fused_kernel(xp, self.KERNEL)
        if kernel is not None:
            return kernel(z, grad_a)
        # σ'(z) is the 0/1 step; a multiply by it is many times faster than xp.where on NumPy.
        grad_a *= xp.astype(z > 0, grad_a.dtype)
        return grad_a


@dataclass(repr=False)
class LeakyReLU(Activation):
    """max(z, αz): a small slope for z < 0 keeps units from dying."""

    alpha: float = 0.01
    name = "leaky_relu"

    def __post_init__(self):
        if not 0.0 <= self.alpha < 1.0:
            raise ConfigError(f"leaky_relu slope must be in [0, 1), not {self.alpha}")

    def forward(self, xp, z):
        return xp.maximum(z, self.alpha * z)  # equal to max(z, αz) because 0 <= α < 1

    def backward(self, xp, z, a, grad_a):
        step = xp.astype(z > 0, grad_a.dtype)  # σ'(z) = α + (1 - α)·step(z)
        grad_a *= self.alpha + (1.0 - self.alpha) * step
        return grad_a

    def spec(self) -> str:
        return f"leaky_relu({self.alpha:g})"

    @property
    def onnx(self) -> tuple[str, dict]:
        return "LeakyRelu", {"alpha": float(self.alpha)}


class Softmax(Activation):
    """Row-wise softmax, shifted by the row maximum so exp never overflows."""

    name = "softmax"
    onnx = ("Softmax", {"axis": 1})

    def forward(self, xp, z):
        e = xp.exp(z - row_max(xp, z, keepdims=True))
        return e / xp.sum(e, axis=1, keepdims=True)

    def backward(self, xp, z, a, grad_a):
        # J^T g for J = diag(a) - a a^T, without forming J.
        return a * (grad_a - xp.sum(grad_a * a, axis=1, keepdims=True))


class Exponential(Activation):
    """a = e^z: a positive output, the predicted rate of a Poisson regression (its loss's partner)."""

    name = "exp"
    onnx = ("Exp", {})

    def forward(self, xp, z):
        return xp.exp(z)

    def backward(self, xp, z, a, grad_a):
        grad_a *= a
        return grad_a


#: Every activation by name: a new one is its class above plus one line here.
ACTIVATIONS = Registry(
    "activation",
    {
        "identity": Identity,
        "sigmoid": Sigmoid,
        "tanh": Tanh,
        "relu": ReLU,
        "leaky_relu": LeakyReLU,  # takes a slope: leaky_relu(0.1)
        "softmax": Softmax,
        "exp": Exponential,
    },
    aliases={"linear": "identity", "exponential": "exp"},
)


def get_activation(spec: str | Activation) -> Activation:
    """Turn ``"relu"``, ``"leaky_relu"`` or ``"leaky_relu(0.2)"`` into an activation."""
    if isinstance(spec, Activation):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(f"activation must be a name such as 'relu', not {spec!r}")
    word, _, rest = spec.strip().partition("(")
    name = ACTIVATIONS.canonical(word)
    if not rest:
        return ACTIVATIONS[name]()
    if name != "leaky_relu" or not rest.endswith(")"):
        raise ConfigError(f"activation {spec!r}: only leaky_relu takes a parameter, as leaky_relu(0.1)")
    try:
        alpha = float(rest[:-1])
    except ValueError:
        raise ConfigError(f"activation {spec!r}: the slope must be a number") from None
    return LeakyReLU(alpha)
