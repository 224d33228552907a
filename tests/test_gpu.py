"""The gradient check and the backend agreement on CUDA: CuPy and torch.cuda.

The same checks as test_gradients and test_backends, parametrised over the GPU
backends; each is marked ``gpu`` and skipped, with the reason, where CuPy, PyTorch
with CUDA, or a GPU is missing.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import GPU_BACKENDS, build_mlp, host
from test_backends import OPTIMIZERS, assert_agree, run_steps
from test_gradients import GRADIENT_CASES, check_dropout_gradients, check_gradients

from xpnet.data import Scaling
from xpnet.optim import SGD

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize(("hidden", "output", "loss", "fused", "depth"), GRADIENT_CASES)
@pytest.mark.parametrize("spec", GPU_BACKENDS)
def test_gradients_match_finite_differences_on_gpu(spec, hidden, output, loss, fused, depth):
    check_gradients(spec, hidden, output, loss, fused, depth)


@pytest.mark.parametrize("spec", GPU_BACKENDS)
def test_dropout_gradients_with_fixed_masks_on_gpu(spec):
    check_dropout_gradients(spec, "relu")


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("spec", GPU_BACKENDS)
def test_gpu_agrees_with_numpy(spec, dtype, optimizer):
    assert_agree(spec, dtype, optimizer)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("spec", GPU_BACKENDS)
def test_fused_kernels_agree_with_the_array_api_reference(spec, optimizer):
    """On CuPy, ReLU's backward and every optimizer update run as fused kernels;
    NumPy runs the array-API code they replace. Same losses, same weights."""
    losses, state = run_steps(spec, "float64", optimizer, activation="relu")
    reference, reference_state = run_steps(("numpy", None), "float64", optimizer, activation="relu")
    np.testing.assert_allclose(losses, reference, rtol=1e-9)
    for name, value in state.items():
        np.testing.assert_allclose(value, reference_state[name], rtol=1e-7, atol=1e-10, err_msg=name)


@pytest.mark.parametrize(
    "scaling",
    [Scaling("unit", 0.0, 1 / 255), Scaling("standard", np.arange(5.0), np.linspace(0.5, 2.0, 5))],
    ids=["unit", "per-feature"],
)
@pytest.mark.parametrize("spec", GPU_BACKENDS)
def test_uint8_batches_are_cast_and_scaled_on_the_gpu(spec, scaling):
    """CuPy casts and scales a batch in one fused kernel; NumPy runs the array-API reference."""
    X = np.random.default_rng(0).integers(0, 256, (8, 5), dtype=np.uint8)
    prepared = []
    for which in (spec, ("numpy", None)):
        net = build_mlp(which, [5, 3])
        net.set_scaling(scaling)
        with net.backend.activated():
            prepared.append(host(net, net.prepare(net.to_device(X))))
    np.testing.assert_allclose(prepared[0], prepared[1], rtol=1e-6)
    assert prepared[0].dtype == np.float32


@pytest.mark.parametrize("spec", GPU_BACKENDS)
def test_fit_on_gpu_reads_once_per_epoch(spec):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((128, 4))
    y = (X[:, 0] > 0).astype(np.int64)
    net = build_mlp(spec, [4, 16, 2], seed=0)
    reads = net.backend.host_reads
    history = net.fit(X, y, epochs=5, batch_size=16, optimizer=SGD(lr=0.1, momentum=0.9), validation_data=(X, y))
    assert net.backend.host_reads - reads <= 5
    assert history.records[-1]["accuracy"] > 0.9
