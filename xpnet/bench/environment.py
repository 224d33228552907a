"""Where a run ran: date, CPU, BLAS, GPU, library versions and how busy the machine was."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import array_api_compat
import numpy as np

from xpnet.backend.cpu import cpu_flags

#: The widest vector instructions a CPU may have, widest first, as /proc/cpuinfo's flags name them:
#: what a BLAS picks its kernels by (the same "AMD EPYC" has been a 68 and a 200 GFLOP/s machine here).
VECTOR_ISAS = (("avx512f", "avx512"), ("avx2", "avx2"), ("avx", "avx"), ("sve", "sve"), ("asimd", "neon"))


def vector_isa(flags) -> str | None:
    """The widest of ``VECTOR_ISAS`` among ``flags``; None where the flags are unknown or have none."""
    return next((name for flag, name in VECTOR_ISAS if flag in flags), None)


def environment(loadavg_start: list[float] | None = None) -> dict:
    """Date, CPU, BLAS and library versions, and the load average now (and at the start, if given).

    The load says how much the run shared the machine: a busy run has wider spreads.
    """
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_name(),
        "isa": vector_isa(cpu_flags()),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "array_api_compat": array_api_compat.__version__,
        "blas": _blas(),
        "load_average": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        "loadavg": list(os.getloadavg()),
        "loadavg_start": loadavg_start,
    }
    for name in ("torch", "cupy"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = "not installed"
    gpu = _gpu_name()
    if gpu:
        env["gpu"] = gpu
    return env


def _gpu_name() -> str | None:
    try:
        import torch  # optional: only to name the GPU
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def cpu_label(env: dict | None = None) -> str:
    """The CPU's name and widest vector instructions ("AMD EPYC, avx512"): the BLAS picks its
    kernels by the second, so it sets both a run's speed and the last bits of its numbers.
    ``env``: a recorded ``environment()``; None: this machine now."""
    name, isa = (env["cpu"], env.get("isa")) if env is not None else (cpu_name(), vector_isa(cpu_flags()))
    return f"{name}, {isa}" if isa else name


def cpu_name() -> str:
    """/proc/cpuinfo's model name (a cloud's may be only "AMD EPYC"), else the platform's word."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _blas() -> str:
    try:
        from threadpoolctl import threadpool_info  # optional (the bench extra)
    except ImportError:
        config = np.show_config(mode="dicts")
        blas = config.get("Build Dependencies", {}).get("blas", {})
        return f"{blas.get('name')} {blas.get('version')}"
    return "; ".join(
        f"{i.get('internal_api')} {i.get('version')} ({i.get('threading_layer')}, {i.get('num_threads')} threads,"
        f" {i.get('architecture')})"
        for i in threadpool_info()
        if i.get("user_api") == "blas"
    )
