"""Two matmul ceilings, measured in the same run on the same device as the rows they judge.

``peak``: one large square float32 GEMM, the most the device's BLAS delivers.
``own``: the training step's own six GEMMs at one batch size, back to back with nothing
else, what a step would reach if everything but its matmuls were free.

Each ceiling is a ``Gemms`` with an ``epoch()``, so the sweep times it in the same loop as
the runners, repeat by repeat: a row's "% of the ceiling" in repeat i then compares two
timings taken at the same moment of a shared machine, as the peer ratios do.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from xpnet.backend import get_backend
from xpnet.bench.noise import relative_spread
from xpnet.bench.targets import Target
from xpnet.bench.workload import SIZES, flops_per_sample, step_macs


class Rate(NamedTuple):
    """A ceiling: the median GFLOP/s of its repeats and their relative spread (see ``noise``)."""

    gflops: float
    spread: float


class Gemms:
    """A ceiling's GEMMs as something the sweep can time: ``epoch()`` runs them once, synchronised."""

    def __init__(self, backend, flops: float, work: Callable[[], None], step_macs: int | None):
        self.backend, self.flops, self._work, self._step_macs = backend, flops, work, step_macs

    def epoch(self) -> None:
        with self.backend.compute_threads(self._step_macs):
            self._work()
        self.backend.synchronize()

    def gflops(self, seconds: list[float]) -> list[float]:
        """GFLOP/s of each timed ``epoch()``."""
        return [self.flops / t / 1e9 for t in seconds]


def peak_gemms(target: Target, n: int | None = None) -> Gemms:
    """One square float32 GEMM, n = 2048 on a CPU and 8192 on a GPU, on all BLAS threads."""
    backend = get_backend(target.backend, target.device)
    n = n or (2048 if target.device == "cpu" else 8192)
    rng = np.random.default_rng(0)
    a = backend.upload(rng.standard_normal((n, n), dtype=np.float32))
    b = backend.upload(rng.standard_normal((n, n), dtype=np.float32))
    return Gemms(backend, 2 * n**3, lambda: a @ b, None)


def own_gemms(target: Target, batch_size: int, samples: int = 200_000) -> Gemms:
    """The step's GEMMs for an epoch of ``samples``, under the step's BLAS thread count.

    Per layer: the forward a W^T, BP4's δ^T a and, past the first layer, BP2's δ W, on
    arrays of the step's shapes.
    """
    backend = get_backend(target.backend, target.device)
    rng = np.random.default_rng(0)
    acts = [backend.upload(rng.random((batch_size, n), dtype=np.float32)) for n in SIZES]
    Ws = [backend.upload(rng.random((o, i), dtype=np.float32)) for i, o in itertools.pairwise(SIZES)]
    steps = max(1, samples // batch_size)

    def step() -> list:
        products = []
        for l, W in enumerate(Ws):
            products += [acts[l] @ W.T, acts[l + 1].T @ acts[l]]
            if l:
                products.append(acts[l + 1] @ W)
        return products

    def epoch() -> None:
        for _ in range(steps):
            step()

    return Gemms(backend, flops_per_sample() * batch_size * steps, epoch, step_macs(batch_size))


def measure(gemms: Gemms, repeats: int = 3, warmup: int = 1) -> Rate:
    """A ceiling timed on its own (the phase profile's yardstick), median and spread of ``repeats``."""
    for _ in range(warmup):
        gemms.epoch()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        gemms.epoch()
        seconds.append(time.perf_counter() - start)
    rates = gemms.gflops(seconds)
    return Rate(statistics.median(rates), relative_spread(rates))
