"""``Backend``: one array library on one device, and every crossing between host and device.

The base class is the array API standard's own way (``xp.asarray(..., device=)``, DLPack,
no CUDA); each library's module (``numpy``, ``cupy``, ``torch``, ``strict``) subclasses it
and overrides only what that library does differently. ``resolve`` picks the class.
"""

from __future__ import annotations

import contextlib
import importlib
import tracemalloc
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
from array_api_compat import array_namespace
from array_api_compat import device as array_device

from xpnet.backend.audit import Audit
from xpnet.backend.cpu import _libm, _mxcsr_flushing
from xpnet.backend.rng import RandomGenerator
from xpnet.backend.staging import BackgroundUploads
from xpnet.errors import BackendError, ConfigError

DTYPES = ("float32", "float64")
HALF_DTYPES = ("float16", "bfloat16")
#: PyTorch's CPU build; PyPI's own torch (what "xpnet[torch]" pulls) is the CUDA build on Linux, several GB.
TORCH_CPU_INSTALL = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
#: How to get PyTorch, said in the same words by errors, test skips, bench and README.
TORCH_HINT = (
    f'install PyTorch with: {TORCH_CPU_INSTALL} (the CPU build), or pip install "xpnet[torch]" '
    "(PyPI's build: on Linux the CUDA one, several GB)"
)
#: The advice every refused GPU ends with, as the Python API spells it (the CLI says --device cpu).
ON_THE_CPU = 'train on the CPU with device="cpu"'


@dataclass
class Backend:
    """An array namespace bound to one device.

    ``host_reads`` counts device-to-host transfers so tests can hold the training
    loop to its budget (one read per epoch for the metrics).
    """

    #: The user-facing name (``--backend``), the importable module, and the device kinds the
    #: benchmark tries; set by each library's class.
    name: ClassVar[str] = "array-api"
    module: ClassVar[str] = ""
    device_kinds: ClassVar[tuple[str, ...]] = ("cpu",)
    #: Whether arrays can be written into (False for JAX: every update then returns a new array).
    writable: ClassVar[bool] = True
    #: Whether ``fit`` compiles its training step here by default (``xpnet.compiled``: JAX's).
    compiles_steps: ClassVar[bool] = False

    xp: ModuleType
    device: Any
    host_reads: int = field(default=0, compare=False)
    _audit: Audit | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def for_device(cls, device: str | None) -> Backend:
        """This library on ``device`` (None: its default), after checking both are usable here."""
        raise NotImplementedError(f"{cls.__name__} does not say how to find its devices")

    @classmethod
    def _library(cls, what: str, hint: str) -> ModuleType:
        """The library's own module, or a ``BackendError`` naming ``what`` is missing and how to get it."""
        try:
            return importlib.import_module(cls.module)
        except ImportError as exc:
            raise BackendError(f"backend {cls.name!r} needs {what}, which is not installed; {hint}") from exc

    def __str__(self) -> str:
        return f"{self.name} on {self.device_name}"

    @property
    def device_name(self) -> str:
        return str(self.device)

    @property
    def library_version(self) -> str:
        """The version of the array library behind this backend."""
        return getattr(importlib.import_module(self.module), "__version__", "?")

    @property
    def compute_capability(self) -> str | None:
        """The GPU's compute capability as NVRTC's ``sm_`` suffix ("90" for an H100); None off CUDA."""
        return None

    @classmethod
    def set_cpu_threads(cls, threads: int, load: bool = False) -> None:
        """The library's own CPU thread pool, beside the BLAS (``xpnet.backend.threads``): where it is
        loaded, or, with ``load``, about to be used. Most libraries use the BLAS's alone."""

    @property
    def watches_operations(self) -> bool:
        """Whether ``Backend.audit`` sees every operation here (a dispatch monitor off the CPU), so
        selfcheck's sync audit needs no meta-device stand-in beside it."""
        return False

    @property
    def compiles_kernels(self) -> bool:
        """Whether the fused kernels (``xpnet.backend.kernels``) are compiled and run here."""
        return False

    def half_dtype(self, name: str):
        """The half type ``name`` ("float16" or "bfloat16") for mixed precision, where this backend has it.

        bfloat16 is PyTorch's alone here (NumPy and CuPy have no such dtype); array-api-strict
        has no float16 either (the standard has none).
        """
        if name == "bfloat16":
            raise ConfigError(f"mixed-bfloat16 needs PyTorch (--backend torch); {self.name} has no bfloat16")
        found = getattr(self.xp, name, None)
        if found is None or name not in HALF_DTYPES:
            raise ConfigError(f"{self.name} has no {name} for mixed precision; train in float32 there")
        return found

    def tf32_state(self) -> str:
        """Whether float32 matmuls on this device may use TF32 tensor cores: "on", "off" or "n/a"."""
        return "n/a (no CUDA device)"

    def use_tf32(self, enabled: bool) -> None:
        """Let float32 matmuls on this GPU run on TF32 tensor cores (a 10-bit mantissa: several
        times faster on Ampere and later, and less exact), or not. Process-wide; no-op off CUDA."""

    def dtype(self, name: str):
        """The namespace's float dtype called ``name`` ("float32" or "float64")."""
        if name not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, not {name!r}")
        return getattr(self.xp, name)

    # -- writing into arrays, where the library allows it ----------------------------------

    def assign(self, target: Any, value: Any):
        """``target`` holding ``value``: written in place where arrays are writable, else ``value``
        itself. Callers keep the result (``p = backend.assign(p, new)``), so one line serves both."""
        if not self.writable:
            return value
        target[...] = value
        return target

    # -- crossings and copies ------------------------------------------------------------

    def upload(self, host: Any, dtype: Any = None):
        """Copy a host array (or nested sequence) onto this backend's device."""
        with self._crossing("upload"):
            array = self._put(host, dtype)
        if self._audit is not None:
            self._audit.remember(array)
        return array

    def background_uploads(self) -> BackgroundUploads:
        """Uploads a background thread starts for the calling thread to use (``xpnet.backend.staging``);
        call it in the thread that trains. Here each is ``upload``, ready at once; the CUDA backends
        copy from page-locked blocks on a copy stream of their own, beside the training kernels."""
        return BackgroundUploads(self)

    def _uploaded(self, arrays: list) -> None:
        """Arrays ``background_uploads`` copied itself, counted and known to an audit as ``upload``'s
        are; its guard stays on: an asynchronous copy from page-locked memory is no synchronisation."""
        if self._audit is not None:
            for array in arrays:
                self._audit.count("upload")
                self._audit.remember(array)

    def _put(self, host: Any, dtype: Any):
        """``host`` as an array of this library on this device (``upload`` without its counting)."""
        return self.xp.asarray(host, dtype=dtype, device=self.device)

    def owns(self, array: Any) -> bool:
        """True if ``array`` already lives in this namespace and on this device (no upload needed)."""
        return self.same_library(array) and _same_device(self.device_of(array), self.device)

    def same_library(self, array: Any) -> bool:
        """True if ``array`` belongs to this backend's array library, on whatever device."""
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
        """A NumPy copy of ``array`` (a copy on every backend: later updates must not show)."""
        return np.array(np.from_dlpack(array), copy=True)

    def device_of(self, array: Any):
        """The device ``array`` lives on, in the form ``xp`` functions accept."""
        return array_device(array)

    def copy(self, array: Any):
        """An independent copy on this backend's device (for best-weights snapshots)."""
        return self.xp.asarray(array, copy=True, device=self.device)

    def random_generator(self, seed: int | None) -> RandomGenerator:
        """A seeded source of uniform [0, 1) arrays made on this device (for dropout)."""
        return RandomGenerator(self, seed)

    # -- the contexts a step runs in -------------------------------------------------------

    def compute_threads(self, step_macs: int | None = None):
        """A context in which the CPU BLAS runs with the threads that suit a step's size
        (``step_macs``: the multiply-adds of one forward pass over a batch). NumPy's alone."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def step_policy(self, step_macs: int | None = None):
        """The CPU policy a training step runs under: BLAS threads for its size, denormals flushed.

        One home for it: ``fit`` and the benchmark harness both step under this, so a
        measured step is the step users run.
        """
        with self.compute_threads(step_macs), self.flush_denormals():
            yield

    def activated(self):
        """A context in which this backend's GPU is the current one (a no-op off CUDA)."""
        return contextlib.nullcontext()

    def quiet_float_errors(self):
        """A context in which NumPy-based backends do not warn on overflow or NaN.

        The training loop checks the loss itself and stops with a clear message, so
        NumPy's RuntimeWarnings would only be noise before it.
        """
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
        libm = _libm() if getattr(self.device, "type", "cpu") == "cpu" else None
        return contextlib.nullcontext() if libm is None else _mxcsr_flushing(libm)

    def synchronize(self) -> None:
        """Wait for this backend's device to finish its queued work (before reading a clock)."""

    def gpu_free_memory(self) -> int | None:
        """Bytes this GPU can still give this process (the driver's free count plus what the
        library's pool holds cached and unused), or None off a GPU: the memory check's device limit."""
        return None

    def peak_memory(self, run) -> int | None:
        """Bytes allocated at the high-water mark of one ``run()``, beyond what was live before
        (for the benchmark). Host arrays: tracemalloc, which NumPy reports its buffers to."""
        tracemalloc.start()
        try:
            run()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

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
            with self._sync_guard(True), self._dispatch_monitor(audit):
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
        return contextlib.nullcontext()

    def _dispatch_monitor(self, audit: Audit):
        """A context that watches every operation of the block for ``audit`` (PyTorch's only)."""
        return contextlib.nullcontext()

    # -- memory as collective communication sees it (xpnet.distributed) --------------------

    @property
    def cuda_index(self) -> int | None:
        """The CUDA device number arrays live on (CuPy, PyTorch CUDA); None for host memory."""
        return None

    def host_alias(self, array: Any) -> np.ndarray | None:
        """A NumPy array sharing ``array``'s memory, where that memory is the host's; else None.

        MPI then reads and writes the array itself, with no copy.
        """
        return None

    def pointer(self, array: Any) -> int:
        """The address of ``array``'s first element (for NCCL and CUDA-aware MPI)."""
        return self.host_alias(array).ctypes.data

    def stream_pointer(self) -> int:
        """The handle of the CUDA stream this thread queues work on (0, the default, off the GPU)."""
        return 0


def _same_device(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # devices of different kinds that refuse to compare
        return False


def device_constant(xp: ModuleType, value: float, like: Any):
    """A 0-d array holding ``value`` with ``like``'s dtype on ``like``'s device, made once.

    For the array-API functions that take arrays only (``maximum``, ``minimum``):
    array-api-compat turns a Python number given to them into
    ``torch.asarray(value, device=...)``, a blocking host-to-device copy on CUDA
    (pytorch/pytorch#120996), on every call. ``xp.full`` fills on the device instead,
    and the result is kept per device, dtype and value.
    """
    where = array_device(like)
    if where is None:  # an array being traced by a compiler (JAX): a constant of the trace, never cached
        return xp.full((), value, dtype=like.dtype)
    try:  # the device and dtype objects themselves: hashing them is cheap, str(dtype) took 17 us on NumPy
        key = (id(xp), where, like.dtype, float(value))
        found = _CONSTANTS.get(key)
    except TypeError:  # a library whose devices or dtypes do not hash
        key = (id(xp), str(where), str(like.dtype), float(value))
        found = _CONSTANTS.get(key)
    if found is None:
        # CuPy allocates on the current GPU whatever device= says: make the array's own current.
        with where if hasattr(where, "use") else contextlib.nullcontext():
            found = _CONSTANTS[key] = xp.full((), value, dtype=like.dtype, device=where)
    return found


_CONSTANTS: dict = {}
