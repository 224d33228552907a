"""BP1-BP4 against finite differences, for every activation x loss pair, in float64.

The check itself (the five-point difference, its step, tolerance and floor, inputs away
from ReLU's kink) is ``xpnet.selfcheck.gradcheck``, the one ``python -m xpnet selfcheck``
runs: the tests and the selfcheck hold the gradients to the same criterion.
The loss is evaluated on the backend under test, by the network's own forward pass.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import CPU_BACKENDS, build_mlp, host, host_float

from xpnet.losses import (
    BinaryCrossEntropy,
    CrossEntropy,
    ExpPoisson,
    Huber,
    SigmoidBinaryCrossEntropy,
    SoftmaxCrossEntropy,
)
from xpnet.selfcheck.gradcheck import TOLERANCE, finite_differences, relative_error, smooth_inputs

HIDDEN = ["sigmoid", "tanh", "relu", "leaky_relu", "identity"]
#: (output activation, loss, the loss class get_loss must pick: fused or not)
OUTPUT_LOSSES = [
    ("softmax", "cross_entropy", SoftmaxCrossEntropy),
    ("sigmoid", "binary_cross_entropy", SigmoidBinaryCrossEntropy),
    ("identity", "mse", None),
    ("sigmoid", "mse", None),
    ("softmax", "mse", None),
    ("tanh", "mse", None),
    ("sigmoid", "cross_entropy", CrossEntropy),
    ("softmax", "binary_cross_entropy", BinaryCrossEntropy),
    ("exp", "poisson", ExpPoisson),
    ("identity", "huber", Huber),
    ("tanh", "huber", Huber),
]
DEPTHS = {"shallow": [3, 4, 3], "deep": [3, 4, 4, 4, 4, 3]}

GRADIENT_CASES = [
    pytest.param(hidden, output, loss, fused, depth, id=f"{hidden}-{output}-{loss}-{depth}")
    for (output, loss, fused), hidden, depth in itertools.product(OUTPUT_LOSSES, HIDDEN, DEPTHS)
]


def make_targets(output: str, loss: str, n: int, classes: int, rng) -> np.ndarray:
    if loss == "cross_entropy":
        return np.eye(classes)[rng.integers(0, classes, n)]
    if loss == "binary_cross_entropy":
        return rng.integers(0, 2, (n, classes)).astype(np.float64)
    if loss == "poisson":
        return rng.poisson(1.5, (n, classes)).astype(np.float64)  # counts, zeros among them
    if output == "identity":
        return rng.standard_normal((n, classes))
    return rng.uniform(0.05, 0.95, (n, classes))


def assert_gradients_close(net, analytic, numeric):
    names = [f"{'W' if i % 2 == 0 else 'b'}^{i // 2 + 1}" for i in range(len(numeric))]
    for name, g, fd in zip(names, analytic, numeric):
        assert g.shape == fd.shape, name
        assert relative_error(g, fd) < TOLERANCE, f"∂C/∂{name}: analytic {g} vs finite differences {fd}"
    # Every parameter the check covers must matter, or a zero gradient would pass.
    assert max(float(np.max(np.abs(fd))) for fd in numeric) > 1e-3


def assert_matches_the_forward_pass(net, x, y, cost, analytic):
    """``net.gradients``' cost is the forward pass's, and its gradients the forward cost's finite differences."""
    xd, yd = net.to_device(x), net.to_device(y)

    def forward_cost():
        z, a = net.forward(xd, logits=True)
        return net.loss.value(net.xp, z, a, yd)

    assert host_float(net, cost) == pytest.approx(host_float(net, forward_cost()), rel=1e-12)
    assert_gradients_close(net, analytic, finite_differences(net, forward_cost))


def check_gradients(spec, hidden, output, loss, fused, depth, seed=0):
    """net.gradients (BP1-BP4) against finite differences on the backend of ``spec``."""
    rng = np.random.default_rng(seed)
    net = build_mlp(spec, DEPTHS[depth], activation=hidden, output=output, loss=loss, dtype="float64", seed=seed)
    if fused is not None:
        assert type(net.loss) is fused
    x, _ = smooth_inputs(net, 6, rng)
    y = make_targets(output, loss, 6, net.sizes[-1], rng)
    if loss == "huber":  # residuals on both sides of δ = 1, none near its kink
        y = np.asarray(net.predict_proba(x)) + rng.choice([-3.0, -0.4, 0.4, 3.0], y.shape)

    cost, layers = net.gradients(x, y)
    analytic = [host(net, g) for pair in layers for g in pair]
    assert all(g.dtype == np.float64 for g in analytic)

    assert_matches_the_forward_pass(net, x, y, cost, analytic)


def check_dropout_gradients(spec, hidden, seed=0):
    """With the dropout masks held fixed, backprop(train=True) is the gradient of the masked loss."""
    rng = np.random.default_rng(seed)
    sizes = DEPTHS["deep"]
    net = build_mlp(spec, sizes, activation=hidden, loss="cross_entropy", dropout=0.4, dtype="float64", seed=seed)
    rate = 0.4
    x, host_masks = smooth_inputs(net, 6, rng, rate)
    y = make_targets("softmax", "cross_entropy", 6, sizes[-1], rng)
    assert all(0 < m.mean() < 1 / (1 - rate) for m in host_masks)  # some units dropped, some kept
    masks = [net.backend.upload(m, net.dtype) for m in host_masks]
    calls = itertools.cycle(range(len(masks)))
    net._dropout_mask = lambda shape, r: masks[next(calls)]

    xd, yd = net.to_device(x), net.to_device(y)
    cost, grads, _ = net.backprop(xd, yd, train=True)
    analytic = [host(net, g) for g in grads]

    def masked_cost():
        return net.backprop(xd, yd, train=True)[0]

    plain_cost, _, _ = net.backprop(xd, yd, train=False)
    assert host_float(net, cost) != pytest.approx(host_float(net, plain_cost), rel=1e-6)  # the masks are used
    assert_gradients_close(net, analytic, finite_differences(net, masked_cost))


@pytest.mark.parametrize(("hidden", "output", "loss", "fused", "depth"), GRADIENT_CASES)
@pytest.mark.parametrize("spec", CPU_BACKENDS)
def test_gradients_match_finite_differences(spec, hidden, output, loss, fused, depth):
    check_gradients(spec, hidden, output, loss, fused, depth)


@pytest.mark.parametrize("hidden", ["sigmoid", "relu"])
@pytest.mark.parametrize("spec", CPU_BACKENDS)
def test_dropout_gradients_with_fixed_masks(spec, hidden):
    check_dropout_gradients(spec, hidden)


def test_relative_error_sees_a_wrong_gradient():
    g = np.array([1.0, 2e-3, 0.0])
    assert relative_error(g, g) == 0.0
    assert relative_error(g, g * (1 + 1e-5)) > TOLERANCE
    assert relative_error(g, g + np.array([0, 0, 1e-9])) > TOLERANCE
