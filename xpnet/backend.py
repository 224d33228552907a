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
import gc
import hashlib
import importlib
import json
import platform
import weakref
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
    _audit: Audit | None = field(default=None, init=False, repr=False, compare=False)

    def __str__(self) -> str:
        return f"{self.name} on {self.device_name}"

    @property
    def device_name(self) -> str:
        if self.name == "numpy":
            return "cpu"
        if self.name == "cupy":
            return f"cuda:{self.device.id}"
        return str(self.device)

    @property
    def library_version(self) -> str:
        """The version of the array library behind this backend."""
        module = {"array-api-strict": "array_api_strict"}.get(self.name, self.name)
        return getattr(importlib.import_module(module), "__version__", "?")

    @property
    def compute_capability(self) -> str | None:
        """The GPU's compute capability as NVRTC's ``sm_`` suffix ("90" for an H100); None off CUDA."""
        if self.name == "cupy":
            return str(self.device.compute_capability)
        if self.name == "torch" and self.device.type == "cuda":
            import torch

            major, minor = torch.cuda.get_device_capability(self.device)
            return f"{major}{minor}"
        return None

    def half_dtype(self, name: str):
        """The half type ``name`` ("float16" or "bfloat16") for mixed precision, where this backend has it.

        bfloat16 is PyTorch's alone here (NumPy and CuPy have no such dtype); array-api-strict
        has no float16 either (the standard has none).
        """
        if name == "bfloat16" and self.name != "torch":
            raise ConfigError(f"mixed-bfloat16 needs PyTorch (--backend torch); {self.name} has no bfloat16")
        found = getattr(self.xp, name, None)
        if found is None or name not in ("float16", "bfloat16"):
            raise ConfigError(f"{self.name} has no {name} for mixed precision; train in float32 there")
        return found

    def tf32_state(self) -> str:
        """Whether float32 matmuls on this device may use TF32 tensor cores: "on", "off" or "n/a"."""
        if self.name == "cupy":
            from cupy._core import _routines_linalg as linalg

            return "on" if linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32 else "off"
        if self.name == "torch" and self.device.type == "cuda":
            import torch

            return "off" if torch.get_float32_matmul_precision() == "highest" else "on"
        return "n/a (no CUDA device)"

    def use_tf32(self, enabled: bool) -> None:
        """Let float32 matmuls on this GPU run on TF32 tensor cores (a 10-bit mantissa: several
        times faster on Ampere and later, and less exact), or not. Process-wide; no-op off CUDA."""
        if self.name == "cupy":
            from cupy._core import _routines_linalg as linalg

            linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32 if enabled else linalg.COMPUTE_TYPE_DEFAULT)
        elif self.name == "torch" and self.device.type == "cuda":
            import torch

            torch.set_float32_matmul_precision("high" if enabled else "highest")

    def dtype(self, name: str):
        """The namespace's float dtype called ``name`` ("float32" or "float64")."""
        if name not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, not {name!r}")
        return getattr(self.xp, name)

    def upload(self, host: Any, dtype: Any = None):
        """Copy a host array (or nested sequence) onto this backend's device."""
        with self._crossing("upload"):
            if self.name == "cupy":
                with self.device:
                    array = self.xp.asarray(host, dtype=dtype)
            elif self.name == "numpy":
                array = np.asarray(host, dtype=dtype)
            else:
                array = self.xp.asarray(host, dtype=dtype, device=self.device)
        if self._audit is not None:
            self._audit.remember(array)
        return array

    def owns(self, array: Any) -> bool:
        """True if ``array`` already lives in this namespace and on this device (no upload needed)."""
        if self.name == "numpy":
            return isinstance(array, np.ndarray)
        if not self.same_library(array):
            return False
        return _same_device(self.device_of(array), self.device)

    def same_library(self, array: Any) -> bool:
        """True if ``array`` belongs to this backend's array library, on whatever device."""
        if self.name == "numpy":
            return isinstance(array, np.ndarray)
        try:
            return array_namespace(array) is self.xp
        except TypeError:
            return False

    def to_host(self, array: Any) -> np.ndarray:
        """Copy a device array to a host NumPy array; counted in ``host_reads``."""
        self.host_reads += 1
        with self._crossing("read"):
            return self._copy_to_host(array)

    def to_host_many(self, arrays: list) -> list[np.ndarray]:
        """Host copies of several arrays; one counted read, as a model save is one event."""
        self.host_reads += 1
        with self._crossing("read"):
            return [self._copy_to_host(array) for array in arrays]

    def _copy_to_host(self, array: Any) -> np.ndarray:
        if self.name == "numpy":
            return np.array(array, copy=True)  # a copy on every backend: later updates must not show
        if self.name == "cupy":
            return array.get()
        if self.name == "torch":
            if array.device.type == "meta":  # shapes without data (audits): ones stand in
                return np.ones(tuple(array.shape), dtype=_torch_host_dtype(array.dtype))
            return array.detach().cpu().float().numpy() if _is_bfloat16(array) else array.detach().cpu().numpy()
        cpu = self.xp.Device("CPU_DEVICE")
        return np.asarray(array.to_device(cpu))

    def device_of(self, array: Any):
        """The device ``array`` lives on, in the form ``xp`` functions accept."""
        return array_device(array)

    def random_generator(self, seed: int | None) -> RandomGenerator:
        """A seeded source of uniform [0, 1) arrays made on this device (for dropout)."""
        return RandomGenerator(self, seed)

    def copy(self, array: Any):
        """An independent copy on this backend's device (for best-weights snapshots).

        On CuPy the copy is made with this GPU current: ``cp.asarray(copy=True)`` puts its
        result on the *current* GPU, which outside the device context is GPU 0.
        """
        if self.name == "cupy":
            with self.device:
                return self.xp.asarray(array, copy=True)
        if self.name == "numpy":
            return np.array(array, copy=True)
        return self.xp.asarray(array, copy=True, device=self.device)

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
        """A context in which this backend's GPU is the current one.

        CuPy needs it: array-api-compat's CuPy functions ignore ``device=`` and allocate
        on the current GPU, so ``cuda:1`` must be made current around the work. NCCL
        binds a communicator to the current GPU, so PyTorch CUDA makes its device current too.
        """
        if self.name == "cupy":
            return self.device
        if self.name == "torch" and self.device.type == "cuda":
            import torch

            return torch.cuda.device(self.device)
        return contextlib.nullcontext()

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
        """Wait for this backend's device to finish its queued work (before reading a clock)."""
        if self.name == "cupy":
            self.device.synchronize()  # this GPU, not the current one
        elif self.name == "torch" and self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    # -- audits --------------------------------------------------------------------------

    @contextlib.contextmanager
    def audit(self):
        """Run a block under watch; yields the ``Audit`` that records what it asked of the device.

        Crossings through ``upload`` and ``to_host`` are counted, not flagged: they are the
        budgeted ones. On PyTorch a dispatch monitor flags every operation that reads device
        data on the host (``item``, ``nonzero``, boolean masks), touches a tensor on another
        device, or uses a tensor made from host data outside ``upload`` (as
        ``torch.asarray(0.0, device="cuda")`` is: a blocking copy). On a GPU the libraries'
        own switches also stop the block at its first hidden synchronisation:
        ``torch.cuda.set_sync_debug_mode("error")`` and ``cupyx.allow_synchronize(False)``.
        Tensors that exist when the block starts count as the run's own.
        """
        audit = Audit(self.device_name)
        self._audit = audit
        try:
            with self._sync_guard(True), _dispatch_monitor(self, audit):
                yield audit
        finally:
            self._audit = None

    @contextlib.contextmanager
    def _crossing(self, kind: str):
        """A budgeted host crossing (an upload or a read): counted, and not flagged, by an audit."""
        audit = self._audit
        if audit is None:
            yield
            return
        audit.count(kind)
        audit.paused += 1
        try:
            with self._sync_guard(False):
                yield
        finally:
            audit.paused -= 1

    def _sync_guard(self, strict: bool):
        """The library's own switch that raises on a device synchronisation (GPUs only)."""
        if self.name == "cupy":
            import cupyx

            return cupyx.allow_synchronize(not strict)
        if self.name == "torch" and self.device.type == "cuda":
            return _torch_sync_debug_mode("error" if strict else "default")
        return contextlib.nullcontext()

    # -- memory as collective communication sees it (xpnet.distributed) --------------------

    @property
    def cuda_index(self) -> int | None:
        """The CUDA device number arrays live on (CuPy, PyTorch CUDA); None for host memory."""
        if self.name == "cupy":
            return self.device.id
        if self.name == "torch" and self.device.type == "cuda":
            return self.device.index or 0
        return None

    def host_alias(self, array: Any) -> np.ndarray | None:
        """A NumPy array sharing ``array``'s memory, where that memory is the host's; else None.

        MPI then reads and writes the array itself, with no copy: NumPy arrays as they are,
        PyTorch CPU tensors through DLPack. array-api-strict's other devices stand in for a
        GPU in the tests, so only its CPU device counts as host memory here.
        """
        if self.name == "numpy":
            return array
        if self.name == "torch" and self.device.type == "cpu":
            return np.from_dlpack(array.detach())
        if self.name == "array-api-strict" and self.device == self.xp.Device("CPU_DEVICE"):
            return np.from_dlpack(array)
        return None

    def pointer(self, array: Any) -> int:
        """The address of ``array``'s first element (for NCCL and CUDA-aware MPI)."""
        if self.name == "cupy":
            return array.data.ptr
        if self.name == "torch":
            return array.data_ptr()
        return self.host_alias(array).ctypes.data

    def stream_pointer(self) -> int:
        """The handle of the CUDA stream this thread queues work on (0, the default, off the GPU)."""
        if self.name == "cupy":
            return self.xp.cuda.get_current_stream().ptr
        if self.name == "torch" and self.device.type == "cuda":
            import torch

            return torch.cuda.current_stream(self.device).cuda_stream
        return 0


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
        raise BackendError(f"no CUDA GPU is usable by CuPy here ({exc}); train on the CPU with --device cpu") from exc
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


def _same_device(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # devices of different kinds that refuse to compare
        return False


def _is_bfloat16(array: Any) -> bool:
    return str(getattr(array, "dtype", "")).endswith("bfloat16")


def _torch_host_dtype(dtype: Any) -> np.dtype:
    """The NumPy dtype a torch tensor of ``dtype`` reads back as (bfloat16, which NumPy lacks: float32)."""
    name = str(dtype).removeprefix("torch.")
    return np.dtype("float32" if name == "bfloat16" else name)


@contextlib.contextmanager
def _torch_sync_debug_mode(mode: str):
    import torch

    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def device_constant(xp: ModuleType, value: float, like: Any):
    """A 0-d array holding ``value`` with ``like``'s dtype on ``like``'s device, made once.

    For the array-API functions that take arrays only (``maximum``, ``minimum``):
    array-api-compat turns a Python number given to them into
    ``torch.asarray(value, device=...)``, a blocking host-to-device copy on CUDA
    (pytorch/pytorch#120996), on every call. ``xp.full`` fills on the device instead,
    and the result is kept per device, dtype and value.
    """
    from array_api_compat import device

    where = device(like)
    key = (id(xp), str(where), str(like.dtype), float(value))
    found = _CONSTANTS.get(key)
    if found is None:
        # CuPy allocates on the current GPU whatever device= says: make the array's own current.
        with where if hasattr(where, "use") else contextlib.nullcontext():
            found = _CONSTANTS[key] = xp.full((), value, dtype=like.dtype, device=where)
    return found


_CONSTANTS: dict = {}


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


def kernel_names() -> list[str]:
    """The names of the fused kernels defined so far (``import xpnet`` defines them all)."""
    return list(KERNELS)


def kernel_spec(name: str) -> tuple[str, str, str]:
    """``(inputs, outputs, body)`` of the fused kernel ``name``, as ``cupy.ElementwiseKernel`` takes them."""
    spec = KERNELS[name]
    return spec.inputs, spec.outputs, spec.body


def fused_kernel(xp: ModuleType, name: str):
    """CuPy's compiled kernel ``name`` (see ``KERNELS``), or None where the namespace is
    not CuPy's: the caller's array-API code then runs. Inside ``substituted_kernels``,
    the stand-in instead, whatever the namespace."""
    if name not in KERNELS:
        raise ValueError(f"no fused kernel called {name!r}")
    if _SUBSTITUTE:
        return _SUBSTITUTE[-1](name)
    return _cupy_kernel(name) if is_cupy_namespace(xp) else None


_SUBSTITUTE: list = []


@contextlib.contextmanager
def substituted_kernels(make):
    """Within the block, every fused-kernel call site gets ``make(name)`` instead of CuPy's kernel.

    The seam for running the kernels' C bodies where no GPU is (``selfcheck`` interprets
    them with NumPy; the tests also record each call's arguments to compile its source).
    Objects that keep a kernel (an optimizer, after its first step) keep the one they got.
    """
    _SUBSTITUTE.append(make)
    try:
        yield
    finally:
        _SUBSTITUTE.pop()


@functools.cache
def _cupy_kernel(name: str):
    """Built once; CuPy compiles it on first use on each GPU and caches the binary."""
    import cupy

    spec = KERNELS[name]
    return cupy.ElementwiseKernel(spec.inputs, spec.outputs, spec.body, f"xpnet_{name}")


def kernel_cuda_source(kernel, args: list) -> str:
    """The CUDA C++ that CuPy compiles for a fused kernel called with ``args``, headers included.

    ``kernel`` is a name in ``KERNELS`` or an ``(inputs, outputs, body)`` triple;
    ``args`` stand in for the call's arguments, inputs then outputs: NumPy arrays for
    device arrays (their dtype, shape and layout are what CuPy specialises on), Python
    numbers for scalars. The source is built by CuPy's own generator, so it is what a GPU
    would compile; only an import of CuPy is needed, no GPU and no driver.
    """
    from cupy._core import _kernel, _scalar, core

    inputs, outputs, body = kernel_spec(kernel) if isinstance(kernel, str) else kernel
    name = f"xpnet_{kernel}" if isinstance(kernel, str) else "xpnet_kernel"
    elementwise = _cupy_elementwise(inputs, outputs, body, name)
    arrays = [a if isinstance(a, np.ndarray) else None for a in args]
    n_in = elementwise.nin
    _, _, type_map = elementwise._decide_params_type(
        tuple(None if a is None else a.dtype.type for a in arrays[:n_in]),
        tuple(a.dtype.type for a in arrays[n_in:]),
    )
    typed = dict(type_map._pairs)
    shape = np.broadcast_shapes(*(a.shape for a in arrays if a is not None))
    # CuPy runs all-contiguous, unbroadcast calls as one flat loop; others keep their dimensions.
    flat = all(a is None or (a.shape == shape and a.flags.c_contiguous) for a in arrays)
    ndim = 1 if flat else len(shape)
    infos = []
    for param, array in zip(elementwise.in_params + elementwise.out_params, arrays):
        if array is None:
            dtype = param.dtype or typed[param.ctype]
            infos.append(_kernel._ArgInfo(3, _scalar.CScalar, dtype, 0, True, True))
        else:
            contiguous = flat or (array.shape == shape and array.flags.c_contiguous)
            infos.append(_kernel._ArgInfo(1, _cupy_ndarray(), array.dtype.type, ndim, contiguous, True))
    infos.append(_kernel._ArgInfo(2, _cupy_indexer(), None, ndim, True, True))
    code = _kernel._get_elementwise_kernel_code(
        tuple(infos), type_map, elementwise.params, elementwise.operation, elementwise.name, elementwise.preamble
    )
    return "".join(f"#include <{header}>\n" for header in core._cupy_header_list) + code


def _cupy_elementwise(inputs: str, outputs: str, body: str, name: str):
    import cupy

    return cupy.ElementwiseKernel(inputs, outputs, body, name)


def _cupy_ndarray():
    import cupy

    return cupy.ndarray


def _cupy_indexer():
    from cupy._core import _carray

    return _carray.Indexer


@functools.lru_cache(maxsize=256)
def nvrtc_compile(source: str, arch: str) -> str:
    """Compile CUDA source with NVRTC, as CuPy does, for ``arch`` ("80" for sm_80); return NVRTC's log.

    CuPy's own compiler options are used (its include paths, C++17, ``-ftz=true``).
    Raises ``BackendError`` with the log when compilation fails or NVRTC warns: warnings
    are errors here. No GPU needed; NVRTC comes from CuPy's loader (a PyPI wheel will do).
    """
    from cupy._core import core
    from cupy_backends.cuda.libs import nvrtc

    cupy_options = core.assemble_cupy_compiler_options(())
    options = (*cupy_options, "-ftz=true", f"-arch=sm_{arch}", "--device-as-default-execution-space")
    program = nvrtc.createProgram(source, "xpnet_kernel.cu", (), ())
    try:
        try:
            nvrtc.compileProgram(program, options)
        except Exception as exc:
            raise BackendError(
                f"NVRTC cannot compile it for sm_{arch}: {exc}\n{nvrtc.getProgramLog(program)}"
            ) from None
        log = nvrtc.getProgramLog(program)
        if "warning" in log.lower():
            raise BackendError(f"NVRTC warns compiling it for sm_{arch} (warnings are errors here):\n{log}")
        return log
    finally:
        nvrtc.destroyProgram(program)


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


class RandomGenerator:
    """Uniform random arrays drawn on the backend's own device, from one seed.

    The array API has no random module, so this is backend-specific by nature;
    streams differ between backends (dropout masks are not expected to agree).

    A saved state continues its stream exactly where the library and the device kind
    match: NumPy and array-api-strict (NumPy's PCG64 state), PyTorch on the same device
    type (the generator's bytes; a CPU and a CUDA generator hold different states). CuPy's
    generator state lives on the GPU and is not saved. Where a stream cannot continue
    (CuPy, a checkpoint moved between CPU and CUDA or between libraries) the generator is
    reseeded from a digest of the saved state: resuming one checkpoint twice gives the same
    run, but not the masks the uninterrupted run would have drawn.
    """

    def __init__(self, backend: Backend, seed: int | None):
        self.backend = backend
        self.seed = seed
        self.draws = 0  #: arrays drawn so far (the state CuPy saves in place of its stream)
        self._reseed(seed)

    def _reseed(self, seed: int | None) -> None:
        backend = self.backend
        if backend.name == "torch":
            import torch

            self._torch = torch
            self._generator = None  # meta tensors hold no values, and meta has no generator
            if backend.device.type != "meta":
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
        """The generator's state as JSON-able data (None where there is none: meta tensors)."""
        name = self.backend.name
        if name == "torch":
            if self._generator is None:
                return None
            return {"torch": self._generator.get_state().tolist(), "device": self.backend.device.type}
        if name == "cupy":
            return {"cupy": {"seed": self.seed, "draws": self.draws}}
        return self._generator.bit_generator.state

    def set_state(self, state: dict) -> None:
        """Continue a stream saved by ``get_state``, or reseed from it (see the class docstring)."""
        name = self.backend.name
        try:
            if name == "torch" and "torch" in state and self._generator is not None:
                if state.get("device", "cpu") == self.backend.device.type:
                    self._generator.set_state(self._torch.tensor(state["torch"], dtype=self._torch.uint8))
                    return
            elif name not in ("torch", "cupy") and "bit_generator" in state:
                self._generator.bit_generator.state = state
                return
        except (RuntimeError, TypeError, ValueError, KeyError) as exc:
            raise ConfigError(f"the saved dropout generator state does not fit this backend ({exc})") from None
        self._reseed(_digest_seed(state))

    def uniform(self, shape: tuple, dtype: Any):
        """An array of ``shape`` with U[0, 1) entries of ``dtype``, on the device."""
        name = self.backend.name
        self.draws += 1
        if name == "torch":
            return self._torch.rand(shape, generator=self._generator, dtype=dtype, device=self.backend.device)
        if name == "cupy":
            with self.backend.device:
                return self._generator.random(shape, dtype=dtype)
        host = self._generator.random(shape, dtype=np.float32)
        return host if name == "numpy" else self.backend.upload(host, dtype)


def _digest_seed(state: dict) -> int:
    """A seed drawn from a saved generator state: the same state always gives the same seed."""
    text = json.dumps(state, sort_keys=True, separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


# -- audits: what a run asks of its device ---------------------------------------------------

#: aten operations that read device data on the host: each one is a synchronisation on a GPU.
_HOST_READ_OPS = frozenset(
    {"_local_scalar_dense", "item", "nonzero", "is_nonzero", "masked_select", "equal", "allclose"}
    | {"_unique", "_unique2", "unique_dim", "unique_consecutive", "repeat_interleave"}
)


@dataclass
class Audit:
    """What a block run under ``Backend.audit`` asked of the device.

    ``reads`` and ``uploads`` count the budgeted crossings (``to_host``, ``upload``);
    ``violations`` lists, once each, what a GPU would pay for unseen: host reads,
    tensors on another device, tensors made from host data behind ``upload``'s back.
    ``operations`` counts the operations the monitor saw (0 where the backend has none).
    """

    device: str
    reads: int = 0
    uploads: int = 0
    operations: int = 0
    violations: list[str] = field(default_factory=list)
    paused: int = field(default=0, repr=False)
    _known: dict = field(default_factory=dict, repr=False)

    @property
    def clean(self) -> bool:
        return not self.violations

    def count(self, kind: str) -> None:
        if kind == "read":
            self.reads += 1
        else:
            self.uploads += 1

    def flag(self, problem: str) -> None:
        if problem not in self.violations:
            self.violations.append(problem)

    def remember(self, array: Any) -> None:
        """Count ``array`` as the run's own: made on the device or uploaded through ``upload``."""
        key = id(array)
        with contextlib.suppress(TypeError):  # objects without weak references are nothing to watch
            self._known[key] = weakref.ref(array, lambda _, known=self._known, key=key: known.pop(key, None))

    def knows(self, array: Any) -> bool:
        ref = self._known.get(id(array))
        return ref is not None and ref() is array


def _dispatch_monitor(backend: Backend, audit: Audit):
    """PyTorch's dispatch-mode monitor for ``audit`` (a no-op context on other backends)."""
    if backend.name != "torch":
        return contextlib.nullcontext()
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    for obj in gc.get_objects():  # tensors alive before the block are the run's own
        if issubclass(type(obj), torch.Tensor):
            audit.remember(obj)

    class Monitor(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if not audit.paused:
                fake = _check_operation(audit, backend.device, func, tree_leaves((args, kwargs)), torch.Tensor)
                if fake is not None:
                    return fake
            out = func(*args, **kwargs)
            for leaf in tree_leaves(out):
                if isinstance(leaf, torch.Tensor):
                    audit.remember(leaf)
                    if not audit.paused and leaf.device != backend.device:
                        audit.flag(f"{_op_name(func)} made a tensor on {leaf.device}, off the run's device")
            return out

    return Monitor()


def _op_name(func) -> str:
    return getattr(getattr(func, "_overloadpacket", func), "__name__", str(func))


def _check_operation(audit: Audit, device, func, leaves: list, tensor_type) -> Any:
    """Flag what ``func`` would cost a GPU; a stand-in result where running it on meta would fail."""
    audit.operations += 1
    name = _op_name(func)
    tensors = [leaf for leaf in leaves if isinstance(leaf, tensor_type)]
    for tensor in tensors:
        if tensor.device != device:
            audit.flag(f"{name} mixes devices: a tensor on {tensor.device} with the run's {device}")
        elif not audit.knows(tensor):
            audit.flag(
                f"{name} uses a {tuple(tensor.shape)} tensor made from host data outside Backend.upload "
                "(a blocking host-to-device copy on a GPU)"
            )
            audit.remember(tensor)
    if name in _HOST_READ_OPS:
        audit.flag(f"{name} reads device data on the host (a synchronisation on a GPU)")
    elif name.startswith("index") and any(str(t.dtype) in ("torch.bool", "torch.uint8") for t in tensors[1:]):
        audit.flag(f"{name} with a boolean mask (its size is read on the host: a synchronisation)")
    if name == "_local_scalar_dense" and tensors and tensors[0].device.type == "meta":
        return False if str(tensors[0].dtype) == "torch.bool" else 0  # meta has no value to read
    return None
