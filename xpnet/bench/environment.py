"""Where a run ran: date, CPU, BLAS, GPU, library versions and how busy the machine was."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import array_api_compat
import numpy as np


def environment(loadavg_start: list[float] | None = None) -> dict:
    """Date, CPU, BLAS and library versions, and the load average now (and at the start, if given).

    The load says how much the run shared the machine: a busy run has wider spreads.
    """
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_name(),
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


def _cpu_name() -> str:
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
