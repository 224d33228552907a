"""The Poisson and Huber losses (xpnet.losses) against PyTorch's and scikit-learn's definitions.

Their BP1 is checked against finite differences in test_gradients.py and with sample
weights in test_weights.py; here: the values and gradients equal PyTorch's
``PoissonNLLLoss(log_input=True)`` and ``HuberLoss`` (up to the Poisson deviance's terms in y
alone), the value is scikit-learn's half Poisson deviance, and bad settings are refused.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import NO_TORCH, build_mlp, host, host_float

from xpnet import MLP
from xpnet.errors import ConfigError
from xpnet.losses import ExpPoisson, Huber
from xpnet.optim import Adam

RNG = np.random.default_rng(0)
X = RNG.standard_normal((12, 5))
COUNTS = RNG.poisson(1.5, (12, 3)).astype(np.float64)
TARGETS = 2 * RNG.standard_normal((12, 3))


def _torch_gradients(net, x, y, loss_fn):
    """PyTorch's loss and gradients of the same network (torch.nn.Linear layout) on ``x``."""
    torch = pytest.importorskip("torch")
    state = {k: torch.tensor(v, requires_grad=True) for k, v in net.state_dict().items()}
    a = torch.tensor(x)
    for l in range(net.depth):
        z = a @ state[f"layers.{l}.weight"].T + state[f"layers.{l}.bias"]
        a = torch.tanh(z) if l < net.depth - 1 else z  # the logits: the loss takes log-rates / outputs
    value = loss_fn(a, torch.tensor(y))
    value.backward()
    return float(value.detach()), [state[k].grad.numpy() for k in net.state_dict()]


@NO_TORCH
def test_poisson_matches_pytorch_poisson_nll_loss_with_log_input(spec):
    import torch

    net = build_mlp(spec, [5, 4, 3], activation="tanh", loss="poisson", dtype="float64", seed=1)
    assert isinstance(net.loss, ExpPoisson) and net.activations[-1].name == "exp"
    cost, layers = net.gradients(X, COUNTS)
    mean_over_outputs = torch.nn.PoissonNLLLoss(log_input=True, full=False)  # mean over every element
    value, expected = _torch_gradients(net, X, COUNTS, mean_over_outputs)
    # xpnet sums over the outputs and averages over rows: k = 3 times PyTorch's mean over all elements,
    # plus the deviance's terms in y alone, y log y - y, which have no gradient.
    y_terms = np.where(COUNTS > 0, COUNTS * np.log(np.where(COUNTS > 0, COUNTS, 1.0)), 0.0) - COUNTS
    assert host_float(net, cost) == pytest.approx(3 * value + y_terms.sum() / 12, rel=1e-12)
    for g, t in zip([host(net, g) for pair in layers for g in pair], expected):
        np.testing.assert_allclose(g, 3 * t, rtol=1e-10, atol=1e-14)


def test_poisson_value_is_scikit_learns_half_poisson_deviance(spec):
    metrics = pytest.importorskip("sklearn.metrics")
    net = build_mlp(spec, [5, 4, 1], activation="tanh", loss="poisson", dtype="float64", seed=2)
    y = COUNTS[:, 0]
    predicted = np.asarray(net.predict_proba(X))[:, 0]
    assert net.evaluate(X, y)["loss"] == pytest.approx(metrics.mean_poisson_deviance(y, predicted) / 2, rel=1e-12)


@NO_TORCH
@pytest.mark.parametrize("delta", [1.0, 0.3, 2.5])
def test_huber_matches_pytorch_huber_loss(spec, delta):
    import torch

    net = build_mlp(spec, [5, 4, 3], activation="tanh", loss="huber", huber_delta=delta, dtype="float64", seed=1)
    assert isinstance(net.loss, Huber) and net.loss.huber_delta == delta
    cost, layers = net.gradients(X, TARGETS)
    value, expected = _torch_gradients(net, X, TARGETS, torch.nn.HuberLoss(delta=delta))
    assert host_float(net, cost) == pytest.approx(3 * value, rel=1e-12)  # summed over 3 outputs, not averaged
    for g, t in zip([host(net, g) for pair in layers for g in pair], expected):
        np.testing.assert_allclose(g, 3 * t, rtol=1e-10, atol=1e-14)


def test_huber_is_half_the_squared_error_within_delta_and_linear_beyond():
    loss = Huber(1.5)
    a, y = np.array([[0.0, 0.0, 0.0]]), np.array([[1.0, -1.5, 4.0]])
    assert loss.value(np, a, a, y) == pytest.approx(0.5 + 0.5 * 1.5**2 + 1.5 * (4.0 - 0.75))
    np.testing.assert_allclose(loss.grad_a(np, a, y), [[-1.0, 1.5, -1.5]])


def test_poisson_refuses_negative_targets_and_other_outputs(tmp_path):
    net = MLP([5, 3, 1], loss="poisson")
    with pytest.raises(ConfigError, match=r"y holds negative values .*poisson"):
        net.fit(X, -COUNTS[:, :1])
    with pytest.raises(ConfigError, match="loss poisson needs the exponential output"):
        MLP([5, 3, 1], loss="poisson", output="identity")
    with pytest.raises(ConfigError, match="huber_delta must be a number > 0"):
        MLP([5, 3, 1], loss="huber", huber_delta=-1.0)


def test_huber_delta_travels_in_the_model_file(tmp_path):
    from xpnet import load_model

    net = MLP([5, 3, 2], loss="huber", huber_delta=0.25, seed=0)
    net.save(tmp_path / "h.safetensors")
    loaded = load_model(tmp_path / "h.safetensors")
    assert loaded.loss.huber_delta == 0.25 and loaded.config()["huber_delta"] == 0.25
    assert "huber_delta" not in MLP([5, 3, 2], loss="mse").config()  # other losses' files are unchanged
    assert net.evaluate(X, TARGETS[:, :2])["loss"] == pytest.approx(loaded.evaluate(X, TARGETS[:, :2])["loss"])


@pytest.mark.parametrize("loss", ["poisson", "huber"])
def test_regression_losses_learn(spec, loss):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((256, 2))
    if loss == "poisson":
        y = rng.poisson(np.exp(0.8 * x[:, :1])).astype(np.float64)
    else:
        y = x[:, :1] - x[:, 1:] + rng.standard_t(1.5, (256, 1))
    net = build_mlp(spec, [2, 16, 1], loss=loss, dtype="float64", seed=0)
    before = net.evaluate(x, y)["loss"]
    net.fit(x, y, epochs=30, batch_size=32, optimizer=Adam(0.01))
    assert not net.is_classifier
    assert net.evaluate(x, y)["loss"] < 0.7 * before
