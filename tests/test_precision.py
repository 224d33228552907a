"""Mixed precision: bfloat16 for real on PyTorch's CPU, float16 on NumPy for correctness,
dynamic loss scaling that recovers from an overflow, float32 masters in every file."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from conftest import HAVE_TORCH, NEEDS_TORCH, blobs

from xpnet.backend import get_backend, substituted_kernels
from xpnet.checkpoint import ModelFile
from xpnet.data import Scaling
from xpnet.errors import ConfigError
from xpnet.modelfile import save_model
from xpnet.network import MLP
from xpnet.optim import SGD, Adam, AdamW
from xpnet.precision import LossScaler, get_precision
from xpnet.safetensors import load_tensors
from xpnet.selfcheck.interpret import CKernel
from xpnet.selfcheck.kernels import _Recorder
from xpnet.train import History, fit

NO_TORCH = pytest.mark.skipif(not HAVE_TORCH, reason=NEEDS_TORCH)


def gradients(precision: str, backend: str = "numpy", hidden: str = "tanh"):
    rng = np.random.default_rng(0)
    net = MLP([6, 16, 8, 3], activation=hidden, backend=backend, precision=precision, seed=3)
    x, y = rng.standard_normal((32, 6)).astype(np.float32), rng.integers(0, 3, 32)
    cost, layers = net.gradients(x, y)
    return net, float(net.backend.to_host(cost)), [net.backend.to_host(g) for layer in layers for g in layer]


def assert_close_to_float32(precision: str, backend: str, rtol: float):
    _, cost32, reference = gradients("float32", backend)
    net, cost, grads = gradients(precision, backend)
    assert cost == pytest.approx(cost32, rel=rtol)
    for got, want in zip(grads, reference):
        assert got.dtype == np.float32  # the optimizer gets float32 gradients
        assert np.linalg.norm(got - want) <= rtol * np.linalg.norm(want)
    return net


def test_float16_on_numpy_computes_the_float32_gradients_to_half_precision():
    net = assert_close_to_float32("mixed-float16", "numpy", rtol=5e-3)
    x = net.prepare(net.to_device(np.zeros((2, 6))))
    assert x.dtype == np.float16 and all(p.dtype == np.float32 for p in net.params)


@NO_TORCH
def test_bfloat16_runs_for_real_on_torch_cpu():
    """Every matmul of a training step runs in bfloat16; the gradients match float32's to its precision."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    assert_close_to_float32("mixed-bfloat16", "torch", rtol=3e-2)
    matmul_types = set()

    class Matmuls(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__.split(".")[0] in ("mm", "addmm"):  # the layers' (vecdot's bmm counts hits)
                matmul_types.update(str(a.dtype) for a in args if isinstance(a, torch.Tensor))
            return func(*args, **(kwargs or {}))

    X, y = blobs(n=256, features=4, classes=3)
    net = MLP([4, 32, 3], backend="torch", precision="mixed-bfloat16", seed=0)
    with Matmuls():
        history = net.fit(X, y, epochs=3, batch_size=32, optimizer=Adam(lr=0.01))
    assert matmul_types == {"torch.bfloat16"}
    assert history.records[-1]["accuracy"] > 0.95
    assert all(p.dtype == torch.float32 for p in net.params)


def test_float16_training_on_numpy_matches_float32():
    X, y = blobs(n=512, features=4, classes=4)
    accuracy = {}
    for precision in ("float32", "mixed-float16"):
        net = MLP([4, 32, 4], precision=precision, dropout=0.1, seed=0)
        history = net.fit(X, y, epochs=4, batch_size=32, optimizer=Adam(lr=0.01), validation_data=(X, y))
        accuracy[precision] = net.evaluate(X, y)["accuracy"]
    assert history.records[-1]["skipped_steps"] <= 2  # 2^15 may overflow once at the start, then fits
    assert accuracy["mixed-float16"] == pytest.approx(accuracy["float32"], abs=0.01)
    assert accuracy["float32"] > 0.95


def test_an_overflowing_step_is_undone_and_the_scale_halves():
    net = MLP([3, 4, 2], precision="mixed-float16", seed=0)
    optimizer, scaler = Adam(lr=0.1), LossScaler(net, scale=1024.0, growth_interval=2)
    params = [np.array(p) for p in net.params]
    grads = [np.ones_like(p) for p in net.params]
    grads[1] = grads[1] * np.inf  # an injected overflow
    with np.errstate(invalid="ignore"):  # fit runs under Backend.quiet_float_errors; this test calls the step
        scaler.step(optimizer, net.params, grads)
    assert all(np.array_equal(p, q) for p, q in zip(net.params, params))  # the weights are put back
    assert all(not np.any(b) for b in optimizer.state_arrays())  # and Adam's moments
    assert [float(v) for v in scaler.state()] == [512.0, 0.0, 1.0]
    for _ in range(2):
        scaler.step(optimizer, net.params, [np.ones_like(p) for p in net.params])
    assert not np.array_equal(net.params[0], params[0])
    assert [float(v) for v in scaler.state()] == [1024.0, 0.0, 1.0]  # two good steps in a row: doubled


@pytest.mark.parametrize("fused", [False, True], ids=["array-api", "fused-kernel"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: Adam(lr=0.1, weight_decay=0.01),
        lambda: AdamW(lr=0.1, weight_decay=0.1),
        lambda: SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
        lambda: SGD(lr=0.1),
    ],
    ids=["adam", "adamw", "nesterov", "sgd"],
)
def test_an_overflowing_step_leaves_weights_and_buffers_bit_for_bit(make, fused):
    """The skip folded into the update, on the array-API path and in the fused kernel (its C body run
    by CKernel): after a good step has filled the buffers, an overflow changes nothing, not one bit."""
    net = MLP([3, 4, 2], precision="mixed-float16", seed=0)
    optimizer, scaler = make(), LossScaler(net)
    with substituted_kernels(CKernel) if fused else contextlib.nullcontext():
        scaler.step(optimizer, net.params, [np.ones_like(p) for p in net.params])
        before = [np.array(a) for a in net.params + optimizer.state_arrays()]
        grads = [np.ones_like(p) for p in net.params]
        grads[0][0, 0], grads[-1][0] = np.inf, np.nan
        with np.errstate(invalid="ignore"):
            scaler.step(optimizer, net.params, grads)
    assert (optimizer.kernel is not None) == fused
    assert all(np.array_equal(a, b) for a, b in zip(net.params + optimizer.state_arrays(), before))
    assert [float(v) for v in scaler.state()][2] == 1.0


def test_loss_scaling_recovers_from_an_injected_overflow_in_training():
    """A loss scale of 2^40 overflows float16 at once: steps are skipped until it fits, then training learns."""
    X, y = blobs(n=512, features=4, classes=4)
    net = MLP([4, 32, 4], precision="mixed-float16", seed=0)
    history = fit(net, X, y, epochs=3, batch_size=32, optimizer=SGD(lr=0.1, momentum=0.9),
                  history=History(loss_scaler=[2.0**40, 0.0, 0.0]))  # fmt: skip
    skipped = history.records[-1]["skipped_steps"]
    assert 10 <= skipped <= 40  # 2^40 halved to below float16's reach, then no more
    assert history.records[0]["loss_scale"] < 2.0**40 and history.loss_scaler[0] == history.records[-1]["loss_scale"]
    assert history.records[-1]["accuracy"] > 0.95


def test_checkpoints_keep_float32_masters_and_resume_the_loss_scaling(tmp_path):
    X, y = blobs(n=120, features=4, classes=3)
    whole = MLP([4, 8, 3], precision="mixed-float16", seed=1)
    whole_history = fit(whole, X, y, epochs=2, batch_size=10, optimizer=SGD(lr=0.1, momentum=0.9))
    net, optimizer = MLP([4, 8, 3], precision="mixed-float16", seed=1), SGD(lr=0.1, momentum=0.9)
    polls = iter(range(100))
    history = fit(net, X, y, epochs=2, batch_size=10, optimizer=optimizer, should_stop=lambda: next(polls) >= 15)
    scale, good, skipped = history.loss_scaler
    assert history.interrupted and 0 < good <= 15 and scale == 2.0**15 / 2**skipped  # 15 steps, none grew it
    path = tmp_path / "m.ckpt.safetensors"
    save_model(path, net, history=history, optimizer=optimizer)
    tensors, _ = load_tensors(path)
    assert {t.dtype for t in tensors.values()} == {np.dtype(np.float32)}
    saved = ModelFile(path)
    assert saved.saved_precision == "mixed-float16" and saved.build().precision.name == "float32"
    resumed, optimizer = saved.build(precision=saved.saved_precision), SGD(lr=0.1, momentum=0.9)
    optimizer.load_state_arrays(
        saved.optimizer_buffers(resumed, optimizer), saved.checkpoint["optimizer_steps"], resumed.params
    )
    done = fit(
        resumed,
        X,
        y,
        epochs=2,
        batch_size=10,
        optimizer=optimizer,
        history=History.from_resume_state(saved.resume_state()),
    )
    assert done.loss_scaler == whole_history.loss_scaler  # the run of good steps went on where it stopped
    for name, value in whole.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[name], value, err_msg=name)


def test_precision_choices_are_checked_with_clear_messages():
    assert get_precision("Mixed_BFloat16").name == "mixed-bfloat16"
    with pytest.raises(ConfigError, match=r"precision.*float32, mixed-float16, mixed-bfloat16"):
        get_precision("float8")
    with pytest.raises(ConfigError, match="mixed-bfloat16 needs PyTorch"):
        MLP([2, 2], precision="mixed-bfloat16")
    with pytest.raises(ConfigError, match="dtype must be float32"):
        MLP([2, 2], precision="mixed-float16", dtype="float64")
    with pytest.raises(ConfigError, match="array-api-strict has no float16"):
        MLP([2, 2], backend="array-api-strict", precision="mixed-float16")


def test_tf32_is_an_opt_in_for_cuda_matmuls_only():
    backend = get_backend("numpy")
    backend.use_tf32(True)  # nothing to switch off CUDA (tests/test_gpu.py switches it on a GPU)
    assert backend.tf32_state().startswith("n/a")


def test_mixed_precision_scales_inputs_in_float32_before_the_half_cast():
    """A feature with std 1e-6 has a scale of 1e6 (inf in float16), one with mean 1000 and std 0.56
    loses 0.5 std when x - shift runs in half: scaled in float32, then cast, both stay within 1e-2
    of Scaling.apply (float32, what ONNX export does), on the array-API path and the fused kernel's."""
    rng = np.random.default_rng(0)
    X = np.stack([0.5 + 1e-6 * rng.standard_normal(64), 1000 + 0.56 * rng.standard_normal(64)], axis=1)
    X = X.astype(np.float32)  # as a GPU holds it (to_device uploads floats in the network dtype)
    scaling = Scaling.fit("standard", X)
    assert float(np.max(scaling.scale)) > 65504
    expected = scaling.apply(X)
    net = MLP([2, 3], precision="mixed-float16", seed=0)
    net.set_scaling(scaling)
    calls = {}
    for stand_in in (None, lambda name: _Recorder(name, calls)):
        with substituted_kernels(stand_in) if stand_in else contextlib.nullcontext():
            got = net.prepare(net.to_device(X))
        assert got.dtype == np.float16 and np.all(np.isfinite(got))
        np.testing.assert_allclose(got.astype(np.float32), expected, atol=1e-2)
    ((_, shift, scale, out),) = calls["scale_inputs"]
    assert shift.dtype == scale.dtype == np.float32 and out.dtype == np.float16
