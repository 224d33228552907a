"""Loss functions C(a, y), averaged over the batch, and their output error (BP1).

Each loss gives ``value`` (a 0-d array, so it stays on the device) and ``delta``,
the output error δ^L = ∂C/∂z^L of BP1. Where the output activation is the loss's
natural partner (softmax for cross-entropy, sigmoid for binary cross-entropy, the
exponential for Poisson) the two fuse: δ^L = (a - y) / N, and the value is computed
from the logits z, which is what keeps it finite for any logits.

Sample weights: ``w`` is None (every row counts 1/N) or a column ``(N, 1)`` of each row's
share of the batch, w_x / Σ_batch w (``xpnet.weights``). The loss is then the weighted mean
C = Σ_x w_x C_x, and BP1 scales each row's error by its share instead of by 1/N.
"""

from __future__ import annotations

from xpnet.activations import Activation, Exponential, Sigmoid, Softmax
from xpnet.backend import device_constant, row_max
from xpnet.checks import is_number
from xpnet.errors import ConfigError
from xpnet.names import Registry

_EPS = 1e-7  # keeps log() finite when the output activation is not the loss's partner


def _clip(xp, a, low: float, high: float):
    """``a`` clipped to [low, high] with device-resident bounds.

    Not ``xp.clip``: array-api-compat's generic clip (CuPy's) indexes with boolean masks,
    which reads each mask's count back to the host, a synchronisation per call.
    """
    return xp.minimum(xp.maximum(a, device_constant(xp, low, a)), device_constant(xp, high, a))


def batch_mean(xp, per_element, w=None):
    """Σ over outputs, mean over rows: 1/N Σ_x Σ_j c_xj, or Σ_x w_x Σ_j c_xj with shares ``w``."""
    if w is None:
        return xp.sum(per_element) / per_element.shape[0]
    return xp.sum(per_element * w)


def per_row(grad, w=None):
    """A row's part of the batch mean in BP1: ``grad / N``, or ``grad * w_x`` with shares ``w``."""
    return grad / grad.shape[0] if w is None else grad * w


class Loss:
    name = "loss"
    #: True when targets are class labels (accuracy is meaningful).
    classification = True
    #: The output activation the loss pairs with by default (its gradient is simplest with it).
    natural_output = "identity"
    #: ``(activation class, fused loss class)``: with that output, the fused form is used.
    fused = None

    @classmethod
    def for_output(cls, output: Activation, **options) -> Loss:
        """This loss for the output activation ``output``: fused with it where they are partners.
        ``options`` are the losses' own settings (``huber_delta``); a loss takes the ones it has."""
        if cls.fused is not None and isinstance(output, cls.fused[0]):
            return cls.fused[1]()
        return cls()

    def value(self, xp, z, a, y, w=None):
        raise NotImplementedError

    def grad_a(self, xp, a, y, w=None):
        """∂C/∂a for the general (unfused) BP1."""
        raise NotImplementedError

    def delta(self, xp, z, a, y, activation: Activation, w=None):
        """BP1: δ^L = ∇_a C ⊙ σ'(z^L)."""
        return activation.backward(xp, z, a, self.grad_a(xp, a, y, w))

    def output_and_value(self, xp, z, y, activation: Activation, w=None):
        """``(a^L, C)`` for the logits z^L; a fused loss shares the work of the two."""
        a = activation.forward(xp, z)
        return a, self.value(xp, z, a, y, w)

    def __repr__(self) -> str:
        return self.name


class MSE(Loss):
    """Quadratic cost C = 1/(2N) Σ_x ||a - y||², the seeds' cost: ∂C/∂a = (a - y)/N."""

    name = "mse"
    classification = False
    natural_output = "identity"

    def value(self, xp, z, a, y, w=None):
        diff = a - y
        if w is None:
            return 0.5 * xp.sum(diff * diff) / a.shape[0]
        return 0.5 * batch_mean(xp, diff * diff, w)

    def grad_a(self, xp, a, y, w=None):
        return per_row(a - y, w)


class CrossEntropy(Loss):
    """Categorical cross-entropy C = -1/N Σ_x Σ_j y_j log a_j for one-hot (or soft) y."""

    name = "cross_entropy"
    natural_output = "softmax"

    def value(self, xp, z, a, y, w=None):
        return -batch_mean(xp, y * xp.log(_clip(xp, a, _EPS, 1.0)), w)

    def grad_a(self, xp, a, y, w=None):
        return per_row(-y / _clip(xp, a, _EPS, 1.0), w)


class SoftmaxCrossEntropy(CrossEntropy):
    """Cross-entropy fused with a softmax output: log-softmax from the logits, δ = (a - y)/N."""

    def value(self, xp, z, a, y, w=None):
        return self.output_and_value(xp, z, y, None, w)[1]

    def output_and_value(self, xp, z, y, activation, w=None):
        # One exp for both: a = e / Σe and log a = shifted - log Σe, finite for any logits.
        shifted = z - row_max(xp, z, keepdims=True)
        e = xp.exp(shifted)
        total = xp.sum(e, axis=1, keepdims=True)
        log_p = shifted - xp.log(total)
        return e / total, -batch_mean(xp, y * log_p, w)

    def delta(self, xp, z, a, y, activation, w=None):
        return per_row(a - y, w)


class BinaryCrossEntropy(Loss):
    """C = -1/N Σ_x Σ_j [y_j log a_j + (1 - y_j) log(1 - a_j)], one sigmoid per output."""

    name = "binary_cross_entropy"
    natural_output = "sigmoid"

    def value(self, xp, z, a, y, w=None):
        a = _clip(xp, a, _EPS, 1.0 - _EPS)
        return -batch_mean(xp, y * xp.log(a) + (1.0 - y) * xp.log(1.0 - a), w)

    def grad_a(self, xp, a, y, w=None):
        a = _clip(xp, a, _EPS, 1.0 - _EPS)
        return per_row((a - y) / (a * (1.0 - a)), w)


class SigmoidBinaryCrossEntropy(BinaryCrossEntropy):
    """Binary cross-entropy from the logits: max(z,0) - z·y + log(1 + e^-|z|), δ = (a - y)/N."""

    def value(self, xp, z, a, y, w=None):
        softplus = xp.log1p(xp.exp(-xp.abs(z)))
        return batch_mean(xp, xp.maximum(z, device_constant(xp, 0.0, z)) - z * y + softplus, w)

    def delta(self, xp, z, a, y, activation, w=None):
        return per_row(a - y, w)


class ExpPoisson(Loss):
    """Half the Poisson deviance, as scikit-learn's MLPRegressor(loss="poisson") defines it,
    with an exponential output a = e^z (z is the log of the predicted rate):

        C = 1/N Σ_x Σ_j [y log(y / a) - y + a] = 1/N Σ_x Σ_j [y log y - y z - y + e^z]

    (y log y = 0 at y = 0). BP1 fused: ∂C/∂z = (e^z - y)/N = (a - y)/N, PyTorch's
    ``PoissonNLLLoss(log_input=True)`` gradient (its value lacks the terms in y alone).
    """

    name = "poisson"
    classification = False
    natural_output = "exp"

    @classmethod
    def for_output(cls, output: Activation, **options) -> Loss:
        if not isinstance(output, Exponential):
            raise ConfigError(
                f"loss poisson needs the exponential output (a = e^z > 0, the predicted rate), not {output.spec()}; "
                "leave the output to the loss"
            )
        return cls()

    def value(self, xp, z, a, y, w=None):
        positive = y > 0
        safe_y = xp.where(positive, y, xp.ones_like(y))  # y log y from the positive targets alone
        y_log_y = xp.where(positive, y * xp.log(safe_y), xp.zeros_like(y))
        return batch_mean(xp, y_log_y - y * z - y + a, w)

    def delta(self, xp, z, a, y, activation, w=None):
        return per_row(a - y, w)


class Huber(Loss):
    """Huber's loss with threshold δ (``huber_delta``): quadratic for small residuals, linear for large.

        h(r) = r²/2 for |r| <= δ,   δ (|r| - δ/2) otherwise;    C = 1/N Σ_x Σ_j h(a - y)

    ∂C/∂a = clip(a - y, -δ, δ)/N: an outlier pulls with force δ at most. PyTorch's ``HuberLoss(delta)``.
    """

    name = "huber"
    classification = False
    natural_output = "identity"

    @classmethod
    def for_output(cls, output: Activation, **options) -> Loss:
        return cls(options.get("huber_delta", 1.0))

    def __init__(self, delta: float = 1.0):
        self.huber_delta = check_huber_delta(delta)

    def value(self, xp, z, a, y, w=None):
        r = xp.abs(a - y)
        d = self.huber_delta
        small = xp.minimum(r, device_constant(xp, d, r))  # |r| up to δ: the quadratic part
        return batch_mean(xp, small * (r - 0.5 * small), w)  # r²/2 below δ, δ(r - δ/2) above

    def grad_a(self, xp, a, y, w=None):
        return per_row(_clip(xp, a - y, -self.huber_delta, self.huber_delta), w)

    def __repr__(self) -> str:
        return f"huber(delta={self.huber_delta:g})"


def check_huber_delta(value) -> float:
    """The Huber threshold δ as a float > 0, or a ConfigError naming ``huber_delta``."""
    if not (is_number(value) and value > 0):
        raise ConfigError(f"huber_delta must be a number > 0, not {value!r}")
    return float(value)


CrossEntropy.fused = (Softmax, SoftmaxCrossEntropy)
BinaryCrossEntropy.fused = (Sigmoid, SigmoidBinaryCrossEntropy)

#: Every loss by name: a new one is its class above plus one line here.
LOSSES = Registry(
    "loss",
    {
        "mse": MSE,
        "cross_entropy": CrossEntropy,
        "binary_cross_entropy": BinaryCrossEntropy,
        "poisson": ExpPoisson,
        "huber": Huber,
    },
    aliases={"quadratic": "mse", "ce": "cross_entropy", "bce": "binary_cross_entropy"},
)
#: Each loss's partner output activation: the one that makes its gradient simplest.
NATURAL_OUTPUT = {name: cls.natural_output for name, cls in LOSSES.items()}
#: The losses of regression models (targets are numbers, not class labels).
REGRESSION_LOSSES = tuple(name for name, cls in LOSSES.items() if not cls.classification)


def loss_name(spec: str) -> str:
    """The canonical name of a loss given by name or alias."""
    return LOSSES.canonical(spec)


def get_loss(spec: str, output: Activation, huber_delta: float = 1.0) -> Loss:
    """The loss called ``spec``, fused with ``output`` where they are partners."""
    return LOSSES.lookup(spec).for_output(output, huber_delta=huber_delta)
