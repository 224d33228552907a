"""Optimizers and learning-rate schedules.

An optimizer updates a flat list of parameters from a matching list of gradients.
Updates are written ``params[i] -= step``: NumPy, CuPy and PyTorch do that in place,
while an immutable array type (JAX-style) falls back to ``params[i] = params[i] - step``
by Python's own rules, so one code path serves both. Weight decay applies to weights
(the 2-D parameters), not biases. On CuPy each parameter's whole update runs as one
fused kernel (``backend.fused_kernel``); the array-API code is the same update, and the
reference for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from array_api_compat import array_namespace

from xpnet.backend import define_kernel, device_constant, fused_kernel
from xpnet.checks import is_number
from xpnet.errors import ConfigError
from xpnet.names import Registry

# -- schedules: progress t (epochs done, fractional) and total epochs T -> lr factor


@dataclass(frozen=True)
class Constant:
    def __call__(self, t: float, total: float) -> float:
        return 1.0


@dataclass(frozen=True)
class StepDecay:
    """Multiply the rate by ``gamma`` every ``every`` epochs."""

    every: float = 10.0
    gamma: float = 0.1

    def __call__(self, t: float, total: float) -> float:
        return self.gamma ** math.floor(t / self.every)


@dataclass(frozen=True)
class Cosine:
    """Half a cosine from the full rate to ``floor`` x rate over the run."""

    floor: float = 0.0

    def __call__(self, t: float, total: float) -> float:
        progress = min(t / total, 1.0) if total else 1.0
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Warmup:
    """Ramp linearly from 0 over ``epochs``, then follow ``then``."""

    epochs: float = 1.0
    then: object = Constant()

    def __call__(self, t: float, total: float) -> float:
        ramp = min(1.0, t / self.epochs) if self.epochs > 0 else 1.0
        return ramp * self.then(t, total)


def _warmup_cosine() -> Warmup:
    return Warmup(1.0, Cosine())


#: Every schedule by name, each a factory: a new one is its class above plus one line here.
SCHEDULES = Registry(
    "schedule", {"constant": Constant, "step": StepDecay, "cosine": Cosine, "warmup-cosine": _warmup_cosine}
)


def get_schedule(spec) -> object:
    """``"constant"``, ``"step"`` (x0.1 every 10 epochs), ``"cosine"``, ``"warmup-cosine"``."""
    if callable(spec):
        return spec
    return SCHEDULES.lookup(spec or "constant")()


# -- optimizers ----------------------------------------------------------------------


def guarded(body: str) -> str:
    """A fused update's body run only where the kernel's ``finite`` input is true: a step skipped for a
    float16 overflow leaves every output as it was, decided on the device (the flag is never read on the
    host). The array-API ``_update`` does the same with ``_Skip``'s arithmetic, and is the reference."""
    return f"if (finite) {{ {body} }}"


class Optimizer:
    """Holds the base rate, the schedule and per-parameter state."""

    def __init__(self, lr: float, weight_decay: float = 0.0, schedule=None):
        if not (is_number(lr) and lr > 0):
            raise ConfigError(f"lr (learning rate) must be a positive number, not {lr!r}")
        if not (is_number(weight_decay) and weight_decay >= 0):
            raise ConfigError(f"weight_decay must be a number >= 0, not {weight_decay!r}")
        self.base_lr = float(lr)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.schedule = get_schedule(schedule)
        self.steps = 0
        self.state: list = []
        self.xp = None
        self.kernel = None  #: the fused update where the backend has one (CuPy)

    def set_progress(self, epochs_done: float, total_epochs: float) -> None:
        """Set the current rate from the schedule (called by the training loop)."""
        self.lr = self.base_lr * self.schedule(epochs_done, total_epochs)

    #: Buffers the optimizer keeps per parameter (momentum: 1; Adam's m and v: 2).
    buffers_per_param = 0
    #: The fused CUDA body of this update (``backend.define_kernel``, its body ``guarded``) and ``_fused``
    #: to call it, if it has one: optional, without one the array-API ``_update`` runs on every backend.
    kernel_name = None
    #: The training settings (rows of ``xpnet.settings``) this rule takes, as ``from_settings`` reads them.
    hyperparameters: tuple[str, ...] = ("lr", "weight_decay", "schedule")

    @classmethod
    def from_settings(cls, settings: dict) -> Optimizer:
        """This rule with the hyperparameters it declares taken from ``settings`` (None: its default)."""
        return cls(**{key: settings[key] for key in cls.hyperparameters if settings.get(key) is not None})

    def init_state(self, params: list) -> None:
        """The per-parameter buffers, zeros, if there are none yet (``step`` makes them on first use)."""
        if not self.state:
            self.state = [tuple(p * 0.0 for _ in range(self.buffers_per_param)) for p in params]

    def bind(self, params: list) -> None:
        """The buffers, the namespace and the fused kernel (where the backend has one) for ``params``."""
        self.init_state(params)
        if self.xp is None:
            self.xp = array_namespace(params[0])
            self.kernel = fused_kernel(self.xp, self.kernel_name) if self.kernel_name else None

    def step(self, params: list, grads: list, finite=None) -> None:
        """One update of ``params`` (in place) from ``grads``. ``finite`` (float16's loss scaling): a 0-d
        boolean device flag, never read on the host; where it is false the step leaves every parameter
        and buffer as it was, decided inside the update: the fused kernel's own branch, or the array-API
        arithmetic (``_Skip``), which is the reference the kernel is held to. Either way, no copies.
        The step count advances on a skipped step too (the host cannot know): Adam's bias correction
        counts it, on both paths alike."""
        self.bind(params)
        self.steps += 1
        if self.kernel is not None:  # the flag is one more kernel input: no launch of its own
            flag = True if finite is None else finite
            for i, (p, g) in enumerate(zip(params, grads)):
                self._fused(i, p, g, self._decay(p), flag)
            return
        skip = None if finite is None else _Skip(self.xp, finite, params[0])
        for i, (p, g) in enumerate(zip(params, grads)):
            params[i] = self._update(i, p, g if skip is None else skip.grad(g), self._decay(p), skip or _NO_SKIP)

    def _decay(self, p) -> float:
        return self.weight_decay if p.ndim > 1 else 0.0

    def _update(self, i, p, g, decay, skip):
        """The array-API update of parameter ``i`` (the reference): returns the updated ``p``."""
        raise NotImplementedError

    def _fused(self, i, p, g, decay, finite) -> None:
        """The same update as one call of ``self.kernel`` (``kernel_name``), in place; ``finite`` is the
        0-d flag (or True), the kernel's input right after the gradient."""
        raise NotImplementedError

    def state_arrays(self) -> list:
        """Per-parameter buffers in a fixed order (for checkpoints)."""
        return [buffer for buffers in self.state for buffer in buffers]

    def buffer_shapes(self, params: list) -> list[tuple]:
        """Shapes of ``state_arrays()`` for these parameters (to check a checkpoint)."""
        return [tuple(p.shape) for p in params for _ in range(self.buffers_per_param)]

    def load_state_arrays(self, arrays: list, steps: int, params: list) -> None:
        """Inverse of ``state_arrays`` for the same parameter list."""
        k = self.buffers_per_param
        self.state = [tuple(arrays[i * k : (i + 1) * k]) for i in range(len(params))] if k else []
        self.steps = steps


class _Skip:
    """A step that must leave everything as it was where the 0-d ``finite`` flag is false (a float16
    overflow), made so by the update's own arithmetic: the gradients zeroed (one ``where`` each),
    the step sizes multiplied by the flag, the decay factors (μ, β1, β2, AdamW's shrink) set to 1.
    The factors are 0-d, made once a step; where the flag is true each is the value itself, exactly."""

    def __init__(self, xp, finite, like):
        self.xp, self.finite, self._made = xp, finite, {}
        self.flag = xp.astype(finite, like.dtype)
        self._zero, self._one = device_constant(xp, 0.0, like), device_constant(xp, 1.0, like)

    def grad(self, g):
        return self.xp.where(self.finite, g, self._zero)

    def times(self, value: float):
        """``value`` where the step is kept, else 0 (a rate, a weight decay)."""
        return self._make(("times", value), lambda: self.flag * value)

    def keep(self, value: float):
        """``value`` where the step is kept, else 1 (a decay factor: the buffer stays as it is)."""
        return self._make(("keep", value), lambda: self.xp.where(self.finite, self.flag * value, self._one))

    def _make(self, key, make):
        try:
            made = self._made.get(key)
        except TypeError:  # a traced value (JAX compiling the step) is no cache key: made each time
            return make()
        if made is None:
            made = self._made[key] = make()
        return made


class _NoSkip:
    """Every step kept: the values themselves (host numbers, as the update always had them)."""

    @staticmethod
    def times(value: float) -> float:
        return value

    keep = times


_NO_SKIP = _NoSkip()


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay.

    v <- μ v + (g + λW);  W <- W - η v   (Nesterov: W <- W - η (g + λW + μ v)).
    The same rule as ``torch.optim.SGD``.
    """

    hyperparameters = ("lr", "momentum", "nesterov", "weight_decay", "schedule")

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, schedule=None):
        super().__init__(lr, weight_decay, schedule)
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), not {momentum!r}")
        if nesterov and not momentum:
            raise ConfigError("nesterov=True needs a momentum > 0")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.buffers_per_param = 1 if self.momentum else 0
        self.kernel_name = self.NESTEROV if self.nesterov else self.MOMENTUM if self.momentum else self.PLAIN

    # The fused CuPy updates (one kernel per parameter), each the array-API code of ``_update`` below;
    # where ``finite`` is false (a float16 overflow) the branch is not taken: p and v stay as they were.
    #: p <- p - lr (g + λp)
    PLAIN = define_kernel(
        "sgd", "T g, bool finite, T lr, T momentum, T decay", "T p", guarded("p -= lr * (g + decay * p);")
    )
    #: v <- μv + (g + λp); p <- p - lr v
    MOMENTUM = define_kernel(
        "sgd_momentum",
        "T g, bool finite, T lr, T momentum, T decay",
        "T p, T v",
        guarded("T d = g + decay * p; v = momentum * v + d; p -= lr * v;"),
    )
    #: v as above; p <- p - lr (d + μv)
    NESTEROV = define_kernel(
        "sgd_nesterov",
        "T g, bool finite, T lr, T momentum, T decay",
        "T p, T v",
        guarded("T d = g + decay * p; v = momentum * v + d; p -= lr * (d + momentum * v);"),
    )

    def _fused(self, i, p, g, decay, finite):
        self.kernel(g, finite, self.lr, self.momentum, decay, p, *self.state[i])

    def _update(self, i, p, g, decay, skip):
        if decay:
            g = g + skip.times(decay) * p
        if self.momentum:
            (v,) = self.state[i]
            v *= skip.keep(self.momentum)
            v += g
            self.state[i] = (v,)
            g = g + self.momentum * v if self.nesterov else v
        p -= skip.times(self.lr) * g
        return p


class Adam(Optimizer):
    """Adam (Kingma & Ba) with L2 weight decay added to the gradient, as ``torch.optim.Adam``."""

    decoupled = False
    buffers_per_param = 2
    #: The fused CuPy update, the array-API code of ``_update`` below: l2 is λ for Adam's coupled
    #: decay (else 0), shrink is 1 - lr λ for AdamW's (else 1); step = lr / (1 - β1^t) and
    #: v_scale = 1 / (1 - β2^t) are the bias corrections. 1 - β1 and 1 - β2 come from the host, as
    #: the array-API code computes them: in float32 on the GPU, 1 - 0.999f is 0.00099998713, 1.3e-5 off
    #: 0.001 (every v was off by that much, and selfcheck said so on an H200).
    kernel_name = define_kernel(
        "adam",
        "T g, bool finite, T step, T beta1, T beta2, T rest1, T rest2, T v_scale, T eps, T l2, T shrink",
        "T p, T m, T v",
        guarded(
            "T d = g + l2 * p; p *= shrink;"
            " m = beta1 * m + rest1 * d; v = beta2 * v + rest2 * d * d;"
            " p -= step * m / (sqrt(v * v_scale) + eps);"
        ),
    )

    hyperparameters = ("lr", "beta1", "beta2", "eps", "weight_decay", "schedule")

    @classmethod
    def from_settings(cls, settings: dict) -> Adam:
        given = {key: settings[key] for key in cls.hyperparameters if settings.get(key) is not None}
        betas = (given.pop("beta1", 0.9), given.pop("beta2", 0.999))
        return cls(betas=betas, **given)

    def __init__(self, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, schedule=None):
        super().__init__(lr, weight_decay, schedule)
        beta1, beta2 = betas
        if not (is_number(beta1) and is_number(beta2) and 0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ConfigError(f"betas must both be in [0, 1), not {betas!r}")
        if not (is_number(eps) and eps > 0):
            raise ConfigError(f"eps must be a positive number, not {eps!r}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def _bias_corrections(self) -> tuple[float, float]:
        """lr / (1 - β1^t) and 1 / (1 - β2^t) for this step's t (``steps``, host-side, as both paths take it)."""
        return self.lr / (1.0 - self.beta1**self.steps), 1.0 / (1.0 - self.beta2**self.steps)

    def _fused(self, i, p, g, decay, finite):
        m_hat_scale, v_hat_scale = self._bias_corrections()
        l2, shrink = (0.0, 1.0 - self.lr * decay) if self.decoupled else (decay, 1.0)
        rest1, rest2 = 1.0 - self.beta1, 1.0 - self.beta2
        scalars = (m_hat_scale, self.beta1, self.beta2, rest1, rest2, v_hat_scale, self.eps, l2, shrink)
        self.kernel(g, finite, *scalars, p, *self.state[i])

    def _update(self, i, p, g, decay, skip):
        m, v = self.state[i]
        m_hat_scale, v_hat_scale = self._bias_corrections()
        if decay and self.decoupled:
            p *= skip.keep(1.0 - self.lr * decay)
        elif decay:
            g = g + skip.times(decay) * p
        # m <- β1 m + (1 - β1) g;  v <- β2 v + (1 - β2) g²;  p <- p - step m / (sqrt(v v_scale) + eps),
        # one operation at a time into a few temporaries (each result rounds as in the formula).
        m *= skip.keep(self.beta1)
        t = g * (1.0 - self.beta1)
        m += t
        v *= skip.keep(self.beta2)
        t = g * g
        t *= 1.0 - self.beta2
        v += t
        self.state[i] = (m, v)
        denominator = self.xp.sqrt(v * v_hat_scale)
        denominator += self.eps
        t = m * skip.times(m_hat_scale)
        t /= denominator
        p -= t
        return p


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): W <- W (1 - η λ) before the step."""

    decoupled = True

    def __init__(self, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, schedule=None):
        super().__init__(lr, betas, eps, weight_decay, schedule)


#: Every optimizer by name: a new one is its class (``_update``, ``hyperparameters``) plus one line here.
OPTIMIZERS = Registry("optimizer", {"sgd": SGD, "adam": Adam, "adamw": AdamW})


def get_optimizer(name: str, **settings) -> Optimizer:
    """The optimizer ``name`` (``sgd``, ``adam``, ``adamw``) with the hyperparameters it declares taken
    from ``settings``; others (``momentum`` for Adam, say) and unset (None) ones are ignored."""
    return OPTIMIZERS.lookup(name).from_settings(settings)
