"""From a backend name and device string to a ready ``Backend``: the one place each library is imported and probed."""

from __future__ import annotations

import importlib
from types import ModuleType

from xpnet.backend.base import _CUPY_HINT, _TORCH_HINT, BACKENDS, Backend
from xpnet.backend.cuda import NO_DRIVER, cuda_libraries, nvidia_driver_missing
from xpnet.errors import BackendError, ConfigError
from xpnet.names import canonical


def get_backend(backend: str | Backend | None = None, device: str | None = None) -> Backend:
    """Resolve a backend name and device string to a ready ``Backend``.

    ``device="cuda"`` (or ``"cuda:N"``) without a backend means CuPy; no backend and
    no device means NumPy on the CPU.
    """
    if isinstance(backend, Backend):
        return backend
    device = None if device is None else str(device).strip()
    if backend is None:
        backend = "cupy" if device and device.startswith("cuda") else "numpy"
    return _RESOLVERS[canonical(backend, BACKENDS, "backend")](device)


def _cuda_index(device: str | None, backend: str) -> int:
    if device in (None, "cuda", "gpu"):
        return 0
    prefix, _, index = device.partition(":")
    if prefix == "cuda" and index.isdigit():
        return int(index)
    raise ConfigError(f"device for backend {backend!r} must be 'cuda' or 'cuda:N', not {device!r}")


def _numpy(device: str | None) -> Backend:
    if device not in (None, "cpu"):
        raise ConfigError(
            f"backend 'numpy' runs on the CPU only, not on device {device!r}; "
            'use device="cuda" (CuPy) or backend="torch" for a GPU'
        )
    return Backend("numpy", _compat("numpy"), "cpu")


#: The advice every refused GPU ends with, as the Python API spells it (the CLI says --device cpu).
_ON_THE_CPU = 'train on the CPU with device="cpu"'


def _no_driver(device: str | None) -> None:
    """Refuse a CUDA device where the machine has no NVIDIA driver, before any library is asked."""
    if nvidia_driver_missing():
        raise BackendError(f"device {device or 'cuda'!r}: {NO_DRIVER}; {_ON_THE_CPU}")


def _cupy(device: str | None) -> Backend:
    index = _cuda_index(device, "cupy")
    _no_driver(device)
    try:
        cupy = importlib.import_module("cupy")
    except ImportError as exc:
        raise BackendError(f"device {device or 'cuda'!r} needs CuPy, which is not installed; {_CUPY_HINT}") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CuPy raises its own CUDARuntimeError without a driver
        what = f"device {device or 'cuda'!r}: no CUDA GPU is usable by CuPy here ({exc})"
        raise BackendError(f"{what}; {_ON_THE_CPU}") from exc
    if index >= count:
        raise BackendError(f"device cuda:{index} does not exist; CuPy sees {count} CUDA GPU(s)")
    missing = {name: problem for name, problem in cuda_libraries().items() if problem.startswith("missing")}
    missing.pop("NCCL", None)  # only multi-GPU communication needs it
    if missing:
        found = "; ".join(f"{name} {problem}" for name, problem in missing.items())
        raise BackendError(
            f"CuPy sees {count} CUDA GPU(s) but cannot use them: {found}. These libraries come with "
            f'CuPy\'s "ctk" extra: {_CUPY_HINT}'
        )
    return Backend("cupy", _compat("cupy"), cupy.cuda.Device(index))


def _torch(device: str | None) -> Backend:
    try:
        torch = importlib.import_module("torch")
    except ImportError as exc:
        raise BackendError(f"backend 'torch' needs PyTorch, which is not installed; {_TORCH_HINT}") from exc
    if device in (None, "cpu", "meta"):  # meta: shapes without data, for audits (see Backend.audit)
        return Backend("torch", _compat("torch"), torch.device(device or "cpu"))
    index = _cuda_index(device, "torch")
    _no_driver(device)
    if not torch.cuda.is_available():
        raise BackendError(
            f"device {device!r} needs a CUDA GPU, but PyTorch sees none (is this a CPU build?); {_ON_THE_CPU}"
        )
    if index >= torch.cuda.device_count():
        raise BackendError(f"device cuda:{index} does not exist; PyTorch sees {torch.cuda.device_count()} GPU(s)")
    return Backend("torch", _compat("torch"), torch.device("cuda", index))


def _strict(device: str | None) -> Backend:
    try:
        strict = importlib.import_module("array_api_strict")
    except ImportError as exc:
        raise BackendError(
            "backend 'array-api-strict' needs the array-api-strict package; "
            'install it with: pip install "xpnet[test]"'
        ) from exc
    names = [d._device for d in strict.__array_namespace_info__().devices()]
    name = "CPU_DEVICE" if device in (None, "cpu") else device
    if name not in names:
        raise ConfigError(f"array-api-strict device must be one of {', '.join(names)}, not {device!r}")
    return Backend("array-api-strict", strict, strict.Device(name))


def _compat(name: str) -> ModuleType:
    return importlib.import_module(f"array_api_compat.{name}")


_RESOLVERS = {"numpy": _numpy, "cupy": _cupy, "torch": _torch, "array-api-strict": _strict}
