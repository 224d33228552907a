"""The one place that knows NumPy from CuPy from PyTorch from array-api-strict.

Everything else in xpnet asks a ``Backend`` for its array namespace (``xp``), its
device, and for the two crossings between host and device: ``upload`` (host NumPy
-> device, once per dataset) and ``to_host`` (device -> host NumPy, counted, because
on a GPU every read is a synchronisation the training loop must budget for).

One idea per module: ``base`` (the ``Backend``), ``resolve`` (names and devices to a
backend), ``cpu`` (BLAS threads by step size, denormals), ``threads``
(the process's BLAS threads: its cores shared among the ranks on its node), ``kernels`` (fused CuPy kernels), ``rng``
(device random numbers), ``audit`` (host reads and device mixing), ``cuda`` (what the
machine offers). No module outside this package imports a backend library for its math.
"""

from xpnet.backend.base import BACKENDS, DTYPES, Backend, device_constant
from xpnet.backend.cuda import available_backends, cuda_devices, cuda_libraries
from xpnet.backend.kernels import (
    KERNELS,
    KernelSpec,
    define_kernel,
    fused_kernel,
    kernel_cuda_source,
    kernel_names,
    kernel_spec,
    nvrtc_compile,
    substituted_kernels,
)
from xpnet.backend.resolve import get_backend
from xpnet.backend.rng import RandomGenerator

__all__ = [
    "BACKENDS",
    "DTYPES",
    "KERNELS",
    "Backend",
    "KernelSpec",
    "RandomGenerator",
    "available_backends",
    "cuda_devices",
    "cuda_libraries",
    "define_kernel",
    "device_constant",
    "fused_kernel",
    "get_backend",
    "kernel_cuda_source",
    "kernel_names",
    "kernel_spec",
    "nvrtc_compile",
    "substituted_kernels",
]
