"""Loss functions C(a, y), averaged over the batch, and their output error (BP1).

Each loss gives ``value`` (a 0-d array, so it stays on the device) and ``delta``,
the output error δ^L = ∂C/∂z^L of BP1. Where the output activation is the loss's
natural partner (softmax for cross-entropy, sigmoid for binary cross-entropy) the
two fuse: δ^L = (a - y) / N, and the value is computed from the logits z, which is
what keeps it finite for any logits.
"""

from __future__ import annotations

from xpnet.activations import Activation, Sigmoid, Softmax
from xpnet.backend import device_constant
from xpnet.names import Registry

_EPS = 1e-7  # keeps log() finite when the output activation is not the loss's partner


def _clip(xp, a, low: float, high: float):
    """``a`` clipped to [low, high] with device-resident bounds.

    Not ``xp.clip``: array-api-compat's generic clip (CuPy's) indexes with boolean masks,
    which reads each mask's count back to the host, a synchronisation per call.
    """
    return xp.minimum(xp.maximum(a, device_constant(xp, low, a)), device_constant(xp, high, a))


class Loss:
    name = "loss"
    #: True when targets are class labels (accuracy is meaningful).
    classification = True
    #: The output activation the loss pairs with by default (its gradient is simplest with it).
    natural_output = "identity"
    #: ``(activation class, fused loss class)``: with that output, the fused form is used.
    fused = None

    @classmethod
    def for_output(cls, output: Activation) -> Loss:
        """This loss for the output activation ``output``: fused with it where they are partners."""
        if cls.fused is not None and isinstance(output, cls.fused[0]):
            return cls.fused[1]()
        return cls()

    def value(self, xp, z, a, y):
        raise NotImplementedError

    def grad_a(self, xp, a, y):
        """∂C/∂a for the general (unfused) BP1."""
        raise NotImplementedError

    def delta(self, xp, z, a, y, activation: Activation):
        """BP1: δ^L = ∇_a C ⊙ σ'(z^L)."""
        return activation.backward(xp, z, a, self.grad_a(xp, a, y))

    def output_and_value(self, xp, z, y, activation: Activation):
        """``(a^L, C)`` for the logits z^L; a fused loss shares the work of the two."""
        a = activation.forward(xp, z)
        return a, self.value(xp, z, a, y)

    def __repr__(self) -> str:
        return self.name


class MSE(Loss):
    """Quadratic cost C = 1/(2N) Σ_x ||a - y||², the seeds' cost: ∂C/∂a = (a - y)/N."""

    name = "mse"
    classification = False
    natural_output = "identity"

    def value(self, xp, z, a, y):
        diff = a - y
        return 0.5 * xp.sum(diff * diff) / a.shape[0]

    def grad_a(self, xp, a, y):
        return (a - y) / a.shape[0]


class CrossEntropy(Loss):
    """Categorical cross-entropy C = -1/N Σ_x Σ_j y_j log a_j for one-hot (or soft) y."""

    name = "cross_entropy"
    natural_output = "softmax"

    def value(self, xp, z, a, y):
        return -xp.sum(y * xp.log(_clip(xp, a, _EPS, 1.0))) / a.shape[0]

    def grad_a(self, xp, a, y):
        return -y / (_clip(xp, a, _EPS, 1.0) * a.shape[0])


class SoftmaxCrossEntropy(CrossEntropy):
    """Cross-entropy fused with a softmax output: log-softmax from the logits, δ = (a - y)/N."""

    def value(self, xp, z, a, y):
        return self.output_and_value(xp, z, y, None)[1]

    def output_and_value(self, xp, z, y, activation):
        # One exp for both: a = e / Σe and log a = shifted - log Σe, finite for any logits.
        shifted = z - xp.max(z, axis=1, keepdims=True)
        e = xp.exp(shifted)
        total = xp.sum(e, axis=1, keepdims=True)
        log_p = shifted - xp.log(total)
        return e / total, -xp.sum(y * log_p) / z.shape[0]

    def delta(self, xp, z, a, y, activation):
        return (a - y) / a.shape[0]


class BinaryCrossEntropy(Loss):
    """C = -1/N Σ_x Σ_j [y_j log a_j + (1 - y_j) log(1 - a_j)], one sigmoid per output."""

    name = "binary_cross_entropy"
    natural_output = "sigmoid"

    def value(self, xp, z, a, y):
        a = _clip(xp, a, _EPS, 1.0 - _EPS)
        return -xp.sum(y * xp.log(a) + (1.0 - y) * xp.log(1.0 - a)) / a.shape[0]

    def grad_a(self, xp, a, y):
        a = _clip(xp, a, _EPS, 1.0 - _EPS)
        return (a - y) / (a * (1.0 - a) * a.shape[0])


class SigmoidBinaryCrossEntropy(BinaryCrossEntropy):
    """Binary cross-entropy from the logits: max(z,0) - z·y + log(1 + e^-|z|), δ = (a - y)/N."""

    def value(self, xp, z, a, y):
        softplus = xp.log1p(xp.exp(-xp.abs(z)))
        return xp.sum(xp.maximum(z, device_constant(xp, 0.0, z)) - z * y + softplus) / z.shape[0]

    def delta(self, xp, z, a, y, activation):
        return (a - y) / a.shape[0]


CrossEntropy.fused = (Softmax, SoftmaxCrossEntropy)
BinaryCrossEntropy.fused = (Sigmoid, SigmoidBinaryCrossEntropy)

#: Every loss by name: a new one is its class above plus one line here.
LOSSES = Registry(
    "loss",
    {"mse": MSE, "cross_entropy": CrossEntropy, "binary_cross_entropy": BinaryCrossEntropy},
    aliases={"quadratic": "mse", "ce": "cross_entropy", "bce": "binary_cross_entropy"},
)
#: Each loss's partner output activation: the one that makes its gradient simplest.
NATURAL_OUTPUT = {name: cls.natural_output for name, cls in LOSSES.items()}


def loss_name(spec: str) -> str:
    """The canonical name of a loss given by name or alias."""
    return LOSSES.canonical(spec)


def get_loss(spec: str, output: Activation) -> Loss:
    """The loss called ``spec``, fused with ``output`` where they are partners."""
    return LOSSES.lookup(spec).for_output(output)
