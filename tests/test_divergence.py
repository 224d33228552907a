"""Divergence never slips through: whichever step ruins the weights, no NaN is kept or saved.

Hypothesis picks a run (samples, batch size, epochs, validation or not) and a step
after which the weights turn NaN or infinite, or validation inputs that overflow
the forward pass. Wherever it lands (mid-epoch, an epoch's very last step, the
run's last step), ``fit`` must raise ``DivergenceError`` naming that epoch, every
checkpoint written before must hold finite weights and resume to a finite model,
and ``save_model`` must refuse a non-finite network.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpnet.checkpoint import ModelFile, save_model
from xpnet.errors import DivergenceError
from xpnet.network import MLP
from xpnet.optim import SGD
from xpnet.train import History, fit

ROOT = Path(__file__).resolve().parent.parent
RUNS = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class _Poisoning(SGD):
    """Plain SGD whose step number ``after`` leaves one weight ``value`` (NaN or infinite)."""

    def __init__(self, after: int, value: float):
        super().__init__(lr=0.05)
        self.after, self.value = after, value

    def step(self, params, grads):
        super().step(params, grads)
        if self.steps == self.after:
            params[0][0, 0] = self.value


def _data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(np.int32)


@RUNS
@given(
    n=st.integers(8, 40),
    batch_size=st.integers(1, 16),
    epochs=st.integers(1, 4),
    where=st.floats(0.0, 1.0),
    poison=st.sampled_from(["nan", "inf", "validation"]),
    validated=st.booleans(),
)
def test_no_run_keeps_or_saves_a_non_finite_model(tmp_path_factory, n, batch_size, epochs, where, poison, validated):
    folder = tmp_path_factory.mktemp("run")
    X, y = _data(n)
    steps = n // min(batch_size, n)
    after = 1 + round(where * (steps * epochs - 1))  # any step of the run, the last ones included
    net = MLP([3, 4, 2], seed=0)
    X_val = X[:4]
    if poison == "validation":  # finite inputs whose forward pass overflows: a NaN validation loss
        validated, after = True, 0
        X_val = np.full((4, 3), 3e38, np.float32)
        net.params[0][...] = 10.0  # z^1 = 9e39 = inf whatever the first epoch's steps do to W^1
    optimizer = _Poisoning(after, math.nan if poison == "nan" else math.inf)
    saved = []

    def checkpoint(history):
        path = folder / f"epoch{history.epoch}.ckpt.safetensors"
        save_model(path, net, training={"seed": 0}, history=history, optimizer=optimizer)
        saved.append(path)

    validation = (X_val, y[:4]) if validated else None
    with pytest.raises(DivergenceError, match="training diverged in epoch") as info:
        fit(net, X, y, epochs=epochs, batch_size=batch_size, optimizer=optimizer, validation_data=validation,
            on_epoch_end=checkpoint)  # fmt: skip
    epoch = 1 if poison == "validation" else (after - 1) // steps + 1
    assert f"in epoch {epoch}:" in str(info.value)
    assert len(saved) == epoch - 1
    if poison != "validation":  # there the weights stay finite; only the validation outputs overflow
        with pytest.raises(DivergenceError, match="NaN or infinite"):
            save_model(folder / "diverged.safetensors", net)
        assert not (folder / "diverged.safetensors").exists()
    for path in saved:  # each "last good checkpoint" is good, and resumes
        _resume(ModelFile(path), X, y, epochs)


def _resume(saved: ModelFile, X, y, epochs) -> None:
    net = saved.build()
    optimizer = SGD(lr=0.05)
    history = History.from_resume_state(saved.resume_state(), best_params=saved.best_params(net))
    fit(net, X, y, epochs=epochs, batch_size=4, optimizer=optimizer, history=history)
    assert all(np.all(np.isfinite(p)) for p in net.params)


@pytest.mark.parametrize("epochs", [1, 2])
def test_one_step_per_epoch_with_a_huge_rate_exits_1_and_saves_nothing_non_finite(tmp_path, epochs):
    """The reported case: each epoch is one step, so the step that ruins the weights is an epoch's last."""
    X, y = _data(64)
    np.savez(tmp_path / "d.npz", X=X * 1000, y=y)  # large inputs, unscaled: one step at lr 1e38 overflows
    args = ["--dataset", "d.npz", "--scaling", "none", "--layers", "8", "--batch-size", "64", "--val-split", "0"]
    args += ["--optimizer", "sgd", "--lr", "1e38", "--schedule", "constant"]  # no warm-up: step 1 diverges
    args += ["--epochs", epochs, "--out", "m.safetensors", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-m", "xpnet", "train", *map(str, args)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 1, done.stderr
    assert "training diverged in epoch 1" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "m.safetensors").exists()
    checkpoint = tmp_path / "m.ckpt.safetensors"
    assert not checkpoint.exists() and "last good checkpoint" not in done.stderr
