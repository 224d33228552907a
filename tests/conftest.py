"""Backends the core tests run on, and helpers to build networks and read them back.

``CPU_BACKENDS`` are the ``(backend, device)`` pairs this machine can always test:
NumPy, PyTorch on the CPU (skipped where PyTorch is missing) and array-api-strict on
its non-default ``device1``, where any bulk copy to NumPy raises; a stray host
transfer in the core therefore fails there. ``GPU_BACKENDS`` are the CuPy, ``torch.cuda``
and JAX-on-CUDA pairs, marked ``gpu`` and skipped with the reason where no GPU is (or, for
JAX, where its jaxlib is the CPU-only wheel).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from xpnet.backend import get_backend
from xpnet.backend.base import TORCH_HINT
from xpnet.errors import BackendError
from xpnet.network import MLP

HAVE_TORCH = importlib.util.find_spec("torch") is not None
NEEDS_TORCH = f"needs PyTorch: {TORCH_HINT}"
NO_TORCH = pytest.mark.skipif(not HAVE_TORCH, reason=NEEDS_TORCH)
HAVE_JAX = importlib.util.find_spec("jax") is not None
# JAX takes 75% of a GPU's memory when it first touches it (here: asking for GPU_BACKENDS); in the
# tests it shares the GPU with CuPy and PyTorch, so it takes what it uses instead. Before JAX loads.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
NO_JAX = pytest.mark.skipif(not HAVE_JAX, reason='needs JAX (pip install "xpnet[jax]")')

CPU_BACKENDS = [
    pytest.param(("numpy", None), id="numpy"),
    pytest.param(("torch", "cpu"), id="torch-cpu", marks=NO_TORCH),
    pytest.param(("array-api-strict", "device1"), id="strict-device1"),
    pytest.param(("jax", "cpu"), id="jax-cpu", marks=NO_JAX),
]


def _gpu_unavailable(backend: str) -> str | None:
    """Why ``backend`` on ``cuda`` cannot run here, or None when it can."""
    if backend == "cupy" and importlib.util.find_spec("cupy") is None:
        return "needs CuPy and a CUDA GPU (CuPy is not installed here)"
    if backend == "torch" and not HAVE_TORCH:
        return "needs PyTorch with CUDA and a CUDA GPU (PyTorch is not installed here)"
    if backend == "jax" and not HAVE_JAX:
        return "needs JAX with CUDA and a CUDA GPU (JAX is not installed here)"
    try:
        get_backend(backend, "cuda")
    except BackendError as exc:
        what = {"cupy": "CuPy", "torch": "PyTorch with CUDA", "jax": "JAX with CUDA"}[backend]
        return f"needs {what} and a CUDA GPU (none here: {exc})"
    return None


def _gpu_param(backend: str):
    reason = _gpu_unavailable(backend)
    marks = [pytest.mark.gpu]
    if reason:
        marks.append(pytest.mark.skip(reason=reason))
    return pytest.param((backend, "cuda"), id=f"{backend}-cuda", marks=marks)


GPU_BACKENDS = [_gpu_param("cupy"), _gpu_param("torch"), _gpu_param("jax")]


@pytest.fixture(params=CPU_BACKENDS)
def spec(request) -> tuple[str, str | None]:
    """A ``(backend, device)`` pair; tests using it run once per CPU backend."""
    return request.param


def build_mlp(spec, sizes, **options) -> MLP:
    """An MLP on the backend and device named by ``spec``."""
    backend, device = spec
    return MLP(sizes, backend=backend, device=device, **options)


def host(net: MLP, array) -> np.ndarray:
    """A device array of ``net`` read back as NumPy, through the counted transfer."""
    return net.backend.to_host(array)


def host_float(net: MLP, array) -> float:
    """A 0-d device array of ``net`` as a Python float."""
    return float(host(net, array))


def blobs(n=64, features=2, classes=2, seed=0, spread=0.3):
    """Well separated Gaussian blobs: a problem every network here must learn to 100%."""
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * np.arange(classes) / classes
    centres = np.zeros((classes, features))
    centres[:, 0], centres[:, 1] = 3 * np.cos(angles), 3 * np.sin(angles)
    y = np.arange(n) % classes
    X = centres[y] + spread * rng.standard_normal((n, features))
    return X, y
