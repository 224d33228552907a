"""One seed, one network, one set of batches: every backend computes the same training run.

Also what a user sees of the backend module: float32 unless float64 is asked for,
the same initial weights everywhere, and a clear message where no GPU is.
"""

from __future__ import annotations

import functools
import importlib.metadata
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import CPU_BACKENDS, HAVE_TORCH, NEEDS_TORCH, build_mlp, host

import xpnet.backend
import xpnet.backend.cuda
import xpnet.backend.cupy
from xpnet.backend import CupyBackend, get_backend
from xpnet.errors import BackendError, ConfigError
from xpnet.metadata import DROPOUT_STATE
from xpnet.optim import SGD, Adam, AdamW
from xpnet.schema import Invalid, check
from xpnet.selfcheck.checks import CHECKS, Context

STEPS = 50
BATCH = 16
SIZES = [5, 16, 12, 3]
#: (losses' rtol, final weights' rtol, their atol) each dtype must agree to after STEPS steps on the
#: CPU: about 10 times the worst difference from NumPy observed over the optimizers (torch-cpu;
#: strict agrees exactly): float32 losses 2.9e-7 relative and weights 5.4e-7 absolute (|w| <= 1.2),
#: float64 4.7e-16 and 6.7e-16.
TOLERANCES = {"float64": (5e-15, 0.0, 7e-15), "float32": (3e-6, 0.0, 5e-6)}
OPTIMIZERS = {
    "sgd-decay": lambda: SGD(lr=0.1, weight_decay=1e-3),
    "sgd-momentum": lambda: SGD(lr=0.1, momentum=0.9),
    "sgd-nesterov-decay": lambda: SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda: Adam(lr=0.01),
    "adamw": lambda: AdamW(lr=0.01, weight_decay=0.05),
}
NON_NUMPY = [p for p in CPU_BACKENDS if p.values[0][0] != "numpy"]


def training_data(seed=1, n=200):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, SIZES[0]))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(np.int64) + (X[:, 3] > 1)
    batches = [rng.choice(n, BATCH, replace=False) for _ in range(STEPS)]
    return X, y, batches


def run_steps(spec, dtype: str, optimizer: str, activation="tanh") -> tuple[np.ndarray, dict]:
    """Losses of STEPS optimizer steps on fixed batches, and the final parameters."""
    X, y, batches = training_data()
    net = build_mlp(spec, SIZES, activation=activation, loss="cross_entropy", dtype=dtype, seed=7)
    opt = OPTIMIZERS[optimizer]()
    Xd, yd = net.to_device(X), net.to_device(y, labels=True)
    costs = []
    for rows in batches:
        idx = net.backend.upload(rows.astype(np.int32))
        xb = net.prepare(net.xp.take(Xd, idx, axis=0))
        cost, grads, _ = net.backprop(xb, net.targets(net.xp.take(yd, idx, axis=0)), train=True)
        opt.step(net.params, grads)
        costs.append(cost)
    return host(net, net.xp.stack(costs)), net.state_dict()


@functools.cache
def numpy_run(dtype: str, optimizer: str):
    return run_steps(("numpy", None), dtype, optimizer)


def assert_agree(spec, dtype: str, optimizer: str, tolerances: dict = TOLERANCES):
    """``spec``'s losses and final weights equal NumPy's to the dtype's ``tolerances``."""
    losses, state = run_steps(spec, dtype, optimizer)
    reference, reference_state = numpy_run(dtype, optimizer)
    assert losses.dtype == np.dtype(dtype)
    assert reference[-1] < 0.8 * reference[0]  # the run trains, so the comparison covers real updates
    loss_rtol, weight_rtol, weight_atol = tolerances[dtype]
    np.testing.assert_allclose(losses, reference, rtol=loss_rtol, atol=0)
    for name, value in state.items():
        np.testing.assert_allclose(value, reference_state[name], rtol=weight_rtol, atol=weight_atol, err_msg=name)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("spec", NON_NUMPY)
def test_backends_agree_step_by_step(spec, dtype, optimizer):
    assert_agree(spec, dtype, optimizer)


@pytest.mark.parametrize("spec", NON_NUMPY)
def test_backends_agree_through_fit(spec):
    X, y, _ = training_data()
    histories, states = [], []
    for which in (("numpy", None), spec):
        net = build_mlp(which, SIZES, activation="relu", dtype="float64", seed=3)
        history = net.fit(X, y, epochs=4, batch_size=32, optimizer=SGD(lr=0.1, momentum=0.9), shuffle=True, seed=5)
        histories.append([(r["loss"], r["accuracy"]) for r in history.records])
        states.append(net.state_dict())
    np.testing.assert_allclose(histories[1], histories[0], rtol=1e-9)
    for name in states[0]:
        np.testing.assert_allclose(states[1][name], states[0][name], rtol=1e-9, atol=1e-12)


def test_a_different_seed_changes_the_run():
    # Guards the agreement tests: the seed reaches the weights, so equal runs are not a given.
    a = build_mlp(("numpy", None), SIZES, seed=7)
    b = build_mlp(("numpy", None), SIZES, seed=8)
    assert not np.allclose(a.state_dict()["layers.0.weight"], b.state_dict()["layers.0.weight"])


# -- initial weights and dtypes --------------------------------------------------------


@pytest.mark.parametrize("init", ["auto", "standard_normal", "glorot_uniform", "he_uniform"])
def test_one_seed_gives_the_same_initial_weights_on_every_backend(spec, init):
    sizes = [4, 8, 3]
    reference = build_mlp(("numpy", None), sizes, init=init, dtype="float64", seed=11).state_dict()
    state = build_mlp(spec, sizes, init=init, dtype="float64", seed=11).state_dict()
    assert list(state) == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]
    for name, value in reference.items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)
    assert state["layers.0.weight"].shape == (8, 4)  # torch.nn.Linear's (out, in)


def test_float32_is_the_default_everywhere(spec):
    net = build_mlp(spec, [4, 6, 3], seed=0)
    X, y = np.random.default_rng(0).standard_normal((5, 4)), np.array([0, 1, 2, 0, 1])
    dtype = net.xp.float32
    assert all(p.dtype == dtype for p in net.params)
    assert net.forward(net.prepare(net.to_device(X))).dtype == dtype
    cost, layers = net.gradients(X, y)
    assert cost.dtype == dtype
    assert all(g.dtype == dtype for pair in layers for g in pair)
    assert net.predict_proba(X).dtype == np.float32
    assert all(v.dtype == np.float32 for v in net.state_dict().values())


def test_float64_on_request(spec):
    net = build_mlp(spec, [4, 6, 3], dtype="float64", seed=0)
    X, y = np.random.default_rng(0).standard_normal((5, 4)), np.array([0, 1, 2, 0, 1])
    dtype = net.xp.float64
    assert all(p.dtype == dtype for p in net.params)
    cost, layers = net.gradients(X, y)
    assert cost.dtype == dtype
    assert all(g.dtype == dtype for pair in layers for g in pair)
    assert net.predict_proba(X).dtype == np.float64


def test_unknown_dtype_is_refused():
    with pytest.raises(ConfigError, match="dtype"):
        build_mlp(("numpy", None), [2, 2], dtype="float16")


# -- asking for backends and devices ---------------------------------------------------


def test_default_backend_is_numpy_on_the_cpu():
    backend = get_backend()
    assert backend.name == "numpy"
    assert backend.device_name == "cpu"
    assert get_backend(backend) is backend


def test_unknown_backend_names_the_argument_and_the_choices():
    with pytest.raises(
        ConfigError, match=r"unknown backend 'tensorflow'; choose from numpy, cupy, torch, array-api-strict, jax$"
    ):
        get_backend("tensorflow")


def test_numpy_refuses_a_gpu_device():
    with pytest.raises(ConfigError, match="CPU only"):
        get_backend("numpy", "cuda")


def test_unknown_strict_device_lists_the_devices():
    with pytest.raises(ConfigError, match="device1"):
        get_backend("array-api-strict", "device9")


def _cupy_gpu_present() -> bool:
    try:
        get_backend("cupy", "cuda")
    except BackendError:
        return False
    return True


@pytest.mark.skipif(_cupy_gpu_present(), reason="this machine has CuPy and a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_device_cuda_without_cupy_or_gpu_says_what_to_do(device):
    with pytest.raises(BackendError) as caught:
        get_backend(device=device)
    message = str(caught.value)
    assert "xpnet[cuda12]" in message or "no CUDA GPU" in message
    assert device in message or "cuda" in message


@pytest.mark.skipif(not HAVE_TORCH, reason=NEEDS_TORCH)
def test_torch_cuda_without_gpu_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(BackendError, match=r"needs a CUDA GPU|no NVIDIA driver"):
        get_backend("torch", "cuda")
    with pytest.raises(BackendError, match='device="cpu"'):  # the Python API's words (the CLI says --device cpu)
        build_mlp(("torch", "cuda"), [2, 2])


def test_training_flushes_denormals_and_puts_the_mode_back():
    """Inside ``flush_denormals`` a float32 denormal times one is zero (where the switch is
    known); outside, before and after, it stays a denormal."""
    from xpnet.backend.cpu import _libm

    backend = get_backend("numpy")
    denormal = np.array([1e-39], dtype=np.float32)
    assert (denormal * np.float32(1.0))[0] != 0.0
    with backend.flush_denormals():
        flushed = (denormal * np.float32(1.0))[0]
    assert (denormal * np.float32(1.0))[0] != 0.0
    if _libm() is None:
        pytest.skip("no known way to flush denormals on this platform (x86-64 glibc only)")
    assert flushed == 0.0


# -- issue 12: devices, synchronisation, dropout state, the CUDA libraries -------------------


def test_owns_checks_the_device_and_copies_land_on_the_backends_own_device():
    """An array on another device of the same library is not the backend's own; to_device and
    copy bring it over (on CuPy the copy used to land on the current GPU, not the backend's)."""
    backend = get_backend("array-api-strict", "device1")
    other = get_backend("array-api-strict", "device2").upload(np.arange(3.0))
    assert backend.same_library(other) and not backend.owns(other)
    copy = backend.copy(other)
    assert backend.owns(copy) and backend.device_of(copy) == backend.device
    net = build_mlp(("array-api-strict", "device1"), [3, 2])
    moved = net.to_device(other)
    assert net.backend.owns(moved)
    assert not get_backend("numpy").owns([1.0, 2.0])


@pytest.mark.skipif(not HAVE_TORCH, reason=NEEDS_TORCH)
def test_torch_owns_only_tensors_on_its_device():
    meta, cpu = get_backend("torch", "meta"), get_backend("torch", "cpu")
    tensor = cpu.upload(np.zeros(2))
    assert cpu.owns(tensor) and not meta.owns(tensor)
    assert meta.owns(meta.copy(tensor))


class _StubDevice:
    def __init__(self):
        self.synchronized = 0

    def synchronize(self):
        self.synchronized += 1


def test_synchronize_waits_on_the_backends_own_gpu():
    """CuPy's deviceSynchronize waits on the *current* GPU; a backend on cuda:1 must wait on cuda:1."""
    device = _StubDevice()
    CupyBackend(None, device).synchronize()
    assert device.synchronized == 1


def test_the_cuda_extras_bring_the_libraries_cupy_needs():
    tomllib = pytest.importorskip("tomllib")
    with open(Path(__file__).parents[1] / "pyproject.toml", "rb") as stream:
        extras = tomllib.load(stream)["project"]["optional-dependencies"]
    assert any(dep.startswith("cupy-cuda12x[ctk]") for dep in extras["cuda12"])
    assert any(dep.startswith("cupy-cuda13x[ctk]") for dep in extras["cuda13"])


def test_a_gpu_without_cublas_is_refused_naming_what_is_missing(monkeypatch):
    """With only the driver, CuPy sees the GPU but fails at the first matmul: refused up front."""
    cupy = pytest.importorskip("cupy", reason="needs CuPy importable (no GPU needed)")
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 1)
    monkeypatch.setattr(xpnet.backend.resolve, "nvidia_driver_missing", lambda: False)
    libraries = {"CuPy": "14.2.0", "NVRTC": "12.9", "cuBLAS": "missing (libcublas.so.12: not found)", "NCCL": "9"}
    monkeypatch.setattr(xpnet.backend.cupy, "cuda_libraries", lambda: libraries)
    with pytest.raises(BackendError, match=r"cuBLAS missing \(libcublas.so.12: not found\).*ctk.*xpnet\[cuda12\]"):
        get_backend(device="cuda")
    monkeypatch.setattr(xpnet.backend.cupy, "cuda_libraries", lambda: {**libraries, "cuBLAS": "found"})
    assert get_backend(device="cuda").name == "cupy"  # NCCL is not needed on one GPU


def test_cuda_libraries_are_probed_without_a_gpu():
    pytest.importorskip("cupy", reason="needs CuPy importable (no GPU needed)")
    found = xpnet.backend.cuda_libraries()
    assert set(found) == {"CuPy", "NVRTC", "cuBLAS", "NCCL"}
    assert found["NVRTC"][0].isdigit(), found  # the NVRTC wheel of the test extra is loadable
    assert all(v[0].isdigit() or v == "found" or v.startswith("missing (") for v in found.values())


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(
    not _installed("nvidia-nccl-cu12"), reason="needs the nvidia-nccl-cu12 wheel (the test extra has it)"
)
def test_an_installed_nccl_is_found_and_its_version_read_without_a_gpu():
    """The probe against CuPy's real binding: with the wheel installed, NCCL loads on a CPU-only machine."""
    pytest.importorskip("cupy", reason="needs CuPy importable (no GPU needed)")
    found = xpnet.backend.cuda_libraries()["NCCL"]
    assert found.startswith("2.") and found.count(".") == 2, found


def test_nccl_is_reported_by_the_version_its_binding_gives(monkeypatch):
    """CuPy's ``cupy_backends.cuda.libs.nccl`` has only ``get_version``/``get_build_version``
    (CuPy 14.2 on an H200: ['get_build_version', 'get_version'], 22809): that is NCCL 2.28.9."""
    pytest.importorskip("cupy", reason="needs CuPy importable (no GPU needed)")
    import cupy_backends.cuda.libs as libs

    binding = types.SimpleNamespace(get_version=lambda: 22809, get_build_version=lambda: 22809)
    monkeypatch.setitem(vars(libs), "nccl", binding)  # before the lazy loader tries libnccl.so.2
    assert xpnet.backend.cuda_libraries()["NCCL"] == "2.28.9"
    environment = CHECKS["environment"](Context(get_backend("numpy"), Path(".")))
    assert "NCCL 2.28.9" in environment.detail


@pytest.mark.skipif(not HAVE_TORCH, reason=NEEDS_TORCH)
def test_a_dropout_state_from_another_device_kind_reseeds_deterministically():
    """A CUDA generator's 16-byte state cannot continue on the CPU (5056 bytes): the stream is
    reseeded from the saved state, the same way every time, instead of failing the resume."""
    backend = get_backend("torch", "cpu")
    saved = backend.random_generator(3).get_state()
    assert saved["device"] == "cpu"
    cuda_state = {"torch": list(range(16)), "device": "cuda"}
    assert check(DROPOUT_STATE, cuda_state) == cuda_state and check(DROPOUT_STATE, saved) == saved
    draws = []
    for _ in range(2):
        generator = backend.random_generator(0)
        generator.set_state(cuda_state)
        draws.append(backend.to_host(generator.uniform((5,), backend.xp.float32)))
    np.testing.assert_array_equal(draws[0], draws[1])
    fresh = backend.to_host(backend.random_generator(0).uniform((5,), backend.xp.float32))
    assert not np.array_equal(draws[0], fresh)
    continued = backend.random_generator(0)
    continued.set_state(saved)  # same device kind: the stream itself continues
    np.testing.assert_array_equal(
        backend.to_host(continued.uniform((5,), backend.xp.float32)),
        backend.to_host(backend.random_generator(3).uniform((5,), backend.xp.float32)),
    )


def test_a_cupy_dropout_state_is_valid_and_resumes_deterministically_elsewhere():
    state = {"cupy": {"seed": 0, "draws": 12}}
    assert check(DROPOUT_STATE, state) == state
    with pytest.raises(Invalid):
        check(DROPOUT_STATE, {"cupy": {"seed": "x", "draws": 0}})
    backend = get_backend("numpy")
    runs = []
    for _ in range(2):
        generator = backend.random_generator(0)
        generator.set_state(state)
        runs.append(generator.uniform((4,), np.float32))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_info_does_not_call_a_gpu_usable_when_cupy_lacks_its_libraries(monkeypatch):
    """Bug 6: with only the driver, `xpnet info` listed the GPU as if training could use it."""
    cupy = pytest.importorskip("cupy", reason="needs CuPy importable (no GPU needed)")
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 1)
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceProperties", lambda index: {"name": b"NVIDIA H100"})
    libraries = {"CuPy": "14.2.0", "NVRTC": "missing (libnvrtc.so.12: not found)", "cuBLAS": "found", "NCCL": "2"}
    monkeypatch.setattr(xpnet.backend.cuda, "cuda_libraries", lambda: libraries)
    cupy_lines = [line for line in xpnet.backend.cuda_devices() if "CuPy" in line]
    assert cupy_lines == ["cuda:0 NVIDIA H100 (CuPy; NOT usable: NVRTC missing (libnvrtc.so.12: not found))"]
