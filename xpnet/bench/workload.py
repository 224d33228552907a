"""What the benchmark trains and how much work that is: the network, batch sizes, FLOPs.

Every runner trains this same network with this same optimizer, so their times
compare; the FLOP count turns a time into GFLOP/s against the GEMM ceilings.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

SIZES = (784, 128, 64, 10)
BATCH_SIZES = (16, 64, 256, 1024, 4096, 8192)
LR, MOMENTUM = 0.01, 0.9
#: The benchmark's network and optimizer as run settings (``xpnet.build``): what xpnet's runner trains.
SETTINGS = {
    "layers": list(SIZES[1:-1]),
    "activation": "relu",
    "loss": "cross_entropy",
    "scaling": "unit",
    "optimizer": "sgd",
    "lr": LR,
    "momentum": MOMENTUM,
}
#: The implementations compared: xpnet's fit, fit's own step in a bare loop, the same math straight in
#: NumPy, PyTorch eager, and a hand-written JAX loop compiled over the whole epoch (``jax.jit`` + ``lax.scan``).
IMPLS = ("xpnet", "xpnet-step", "direct", "torch-eager", "jax-scan")
#: The hand-written loops xpnet's ``fit`` on the same backend is measured against (``vs_direct``).
DIRECT_PEERS = ("direct", "jax-scan")
#: fit's own step in a bare loop: what a ``fit`` epoch is measured against (``vs_step``: fit's overhead).
STEP_PEER = "xpnet-step"
#: Seconds of idle before each timed epoch. OpenBLAS's idle threads spin for about 2^28
#: cycles (~0.1 s) after a call; without the pause they slowed whichever runner came next
#: (PyTorch after NumPy: 180k instead of 310k samples/s at batch 1024 on 2 cores).
PAUSE = 0.25


def step_macs(batch_size: int, sizes: Sequence[int] = SIZES) -> int:
    """Forward multiply-adds of one step: what ``Backend.step_policy`` sizes BLAS threads by.

    The same figure ``fit`` passes (``batch_size * net.macs_per_sample``).
    """
    return batch_size * sum(n_in * n_out for n_in, n_out in itertools.pairwise(sizes))


def flops_per_sample(sizes: Sequence[int] = SIZES) -> int:
    """FLOPs of one training sample through a dense network, counting multiply-adds as 2.

    Per layer l with fan-in n_{l-1} and width n_l, a multiply-add per weight in:
    the forward matmul a W^T, BP4's δ^T a, and BP2's δ W -- which the first layer skips,
    as nothing needs the error at the inputs. Bias adds, activations, the loss and the
    optimizer are O(n_l) per sample and left out. For 784-128-64-10:
    2·(100352 + 8192 + 640)·2 + 2·(8192 + 640) = 454,400.
    """
    weights = [n_in * n_out for n_in, n_out in itertools.pairwise(sizes)]
    return 2 * sum(weights) + 2 * sum(weights) + 2 * sum(weights[1:])
