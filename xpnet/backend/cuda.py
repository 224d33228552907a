"""What CUDA this machine offers: GPUs seen by CuPy and PyTorch, the CUDA libraries found, device strings."""

from __future__ import annotations

import ctypes
import importlib
import os
import platform

from xpnet.errors import ConfigError

CUPY_HINT = 'install CuPy with: pip install "xpnet[cuda12]" (or "xpnet[cuda13]" for CUDA 13)'


def cuda_index(device: str | None, backend: str) -> int:
    """The GPU number in a device string: "cuda" (or None, "gpu") is 0, "cuda:N" is N."""
    if device in (None, "cuda", "gpu"):
        return 0
    prefix, _, index = device.partition(":")
    if prefix == "cuda" and index.isdigit():
        return int(index)
    raise ConfigError(f"device for backend {backend!r} must be 'cuda' or 'cuda:N', not {device!r}")


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


def visible_gpu_count() -> int:
    """How many CUDA GPUs this process sees, after ``CUDA_VISIBLE_DEVICES`` (a launcher may show
    each task one): CuPy's count, else PyTorch's, else 0."""
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # no CuPy, no driver, no GPU
        pass
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:
        return 0


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
            found[name] = _VERSION_TEXT[module](lib)
        except Exception as exc:  # ImportError or CuPy's own errors when a library cannot be opened
            found[name] = f"missing ({str(exc).splitlines()[0][:72]})"
    return found


#: How each library says its version through CuPy's binding: NVRTC's ``getVersion()`` gives
#: (major, minor); NCCL's binding (``cupy_backends.cuda.libs.nccl``) has only ``get_version()``
#: and ``get_build_version()``, an integer code; cuBLAS is only opened.
_VERSION_TEXT = {
    "nvrtc": lambda lib: ".".join(map(str, lib.getVersion())),
    "cublas": lambda lib: "found",
    "nccl": lambda lib: nccl_version_text(lib.get_version()),
}


def nccl_version_text(code: int) -> str:
    """NCCL's version code as text: 23203 -> 2.32.3 (codes before 2.9 had three digits after the major)."""
    major, rest = divmod(code, 10000) if code >= 10000 else divmod(code, 1000)
    return f"{major}.{rest // 100}.{rest % 100}"
