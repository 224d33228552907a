"""Every fused CuPy kernel compiled for real GPUs, on a machine without one.

xpnet's own call sites (ReLU's BP2, each optimizer update, the input scaling) are run
with NumPy arrays while ``fused_kernel`` hands them a recording stand-in, so each
kernel is seen with exactly the argument dtypes, scalars and layouts xpnet passes it.
For each distinct call CuPy's own code generator writes the CUDA source
(``backend.kernel_cuda_source``; CuPy imports without a driver) and NVRTC, loaded as
CuPy loads it (the ``nvidia-cuda-nvrtc-cu12`` wheel of the test extra), compiles it for
sm_80 (A100) and sm_90 (H100) with CuPy's options; a warning fails like an error.
These run, not skip, wherever the test extra installs CuPy (Linux x86-64, as in CI).
"""

from __future__ import annotations

import functools
import platform
import sys

import array_api_compat.numpy as xp
import numpy as np
import pytest

from xpnet.activations import ReLU
from xpnet.backend import kernel_cuda_source, kernel_names, kernel_spec, nvrtc_compile
from xpnet.data import Scaling
from xpnet.errors import BackendError
from xpnet.network import MLP
from xpnet.optim import SGD, Adam, AdamW
from xpnet.selfcheck.interpret import CKernel

if platform.system() != "Linux" or platform.machine() != "x86_64":
    pytest.skip("the test extra installs CuPy and NVRTC on Linux x86-64 only", allow_module_level=True)

ARCHS = ["80", "90"]
#: The float dtypes networks compute in (optimizers update float32 or float64 masters).
DTYPES = ["float32", "float64"]
OPTIMIZERS = [
    lambda: SGD(lr=0.1, weight_decay=0.01),
    lambda: SGD(lr=0.1, momentum=0.9, weight_decay=0.01),
    lambda: SGD(lr=0.1, momentum=0.9, nesterov=True),
    lambda: Adam(lr=0.01, weight_decay=0.01),
    lambda: AdamW(lr=0.01),
]


class Recorder:
    """Stands in for a fused kernel: records each call's arguments, then runs the body with NumPy."""

    def __init__(self, name: str, calls: dict):
        self.name, self.calls, self.kernel = name, calls, CKernel(name)

    def __call__(self, *args):
        stand_ins = [np.array(a) if isinstance(a, np.ndarray) else a for a in args]
        self.calls.setdefault(self.name, []).append(stand_ins)
        return self.kernel(*args)


def drive_call_sites(dtype: str) -> None:
    """Run every place xpnet launches a fused kernel, in ``dtype``."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, 4)).astype(dtype)
    ReLU().backward(xp, z, None, z.copy())
    for make in OPTIMIZERS:
        params = [rng.standard_normal((4, 3)).astype(dtype), rng.standard_normal(4).astype(dtype)]
        make().step(params, [p * 0.5 for p in params])
    scalings = [Scaling("unit", 0.0, 1 / 255), Scaling("standard", np.arange(3.0), np.linspace(0.5, 2.0, 3))]
    for scaling in scalings:
        net = MLP([3, 2], dtype=dtype)
        net.set_scaling(scaling)
        for raw in (np.arange(12, dtype=np.uint8).reshape(4, 3), rng.standard_normal((4, 3)).astype(dtype)):
            net.prepare(raw)


def patched_fused_kernel(calls: dict):
    return lambda namespace, name: Recorder(name, calls)


@functools.cache
def recorded_calls() -> dict[str, list]:
    """Each kernel's calls from xpnet's call sites, as host stand-ins (recorded once per session)."""
    calls: dict = {}
    modules = [m for n, m in sys.modules.items() if n.startswith("xpnet") and hasattr(m, "fused_kernel")]
    saved = {m: m.fused_kernel for m in modules}
    try:
        for module in modules:
            module.fused_kernel = patched_fused_kernel(calls)
        for dtype in DTYPES:
            drive_call_sites(dtype)
    finally:
        for module, original in saved.items():
            module.fused_kernel = original
    return calls


@functools.cache
def recorded_sources() -> dict[str, tuple[str, ...]]:
    """Each kernel's distinct CUDA sources over xpnet's calls."""
    return {
        name: tuple(dict.fromkeys(kernel_cuda_source(name, args) for args in calls))
        for name, calls in recorded_calls().items()
    }


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", kernel_names())
def test_every_fused_kernel_compiles_for_the_gpus_without_warnings(name, arch):
    sources = recorded_sources().get(name, ())
    assert sources, f"no call site launched kernel {name!r}: drive_call_sites must reach it"
    for source in sources:
        nvrtc_compile(source, arch)


def test_each_kernel_is_compiled_for_every_dtype_it_is_called_with():
    for name, sources in recorded_sources().items():
        for ctype in ("float", "double"):
            assert any(f"typedef {ctype} T;" in source for source in sources), (name, ctype)
    scale = recorded_sources()["scale_inputs"]
    assert any("typedef unsigned char X;" in s for s in scale) and any("CArray<float, 2, 0, 1>" in s for s in scale)


def test_a_broken_kernel_body_fails_to_compile():
    f32 = np.zeros(4, np.float32)
    inputs, outputs, _ = kernel_spec("relu_backward")
    for broken in ("if (!(z > 0)) grad = ;", "grad = undefined_name;", "T unused = z; grad = 0;"):
        source = kernel_cuda_source((inputs, outputs, broken), [f32, f32])
        with pytest.raises(BackendError, match="NVRTC"):
            nvrtc_compile(source, "80")


def test_the_recorded_calls_fail_to_compile_when_a_kernel_body_breaks():
    """The pipeline above is what catches it: a dropped semicolon in the momentum update fails every call."""
    inputs, outputs, body = kernel_spec("sgd_momentum")
    assert body in recorded_sources()["sgd_momentum"][0]  # the real body is what gets compiled
    typo = (inputs, outputs, body.replace("v = momentum * v + d;", "v = momentum * v + d"))
    for args in recorded_calls()["sgd_momentum"]:
        with pytest.raises(BackendError, match="NVRTC cannot compile"):
            nvrtc_compile(kernel_cuda_source(typo, args), "90")
