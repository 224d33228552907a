"""Every fused CuPy kernel compiled for real GPUs, on a machine without one.

xpnet's own call sites (ReLU's BP2, each optimizer update, the input scaling) are run
with NumPy arrays while ``fused_kernel`` hands them a recording stand-in
(``backend.substituted_kernels``, ``selfcheck.kernels.run_call_sites``), so each
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

import numpy as np
import pytest

from xpnet.backend import kernel_cuda_source, kernel_names, kernel_spec, nvrtc_compile
from xpnet.errors import BackendError
from xpnet.selfcheck.kernels import DTYPES, kernel_sources, recorded_calls

if platform.system() != "Linux" or platform.machine() != "x86_64":
    pytest.skip("the test extra installs CuPy and NVRTC on Linux x86-64 only", allow_module_level=True)

ARCHS = ["80", "90"]


@functools.cache
def calls() -> dict[str, list]:
    """Each kernel's calls from xpnet's call sites (recorded once per test session)."""
    return recorded_calls(DTYPES)


@functools.cache
def all_sources() -> dict[str, tuple[str, ...]]:
    return kernel_sources(DTYPES)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", kernel_names())
def test_every_fused_kernel_compiles_for_the_gpus_without_warnings(name, arch):
    sources = all_sources().get(name, ())
    assert sources, f"no call site launched kernel {name!r}: selfcheck.kernels.run_call_sites must reach it"
    for source in sources:
        nvrtc_compile(source, arch)


def test_each_kernel_is_compiled_for_every_dtype_it_is_called_with():
    """float32 and float64 everywhere; float16 (mixed precision's math) for ReLU's BP2 and the
    input scaling, never for the optimizers, which update float32 masters."""
    for name, sources in all_sources().items():
        ctypes = ("float", "double", "float16") if name in ("relu_backward", "scale_inputs") else ("float", "double")
        for ctype in ("float", "double", "float16"):
            assert any(f"typedef {ctype} T;" in source for source in sources) == (ctype in ctypes), (name, ctype)
    scale = all_sources()["scale_inputs"]
    assert any("typedef unsigned char X;" in s for s in scale) and any("CArray<float, 2, 0, 1>" in s for s in scale)


OPTIMIZER_KERNELS = ("sgd", "sgd_momentum", "sgd_nesterov", "adam")


@pytest.mark.parametrize("name", OPTIMIZER_KERNELS)
def test_each_optimizer_kernel_is_compiled_with_the_finite_flag_on_the_device_and_as_true(name):
    """float16's loss scaling passes the 0-d overflow flag as a device array (CuPy broadcasts it:
    a CArray of bool), every other run passes True (a kernel scalar); both are compiled above, and
    the update runs only where the flag is set."""
    sources = all_sources()[name]
    assert any("const CArray<bool, " in s and "const bool &finite = _raw_finite[_ind.get()];" in s for s in sources)
    assert any("const bool finite," in s for s in sources)
    assert all("if (finite) {" in s for s in sources)


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
    assert body in all_sources()["sgd_momentum"][0]  # the real body is what gets compiled
    typo = (inputs, outputs, body.replace("v = momentum * v + d;", "v = momentum * v + d"))
    for args in calls()["sgd_momentum"]:
        with pytest.raises(BackendError, match="NVRTC cannot compile"):
            nvrtc_compile(kernel_cuda_source(typo, args), "90")
