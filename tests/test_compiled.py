"""Compiled training on JAX (``xpnet.compiled``): the same numbers as the eager step and as NumPy,
stops between chunks that resume exactly, one trace per chunk length, one host read per epoch."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import HAVE_JAX, blobs

from xpnet import compiled
from xpnet import train as training
from xpnet.network import MLP
from xpnet.optim import SGD, Adam, AdamW
from xpnet.train import History, fit

pytestmark = pytest.mark.skipif(not HAVE_JAX, reason='needs JAX (pip install "xpnet[jax]")')

OPTIMIZERS = {
    "sgd-nesterov": lambda: SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3, schedule="cosine"),
    "adam": lambda: Adam(lr=0.01, weight_decay=1e-3, schedule="warmup-cosine"),
    "adamw": lambda: AdamW(lr=0.01),
}


def _weights(net) -> list[np.ndarray]:
    return [net.backend.to_host(p) for p in net.params]


def _train(backend, make_optimizer, *, dtype="float64", dropout=0.0, compile=True, epochs=1):
    X, y = blobs(n=200, features=5, classes=3, seed=3)
    net = MLP([5, 7, 3], backend=backend, dtype=dtype, dropout=dropout, seed=1)
    validation = blobs(n=30, features=5, classes=3, seed=4)
    history = fit(
        net, X, y, epochs=epochs, batch_size=8, optimizer=make_optimizer(), validation_data=validation, compile=compile
    )
    return net, history


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_float64_compiled_equals_numpy_after_an_epoch(name):
    want, want_history = _train("numpy", OPTIMIZERS[name])
    got, got_history = _train("jax", OPTIMIZERS[name])
    for a, b in zip(_weights(got), _weights(want)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)
    assert got_history.records[-1]["loss"] == pytest.approx(want_history.records[-1]["loss"], abs=1e-10)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_eager_and_compiled_agree_on_jax_with_dropout(dtype):
    """The same dropout key stream either way: compiled and eager runs are the same training."""
    eager, _ = _train("jax", OPTIMIZERS["adam"], dtype=dtype, dropout=0.3, compile=False, epochs=2)
    fused, _ = _train("jax", OPTIMIZERS["adam"], dtype=dtype, dropout=0.3, compile=True, epochs=2)
    tolerance = 1e-10 if dtype == "float64" else 1e-5
    for a, b in zip(_weights(fused), _weights(eager)):
        np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance)
    assert np.array_equal(np.asarray(fused.dropout_rng.key), np.asarray(eager.dropout_rng.key))


def test_a_stop_lands_between_chunks_and_resumes_exactly():
    X, y = blobs(n=700, features=4, classes=3)  # 87 steps of 8: a chunk of 64 and one of 23

    def run(history=None, should_stop=None, epochs=2):
        net = MLP([4, 6, 3], backend="jax", dropout=0.2, seed=2)
        optimizer = SGD(lr=0.05, momentum=0.9)
        if history is not None:
            net.params[:], state = history
            optimizer.load_state_arrays(state[0], state[1], net.params)
            history = state[2]
        result = fit(
            net, X, y, epochs=epochs, batch_size=8, optimizer=optimizer, should_stop=should_stop, history=history
        )
        return net, optimizer, result

    whole, _, _ = run()
    polls = []
    # Polled after each chunk and each epoch: the 4th poll is after epoch 2's first chunk.
    net, optimizer, history = run(should_stop=lambda: polls.append(1) or len(polls) >= 4)
    assert history.interrupted and history.epoch == 1 and history.batch == compiled.CHUNK_STEPS
    resumed_history = History.from_resume_state(history.resume_state())
    state = (optimizer.state_arrays(), optimizer.steps, resumed_history)
    resumed, _, _ = run(history=(list(net.params), state))
    for a, b in zip(_weights(resumed), _weights(whole)):
        np.testing.assert_array_equal(a, b)  # bit for bit: the same compiled chunks, the same key stream


def test_one_trace_per_chunk_length_kept_between_fits_and_one_read_per_epoch(monkeypatch):
    """Each trace is compiled once, timed, and reported in the epoch that paid it (``compile_seconds``)."""
    traced = []
    step = training._train_step

    def counting(loop, idx, sums, batch=None):
        traced.append(batch[0].shape[:1] if idx is None else idx.shape)  # eager: rows made ahead (xpnet.batches)
        return step(loop, idx, sums, batch)

    monkeypatch.setattr(training, "_train_step", counting)
    X, y = blobs(n=700, features=4, classes=3)
    net = MLP([4, 6, 3], backend="jax")
    reads = net.backend.host_reads
    lines = []
    history = fit(
        net, X, y, epochs=3, batch_size=8, optimizer=SGD(lr=0.05, momentum=0.9), restore_best=False,
        verbose=True, log=lines.append,
    )  # fmt: skip
    assert traced == [(8,), (8,)]  # the chunk of 64 steps and the epoch's last 23: traced once each
    assert net.backend.host_reads - reads == 3
    first, *later = history.records
    assert 0 < first["compile_seconds"] < first["seconds"] and all("compile_seconds" not in r for r in later)
    assert f"(compiled in {first['compile_seconds']:.1f} s)" in lines[0] and "compiled" not in " ".join(lines[1:])
    traced.clear()
    history = fit(net, X, y, epochs=1, batch_size=8, optimizer=SGD(lr=0.01, momentum=0.9))  # another rate: the same
    assert traced == [] and "compile_seconds" not in history.records[0]
    history = fit(net, X, y, epochs=1, batch_size=8, optimizer=SGD(lr=0.01, momentum=0.5))  # another momentum: anew
    assert traced == [(8,), (8,)] and history.records[0]["compile_seconds"] > 0
    traced.clear()
    history = fit(net, X, y, epochs=1, batch_size=8, optimizer=SGD(lr=0.05), compile=False)
    assert len(traced) == 87  # eager: every step runs the Python step
    assert "compile_seconds" not in history.records[0]
