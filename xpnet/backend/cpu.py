"""The CPU policy of a training step: BLAS threads that suit its size, and denormals flushed to zero."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import platform

import numpy as np

#: Steps with fewer forward multiply-adds than this run on one BLAS thread (``compute_threads``).
#: Whole ``fit`` epochs of 784-128-64-10 on 2 AMD EPYC cores, OpenBLAS 0.3.31, all threads over
#: one, ``python scripts/blas_threads.py``: with AVX2 (2026-12-05, medians of two or three runs)
#: 0.86-1.08x at 8.7e5 multiply-adds (batch 8), 1.03-1.38x at 1.7e6 (16), 1.12-1.32x at 3.5e6
#: (32), 1.19-1.36x at 7e6 (64); with AVX-512 (2026-12-06, one run of 6 rounds) 1.00x, 1.06x,
#: 1.07x, 1.23x. (On 2026-11-22, before ``fit`` lost its overhead, the AVX-512 machine had run
#: 7e6 faster on one thread; the cut was 1e7 then.) Fixed, not tuned per run: the thread count
#: changes OpenBLAS's rounding, and a run's numbers must not depend on a timing.
SMALL_STEP_MACS = 1_000_000


@functools.cache
def _blas_controller():
    """threadpoolctl's view of the loaded BLAS (an optional dependency: None without it)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


# -- denormals ------------------------------------------------------------------------------

#: MXCSR bits: flush-to-zero (results) and denormals-are-zero (inputs).
_FTZ_DAZ = 0x8040


class _FloatEnv(ctypes.Structure):
    """glibc's x86-64 ``fenv_t``: the x87 environment, then the SSE control word, MXCSR."""

    _fields_ = [("x87", ctypes.c_ubyte * 28), ("mxcsr", ctypes.c_uint32)]


@functools.cache
def _libm():
    """glibc's libm where MXCSR can be set through ``fesetenv`` and does flush; else None."""
    if platform.system() != "Linux" or platform.machine() != "x86_64" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libm = ctypes.CDLL("libm.so.6")
    except OSError:
        return None
    denormal = np.array([1e-39], dtype=np.float32)
    with _mxcsr_flushing(libm):
        works = bool((denormal * np.float32(1.0))[0] == 0.0)
    return libm if works else None


def _set_mxcsr(libm, mask: int, bits: int) -> int:
    """Set the ``mask`` bits of this thread's MXCSR to ``bits``; return the old MXCSR."""
    env = _FloatEnv()
    libm.fegetenv(ctypes.byref(env))
    old = env.mxcsr
    env.mxcsr = (old & ~mask) | (bits & mask)
    libm.fesetenv(ctypes.byref(env))
    return old


@contextlib.contextmanager
def _mxcsr_flushing(libm):
    """FTZ and DAZ set in this thread's MXCSR for the block, the old bits put back after."""
    saved = _set_mxcsr(libm, _FTZ_DAZ, _FTZ_DAZ)
    try:
        yield
    finally:
        _set_mxcsr(libm, _FTZ_DAZ, saved)


# -- instruction sets -----------------------------------------------------------------------

#: Flags (of /proc/cpuinfo) that give a CPU native bfloat16 matmuls; without one PyTorch emulates them.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of this CPU as Linux lists them; empty where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def slow_setting_warnings(backend, precision: str, tf32: bool) -> list[str]:
    """What a run's settings would cost on ``backend``'s device, said before training: bfloat16
    without the CPU's bfloat16 instructions (many times slower than float32: issue 26 saw 10-17x on AVX2), and
    TF32, which only NVIDIA GPUs have."""
    said = []
    on_cpu = backend.cuda_index is None
    flags = cpu_flags()
    if precision == "mixed-bfloat16" and on_cpu and flags and not flags.intersection(BF16_FLAGS):
        said.append(
            "--precision mixed-bfloat16 on a CPU without AVX512-BF16 or AMX-BF16 (not in /proc/cpuinfo's flags): "
            "bfloat16 matmuls are emulated there, many times slower than float32; float32 (the default) "
            "is faster on this CPU"
        )
    if tf32 and on_cpu:
        said.append(
            f"--tf32 does nothing on {backend.device_name}: TF32 tensor cores are an NVIDIA GPU's "
            "(Ampere and later); float32 matmuls run as before"
        )
    return said
