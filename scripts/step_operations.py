"""The operations one training step asks of the device, counted on PyTorch's meta device (no GPU).

Small MLPs are launch-bound on a GPU: each operation is a kernel launch. This counts them for a
3-layer network (6-8-5-3) trained with Adam in float32, mixed-bfloat16 and mixed-float16, on the
array-API path (what PyTorch runs) and with CuPy's fused kernels where xpnet has them (each call
one launch: a stand-in that hands back its outputs, since meta tensors hold no data). A step's
count is the difference of two fits, 2 and 6 steps, over 4. tests/test_device_audit.py holds
float16's count to bfloat16's plus a budget with these functions.

    python scripts/step_operations.py
"""

from __future__ import annotations

import contextlib

import numpy as np

from xpnet.backend import get_backend, kernel_spec, substituted_kernels
from xpnet.network import MLP
from xpnet.optim import Adam

OPTIMIZER_KERNELS = ("sgd", "sgd_momentum", "sgd_nesterov", "adam")
PRECISIONS = ("float32", "mixed-bfloat16", "mixed-float16")


class MetaLaunches:
    """Stands in for the fused kernels on the meta device: each call is one launch, counted, that
    hands back its outputs. Keeps the finite flags the optimizer kernels are given."""

    def __init__(self):
        self.count, self.flags = 0, []

    def __call__(self, name: str):
        outputs = len(kernel_spec(name)[1].split(","))

        def launch(*args):
            self.count += 1
            if name in OPTIMIZER_KERNELS:
                self.flags.append(args[1])
            return args[-1] if outputs == 1 else args[-outputs:]

        return launch


def audited_fit(precision: str, optimizer, steps: int, launches: MetaLaunches | None = None):
    """A fit of ``steps`` steps of 8 rows on the meta device under ``Backend.audit``; with ``launches``,
    the fused kernels are that stand-in. Returns the audit."""
    net = MLP([6, 8, 5, 3], precision=precision, backend=get_backend("torch", "meta"), seed=0)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((8 * steps, 6)), rng.integers(0, 3, 8 * steps)
    fused = substituted_kernels(launches) if launches is not None else contextlib.nullcontext()
    with fused, net.backend.audit() as audit:
        net.fit(X, y, epochs=1, batch_size=8, optimizer=optimizer(), shuffle=False)
    return audit


def operations_per_step(precision: str, optimizer=Adam, fused: bool = False) -> float:
    """Operations (and, ``fused``, kernel launches) one step asks of the device; raises if the audit
    saw a host read or a device mix."""
    counts = []
    for steps in (2, 6):
        launches = MetaLaunches() if fused else None
        audit = audited_fit(precision, optimizer, steps, launches)
        if audit.violations:
            raise AssertionError(audit.violations)
        counts.append(audit.operations + (launches.count if fused else 0))
    return (counts[1] - counts[0]) / 4


def main() -> int:
    print(f"{'path':<22}" + "".join(f"{p:>16}" for p in PRECISIONS))
    for fused in (False, True):
        path = "fused kernels (CuPy)" if fused else "array API"
        print(f"{path:<22}" + "".join(f"{operations_per_step(p, fused=fused):>16g}" for p in PRECISIONS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
