"""The one place that knows NumPy from CuPy from PyTorch from array-api-strict.

Everything else in xpnet asks a ``Backend`` for its array namespace (``xp``), its
device, and for the two crossings between host and device: ``upload`` (host NumPy
-> device, once per dataset) and ``to_host`` (device -> host NumPy, counted, because
on a GPU every read is a synchronisation the training loop must budget for).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import platform
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
from array_api_compat import array_namespace, is_cupy_namespace
from array_api_compat import device as array_device

from xpnet.errors import BackendError, ConfigError
from xpnet.names import canonical

BACKENDS = ("numpy", "cupy", "torch", "array-api-strict")
DTYPES = ("float32", "float64")

_CUPY_HINT = 'install CuPy with: pip install "xpnet[cuda12]" (or "xpnet[cuda13]" for CUDA 13)'
_TORCH_HINT = 'install PyTorch with: pip install "xpnet[torch]"'


@dataclass
class Backend:
    """An array namespace bound to one device.

    ``host_reads`` counts device-to-host transfers so tests can hold the training
    loop to its budget (one read per epoch for the metrics).
    """

    name: str
    xp: ModuleType
    device: Any
    host_reads: int = field(default=0, compare=False)

    def __str__(self) -> str:
        return f"{self.name} on {self.device_name}"

    @property
    def device_name(self) -> str:
        if self.name == "numpy":
            return "cpu"
        if self.name == "cupy":
            return f"cuda:{self.device.id}"
        return str(self.device)

    def dtype(self, name: str):
        """The namespace's float dtype called ``name`` ("float32" or "float64")."""
        if name not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, not {name!r}")
        return getattr(self.xp, name)

    def upload(self, host: Any, dtype: Any = None):
        """Copy a host array (or nested sequence) onto this backend's device."""
        if self.name == "cupy":
            with self.device:
                return self.xp.asarray(host, dtype=dtype)
        if self.name == "numpy":
            return np.asarray(host, dtype=dtype)
        return self.xp.asarray(host, dtype=dtype, device=self.device)

    def owns(self, array: Any) -> bool:
        """True if ``array`` already lives in this namespace (no upload needed)."""
        if self.name == "numpy":
            return isinstance(array, np.ndarray)
        try:
            return array_namespace(array) is self.xp
        except TypeError:
            return False

    def to_host(self, array: Any) -> np.ndarray:
        """Copy a device array to a host NumPy array; counted in ``host_reads``."""
        self.host_reads += 1
        return self._copy_to_host(array)

    def to_host_many(self, arrays: list) -> list[np.ndarray]:
        """Host copies of several arrays; one counted read, as a model save is one event."""
        self.host_reads += 1
        return [self._copy_to_host(array) for array in arrays]

    def _copy_to_host(self, array: Any) -> np.ndarray:
        if self.name == "numpy":
            return np.array(array, copy=True)  # a copy on every backend: later updates must not show
        if self.name == "cupy":
            return array.get()
        if self.name == "torch":
            return array.detach().cpu().numpy()
        cpu = self.xp.Device("CPU_DEVICE")
        return np.asarray(array.to_device(cpu))

    def device_of(self, array: Any):
        """The device ``array`` lives on, in the form ``xp`` functions accept."""
        return array_device(array)

    def random_generator(self, seed: int | None) -> RandomGenerator:
        """A seeded source of uniform [0, 1) arrays made on this device (for dropout)."""
        return RandomGenerator(self, seed)

    def copy(self, array: Any):
        """An independent copy on the same device (for best-weights snapshots)."""
        return self.xp.asarray(array, copy=True)

    def compute_threads(self, step_macs: int | None = None):
        """A context in which the CPU BLAS runs with the threads that suit a step's size.

        ``step_macs`` is the multiply-adds of one forward pass over a batch. NumPy only,
        and only with threadpoolctl installed (else it changes nothing). Below
        ``SMALL_STEP_MACS`` the matmuls are too small to split: waking a second OpenBLAS
        thread costs more than it saves, so they run on one.
        """
        if self.name != "numpy" or step_macs is None or step_macs >= SMALL_STEP_MACS:
            return contextlib.nullcontext()
        controller = _blas_controller()
        if controller is None:
            return contextlib.nullcontext()
        return controller.limit(limits=1, user_api="blas")

    @contextlib.contextmanager
    def step_policy(self, step_macs: int | None = None):
        """The CPU policy a training step runs under: BLAS threads for its size, denormals flushed.

        One home for it: ``fit`` and the benchmark harness both step under this, so a
        measured step is the step users run.
        """
        with self.compute_threads(step_macs), self.flush_denormals():
            yield

    def activated(self):
        """A context in which new arrays land on this backend's device.

        Only CuPy needs it: array-api-compat's CuPy functions ignore ``device=`` and
        allocate on the current GPU, so ``cuda:1`` must be made current around the work.
        """
        return self.device if self.name == "cupy" else contextlib.nullcontext()

    def quiet_float_errors(self):
        """A context in which NumPy-based backends do not warn on overflow or NaN.

        The training loop checks the loss itself and stops with a clear message, so
        NumPy's RuntimeWarnings would only be noise before it.
        """
        if self.name in ("numpy", "array-api-strict"):
            return np.errstate(over="ignore", invalid="ignore", divide="ignore")
        return contextlib.nullcontext()

    def flush_denormals(self):
        """A context in which this thread's CPU float arithmetic flushes denormals to zero.

        The momentum buffer of a weight whose gradient stays 0 (a blank border pixel, a
        dead unit) decays geometrically into the denormal range below 1.2e-38, where each
        x86 operation on it costs about a hundred cycles: a fifth of a batch-16 step was
        spent there. Training needs no such values; TensorFlow and XLA flush them too.
        CPU devices only, and only where the switch is known (x86-64 Linux with glibc);
        elsewhere nothing changes. The previous mode comes back on exit.
        """
        libm = _libm() if self.name != "cupy" and getattr(self.device, "type", "cpu") == "cpu" else None
        return contextlib.nullcontext() if libm is None else _mxcsr_flushing(libm)

    def synchronize(self) -> None:
        """Wait for queued device work to finish (before reading a clock)."""
        if self.name == "cupy":
            self.xp.cuda.runtime.deviceSynchronize()
        elif self.name == "torch" and self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)


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
            "use --device cuda (CuPy) or --backend torch for a GPU"
        )
    return Backend("numpy", _compat("numpy"), "cpu")


def _cupy(device: str | None) -> Backend:
    index = _cuda_index(device, "cupy")
    try:
        cupy = importlib.import_module("cupy")
    except ImportError as exc:
        raise BackendError(f"device {device or 'cuda'!r} needs CuPy, which is not installed; {_CUPY_HINT}") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CuPy raises its own CUDARuntimeError without a driver
        raise BackendError(f"no CUDA GPU is usable here ({exc}); train on the CPU with --device cpu") from exc
    if index >= count:
        raise BackendError(f"device cuda:{index} does not exist; this machine has {count} CUDA GPU(s)")
    return Backend("cupy", _compat("cupy"), cupy.cuda.Device(index))


def _torch(device: str | None) -> Backend:
    try:
        torch = importlib.import_module("torch")
    except ImportError as exc:
        raise BackendError(f"backend 'torch' needs PyTorch, which is not installed; {_TORCH_HINT}") from exc
    if device in (None, "cpu"):
        return Backend("torch", _compat("torch"), torch.device("cpu"))
    index = _cuda_index(device, "torch")
    if not torch.cuda.is_available():
        raise BackendError(
            f"device {device!r} needs a CUDA GPU, but PyTorch sees none (is this a CPU build?); "
            "train on the CPU with --device cpu"
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


#: Steps with fewer forward multiply-adds than this run on one BLAS thread (``compute_threads``).
#: Measured on 2 cores: 7e6 (784-128-64-10 at batch 64) ran faster on one thread;
#: 1.3e7 and more (the same net at batch 128, 784-256-10 at 64) faster on two.
SMALL_STEP_MACS = 10_000_000


@functools.cache
def _blas_controller():
    """threadpoolctl's view of the loaded BLAS (an optional dependency: None without it)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


def _compat(name: str) -> ModuleType:
    return importlib.import_module(f"array_api_compat.{name}")


_RESOLVERS = {"numpy": _numpy, "cupy": _cupy, "torch": _torch, "array-api-strict": _strict}


# -- denormals ------------------------------------------------------------------------------

#: MXCSR bits: flush-to-zero (results) and denormals-are-zero (inputs).
_FTZ_DAZ = 0x8040


class _FloatEnv(ctypes.Structure):
    """glibc's x86-64 ``fenv_t``: the x87 environment, then the SSE control word, MXCSR."""

    _fields_ = [("x87", ctypes.c_ubyte * 28), ("mxcsr", ctypes.c_uint32)]


@functools.cache
def _libm():
    """glibc's libm where MXCSR can be set through ``fesetenv`` and does flush; else None."""
    if platform.system() != "Linux" or platform.machine() != "x86_64" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libm = ctypes.CDLL("libm.so.6")
    except OSError:
        return None
    denormal = np.array([1e-39], dtype=np.float32)
    with _mxcsr_flushing(libm):
        works = bool((denormal * np.float32(1.0))[0] == 0.0)
    return libm if works else None


def _set_mxcsr(libm, mask: int, bits: int) -> int:
    """Set the ``mask`` bits of this thread's MXCSR to ``bits``; return the old MXCSR."""
    env = _FloatEnv()
    libm.fegetenv(ctypes.byref(env))
    old = env.mxcsr
    env.mxcsr = (old & ~mask) | (bits & mask)
    libm.fesetenv(ctypes.byref(env))
    return old


@contextlib.contextmanager
def _mxcsr_flushing(libm):
    """FTZ and DAZ set in this thread's MXCSR for the block, the old bits put back after."""
    saved = _set_mxcsr(libm, _FTZ_DAZ, _FTZ_DAZ)
    try:
        yield
    finally:
        _set_mxcsr(libm, _FTZ_DAZ, saved)


# -- fused elementwise kernels ------------------------------------------------------------


@dataclass(frozen=True)
class KernelSpec:
    """A CuPy ``ElementwiseKernel``'s parameters and CUDA C body."""

    inputs: str
    outputs: str  #: updated in place
    body: str


#: Elementwise updates that CuPy runs as one compiled kernel each, instead of one kernel
#: launch per array operation. Each is defined (``define_kernel``) next to the array-API
#: code it must equal -- ReLU's in activations.py, the optimizers' in optim.py, the input
#: scaling in network.py -- which is the fallback on every other backend and the reference
#: the tests hold the kernel to. This module alone knows how to build one.
KERNELS: dict[str, KernelSpec] = {}


def define_kernel(name: str, inputs: str, outputs: str, body: str) -> str:
    """Register the fused kernel ``name``; returns the name, for the caller to keep."""
    KERNELS[name] = KernelSpec(inputs, outputs, body)
    return name


def fused_kernel(xp: ModuleType, name: str):
    """CuPy's compiled kernel ``name`` (see ``KERNELS``), or None where the namespace is
    not CuPy's: the caller's array-API code then runs."""
    if name not in KERNELS:
        raise ValueError(f"no fused kernel called {name!r}")
    return _cupy_kernel(name) if is_cupy_namespace(xp) else None


@functools.cache
def _cupy_kernel(name: str):
    """Built once; CuPy compiles it on first use on each GPU and caches the binary."""
    import cupy

    spec = KERNELS[name]
    return cupy.ElementwiseKernel(spec.inputs, spec.outputs, spec.body, f"xpnet_{name}")


def cuda_devices() -> list[str]:
    """The CUDA GPUs CuPy and PyTorch can see, one line each (for ``python -m xpnet info``)."""
    found = []
    try:
        import cupy

        for index in range(cupy.cuda.runtime.getDeviceCount()):
            name = cupy.cuda.runtime.getDeviceProperties(index)["name"].decode()
            found.append(f"cuda:{index} {name} (CuPy)")
    except Exception:  # no CuPy, no driver, no GPU: nothing to list
        pass
    try:
        import torch

        found += [f"cuda:{i} {torch.cuda.get_device_name(i)} (PyTorch)" for i in range(torch.cuda.device_count())]
    except Exception:
        pass
    return found


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


class RandomGenerator:
    """Uniform random arrays drawn on the backend's own device, from one seed.

    The array API has no random module, so this is backend-specific by nature;
    streams differ between backends (dropout masks are not expected to agree).
    """

    def __init__(self, backend: Backend, seed: int | None):
        self.backend = backend
        if backend.name == "torch":
            import torch

            self._torch = torch
            self._generator = torch.Generator(device=backend.device)
            if seed is None:
                self._generator.seed()
            else:
                self._generator.manual_seed(int(seed))
        elif backend.name == "cupy":
            with backend.device:
                self._generator = backend.xp.random.default_rng(seed)
        else:
            self._generator = np.random.default_rng(seed)

    def get_state(self) -> dict | None:
        """The generator's state as JSON-able data (None where the backend cannot say)."""
        if self.backend.name == "torch":
            return {"torch": self._generator.get_state().tolist()}
        if self.backend.name == "cupy":
            return None
        return self._generator.bit_generator.state

    def set_state(self, state: dict) -> None:
        """Continue a stream saved by ``get_state``.

        A state saved on another kind of backend cannot continue here (the streams
        differ anyway), so the generator keeps its own seeded stream instead.
        """
        saved_on_torch = "torch" in state
        try:
            if self.backend.name == "torch" and saved_on_torch:
                self._generator.set_state(self._torch.tensor(state["torch"], dtype=self._torch.uint8))
            elif self.backend.name not in ("torch", "cupy") and not saved_on_torch:
                self._generator.bit_generator.state = state
        except (RuntimeError, TypeError, ValueError, KeyError) as exc:
            raise ConfigError(f"the saved dropout generator state does not fit this backend ({exc})") from None

    @staticmethod
    def valid_state(state: Any) -> bool:
        """True if ``state`` could come from ``get_state`` (checks untrusted checkpoint data)."""
        if state is None:
            return True
        if not isinstance(state, dict):
            return False
        if "torch" in state:
            data = state["torch"]
            return isinstance(data, list) and all(isinstance(b, int) and 0 <= b < 256 for b in data)
        try:
            np.random.default_rng().bit_generator.state = state
        except (TypeError, ValueError, KeyError, OverflowError):
            return False
        return True

    def uniform(self, shape: tuple, dtype: Any):
        """An array of ``shape`` with U[0, 1) entries of ``dtype``, on the device."""
        name = self.backend.name
        if name == "torch":
            return self._torch.rand(shape, generator=self._generator, dtype=dtype, device=self.backend.device)
        if name == "cupy":
            with self.backend.device:
                return self._generator.random(shape, dtype=dtype)
        host = self._generator.random(shape, dtype=np.float32)
        return host if name == "numpy" else self.backend.upload(host, dtype)
