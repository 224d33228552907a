"""Every place xpnet launches a fused kernel, run on demand, for checking the kernels.

``run_call_sites`` runs ReLU's BP2, each optimizer's update and the input scaling on a
backend, through xpnet's own code: on CuPy the fused kernels run, elsewhere the array-API
code they replace (the reference), and under ``backend.substituted_kernels`` whatever
stands in for them (the C bodies interpreted with NumPy, or a recorder of the calls).
"""

from __future__ import annotations

import numpy as np

from xpnet.activations import ReLU
from xpnet.backend import Backend, get_backend, kernel_cuda_source, substituted_kernels
from xpnet.network import MLP
from xpnet.optim import SGD, Adam, AdamW
from xpnet.precision import all_finite
from xpnet.scaling import Scaling
from xpnet.selfcheck.interpret import CKernel

#: One optimizer per fused update (AdamW shares Adam's kernel with other arguments).
OPTIMIZERS = {
    "sgd": lambda: SGD(lr=0.1, weight_decay=0.01),
    "sgd_momentum": lambda: SGD(lr=0.1, momentum=0.9, weight_decay=0.01),
    "sgd_nesterov": lambda: SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": lambda: Adam(lr=0.01, weight_decay=0.01),
    "adamw": lambda: AdamW(lr=0.01, weight_decay=0.1),
}
SCALINGS = {
    "unit": Scaling("unit", 0.0, 1 / 255),
    "per-feature": Scaling("standard", np.arange(3.0), np.linspace(0.5, 2.0, 3)),
}


def run_call_sites(backend: Backend, dtype: str, steps: int = 3) -> dict[str, np.ndarray]:
    """Each call site's results, read back to the host, keyed ``relu_backward``, ``<optimizer>/param<i>``
    and ``<optimizer>/buffer<i>`` (after ``steps`` updates), ``<optimizer>/skip-param<i>`` and
    ``<optimizer>/skip-buffer<i>`` (the same with float16's overflow flag: every third step's gradients
    hold an inf and must change nothing) and ``scale_inputs/<scaling>/<input>``.

    ``dtype`` is the type the math runs in; for a half type ("float16") the networks are
    mixed precision, and the optimizers, which only ever update float32 masters, are left out.
    """
    rng = np.random.default_rng(0)
    half = dtype in ("float16", "bfloat16")
    xp, array_dtype = backend.xp, backend.half_dtype(dtype) if half else backend.dtype(dtype)
    results = {}
    with backend.activated():
        z = rng.standard_normal((5, 4)).astype(dtype)
        z[0, :2] = 0.0, -0.0  # the step's edge: σ'(0) = 0
        grad = backend.upload(rng.standard_normal((5, 4)), array_dtype)
        results["relu_backward"] = backend.to_host(ReLU().backward(xp, backend.upload(z), None, grad))
        for name, make in {} if half else OPTIMIZERS.items():
            results.update(_optimizer_run(backend, make(), name, dtype, steps))
            results.update(_optimizer_run(backend, make(), name, dtype, steps, skips=True))
        network = {"precision": f"mixed-{dtype}"} if half else {"dtype": dtype}
        for label, scaling in SCALINGS.items():
            net = MLP([3, 2], backend=backend, **network)
            net.set_scaling(scaling)
            for kind, raw in (("uint8", np.arange(12, dtype=np.uint8).reshape(4, 3)), ("float", z[:4, :3])):
                results[f"scale_inputs/{label}/{kind}"] = backend.to_host(net.prepare(net.to_device(raw)))
    return results


def _optimizer_run(
    backend: Backend, optimizer, name: str, dtype: str, steps: int, skips: bool = False
) -> dict[str, np.ndarray]:
    """Parameters and buffers after ``steps`` updates from fixed weights and gradients, each its own
    array (``adam/param0``, ``adam/buffer2``): each is compared at its own scale (Adam's v is ~1e-3 of p).
    With ``skips``, each step gets the 0-d finite flag as float16's loss scaling makes it, on the device,
    and every third step's gradients hold an inf: a kernel that ignores the flag ends in inf or NaN."""
    rng = np.random.default_rng(1)
    params = [backend.upload(rng.standard_normal(shape), backend.dtype(dtype)) for shape in ((4, 3), (4,))]
    for step in range(steps):
        host = [rng.standard_normal(tuple(p.shape)) for p in params]
        if skips and step % 3 == 1:
            host[0][0, 0] = np.inf
        grads = [backend.upload(g, backend.dtype(dtype)) for g in host]
        optimizer.step(params, grads, finite=all_finite(backend.xp, grads) if skips else None)
    arrays = {f"param{i}": p for i, p in enumerate(params)}
    arrays.update({f"buffer{i}": b for i, b in enumerate(optimizer.state_arrays())})
    prefix = "skip-" if skips else ""
    return {f"{name}/{prefix}{label}": backend.to_host(array) for label, array in arrays.items()}


class _Recorder:
    """Stands in for a fused kernel: keeps each call's arguments, then runs the body with NumPy."""

    def __init__(self, name: str, calls: dict):
        self.name, self.calls, self.kernel = name, calls, CKernel(name)

    def __call__(self, *args):
        # A 0-d NumPy bool (the finite flag NumPy's reductions make) is a 0-d device array on CuPy.
        arrays = (np.ndarray, np.bool_)
        self.calls.setdefault(self.name, []).append([np.array(a) if isinstance(a, arrays) else a for a in args])
        return self.kernel(*args)


#: The types the math runs in: the network dtypes, and mixed-float16's half (bfloat16 never reaches CuPy).
DTYPES = ("float32", "float64", "float16")


def recorded_calls(dtypes=DTYPES) -> dict[str, list]:
    """Each kernel's calls from xpnet's call sites in ``dtypes``, as host stand-ins for its arguments."""
    calls: dict = {}
    with substituted_kernels(lambda name: _Recorder(name, calls)):
        for dtype in dtypes:
            run_call_sites(get_backend("numpy"), dtype)
    return calls


def kernel_sources(dtypes=DTYPES) -> dict[str, tuple[str, ...]]:
    """Each kernel's distinct CUDA sources (CuPy's) over xpnet's calls in ``dtypes``."""
    return {
        name: tuple(dict.fromkeys(kernel_cuda_source(name, args) for args in calls))
        for name, calls in recorded_calls(dtypes).items()
    }
