"""Activations, losses and initialisers: their values, their stability on huge logits,
and the messages a user gets for names and settings xpnet cannot use."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from conftest import build_mlp, host

from xpnet.activations import LeakyReLU, get_activation
from xpnet.backend import row_max
from xpnet.errors import ConfigError
from xpnet.init import INITIALIZERS, init_name, initial_parameters
from xpnet.losses import (
    MSE,
    BinaryCrossEntropy,
    CrossEntropy,
    SigmoidBinaryCrossEntropy,
    SoftmaxCrossEntropy,
    get_loss,
    loss_name,
)
from xpnet.network import MLP

Z = np.array([[-3.0, -0.5, 0.0, 0.7, 4.0], [2.0, -1.0, 0.3, -6.0, 1.5]])


def on(net, array):
    return net.backend.upload(np.asarray(array), net.dtype)


# -- activations -------------------------------------------------------------------------------

REFERENCE = {
    "identity": lambda z: z,
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0),
    "leaky_relu": lambda z: np.where(z > 0, z, 0.01 * z),
    "leaky_relu(0.2)": lambda z: np.where(z > 0, z, 0.2 * z),
    "softmax": lambda z: np.exp(z) / np.exp(z).sum(axis=1, keepdims=True),
}
DERIVATIVE = {
    "identity": lambda z: np.ones_like(z),
    "sigmoid": lambda z: np.exp(-z) / (1 + np.exp(-z)) ** 2,
    "tanh": lambda z: 1 / np.cosh(z) ** 2,
    "relu": lambda z: (z > 0).astype(float),
    "leaky_relu": lambda z: np.where(z > 0, 1.0, 0.01),
    "leaky_relu(0.2)": lambda z: np.where(z > 0, 1.0, 0.2),
}


@pytest.mark.parametrize("name", list(REFERENCE))
def test_activation_values_on_every_backend(spec, name):
    net = build_mlp(spec, [5, 5], dtype="float64")
    act = get_activation(name)
    a = act.forward(net.xp, on(net, Z))
    np.testing.assert_allclose(host(net, a), REFERENCE[name](Z), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", list(DERIVATIVE))
def test_elementwise_backward_is_grad_times_derivative(spec, name):
    net = build_mlp(spec, [5, 5], dtype="float64")
    act = get_activation(name)
    z = on(net, Z)
    a = act.forward(net.xp, z)
    grad = np.arange(Z.size, dtype=float).reshape(Z.shape) - 4.0
    expected = grad * DERIVATIVE[name](Z)
    out = act.backward(net.xp, z, a, on(net, grad))  # may overwrite its grad argument (NumPy: grad itself)
    np.testing.assert_allclose(host(net, out), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("rows", [1, 7, 64, 1024])
def test_row_max_is_the_libraries_own_max_exactly(spec, rows):
    """``row_max`` (NumPy: down the columns of a transposed copy) gives ``xp.max(axis=1)``'s numbers, NaN
    and infinities included, with and without keepdims."""
    net = build_mlp(spec, [5, 5], dtype="float32")
    z = np.random.default_rng(rows).standard_normal((rows, 10)).astype(np.float32)
    z[0, 3], z[-1, :2] = np.nan, (np.inf, -np.inf)  # a NaN row, and a row with both infinities
    z[rows // 2, 5:] = 0.0
    on_device = on(net, z)
    own = host(net, net.xp.max(on_device, axis=1))  # JAX's CPU max skips the NaN at 1024 rows: its own way
    assert np.array_equal(host(net, row_max(net.xp, on_device)), own, equal_nan=True)
    kept = host(net, row_max(net.xp, on_device, keepdims=True))
    assert kept.shape == (rows, 1) and np.array_equal(kept[:, 0], own, equal_nan=True)


def test_softmax_backward_is_the_jacobian_transpose_product():
    softmax = get_activation("softmax")
    a = softmax.forward(np, Z)
    g = np.array([[1.0, -2.0, 0.5, 0.0, 3.0], [0.1, 0.2, -0.3, 0.4, 0.5]])
    expected = [(np.diag(row) - np.outer(row, row)).T @ grad for row, grad in zip(a, g)]
    np.testing.assert_allclose(softmax.backward(np, Z, a, g), expected, rtol=1e-12)
    np.testing.assert_allclose(a.sum(axis=1), 1.0)


def test_activation_names_and_specs():
    assert get_activation("Leaky-ReLU").alpha == 0.01
    assert get_activation("leaky_relu(0.2)").alpha == 0.2
    assert get_activation("leaky_relu(0.2)").spec() == "leaky_relu(0.2)"
    assert get_activation("linear").name == "identity"
    assert get_activation(" TANH ").name == "tanh"
    leaky = LeakyReLU(0.3)
    assert get_activation(leaky) is leaky
    for name in ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "softmax"):
        assert get_activation(get_activation(name).spec()).spec() == get_activation(name).spec()


# -- losses ---------------------------------------------------------------------------------------


def test_mse_is_half_the_mean_squared_norm():
    a = np.array([[0.2, 0.8], [0.5, 0.1], [1.0, 0.0]])
    y = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    assert MSE().value(np, a, a, y) == pytest.approx(((a - y) ** 2).sum() / (2 * 3))
    np.testing.assert_allclose(MSE().grad_a(np, a, y), (a - y) / 3)


def test_fused_cross_entropy_equals_the_plain_formula():
    y = np.eye(5)[[1, 3]]
    a = get_activation("softmax").forward(np, Z)
    expected = -np.sum(y * np.log(a)) / 2
    assert SoftmaxCrossEntropy().value(np, Z, a, y) == pytest.approx(expected, rel=1e-12)
    assert CrossEntropy().value(np, Z, a, y) == pytest.approx(expected, rel=1e-9)
    np.testing.assert_allclose(SoftmaxCrossEntropy().delta(np, Z, a, y, None), (a - y) / 2)


def test_fused_binary_cross_entropy_equals_the_plain_formula():
    y = (Z > 0.2).astype(float)
    a = get_activation("sigmoid").forward(np, Z)
    expected = -np.sum(y * np.log(a) + (1 - y) * np.log(1 - a)) / 2
    assert SigmoidBinaryCrossEntropy().value(np, Z, a, y) == pytest.approx(expected, rel=1e-12)
    assert BinaryCrossEntropy().value(np, Z, a, y) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("loss", "output", "cls"),
    [
        ("cross_entropy", "softmax", SoftmaxCrossEntropy),
        ("ce", "sigmoid", CrossEntropy),
        ("binary_cross_entropy", "sigmoid", SigmoidBinaryCrossEntropy),
        ("bce", "softmax", BinaryCrossEntropy),
        ("mse", "softmax", MSE),
        ("quadratic", "identity", MSE),
    ],
)
def test_losses_fuse_only_with_their_partner(loss, output, cls):
    assert type(get_loss(loss, get_activation(output))) is cls


def test_default_output_follows_the_loss():
    assert build_mlp(("numpy", None), [2, 3, 4]).activations[-1].name == "softmax"
    assert build_mlp(("numpy", None), [2, 3, 1], loss="bce").activations[-1].name == "sigmoid"
    assert build_mlp(("numpy", None), [2, 3, 1], loss="mse").activations[-1].name == "identity"
    assert build_mlp(("numpy", None), [2, 3, 2], loss="mse", output="tanh").activations[-1].name == "tanh"


# -- stability on huge logits ---------------------------------------------------------------------

HUGE = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [-1e4, -1e4, -1e4]])


@pytest.mark.parametrize(
    ("output", "loss", "targets"),
    [
        ("softmax", "cross_entropy", np.eye(3)[[1, 0, 2]]),  # the first two rows are confidently wrong
        ("sigmoid", "binary_cross_entropy", np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])),
        ("sigmoid", "mse", np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])),
        ("softmax", "binary_cross_entropy", np.eye(3)[[1, 0, 2]]),
        ("sigmoid", "cross_entropy", np.eye(3)[[1, 0, 2]]),
    ],
)
def test_huge_logits_give_finite_losses_and_gradients_without_warnings(spec, output, loss, targets):
    net = build_mlp(spec, [3, 3], activation=[output], loss=loss)  # float32
    xp = net.xp
    # exp(-2e4) underflowing to 0 is the right answer; overflow, log(0) and NaN are the failures.
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        z = on(net, HUGE)
        a = net.activations[-1].forward(xp, z)
        y = on(net, targets)
        value = host(net, net.loss.value(xp, z, a, y))
        delta = host(net, net.loss.delta(xp, z, a, y, net.activations[-1]))
        # and through a whole network: weights that turn unit inputs into logits of ±1e4
        net.params[0] = on(net, HUGE.T)
        cost, layers = net.gradients(np.eye(3), targets)
        grads = [host(net, g) for pair in layers for g in pair]
        cost = host(net, cost)
    assert np.isfinite(value) and np.all(np.isfinite(delta))
    assert np.isfinite(cost) and all(np.all(np.isfinite(g)) for g in grads)
    if net.loss.name != "mse" and type(net.loss) in (SoftmaxCrossEntropy, SigmoidBinaryCrossEntropy):
        assert value > 1e3  # confidently wrong logits cost what they should, not a clipped log(eps)


def test_sigmoid_saturates_exactly_without_overflow():
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        a = get_activation("sigmoid").forward(np, np.array([-1e4, -50.0, 0.0, 50.0, 1e4], dtype=np.float32))
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a[[0, 2, 4]], [0.0, 0.5, 1.0])


# -- initialisers -----------------------------------------------------------------------------------

FAN_IN, FAN_OUT = 400, 300


@pytest.mark.parametrize(
    ("name", "std"),
    [
        ("standard_normal", 1.0),
        ("scaled_normal", math.sqrt(1 / FAN_IN)),
        ("glorot_uniform", math.sqrt(2 / (FAN_IN + FAN_OUT))),
        ("glorot_normal", math.sqrt(2 / (FAN_IN + FAN_OUT))),
        ("glorot_uniform_sigmoid", 4 * math.sqrt(2 / (FAN_IN + FAN_OUT))),
        ("he_normal", math.sqrt(2 / FAN_IN)),
        ("he_uniform", math.sqrt(2 / FAN_IN)),
    ],
)
def test_initialisers_have_their_shapes_and_spreads(name, std):
    (W, b), (W2, _) = initial_parameters([FAN_IN, FAN_OUT, 10], [name, name], seed=0)
    assert W.shape == (FAN_OUT, FAN_IN) and b.shape == (FAN_OUT,) and W2.shape == (10, FAN_OUT)
    assert W.std() == pytest.approx(std, rel=0.02)
    assert abs(W.mean()) < 0.02 * std
    if name == "standard_normal":
        assert b.std() == pytest.approx(1.0, rel=0.2)  # the seeds draw biases too
    else:
        np.testing.assert_array_equal(b, 0.0)
    if "uniform" in name:
        assert np.abs(W).max() <= std * math.sqrt(3)


def test_initialisers_are_reproducible_from_the_seed():
    first = initial_parameters([5, 4, 3], ["he_normal", "glorot_uniform"], seed=3)
    again = initial_parameters([5, 4, 3], ["he_normal", "glorot_uniform"], seed=3)
    other = initial_parameters([5, 4, 3], ["he_normal", "glorot_uniform"], seed=4)
    for (W, b), (W2, b2) in zip(first, again):
        np.testing.assert_array_equal(W, W2)
        np.testing.assert_array_equal(b, b2)
    assert not np.array_equal(first[0][0], other[0][0])


def test_init_names_and_auto():
    assert init_name("auto", "relu") == "he_normal"
    assert init_name("auto", "leaky_relu") == "he_normal"
    assert init_name("auto", "sigmoid") == "glorot_uniform"
    assert init_name("Xavier-Uniform") == "glorot_uniform"
    assert init_name("kaiming_normal") == "he_normal"
    assert init_name("randn") == "standard_normal"
    assert set(INITIALIZERS) >= {"standard_normal", "scaled_normal", "glorot_normal", "he_uniform"}
    net = build_mlp(("numpy", None), [2, 3, 3, 2], activation="relu", init=["randn", "auto", "auto"])
    assert net.inits == ["standard_normal", "he_normal", "glorot_uniform"]  # the softmax output gets Glorot


# -- refusals that name the argument ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"activation": "swish"}, r"unknown activation 'swish'; choose from identity, sigmoid, tanh, relu"),
        ({"activation": "relu(0.1)"}, r"only leaky_relu takes a parameter"),
        ({"activation": "leaky_relu(a)"}, r"slope must be a number"),
        ({"activation": "leaky_relu(1.5)"}, r"leaky_relu slope must be in \[0, 1\)"),
        ({"activation": 3}, r"activation must be a name"),
        ({"activation": ["relu", "relu", "softmax"]}, r"activation lists 3 entries but the network has 2 layers"),
        ({"activation": ["relu", "softmax"], "output": "softmax"}, r"output activation either"),
        ({"loss": "hinge"}, r"unknown loss 'hinge'; choose from mse, cross_entropy, binary_cross_entropy"),
        ({"init": "orthogonal"}, r"unknown init 'orthogonal'; choose from auto, standard_normal"),
        ({"init": ["auto"]}, r"init lists 1 entries but the network has 2 layers"),
        ({"dropout": 1.0}, r"dropout rates must be in \[0, 1\), not 1.0"),
        ({"dropout": -0.1}, r"dropout"),
        ({"dropout": [0.5]}, r"dropout lists 1 entries"),
        ({"dtype": "int8"}, r"dtype must be one of float32, float64, not 'int8'"),
    ],
)
def test_bad_settings_raise_config_error_naming_them(options, message):
    with pytest.raises(ConfigError, match=message):
        build_mlp(("numpy", None), [4, 8, 3], **options)


def test_unknown_backend_name_is_refused_by_the_network():
    with pytest.raises(
        ConfigError, match=r"unknown backend 'tensorflow'; choose from numpy, cupy, torch, array-api-strict, jax$"
    ):
        MLP([4, 3], backend="tensorflow")


@pytest.mark.parametrize("sizes", [[4], [], [4, 0, 3], [4, -2], "784", ["a", 3], None])
def test_bad_sizes_raise_config_error_naming_sizes(sizes):
    with pytest.raises(ConfigError, match="sizes"):
        build_mlp(("numpy", None), sizes)


def test_loss_aliases():
    assert [loss_name(n) for n in ("MSE", "ce", "Cross-Entropy", "bce")] == [
        "mse",
        "cross_entropy",
        "cross_entropy",
        "binary_cross_entropy",
    ]
