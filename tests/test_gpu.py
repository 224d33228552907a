"""The gradient check and the backend agreement on CUDA: CuPy, torch.cuda and JAX (compiled).

The same checks as test_gradients and test_backends, parametrised over the GPU
backends, and what only a GPU can show: the libraries' own synchronisation switches
(``torch.cuda.set_sync_debug_mode("error")``, ``cupyx.allow_synchronize(False)``, both
under ``Backend.audit``), real dropout masks, the compiled kernels against their
reference and against the source the CI compiles, save and resume on the device, a
second GPU, the selfcheck and its benchmark. Each is marked ``gpu`` and skipped, with
the reason, where CuPy, PyTorch with CUDA, JAX with CUDA, or a GPU is missing. The GPU kit
runs the JAX ones as their own step (``-k jax-cuda``), skipped where the node's JAX has no CUDA.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from conftest import GPU_BACKENDS, blobs, build_mlp, host
from test_backends import OPTIMIZERS, SIZES, STEPS, assert_agree, run_steps
from test_gradients import GRADIENT_CASES, check_dropout_gradients, check_gradients

from xpnet.activations import ReLU
from xpnet.backend import fused_kernel, get_backend, kernel_cuda_source, substituted_kernels
from xpnet.backend.kernels import _cupy_kernel
from xpnet.checkpoint import ModelFile
from xpnet.data import Scaling
from xpnet.modelfile import save_model
from xpnet.optim import SGD, Adam
from xpnet.precision import LossScaler
from xpnet.selfcheck import main as selfcheck_main
from xpnet.selfcheck.kernels import recorded_calls
from xpnet.train import History

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize(("hidden", "output", "loss", "fused", "depth"), GRADIENT_CASES)
@pytest.mark.parametrize("spec", GPU_BACKENDS)
def test_gradients_match_finite_differences_on_gpu(spec, hidden, output, loss, fused, depth):
    check_gradients(spec, hidden, output, loss, fused, depth)


@pytest.mark.parametrize("spec", GPU_BACKENDS)
def test_dropout_gradients_with_fixed_masks_on_gpu(spec):
    check_dropout_gradients(spec, "relu")


#: (losses' rtol, weights' rtol, weights' atol) on a GPU: the tolerances the CPU backends had before
#: they were set from observed error (issue 28); no GPU run has measured the error yet, so these
#: are to be tightened to about 10 times what the first GPU run shows (cuBLAS sums in other orders).
GPU_TOLERANCES = {"float64": (1e-9, 1e-7, 1e-10), "float32": (1e-4, 1e-2, 1e-5)}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("spec", GPU_BACKENDS)
def test_gpu_agrees_with_numpy(spec, dtype, optimizer):
    assert_agree(spec, dtype, optimizer, GPU_TOLERANCES)


class _Counted:
    """A fused kernel that counts its launches before passing them on."""

    def __init__(self, kernel, name: str, launches: dict):
        self.kernel, self.name, self.launches = kernel, name, launches

    def __call__(self, *args, **kwargs):
        self.launches[self.name] = self.launches.get(self.name, 0) + 1
        return self.kernel(*args, **kwargs)


def fused_launches(spec, optimizer: str, make_kernel) -> tuple[np.ndarray, dict, dict]:
    """``run_steps`` with every fused-kernel call site handed ``make_kernel(name)``, counted:
    the losses, the final weights and the launches by kernel name."""
    launches: dict[str, int] = {}
    with substituted_kernels(lambda name: _Counted(make_kernel(name), name, launches)):
        losses, state = run_steps(spec, "float64", optimizer, activation="relu")
    return losses, state, launches


#: CuPy alone has fused kernels; PyTorch on CUDA runs the array-API code, as NumPy does.
CUPY = [p for p in GPU_BACKENDS if p.values[0][0] == "cupy"]


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("spec", CUPY)
def test_fused_kernels_agree_with_the_array_api_reference(spec, optimizer):
    """On CuPy, ReLU's backward and every optimizer update run as fused kernels (counted: each
    step launches ReLU's once per hidden layer and the optimizer's once per weight and bias array);
    NumPy runs the array-API code they replace. Same losses, same weights."""
    losses, state, launches = fused_launches(spec, optimizer, _cupy_kernel)
    layers = len(SIZES) - 1
    assert launches == {"relu_backward": (layers - 1) * STEPS, OPTIMIZERS[optimizer]().kernel_name: 2 * layers * STEPS}
    reference, reference_state = run_steps(("numpy", None), "float64", optimizer, activation="relu")
    np.testing.assert_allclose(losses, reference, rtol=1e-9)
    for name, value in state.items():
        np.testing.assert_allclose(value, reference_state[name], rtol=1e-7, atol=1e-10, err_msg=name)


def test_the_launch_count_sees_every_call_site_on_the_cpu():
    # What the CuPy test above counts, checked here without a GPU: the kernels' C bodies interpreted
    # by NumPy stand in for CuPy's at every call site, and each launch is counted.
    from xpnet.selfcheck.interpret import CKernel

    losses, _, launches = fused_launches(("numpy", None), "adam", CKernel)
    layers = len(SIZES) - 1
    assert launches == {"relu_backward": (layers - 1) * STEPS, "adam": 2 * layers * STEPS}
    reference, _ = run_steps(("numpy", None), "float64", "adam", activation="relu")
    np.testing.assert_allclose(losses, reference, rtol=1e-12)


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
    assert net.backend.host_reads - reads == 5  # one read per epoch, for the metrics
    assert history.records[-1]["accuracy"] > 0.9


@pytest.mark.parametrize("spec", GPU_BACKENDS)
def test_training_on_gpu_never_synchronises_behind_the_budget(spec):
    """fit, evaluate and predict under the libraries' own switches: any hidden synchronisation raises."""
    X, y = blobs(n=256)
    net = build_mlp(spec, [2, 32, 2], activation="relu", dropout=0.1, seed=0)
    with net.backend.audit() as audit:
        net.fit(X, y, epochs=2, batch_size=32, optimizer=SGD(lr=0.1, momentum=0.9), validation_data=(X, y))
        net.evaluate(X, y)
        net.predict(X)
    assert audit.violations == []
    assert audit.reads == 2 + 1 + 1  # per epoch, evaluate, predict (host in, host out)


@pytest.mark.parametrize("spec", GPU_BACKENDS)
def test_real_dropout_masks_on_gpu(spec):
    net = build_mlp(spec, [4, 4, 2], dropout=0.25, seed=0)
    masks = [host(net, net._dropout_mask((400, 500), 0.25)) for _ in range(2)]
    assert abs(np.mean(masks[0] != 0) - 0.75) < 0.01
    np.testing.assert_allclose(masks[0][masks[0] != 0], 1 / 0.75, rtol=1e-6)
    assert not np.array_equal(masks[0], masks[1])


@pytest.mark.parametrize("spec", GPU_BACKENDS)
def test_float32_relu_backward_equals_the_reference_on_gpu(spec):
    rng = np.random.default_rng(0)
    z, grad = rng.standard_normal((64, 33)).astype(np.float32), rng.standard_normal((64, 33)).astype(np.float32)
    z[0, :2] = 0.0, -0.0
    backend = get_backend(*spec)
    with backend.activated():
        got = backend.to_host(ReLU().backward(backend.xp, backend.upload(z), None, backend.upload(grad)))
    np.testing.assert_array_equal(got, grad * (z > 0))


@pytest.mark.parametrize("spec", GPU_BACKENDS)
def test_evaluate_and_predict_on_gpu_match_numpy(spec):
    X, y = blobs(n=300, classes=3)
    nets = [build_mlp(which, [2, 16, 3], seed=0) for which in (spec, ("numpy", None))]
    results = [(net.evaluate(X, y), net.predict(X), net.predict_proba(X)) for net in nets]
    assert results[0][0]["accuracy"] == pytest.approx(results[1][0]["accuracy"])
    assert results[0][0]["loss"] == pytest.approx(results[1][0]["loss"], rel=1e-5)
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_allclose(results[0][2], results[1][2], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("spec", GPU_BACKENDS)
def test_checkpoint_save_and_resume_on_gpu(spec, tmp_path):
    X, y = blobs(n=96, classes=3)
    reference = build_mlp(spec, [2, 16, 3], seed=0)
    reference.fit(X, y, epochs=3, batch_size=16, optimizer=SGD(lr=0.1, momentum=0.9))
    net, optimizer = build_mlp(spec, [2, 16, 3], seed=0), SGD(lr=0.1, momentum=0.9)
    polls = iter(range(100))
    # Compiled steps (JAX) are polled once a chunk and once an epoch, not once a step: stop after epoch 2 there.
    stop_at = 3 if net.backend.compiles_steps else 7
    history = net.fit(X, y, epochs=3, batch_size=16, optimizer=optimizer, should_stop=lambda: next(polls) >= stop_at)
    assert history.interrupted
    save_model(tmp_path / "m.ckpt.safetensors", net, history=history, optimizer=optimizer)
    saved = ModelFile(tmp_path / "m.ckpt.safetensors")
    resumed, optimizer = saved.build(*spec), SGD(lr=0.1, momentum=0.9)
    optimizer.load_state_arrays(
        saved.optimizer_buffers(resumed, optimizer), saved.checkpoint["optimizer_steps"], resumed.params
    )
    resumed.fit(
        X, y, epochs=3, batch_size=16, optimizer=optimizer, history=History.from_resume_state(saved.resume_state())
    )
    for name, value in reference.state_dict().items():
        np.testing.assert_allclose(resumed.state_dict()[name], value, rtol=1e-5, atol=1e-7, err_msg=name)


def _gpu_count(library: str) -> int:
    if library == "cupy":
        import cupy

        return cupy.cuda.runtime.getDeviceCount()
    if library == "jax":
        import jax

        return len(jax.devices("gpu"))
    import torch

    return torch.cuda.device_count()


@pytest.mark.parametrize("spec", GPU_BACKENDS)
def test_a_second_gpu_keeps_everything_on_it(spec):
    """Bug 3: best weights restored after the loop, evaluate and predict all stay on cuda:1."""
    if _gpu_count(spec[0]) < 2:
        pytest.skip("needs a second GPU")
    X, y = blobs(n=128)
    net = build_mlp((spec[0], "cuda:1"), [2, 16, 2], seed=0)
    history = net.fit(X, y, epochs=4, batch_size=16, validation_data=(X[:32], y[:32]), patience=1)
    assert all(net.backend.owns(p) for p in net.params), history.restored_best
    assert net.evaluate(X, y)["accuracy"] > 0.9
    assert net.predict(X).shape == (128,)
    net.backend.synchronize()


@pytest.mark.parametrize("spec", [p for p in GPU_BACKENDS if p.values[0][0] == "cupy"])
def test_the_source_ci_compiles_is_the_source_cupy_compiles(spec):
    """tests/test_kernel_compile.py compiles kernel_cuda_source's text; here CuPy compiles its own
    for the same calls on a real GPU, and the two must be the same text."""
    backend, flags = get_backend(*spec), 0
    for name, calls in recorded_calls(("float32",)).items():
        for source, args in {kernel_cuda_source(name, args): args for args in calls}.items():  # each distinct call
            flags += any(isinstance(a, np.ndarray) and a.dtype == bool for a in args)  # float16's device flag
            with backend.activated():
                kernel = fused_kernel(backend.xp, name)
                kernel(*[backend.upload(a) if isinstance(a, np.ndarray) else a for a in args])
            assert source.split("\n", 4)[-1] in "".join(kernel.cached_codes.values()), name
    assert flags >= 4  # each optimizer kernel was also called with the 0-d finite flag on the device


@pytest.mark.parametrize("spec", [p for p in GPU_BACKENDS if p.values[0][0] == "cupy"])
def test_a_float16_overflow_leaves_the_fused_updates_weights_and_buffers_bit_for_bit(spec):
    """CuPy's fused Adam gets the 0-d overflow flag on the device: a step whose gradients hold an inf
    changes no weight and no moment (nothing is copied to be put back), and the next step updates."""
    net = build_mlp(spec, [3, 4, 2], precision="mixed-float16", seed=0)
    optimizer, scaler, xp = Adam(lr=0.1, weight_decay=0.01), LossScaler(net), net.xp
    with net.backend.activated():
        scaler.step(optimizer, net.params, [xp.ones_like(p) for p in net.params])
        assert optimizer.kernel is not None
        before = [host(net, a) for a in net.params + optimizer.state_arrays()]
        grads = [xp.ones_like(p) for p in net.params]
        grads[0][0, 0] = float("inf")
        scaler.step(optimizer, net.params, grads)
        after = [host(net, a) for a in net.params + optimizer.state_arrays()]
        assert all(np.array_equal(a, b) for a, b in zip(after, before))
        assert [float(host(net, v)) for v in scaler.state()] == [2.0**14, 0.0, 1.0]
        scaler.step(optimizer, net.params, [xp.ones_like(p) for p in net.params])
        assert not np.array_equal(host(net, net.params[0]), before[0])


@pytest.mark.parametrize("spec", GPU_BACKENDS)
def test_selfcheck_passes_on_the_gpu_with_its_benchmark(spec, capsys):
    status = selfcheck_main(argparse.Namespace(backend=spec[0], device=spec[1], json=False))
    out = capsys.readouterr().out
    assert status == 0, out
    assert "PASS  benchmark" in out and "GEMM ceiling" in out
    assert "getVersion" not in out and "(0% of the ceiling)" not in out  # the H200 run's NCCL probe and 0%


@pytest.mark.parametrize("spec", GPU_BACKENDS)
def test_the_free_memory_a_run_is_held_to_is_the_gpus_own(spec):
    if spec[0] == "jax":
        pytest.skip("JAX's GPU memory is its own allocator's (75% taken up front by default): no free count")
    backend = get_backend(*spec)
    free = backend.gpu_free_memory()
    assert isinstance(free, int) and free > 0
    big = backend.upload(np.zeros(2**28, np.float32))  # 1 GiB taken
    assert backend.gpu_free_memory() <= free - 2**30 + 2**26  # within the pool's rounding
    del big


@pytest.mark.parametrize("spec", GPU_BACKENDS)
def test_tf32_switches_on_and_off(spec):
    if spec[0] == "jax":
        pytest.skip("JAX's matmul precision is its own setting (jax_default_matmul_precision), not xpnet's TF32 switch")
    backend = get_backend(*spec)
    backend.use_tf32(True)
    assert backend.tf32_state() == "on"
    backend.use_tf32(False)
    assert backend.tf32_state() == "off"


@pytest.mark.parametrize("precision", ["mixed-float16", "mixed-bfloat16"])
@pytest.mark.parametrize("spec", GPU_BACKENDS)
def test_mixed_precision_trains_on_gpu_without_hidden_syncs(spec, precision):
    if precision == "mixed-bfloat16" and spec[0] == "cupy":
        pytest.skip("bfloat16 is PyTorch's and JAX's")
    X, y = blobs(n=512)
    net = build_mlp(spec, [2, 64, 2], precision=precision, seed=0)
    with net.backend.audit() as audit:
        history = net.fit(X, y, epochs=3, batch_size=64, optimizer=SGD(lr=0.1, momentum=0.9))
    assert audit.violations == [] and audit.reads == 3
    assert history.records[-1]["accuracy"] > 0.95


def _page_locked(uploads) -> bool:
    """Whether an upload's first staging block is page-locked memory, as its library sees it."""
    block = uploads._slots[0].block
    if hasattr(block, "is_pinned"):  # a PyTorch tensor
        return block.is_pinned()
    import cupy

    return isinstance(block, cupy.cuda.PinnedMemoryPointer) and cupy.cuda.pinned_memory.is_memory_pinned(block.ptr)


@pytest.mark.parametrize("spec", GPU_BACKENDS)
def test_streamed_training_on_gpu_goes_through_pinned_copies_and_equals_training_in_memory(spec, monkeypatch):
    """One buffer holding the set draws fit's own batches: the weights of in-memory training on the
    same GPU (float64; 1e-12 leaves room for a library's reduction order only, other batches differ
    by about 1e-3). Buffers of a fifth of the set: the same with and without the reader thread. Each
    run under the sync audit, every buffer staged in page-locked blocks and copied on the copy stream
    (xpnet.backend.staging; tests/test_pinned_uploads.py checks the order of operations with fakes)."""
    from xpnet.backend.staging import PinnedUploads
    from xpnet.streaming import stream
    from xpnet.train import fit

    X, y = blobs(n=1000, features=5, classes=3)
    X = X.astype(np.float32)
    chunks = [(X[i : i + 100], y[i : i + 100]) for i in range(0, 1000, 100)]

    def trained(data, made: list, labels=None) -> list[np.ndarray]:
        net = build_mlp(spec, [5, 16, 3], dtype="float64", seed=0)
        background_uploads = net.backend.background_uploads

        def recorded():
            made.append(background_uploads())
            return made[-1]

        monkeypatch.setattr(net.backend, "background_uploads", recorded)
        with net.backend.audit() as audit:
            fit(net, data, labels, epochs=2, batch_size=32, optimizer=Adam(lr=0.01), seed=3)
        assert audit.violations == [] and audit.reads == 2
        return [host(net, p) for p in net.params]

    whole, buffered, in_turn = [], [], []
    reference = trained(X, [], y)
    for got, want in zip(trained(stream([(X, y)], chunk_rows=100, buffer_chunks=10), whole), reference):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    prefetched = trained(stream(chunks, chunk_rows=100, buffer_chunks=2), buffered)
    one_by_one = trained(stream(chunks, chunk_rows=100, buffer_chunks=2, prefetch=False), in_turn)
    for got, want in zip(prefetched, one_by_one):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert len(whole) == len(buffered) == 2  # an uploader an epoch
    for uploads in whole + buffered + in_turn:
        assert isinstance(uploads, PinnedUploads) and _page_locked(uploads)
    assert [u.pinned_blocks for u in whole] == [1, 1] and [u.pinned_blocks for u in buffered] == [2, 2]
