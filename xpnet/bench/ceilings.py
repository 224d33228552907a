"""Two matmul ceilings, measured in the same run on the same device as the rows they judge.

``peak``: one large square float32 GEMM, the most the device's BLAS delivers.
``own``: the training step's own six GEMMs at one batch size, back to back with nothing
else, what a step would reach if everything but its matmuls were free.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable

import numpy as np

from xpnet.backend import get_backend
from xpnet.bench.targets import Target
from xpnet.bench.workload import SIZES, flops_per_sample, step_macs


def median_seconds(fn: Callable[[], object], sync: Callable[[], None], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, each ended by ``sync()``."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_gemm_gflops(target: Target, repeats: int = 5, n: int | None = None) -> float:
    """GFLOP/s of one square float32 GEMM (n = 2048 on a CPU, 8192 on a GPU), median of repeats."""
    backend = get_backend(target.backend, target.device)
    n = n or (2048 if target.device == "cpu" else 8192)
    rng = np.random.default_rng(0)
    a = backend.upload(rng.standard_normal((n, n), dtype=np.float32))
    b = backend.upload(rng.standard_normal((n, n), dtype=np.float32))
    with backend.compute_threads(None):
        seconds = median_seconds(lambda: a @ b, backend.synchronize, repeats)
    return 2 * n**3 / seconds / 1e9


def own_matmul_gflops(target: Target, batch_size: int, repeats: int = 5, samples: int = 200_000) -> float:
    """GFLOP/s of the training step's own GEMMs at ``batch_size``, alone and back to back.

    Per layer: the forward a W^T, BP4's δ^T a and, past the first layer, BP2's δ W, on
    arrays of the step's shapes; under the step's BLAS thread count.
    """
    backend = get_backend(target.backend, target.device)
    rng = np.random.default_rng(0)
    acts = [backend.upload(rng.random((batch_size, n), dtype=np.float32)) for n in SIZES]
    Ws = [backend.upload(rng.random((o, i), dtype=np.float32)) for i, o in itertools.pairwise(SIZES)]

    def step() -> list:
        products = []
        for l, W in enumerate(Ws):
            products += [acts[l] @ W.T, acts[l + 1].T @ acts[l]]
            if l:
                products.append(acts[l + 1] @ W)
        return products

    def epoch() -> None:
        for _ in range(max(1, samples // batch_size)):  # as many steps as an epoch
            step()

    with backend.compute_threads(step_macs(batch_size)):
        seconds = median_seconds(epoch, backend.synchronize, 3) / max(1, samples // batch_size)
    return flops_per_sample() * batch_size / seconds / 1e9
