"""One registry of names: each kind's choices, help and errors come from its table, and a new
activation or optimizer is its class plus one registry line (no fused CUDA body needed)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CPU_BACKENDS, blobs

from xpnet.activations import Activation
from xpnet.cli import build_parser
from xpnet.errors import ConfigError
from xpnet.network import MLP
from xpnet.optim import Optimizer, get_optimizer
from xpnet.registry import ACTIVATIONS, KINDS, OPTIMIZERS
from xpnet.settings import TABLE, check_setting


def test_every_kind_is_registered_once():
    assert set(KINDS) == {
        "activation", "loss", "optimizer", "schedule", "init", "precision", "monitor", "norm", "backend",
    }  # fmt: skip


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_spells_and_refuses_by_its_table(kind):
    registry = KINDS[kind]
    for name in registry:
        assert registry.canonical(name.upper().replace("-", "_")) == name
    with pytest.raises(ConfigError) as info:
        registry.canonical("no-such-name")
    assert str(info.value) == f"unknown {kind} 'no-such-name'; choose from {registry.listing()}"


@pytest.mark.parametrize("setting", ["optimizer", "schedule", "norm", "precision", "monitor", "backend"])
def test_cli_choices_come_from_the_registry(setting):
    assert TABLE[setting].choices == tuple(KINDS[setting])


def test_help_lists_what_the_registries_hold():
    help_text = " ".join(build_parser().format_help().split())
    train = " ".join(TABLE[name].help for name in ("activation", "loss", "init"))
    for name in [*ACTIVATIONS, *KINDS["loss"], *KINDS["init"]]:
        assert name in train
    assert "train" in help_text


class Softplus(Activation):
    """log(1 + e^z): a new activation, one class and one registry line."""

    name = "softplus"
    onnx = ("Softplus", {})

    def forward(self, xp, z):
        return xp.log1p(xp.exp(-xp.abs(z))) + xp.maximum(z, 0.0 * z)

    def backward(self, xp, z, a, grad_a):
        return grad_a * (0.5 * (xp.tanh(0.5 * z) + 1.0))


def test_a_new_activation_is_one_class_plus_one_registry_line(monkeypatch):
    monkeypatch.setitem(ACTIVATIONS._entries, "softplus", Softplus)
    assert check_setting("activation", "SoftPlus") == "softplus"
    net = MLP([4, 6, 3], activation="softplus", seed=0)
    X, y = blobs(n=40, features=4, classes=3)
    net.fit(X, y, epochs=2, batch_size=10)
    assert net.config()["activations"][0] == "softplus"


class SignSGD(Optimizer):
    """p <- p - lr sign(g): a new optimizer with no fused CUDA body."""

    def _update(self, i, p, g, decay, *skip):
        p -= self.lr * self.xp.sign(g)
        return p


@pytest.mark.parametrize("spec", CPU_BACKENDS)
def test_an_optimizer_without_a_fused_body_runs_its_array_api_update(monkeypatch, spec):
    monkeypatch.setitem(OPTIMIZERS._entries, "signsgd", SignSGD)
    optimizer = get_optimizer("SignSGD", lr=0.01, momentum=0.9)  # momentum: not declared, ignored
    assert type(optimizer) is SignSGD and optimizer.kernel_name is None
    net = MLP([4, 6, 3], backend=spec[0], device=spec[1], seed=0)
    before = net.state_dict()["layers.0.weight"].copy()  # a host copy may share the CPU tensor
    X, y = blobs(n=40, features=4, classes=3)
    net.fit(X, y, epochs=1, batch_size=10, optimizer=optimizer)
    moved = np.abs(net.state_dict()["layers.0.weight"] - before)
    assert optimizer.steps == 4 and optimizer.kernel is None
    assert moved.max() > 0 and moved.max() <= 0.01 * optimizer.steps * (1 + 1e-5)  # sign steps of lr each
