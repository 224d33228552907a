"""Optimizers follow torch.optim's update rules; schedules give the documented factors;
bad settings are refused by name; immutable (JAX-style) arrays are updated too."""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np
import pytest
from conftest import NO_TORCH

from xpnet.errors import ConfigError
from xpnet.optim import SGD, Adam, AdamW, Constant, Cosine, StepDecay, Warmup, get_optimizer, get_schedule

STEPS = 6


def parameters_and_gradients(seed=0):
    """Two layers' worth of (W, b) and STEPS rounds of gradients for them, in float64."""
    rng = np.random.default_rng(seed)
    shapes = [(4, 3), (4,), (2, 4), (2,)]
    params = [rng.standard_normal(shape) for shape in shapes]
    grads = [[rng.standard_normal(shape) for shape in shapes] for _ in range(STEPS)]
    return params, grads


CASES = {
    "sgd": (lambda: SGD(lr=0.1), "SGD", {"lr": 0.1}),
    "sgd-momentum": (lambda: SGD(lr=0.1, momentum=0.9), "SGD", {"lr": 0.1, "momentum": 0.9}),
    "sgd-nesterov": (
        lambda: SGD(lr=0.1, momentum=0.8, nesterov=True),
        "SGD",
        {"lr": 0.1, "momentum": 0.8, "nesterov": True},
    ),
    "sgd-momentum-decay": (
        lambda: SGD(lr=0.1, momentum=0.9, weight_decay=0.1),
        "SGD",
        {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1},
    ),
    "adam": (lambda: Adam(lr=0.01), "Adam", {"lr": 0.01}),
    "adam-decay": (
        lambda: Adam(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
        "Adam",
        {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
    ),
    "adamw": (lambda: AdamW(lr=0.01, weight_decay=0.1), "AdamW", {"lr": 0.01, "weight_decay": 0.1}),
}


@NO_TORCH
@pytest.mark.parametrize("case", list(CASES))
def test_updates_match_torch_optim(case):
    import torch

    make, torch_name, options = CASES[case]
    params, grads = parameters_and_gradients()
    ours = [p.copy() for p in params]
    optimizer = make()

    tensors = [torch.tensor(p, requires_grad=True) for p in params]
    decay = options.pop("weight_decay", 0.0)
    # xpnet decays weights (2-D), never biases: torch gets the same split as two groups.
    groups = [
        {"params": [t for t in tensors if t.ndim > 1], "weight_decay": decay},
        {"params": [t for t in tensors if t.ndim == 1], "weight_decay": 0.0},
    ]
    reference = getattr(torch.optim, torch_name)(groups, **options)

    for round_ in grads:
        optimizer.step(ours, [g.copy() for g in round_])
        for t, g in zip(tensors, round_):
            t.grad = torch.tensor(g)
        reference.step()
        for mine, theirs in zip(ours, tensors):
            np.testing.assert_allclose(mine, theirs.detach().numpy(), rtol=1e-12, atol=1e-14)
    assert not np.allclose(ours[0], params[0])  # the steps moved the weights


def test_weight_decay_spares_biases():
    params = [np.ones((2, 2)), np.ones(2)]
    SGD(lr=0.5, weight_decay=0.2).step(params, [np.zeros((2, 2)), np.zeros(2)])
    np.testing.assert_allclose(params[0], 0.9)  # W <- W - η λ W
    np.testing.assert_allclose(params[1], 1.0)


def test_plain_sgd_is_w_minus_lr_g_in_place():
    W = np.array([[1.0, 2.0]])
    params = [W]
    SGD(lr=0.5).step(params, [np.array([[2.0, -2.0]])])
    np.testing.assert_allclose(params[0], [[0.0, 3.0]])
    assert params[0] is W  # mutable arrays are updated in place: the network's list keeps its arrays


# -- immutable arrays ------------------------------------------------------------------


class Frozen:
    """An array that cannot change in place, as JAX's: arithmetic only, no ``-=``, no item writes."""

    __slots__ = ("value",)

    def __init__(self, value):
        value = np.array(value, dtype=np.float64)
        value.flags.writeable = False
        object.__setattr__(self, "value", value)

    def __setattr__(self, name, value):
        raise AttributeError("Frozen arrays are immutable")

    def __array_namespace__(self, api_version=None):
        return FROZEN_NAMESPACE

    ndim = property(lambda self: self.value.ndim)
    shape = property(lambda self: self.value.shape)
    dtype = property(lambda self: self.value.dtype)

    def _op(self, other, fn):
        return Frozen(fn(self.value, other.value if isinstance(other, Frozen) else other))

    def __add__(self, other):
        return self._op(other, np.add)

    def __radd__(self, other):
        return self._op(other, lambda a, b: b + a)

    def __sub__(self, other):
        return self._op(other, np.subtract)

    def __rsub__(self, other):
        return self._op(other, lambda a, b: b - a)

    def __mul__(self, other):
        return self._op(other, np.multiply)

    def __rmul__(self, other):
        return self._op(other, lambda a, b: b * a)

    def __truediv__(self, other):
        return self._op(other, np.divide)

    def __rtruediv__(self, other):
        return self._op(other, lambda a, b: b / a)

    def __neg__(self):
        return Frozen(-self.value)


FROZEN_NAMESPACE = ModuleType("frozen_array_api")  # all of the array API that the optimizers call
FROZEN_NAMESPACE.sqrt = lambda x: Frozen(np.sqrt(x.value))


def test_frozen_really_refuses_in_place_updates():
    x = Frozen([1.0])
    assert not hasattr(x, "__isub__")
    with pytest.raises(ValueError, match="read-only"):
        x.value -= 1.0


@pytest.mark.parametrize("case", list(CASES))
def test_immutable_arrays_are_updated_functionally(case):
    make = CASES[case][0]
    params, grads = parameters_and_gradients(seed=3)
    mutable = [p.copy() for p in params]
    frozen = [Frozen(p) for p in params]
    originals = list(frozen)
    ours, theirs = make(), make()
    for round_ in grads:
        ours.step(mutable, [g.copy() for g in round_])
        theirs.step(frozen, [Frozen(g) for g in round_])
    for before, after, expected, start in zip(originals, frozen, mutable, params):
        assert isinstance(after, Frozen)
        np.testing.assert_allclose(after.value, expected, rtol=1e-13)
        np.testing.assert_array_equal(before.value, start)  # the old arrays were never touched
        assert not np.allclose(after.value, start)


# -- schedules ---------------------------------------------------------------------------


def test_constant_schedule():
    schedule = get_schedule("constant")
    assert isinstance(schedule, Constant)
    assert [schedule(t, 10) for t in (0, 5, 10)] == [1.0, 1.0, 1.0]
    assert isinstance(get_schedule(None), Constant)


def test_step_schedule_divides_by_ten_every_ten_epochs():
    schedule = get_schedule("step")
    assert isinstance(schedule, StepDecay)
    factors = [schedule(t, 30) for t in (0, 9.99, 10, 19.5, 20, 25)]
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_cosine_schedule_halves_at_midpoint_and_ends_at_zero():
    schedule = get_schedule("cosine")
    assert isinstance(schedule, Cosine)
    assert schedule(0, 20) == pytest.approx(1.0)
    assert schedule(5, 20) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert schedule(10, 20) == pytest.approx(0.5)
    assert schedule(20, 20) == pytest.approx(0.0, abs=1e-12)
    assert schedule(30, 20) == pytest.approx(0.0, abs=1e-12)  # past the end it stays at the floor
    assert Cosine(floor=0.1)(20, 20) == pytest.approx(0.1)


def test_warmup_cosine_ramps_for_one_epoch_then_follows_the_cosine():
    schedule = get_schedule("warmup_cosine")
    assert isinstance(schedule, Warmup)
    assert schedule(0, 10) == 0.0
    assert schedule(0.5, 10) == pytest.approx(0.5 * Cosine()(0.5, 10))
    assert schedule(1, 10) == pytest.approx(Cosine()(1, 10))
    assert schedule(5, 10) == pytest.approx(0.5)


def test_set_progress_applies_the_schedule_to_the_rate():
    optimizer = SGD(lr=0.2, schedule="step")
    optimizer.set_progress(15, 30)
    assert optimizer.lr == pytest.approx(0.02)
    assert optimizer.base_lr == 0.2
    optimizer = Adam(lr=1e-3, schedule=lambda t, total: 0.25)  # any callable is a schedule
    optimizer.set_progress(3, 10)
    assert optimizer.lr == pytest.approx(2.5e-4)


def test_get_optimizer_by_name_drops_unset_and_sgd_only_options():
    sgd = get_optimizer("SGD", lr=0.3, momentum=0.5, nesterov=None)
    assert isinstance(sgd, SGD) and (sgd.lr, sgd.momentum, sgd.nesterov) == (0.3, 0.5, False)
    adam = get_optimizer("adam", lr=None, momentum=0.9)
    assert type(adam) is Adam and adam.lr == 1e-3
    assert get_optimizer("adamw").weight_decay == 0.01


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda: SGD(lr=0), "lr"),
        (lambda: SGD(lr=-0.1), "lr"),
        (lambda: SGD(lr=float("nan")), "lr"),
        (lambda: SGD(lr="fast"), "lr"),
        (lambda: SGD(momentum=1.0), "momentum"),
        (lambda: SGD(momentum=-0.1), "momentum"),
        (lambda: SGD(nesterov=True), "nesterov"),
        (lambda: SGD(weight_decay=-1e-4), "weight_decay"),
        (lambda: Adam(betas=(1.0, 0.999)), "betas"),
        (lambda: AdamW(betas=(0.9, -0.1)), "betas"),
        (lambda: Adam(weight_decay=-1.0), "weight_decay"),
        (lambda: get_optimizer("rmsprop"), "optimizer"),
        (lambda: get_schedule("exponential"), "schedule"),
        (lambda: SGD(schedule="linear"), "schedule"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_argument(build, argument):
    with pytest.raises(ConfigError, match=argument):
        build()


@pytest.mark.parametrize(
    "optimizer",
    [SGD(), SGD(momentum=0.9), SGD(momentum=0.9, nesterov=True), Adam(), AdamW()],
    ids=["sgd", "momentum", "nesterov", "adam", "adamw"],
)
def test_every_update_names_a_fused_kernel_and_only_cupy_gets_one(optimizer):
    """A misspelt kernel name would otherwise surface only on a GPU."""
    import array_api_compat.numpy

    import xpnet.backend

    assert optimizer.kernel_name in xpnet.backend.KERNELS
    assert xpnet.backend.fused_kernel(array_api_compat.numpy, optimizer.kernel_name) is None
    optimizer.step([np.ones(3)], [np.ones(3)])
    assert optimizer.kernel is None  # NumPy: the array-API update ran
    with pytest.raises(ValueError, match="no fused kernel"):
        xpnet.backend.fused_kernel(array_api_compat.numpy, "sgd_typo")


@pytest.mark.parametrize("make", [lambda: Adam(lr=0.01, weight_decay=0.1), lambda: AdamW(lr=0.01, weight_decay=0.1)])
def test_adam_on_numpy_rounds_exactly_as_its_formula(make):
    # The update runs one operation at a time into temporaries; each must round as the
    # formula written in one line does, so float32 results are equal bit for bit.
    params, grads = parameters_and_gradients(seed=5)
    ours = [p.astype(np.float32) for p in params]
    optimizer = make()
    p, m, v = ours[0].copy(), np.zeros_like(ours[0]), np.zeros_like(ours[0])
    b1, b2, eps, lr, decay = optimizer.beta1, optimizer.beta2, optimizer.eps, optimizer.lr, optimizer.weight_decay
    for t, round_ in enumerate(grads, start=1):
        optimizer.step(ours, [g.astype(np.float32) for g in round_])
        g = round_[0].astype(np.float32)
        if optimizer.decoupled:
            p *= 1.0 - lr * decay
        else:
            g = g + decay * p
        m = b1 * m + (1.0 - b1) * g
        v = b2 * v + (1.0 - b2) * (g * g)
        p = p - (lr / (1.0 - b1**t)) * m / (np.sqrt(v * (1.0 / (1.0 - b2**t))) + eps)
        assert p.dtype == np.float32
        np.testing.assert_array_equal(ours[0], p)
