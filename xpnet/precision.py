"""Mixed precision: the float type the math runs in, and dynamic loss scaling for float16.

``float32`` (the default) computes in the network's own dtype. ``mixed-float16`` and
``mixed-bfloat16`` keep the weights (the masters the optimizer updates and files store)
in float32 and run the forward and backward passes in the half type: each step casts
the weights down, computes z and a in half precision, takes the loss and BP1 in float32
(from z^L cast up), casts δ down for BP2 and BP4, and hands the optimizer float32
gradients (BP3 sums in float32). bfloat16 keeps float32's range; float16 does not, so
its losses are scaled (``LossScaler``). bfloat16 is PyTorch's (CPU and CUDA); float16 runs
everywhere but array-api-strict (NumPy's float16 is slow, and there for correctness).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xpnet.backend import device_constant
from xpnet.names import Registry


@dataclass(frozen=True)
class Precision:
    name: str
    compute: str | None  #: the half type the math runs in; None: the network's dtype
    loss_scaling: bool  #: float16's narrow range needs the loss scaled

    @property
    def mixed(self) -> bool:
        return self.compute is not None


#: Every precision by name.
PRECISIONS = Registry(
    "precision",
    {
        "float32": Precision("float32", None, False),
        "mixed-float16": Precision("mixed-float16", "float16", True),
        "mixed-bfloat16": Precision("mixed-bfloat16", "bfloat16", False),
    },
)


def get_precision(spec: str | Precision) -> Precision:
    """The precision called ``spec`` (``float32``, ``mixed-float16``, ``mixed-bfloat16``)."""
    if isinstance(spec, Precision):
        return spec
    return PRECISIONS.lookup(spec)


class LossScaler:
    """Dynamic loss scaling (Micikevicius et al., 2018), decided on the device.

    BP1's δ^L is multiplied by the scale S before the backward pass, so that float16
    gradients too small for its range do not flush to zero; the gradients are divided
    by S again in float32. A step whose gradients hold an inf or a NaN is skipped (the
    optimizer gets the 0-d flag and its update, fused kernel or array-API code, leaves the
    weights and its buffers as they were: nothing is copied to be put back) and S halves; after
    ``growth_interval`` finite steps in a row S doubles. All of it runs on the device with
    no host read: the scale, the run of good steps and the skipped count are read with
    the epoch's metrics. (Adam's step count lives on the host and still advances on a
    skipped step.)
    """

    def __init__(self, net, scale: float = 2.0**15, good_steps: int = 0, skipped: int = 0, growth_interval: int = 1000):
        like = net.params[0]
        xp = net.xp
        self.xp, self.backend, self.growth_interval = xp, net.backend, growth_interval
        with net.backend.activated():  # CuPy allocates on the current GPU
            self.scale, self.good_steps, self.skipped = (
                xp.full((), float(value), dtype=like.dtype, device=net.backend.device_of(like))
                for value in (scale, good_steps, skipped)
            )
            self._one = device_constant(xp, 1.0, like)
            self._ceiling = device_constant(xp, 2.0**24, like)

    def state(self) -> list:
        """``[scale, good steps, skipped steps]`` as 0-d device arrays (read with the epoch's sums)."""
        return [self.scale, self.good_steps, self.skipped]

    def step(self, optimizer, params: list, grads: list) -> None:
        """``optimizer.step(params, grads)``, which changes nothing where a gradient is not finite."""
        finite = all_finite(self.xp, grads)
        optimizer.step(params, grads, finite=finite)  # the skip is inside the update (kernel or array-API)
        self._update(self.xp.astype(finite, self.scale.dtype))

    def _update(self, ok: Any) -> None:
        """S x2 after ``growth_interval`` good steps, x1/2 after a bad one, within [1, 2^24]."""
        xp = self.xp
        good = (self.good_steps + 1.0) * ok
        grow = xp.astype(good >= self.growth_interval, ok.dtype)
        factor = ok * (1.0 + grow) + (1.0 - ok) * 0.5
        self.scale = xp.minimum(xp.maximum(self.scale * factor, self._one), self._ceiling)
        self.good_steps = good * (1.0 - grow)
        self.skipped = self.skipped + (1.0 - ok)


def all_finite(xp, arrays: list):
    """A 0-d boolean device array: every element of every array is finite (no host read)."""
    return xp.all(xp.stack([xp.all(xp.isfinite(a)) for a in arrays]))


def loss_scaler(net, state: list | None = None) -> LossScaler | None:
    """The network's loss scaler (float16 only; None otherwise), from a saved ``[scale, good, skipped]``."""
    return LossScaler(net, *(state or ())) if net.precision.loss_scaling else None
