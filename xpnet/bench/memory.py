"""Peak memory of one untimed epoch, by whichever allocator the backend has."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable


def peak_memory(backend: str, device, run: Callable[[], object]) -> int | None:
    """Bytes allocated at the high-water mark of one ``run()``, beyond what was live before.

    NumPy: tracemalloc (NumPy reports its buffers to it); CUDA: the library's own
    allocator statistics. ``None`` where neither applies (PyTorch on the CPU).
    """
    if backend in ("numpy", "array-api-strict"):
        tracemalloc.start()
        try:
            run()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    if backend == "torch" and getattr(device, "type", "cpu") == "cuda":
        import torch  # only here: a CUDA row, so PyTorch is installed

        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        return torch.cuda.max_memory_allocated(device) - base
    if backend == "cupy":
        import cupy  # only here: a CuPy row, so CuPy is installed

        pool = cupy.get_default_memory_pool()
        pool.free_all_blocks()
        base = pool.used_bytes()
        run()
        return pool.total_bytes() - base  # the pool keeps what the epoch needed at once
    return None
