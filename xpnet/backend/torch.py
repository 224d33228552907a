"""PyTorch on the CPU, a CUDA GPU, or ``meta`` (shapes without data, for audits)."""

from __future__ import annotations

import contextlib
import importlib
import sys
import warnings
from typing import Any, ClassVar

import numpy as np

from xpnet.backend.audit import Audit, torch_dispatch_monitor
from xpnet.backend.base import HALF_DTYPES, ON_THE_CPU, TORCH_HINT, Backend
from xpnet.backend.cuda import cuda_index
from xpnet.backend.rng import RandomGenerator
from xpnet.backend.staging import BackgroundUploads, PinnedUploads
from xpnet.errors import BackendError, ConfigError


class TorchBackend(Backend):
    """PyTorch through array-api-compat; the one backend with bfloat16 and a dispatch monitor."""

    name: ClassVar[str] = "torch"
    module: ClassVar[str] = "torch"
    device_kinds: ClassVar[tuple[str, ...]] = ("cpu", "cuda")

    @classmethod
    def for_device(cls, device: str | None) -> Backend:
        torch = cls._library("PyTorch", TORCH_HINT)
        xp = importlib.import_module("array_api_compat.torch")
        if device in (None, "cpu", "meta"):  # meta: shapes without data, for audits (see Backend.audit)
            return cls(xp, torch.device(device or "cpu"))
        index = cuda_index(device, cls.name)
        if not torch.cuda.is_available():
            raise BackendError(
                f"device {device!r} needs a CUDA GPU, but PyTorch sees none (is this a CPU build?); " + ON_THE_CPU
            )
        if index >= torch.cuda.device_count():
            raise BackendError(f"device cuda:{index} does not exist; PyTorch sees {torch.cuda.device_count()} GPU(s)")
        return cls(xp, torch.device("cuda", index))

    @classmethod
    def set_cpu_threads(cls, threads: int, load: bool = False) -> None:
        if load and cls.module not in sys.modules:
            try:
                importlib.import_module(cls.module)  # the run will use it: loading it here is not extra work
            except ImportError:
                return
        if cls.module in sys.modules:
            sys.modules[cls.module].set_num_threads(threads)

    @property
    def watches_operations(self) -> bool:
        return self.device.type != "cpu"

    @property
    def _on_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def compute_capability(self) -> str | None:
        if not self._on_cuda:
            return None
        import torch

        major, minor = torch.cuda.get_device_capability(self.device)
        return f"{major}{minor}"

    def half_dtype(self, name: str):
        found = getattr(self.xp, name, None)
        if found is None or name not in HALF_DTYPES:
            raise ConfigError(f"{self.name} has no {name} for mixed precision; train in float32 there")
        return found

    def tf32_state(self) -> str:
        if not self._on_cuda:
            return super().tf32_state()
        import torch

        return "off" if torch.get_float32_matmul_precision() == "highest" else "on"

    def use_tf32(self, enabled: bool) -> None:
        if self._on_cuda:
            import torch

            torch.set_float32_matmul_precision("high" if enabled else "highest")

    def _copy_to_host(self, array: Any) -> np.ndarray:
        if array.device.type == "meta":  # shapes without data (audits): ones stand in
            return np.ones(tuple(array.shape), dtype=_host_dtype(array.dtype))
        if str(array.dtype).endswith("bfloat16"):  # NumPy has no bfloat16: read as float32
            return array.detach().cpu().float().numpy()
        return array.detach().cpu().numpy()

    def background_uploads(self) -> BackgroundUploads:
        return TorchPinnedUploads(self) if self._on_cuda else super().background_uploads()

    def random_generator(self, seed: int | None) -> RandomGenerator:
        return TorchRandomGenerator(self, seed)

    def activated(self):
        """NCCL binds a communicator to the current GPU, so PyTorch CUDA makes its device current."""
        if not self._on_cuda:
            return contextlib.nullcontext()
        import torch

        return torch.cuda.device(self.device)

    def synchronize(self) -> None:
        if self._on_cuda:
            import torch

            torch.cuda.synchronize(self.device)

    def peak_memory(self, run) -> int | None:
        """CUDA: the caching allocator's own statistics; None on the CPU (tracemalloc cannot see it)."""
        if not self._on_cuda:
            return None
        import torch

        torch.cuda.synchronize(self.device)
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        run()
        return torch.cuda.max_memory_allocated(self.device) - base

    def gpu_free_memory(self) -> int | None:
        if not self._on_cuda:
            return None
        import torch

        free, _ = torch.cuda.mem_get_info(self.device)
        cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return int(free) + int(cached)

    def _sync_guard(self, strict: bool):
        return _sync_debug_mode("error" if strict else "default") if self._on_cuda else contextlib.nullcontext()

    def _dispatch_monitor(self, audit: Audit):
        return torch_dispatch_monitor(self, audit)

    @property
    def cuda_index(self) -> int | None:
        return (self.device.index or 0) if self._on_cuda else None

    def host_alias(self, array: Any) -> np.ndarray | None:
        """PyTorch CPU tensors through DLPack, with no copy."""
        return np.from_dlpack(array.detach()) if self.device.type == "cpu" else None

    def pointer(self, array: Any) -> int:
        return array.data_ptr()

    def stream_pointer(self) -> int:
        if not self._on_cuda:
            return 0
        import torch

        return torch.cuda.current_stream(self.device).cuda_stream


class TorchPinnedUploads(PinnedUploads):
    """Staged uploads through PyTorch CUDA: ``torch.empty(..., pin_memory=True)``, a ``torch.cuda.Stream``
    (PyTorch makes its streams non-blocking), ``copy_(non_blocking=True)`` under ``torch.cuda.stream``.

    The device tensors are allocated on the copy stream and, when taken, marked with
    ``record_stream(training stream)``: PyTorch's caching allocator knows only the stream a block
    was allocated on, and would otherwise give a dropped buffer's memory to the next copy while
    the training stream's kernels may still read it. Slices of the pinned block (not NumPy views)
    are copied, so PyTorch's pinned allocator also knows which copies read it.
    """

    def _host_dtype(self, host: np.ndarray, dtype: Any) -> np.dtype | None:
        if dtype is None:
            return host.dtype
        name = str(dtype).removeprefix("torch.")
        return None if name == "bfloat16" else np.dtype(name)

    def _streams(self) -> tuple[Any, Any]:
        import torch

        return torch.cuda.current_stream(self.backend.device), torch.cuda.Stream(device=self.backend.device)

    def _event(self):
        import torch

        return torch.cuda.Event()

    def _pin(self, nbytes: int) -> tuple[Any, np.ndarray]:
        import torch

        block = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        return block, block.numpy()

    def _copy(self, block: Any, views: list[tuple[int, np.ndarray]]) -> list:
        import torch

        arrays = []
        with torch.cuda.stream(self.copy_stream):  # allocated on, and copied by, the copy stream
            for offset, view in views:
                kind = torch.from_numpy(view).dtype
                source = block[offset : offset + view.nbytes].view(kind).view(view.shape)
                array = torch.empty(view.shape, dtype=kind, device=self.backend.device)
                arrays.append(array.copy_(source, non_blocking=True))
        return arrays

    def _claim(self, arrays: list) -> None:
        for array in arrays:
            array.record_stream(self.consumer)


class TorchRandomGenerator(RandomGenerator):
    """A ``torch.Generator`` on the backend's device (none on meta: meta tensors hold no values)."""

    def _reseed(self, seed: int | None) -> None:
        import torch

        self._torch = torch
        self._generator = None
        if self.backend.device.type != "meta":
            self._generator = torch.Generator(device=self.backend.device)
            if seed is None:
                self._generator.seed()
            else:
                self._generator.manual_seed(int(seed))

    def get_state(self) -> dict | None:
        if self._generator is None:
            return None
        return {"torch": self._generator.get_state().tolist(), "device": self.backend.device.type}

    def _restore(self, state: dict) -> bool:
        if "torch" not in state or self._generator is None:
            return False
        if state.get("device", "cpu") != self.backend.device.type:
            return False  # a CPU and a CUDA generator hold different states
        self._generator.set_state(self._torch.tensor(state["torch"], dtype=self._torch.uint8))
        return True

    def uniform(self, shape: tuple, dtype: Any):
        self.draws += 1
        return self._torch.rand(shape, generator=self._generator, dtype=dtype, device=self.backend.device)


def _host_dtype(dtype: Any) -> np.dtype:
    """The NumPy dtype a torch tensor of ``dtype`` reads back as (bfloat16, which NumPy lacks: float32)."""
    name = str(dtype).removeprefix("torch.")
    return np.dtype("float32" if name == "bfloat16" else name)


@contextlib.contextmanager
def _sync_debug_mode(mode: str):
    import torch

    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings():  # "a prototype feature": said once in README, not on every audit
        warnings.filterwarnings("ignore", message="Synchronization debug mode", category=UserWarning)
        torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Synchronization debug mode", category=UserWarning)
            torch.cuda.set_sync_debug_mode(previous)
