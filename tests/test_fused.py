"""The fused CuPy kernels against the array-API code they replace, without a GPU.

Each kernel's CUDA body is a few C statements; ``CKernel`` (xpnet.selfcheck.interpret)
runs them with NumPy, called exactly as CuPy's ``ElementwiseKernel`` is (inputs, then
outputs updated in place). That checks the argument order, the math and the in-place
updates of every fused path here; tests/test_kernel_compile.py compiles the C for real
GPUs, and tests/test_gpu.py runs it on one.
"""

from __future__ import annotations

import array_api_compat.numpy as xp
import numpy as np
import pytest

import xpnet.activations
import xpnet.network
from xpnet.activations import ReLU
from xpnet.selfcheck.interpret import CKernel
from xpnet.selfcheck.kernels import OPTIMIZERS  # one optimizer per fused update, as selfcheck runs them


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fused_optimizer_updates_equal_the_array_api_updates(name):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal((4, 3)), rng.standard_normal(4)]
    fused, reference = OPTIMIZERS[name](), OPTIMIZERS[name]()
    fused.xp, fused.kernel = xp, CKernel(fused.kernel_name)  # what step() would pick on CuPy
    fused_params, reference_params = [p.copy() for p in params], [p.copy() for p in params]
    arrays = list(fused_params)
    for _ in range(4):
        grads = [rng.standard_normal(p.shape) for p in params]
        fused.step(fused_params, [g.copy() for g in grads])
        reference.step(reference_params, grads)
    for got, want in zip(fused_params + fused.state_arrays(), reference_params + reference.state_arrays()):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert all(p is q for p, q in zip(fused_params, arrays))  # updated in place


def test_fused_relu_backward_equals_the_array_api_backward(monkeypatch):
    rng = np.random.default_rng(1)
    z, grad = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    z[0, :2] = 0.0, -0.0  # the step's edge: σ'(0) = 0
    expected = ReLU().backward(xp, z, None, grad.copy())
    monkeypatch.setattr(xpnet.activations, "fused_kernel", lambda namespace, name: CKernel(name))
    out = grad.copy()
    assert ReLU().backward(xp, z, None, out) is out  # in place, as the kernel's output argument
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("per_feature", [False, True])
def test_fused_input_scaling_equals_the_array_api_scaling(monkeypatch, per_feature):
    from xpnet.data import Scaling
    from xpnet.network import MLP

    net = MLP([3, 2], dtype="float64")
    shift, scale = (np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.25, 2.0])) if per_feature else (10.0, 1 / 255)
    net.set_scaling(Scaling("standard" if per_feature else "unit", shift, scale))
    x = np.array([[0, 128, 255], [7, 9, 11]], dtype=np.uint8)
    expected = net.prepare(x)
    monkeypatch.setattr(xpnet.network, "fused_kernel", lambda namespace, name: CKernel(name))
    got = net.prepare(x)
    assert got.dtype == np.float64 and got.shape == x.shape
    np.testing.assert_allclose(got, expected, rtol=1e-15)
    np.testing.assert_allclose(got, (x - shift) * scale, rtol=1e-15)
