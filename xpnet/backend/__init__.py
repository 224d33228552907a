"""The one place that knows NumPy from CuPy from PyTorch from array-api-strict.

Everything else in xpnet asks a ``Backend`` for its array namespace (``xp``), its
device, and for the two crossings between host and device: ``upload`` (host NumPy
-> device, once per dataset) and ``to_host`` (device -> host NumPy, counted, because
on a GPU every read is a synchronisation the training loop must budget for).

One class per array library, each in its own module and overriding only what its
library does differently from ``base.Backend`` (the array API standard's way): ``numpy``,
``cupy``, ``torch``, ``strict`` (array-api-strict). ``resolve`` is the one resolver (its
``LIBRARIES`` table maps names to classes: a new library is a module plus a line there).
Beside them: ``cpu`` (BLAS threads by step size, denormals), ``threads`` (the process's BLAS
threads: its cores shared among the ranks on its node), ``kernels`` (fused CuPy kernels), ``rng``
(device random numbers), ``rows`` (row maxima, which NumPy is slow at), ``audit`` (host reads and
device mixing), ``cuda`` (what the machine offers). No module outside this package imports a
backend library for its math, and none compares a backend's name: it asks the backend's methods.
"""

from xpnet.backend.base import DTYPES, Backend, device_constant
from xpnet.backend.cuda import cuda_devices, cuda_libraries
from xpnet.backend.cupy import CupyBackend
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
from xpnet.backend.numpy import NumpyBackend
from xpnet.backend.resolve import BACKENDS, LIBRARIES, available_backends, backend_class, get_backend
from xpnet.backend.rng import RandomGenerator
from xpnet.backend.rows import row_max
from xpnet.backend.strict import StrictBackend
from xpnet.backend.torch import TorchBackend

__all__ = [
    "BACKENDS",
    "DTYPES",
    "KERNELS",
    "LIBRARIES",
    "Backend",
    "CupyBackend",
    "KernelSpec",
    "NumpyBackend",
    "RandomGenerator",
    "StrictBackend",
    "TorchBackend",
    "available_backends",
    "backend_class",
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
    "row_max",
    "substituted_kernels",
]
