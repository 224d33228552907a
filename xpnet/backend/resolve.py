"""The one resolver: from a backend name and device string to a ready ``Backend`` of the library's class.

``LIBRARIES`` is the registry: a new array library is one module with its ``Backend``
subclass plus one line here (the JAX backend: ``"jax": JaxBackend``). Nothing outside this
package compares a backend's name; it asks the backend's methods instead.
"""

from __future__ import annotations

import importlib

from xpnet.backend.base import ON_THE_CPU, Backend
from xpnet.backend.cuda import NO_DRIVER, cuda_index, nvidia_driver_missing
from xpnet.backend.cupy import CupyBackend
from xpnet.backend.jax import JaxBackend
from xpnet.backend.numpy import NumpyBackend
from xpnet.backend.strict import StrictBackend
from xpnet.backend.torch import TorchBackend
from xpnet.errors import BackendError
from xpnet.names import canonical

#: Each backend name (``--backend``) and the class that runs it; the first is the default.
LIBRARIES: dict[str, type[Backend]] = {
    "numpy": NumpyBackend,
    "cupy": CupyBackend,
    "torch": TorchBackend,
    "array-api-strict": StrictBackend,
    "jax": JaxBackend,
}
BACKENDS = tuple(LIBRARIES)


def backend_class(name: str) -> type[Backend]:
    """The ``Backend`` subclass of the backend called ``name`` (any spelling the names rule accepts)."""
    return LIBRARIES[canonical(name, LIBRARIES, "backend")]


def get_backend(backend: str | Backend | None = None, device: str | None = None) -> Backend:
    """Resolve a backend name and device string to a ready ``Backend``.

    ``device="cuda"`` (or ``"cuda:N"``) without a backend means CuPy; no backend and
    no device means NumPy on the CPU.
    """
    if isinstance(backend, Backend):
        return backend
    device = None if device is None else str(device).strip()
    on_cuda = bool(device) and device.startswith("cuda")
    if backend is None:
        cls = CupyBackend if on_cuda else NumpyBackend
    else:
        cls = backend_class(backend)
    if on_cuda and "cuda" in cls.device_kinds and cuda_index(device, cls.name) >= 0 and nvidia_driver_missing():
        # a device string is checked first (a usage error), then the driver, before the library is asked
        raise BackendError(f"device {device!r}: {NO_DRIVER}; {ON_THE_CPU}")
    return cls.for_device(device)


def available_backends() -> dict[str, str]:
    """Each backend name mapped to its status, for ``python -m xpnet info``."""
    report = {}
    for name, cls in LIBRARIES.items():
        try:
            module = importlib.import_module(cls.module)
            report[name] = f"installed ({getattr(module, '__version__', '?')})"
        except ImportError:
            report[name] = "not installed"
    return report
