"""Fused CuPy kernels: a registry filled beside each reference, building them, and compiling them to check."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from types import ModuleType

import numpy as np
from array_api_compat import is_cupy_namespace

from xpnet.errors import BackendError

# -- fused elementwise kernels ------------------------------------------------------------


@dataclass(frozen=True)
class KernelSpec:
    """A CuPy ``ElementwiseKernel``'s parameters and CUDA C body."""

    inputs: str
    outputs: str  #: updated in place
    body: str


#: Elementwise updates that CuPy runs as one compiled kernel each, instead of one kernel
#: launch per array operation. Each is defined (``define_kernel``) next to the array-API
#: code it must equal -- ReLU's in activations.py, the optimizers' in optim.py, the input
#: scaling in network.py -- which is the fallback on every other backend and the reference
#: the tests hold the kernel to. This module alone knows how to build one.
KERNELS: dict[str, KernelSpec] = {}


def define_kernel(name: str, inputs: str, outputs: str, body: str) -> str:
    """Register the fused kernel ``name``; returns the name, for the caller to keep."""
    KERNELS[name] = KernelSpec(inputs, outputs, body)
    return name


def kernel_names() -> list[str]:
    """The names of the fused kernels defined so far (``import xpnet`` defines them all)."""
    return list(KERNELS)


def kernel_spec(name: str) -> tuple[str, str, str]:
    """``(inputs, outputs, body)`` of the fused kernel ``name``, as ``cupy.ElementwiseKernel`` takes them."""
    spec = KERNELS[name]
    return spec.inputs, spec.outputs, spec.body


def fused_kernel(xp: ModuleType, name: str):
    """CuPy's compiled kernel ``name`` (see ``KERNELS``), or None where the namespace is
    not CuPy's: the caller's array-API code then runs. Inside ``substituted_kernels``,
    the stand-in instead, whatever the namespace."""
    if name not in KERNELS:
        raise ValueError(f"no fused kernel called {name!r}")
    if _SUBSTITUTE:
        return _SUBSTITUTE[-1](name)
    return _cupy_kernel(name) if is_cupy_namespace(xp) else None


_SUBSTITUTE: list = []


@contextlib.contextmanager
def substituted_kernels(make):
    """Within the block, every fused-kernel call site gets ``make(name)`` instead of CuPy's kernel.

    The seam for running the kernels' C bodies where no GPU is (``selfcheck`` interprets
    them with NumPy; the tests also record each call's arguments to compile its source).
    Objects that keep a kernel (an optimizer, after its first step) keep the one they got.
    """
    _SUBSTITUTE.append(make)
    try:
        yield
    finally:
        _SUBSTITUTE.pop()


@functools.cache
def _cupy_kernel(name: str):
    """Built once; CuPy compiles it on first use on each GPU and caches the binary."""
    import cupy

    spec = KERNELS[name]
    return cupy.ElementwiseKernel(spec.inputs, spec.outputs, spec.body, f"xpnet_{name}")


def kernel_cuda_source(kernel, args: list) -> str:
    """The CUDA C++ that CuPy compiles for a fused kernel called with ``args``, headers included.

    ``kernel`` is a name in ``KERNELS`` or an ``(inputs, outputs, body)`` triple;
    ``args`` stand in for the call's arguments, inputs then outputs: NumPy arrays for
    device arrays (their dtype, shape and layout are what CuPy specialises on), Python
    numbers for scalars. The source is built by CuPy's own generator, so it is what a GPU
    would compile; only an import of CuPy is needed, no GPU and no driver.
    """
    from cupy._core import _kernel, _scalar, core

    inputs, outputs, body = kernel_spec(kernel) if isinstance(kernel, str) else kernel
    name = f"xpnet_{kernel}" if isinstance(kernel, str) else "xpnet_kernel"
    elementwise = _cupy_elementwise(inputs, outputs, body, name)
    arrays = [a if isinstance(a, np.ndarray) else None for a in args]
    n_in = elementwise.nin
    _, _, type_map = elementwise._decide_params_type(
        tuple(None if a is None else a.dtype.type for a in arrays[:n_in]),
        tuple(a.dtype.type for a in arrays[n_in:]),
    )
    typed = dict(type_map._pairs)
    shape = np.broadcast_shapes(*(a.shape for a in arrays if a is not None))
    # CuPy runs all-contiguous, unbroadcast calls as one flat loop; others keep their dimensions.
    flat = all(a is None or (a.shape == shape and a.flags.c_contiguous) for a in arrays)
    ndim = 1 if flat else len(shape)
    infos = []
    for param, array in zip(elementwise.in_params + elementwise.out_params, arrays):
        if array is None:
            dtype = param.dtype or typed[param.ctype]
            infos.append(_kernel._ArgInfo(3, _scalar.CScalar, dtype, 0, True, True))
        else:
            contiguous = flat or (array.shape == shape and array.flags.c_contiguous)
            infos.append(_kernel._ArgInfo(1, _cupy_ndarray(), array.dtype.type, ndim, contiguous, True))
    infos.append(_kernel._ArgInfo(2, _cupy_indexer(), None, ndim, True, True))
    code = _kernel._get_elementwise_kernel_code(
        tuple(infos), type_map, elementwise.params, elementwise.operation, elementwise.name, elementwise.preamble
    )
    return "".join(f"#include <{header}>\n" for header in core._cupy_header_list) + code


def _cupy_elementwise(inputs: str, outputs: str, body: str, name: str):
    import cupy

    return cupy.ElementwiseKernel(inputs, outputs, body, name)


def _cupy_ndarray():
    import cupy

    return cupy.ndarray


def _cupy_indexer():
    from cupy._core import _carray

    return _carray.Indexer


@functools.lru_cache(maxsize=256)
def nvrtc_compile(source: str, arch: str) -> str:
    """Compile CUDA source with NVRTC, as CuPy does, for ``arch`` ("80" for sm_80); return NVRTC's log.

    CuPy's own compiler options are used (its include paths, C++17, ``-ftz=true``).
    Raises ``BackendError`` with the log when compilation fails or NVRTC warns: warnings
    are errors here. No GPU needed; NVRTC comes from CuPy's loader (a PyPI wheel will do).
    """
    from cupy._core import core
    from cupy_backends.cuda.libs import nvrtc

    cupy_options = core.assemble_cupy_compiler_options(())
    options = (*cupy_options, "-ftz=true", f"-arch=sm_{arch}", "--device-as-default-execution-space")
    program = nvrtc.createProgram(source, "xpnet_kernel.cu", (), ())
    try:
        try:
            nvrtc.compileProgram(program, options)
        except Exception as exc:
            raise BackendError(
                f"NVRTC cannot compile it for sm_{arch}: {exc}\n{nvrtc.getProgramLog(program)}"
            ) from None
        log = nvrtc.getProgramLog(program)
        if "warning" in log.lower():
            raise BackendError(f"NVRTC warns compiling it for sm_{arch} (warnings are errors here):\n{log}")
        return log
    finally:
        nvrtc.destroyProgram(program)
