"""Predictions are never made from values the network cannot hold, nor printed when not finite.

Generated float64 inputs with a value beyond float32 at a random place are refused by
``predict`` (CLI and Python), ``evaluate`` and ``fit`` alike (one rule, ``xpnet.inputs``);
a model whose outputs overflow on finite inputs ends ``predict`` as ``xpnet: error:``
with nothing written; host inputs go to the device a batch at a time.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpnet import MLP
from xpnet.cli import main
from xpnet.errors import ConfigError, MemoryLimitError
from xpnet.memory import limited

F32_MAX = float(np.finfo(np.float32).max)


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 6), col=st.integers(0, 2), row=st.integers(0, 5),
    big=st.floats(F32_MAX * 1.01, 1e308) | st.floats(-1e308, -F32_MAX * 1.01),
)  # fmt: skip
def test_inputs_beyond_float32_are_refused_everywhere(tmp_path_factory, rows, col, row, big):
    folder = tmp_path_factory.mktemp("r")
    X = np.random.default_rng(rows).normal(size=(rows, 3))
    X[row % rows, col] = big
    net = MLP([3, 4, 2], seed=0)
    for call in (net.predict, net.predict_proba, lambda X: net.evaluate(X, np.zeros(len(X), np.int64))):
        with pytest.raises(ConfigError, match="beyond what the network's float32 holds"):
            call(X)
    with pytest.raises(ConfigError, match="beyond"):
        net.fit(X, np.zeros(rows, np.int64), epochs=1, verbose=False)
    net.save(folder / "m.safetensors")
    np.savez(folder / "x.npz", X=X)
    assert main(["predict", str(folder / "m.safetensors"), str(folder / "x.npz"), "--out", str(folder / "p.csv")]) == 2
    assert not (folder / "p.csv").exists()


def test_float64_networks_take_what_float64_holds():
    X = np.full((2, 3), 1e300)
    net = MLP([3, 2], activation="identity", loss="mse", dtype="float64", seed=0)
    assert np.all(np.abs(net.predict(X)) > 1e290)


@pytest.mark.parametrize("output", ["softmax", "sigmoid", "identity"])
def test_outputs_that_overflow_are_never_printed_as_predictions(tmp_path, capsys, output):
    loss = {"softmax": "cross_entropy", "sigmoid": "binary_cross_entropy", "identity": "mse"}[output]
    net = MLP([3, 2, 2 if output == "softmax" else 1], activation=["relu", output], loss=loss, seed=0)
    W1 = np.full((2, 3), 3e38, dtype=np.float32)  # finite weights: hidden units overflow to inf
    W2 = np.tile(np.array([1.0, -1.0], dtype=np.float32), (net.sizes[-1], 1))  # inf - inf: NaN
    net.params[0], net.params[2] = net.backend.upload(W1, net.dtype), net.backend.upload(W2, net.dtype)
    net.save(tmp_path / "m.safetensors")
    np.savez(tmp_path / "x.npz", X=np.full((4, 3), 1e3, dtype=np.float32))
    out = tmp_path / "p.csv"
    assert main(["predict", str(tmp_path / "m.safetensors"), str(tmp_path / "x.npz"), "--out", str(out)]) == 2
    assert "NaN or infinite" in capsys.readouterr().err and not out.exists()


def test_host_inputs_go_to_the_device_a_batch_at_a_time():
    X = np.random.default_rng(0).normal(size=(40_000, 100))  # 32 MB of float64; 16 MB as float32
    net = MLP([100, 8, 3], seed=0)
    tracemalloc.start()
    net.predict(X)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < X.nbytes / 8, peak


def test_predict_estimates_its_outputs_against_the_limit():
    net = MLP([4, 3, 1000], seed=0)
    with limited(2**20), pytest.raises(MemoryLimitError, match="predicting 100000 samples"):
        net.predict(np.zeros((100_000, 4), np.float32))
