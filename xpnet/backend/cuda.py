"""What CUDA this machine offers: GPUs seen by CuPy and PyTorch, the CUDA libraries found, the installed backends."""

from __future__ import annotations

import ctypes
import importlib
import os
import platform

from xpnet.backend.base import BACKENDS

#: What to say where the machine has no NVIDIA driver: no GPU, whatever is installed.
NO_DRIVER = (
    "this machine has no NVIDIA driver (no /proc/driver/nvidia/version, and libcuda.so.1 does not load), "
    "so no CUDA GPU to run on"
)


def nvidia_driver_missing() -> bool:
    """True where Linux shows no NVIDIA driver at all (then no CUDA library can find a GPU);
    False where one is found, and on other systems, where xpnet does not look."""
    if platform.system() != "Linux" or os.path.exists("/proc/driver/nvidia/version"):
        return False
    try:
        ctypes.CDLL("libcuda.so.1")  # WSL's driver has no /proc entry
    except OSError:
        return True
    return False


def cuda_devices() -> list[str]:
    """The CUDA GPUs CuPy and PyTorch can see, one line each (for ``python -m xpnet info``)."""
    found = []
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
        missing = [
            f"{lib} {why}" for lib, why in cuda_libraries().items() if lib != "NCCL" and why.startswith("missing")
        ]
        usable = f"CuPy; NOT usable: {'; '.join(missing)}" if missing else "CuPy"
        for index in range(count):
            name = cupy.cuda.runtime.getDeviceProperties(index)["name"].decode()
            found.append(f"cuda:{index} {name} ({usable})")
    except Exception:  # no CuPy, no driver, no GPU: nothing to list
        pass
    try:
        import torch

        found += [f"cuda:{i} {torch.cuda.get_device_name(i)} (PyTorch)" for i in range(torch.cuda.device_count())]
    except Exception:
        pass
    return found


def cuda_libraries() -> dict[str, str]:
    """CuPy and the CUDA libraries it loads, each mapped to its version, "found", or
    "missing (why)"; loads them as CuPy would, and needs no GPU (for ``info``, ``selfcheck``
    and the check that a GPU is usable before training starts on it)."""
    try:
        cupy = importlib.import_module("cupy")
    except ImportError:
        return {"CuPy": "missing (not installed)"}
    found = {"CuPy": cupy.__version__}
    libs = importlib.import_module("cupy_backends.cuda.libs")
    for name, module in (("NVRTC", "nvrtc"), ("cuBLAS", "cublas"), ("NCCL", "nccl")):
        try:
            lib = getattr(libs, module)  # CuPy's own loader: the library is opened here
            found[name] = ".".join(map(str, _listed(lib.getVersion()))) if module != "cublas" else "found"
        except Exception as exc:  # ImportError or CuPy's own errors when a library cannot be opened
            found[name] = f"missing ({str(exc).splitlines()[0][:72]})"
    return found


def _listed(version) -> list:
    return list(version) if isinstance(version, (tuple, list)) else [version]


def available_backends() -> dict[str, str]:
    """Each backend name mapped to its status, for ``python -m xpnet info``."""
    report = {}
    for name in BACKENDS:
        try:
            module = importlib.import_module({"array-api-strict": "array_api_strict"}.get(name, name))
            report[name] = f"installed ({getattr(module, '__version__', '?')})"
        except ImportError:
            report[name] = "not installed"
    return report
