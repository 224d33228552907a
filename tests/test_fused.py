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
from xpnet.backend import kernel_spec
from xpnet.precision import all_finite
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


def _flagged_run(name: str, kernel) -> list[list[np.ndarray]]:
    """Parameters and buffers after each of 5 steps whose 0-d finite flag is made as float16's loss
    scaling makes it; steps 1 and 3 hold an inf (and a NaN) in their gradients. ``kernel``: None for
    the array-API update (the reference), else the fused kernel's stand-in."""
    rng = np.random.default_rng(2)
    optimizer = OPTIMIZERS[name]()
    if kernel is not None:
        optimizer.xp, optimizer.kernel = xp, kernel
    params, after = [rng.standard_normal((4, 3)), rng.standard_normal(4)], []
    for step in range(5):
        grads = [rng.standard_normal(p.shape) for p in params]
        if step in (1, 3):
            grads[0][1, 2], grads[1][0] = np.inf, np.nan
        with np.errstate(invalid="ignore"):
            optimizer.step(params, grads, finite=all_finite(xp, grads))
        after.append([np.array(a) for a in params + optimizer.state_arrays()])
    return after


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fused_updates_with_float16s_finite_flag_equal_the_array_api_updates(name):
    """The flag is one more kernel input: where it is false the fused update leaves the parameters and
    buffers as they were, bit for bit, as the array-API update (the reference) does; where it is true
    both take the step, with the same step count for Adam's bias correction."""
    fused, reference = _flagged_run(name, CKernel(OPTIMIZERS[name]().kernel_name)), _flagged_run(name, None)
    for step, (got, want) in enumerate(zip(fused, reference)):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15, err_msg=f"step {step}")
        if step in (1, 3):  # skipped: exactly the arrays of the step before
            assert all(np.array_equal(a, b) for a, b in zip(got, fused[step - 1]))
            assert all(np.array_equal(a, b) for a, b in zip(want, reference[step - 1]))
        else:
            assert not np.array_equal(got[0], fused[step - 1][0] if step else got[0] + 1)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_fused_update_that_ignores_the_finite_flag_is_caught(name):
    """The comparison above can fail: the same kernel with its guard dropped lets the inf in."""
    inputs, outputs, body = kernel_spec(OPTIMIZERS[name]().kernel_name)
    unguarded = body.removeprefix("if (finite) {").removesuffix("}")
    assert unguarded != body
    fused = _flagged_run(name, CKernel(name, (inputs, outputs, unguarded)))
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(fused[1][0], _flagged_run(name, None)[1][0], rtol=1e-12)


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
