"""How many BLAS threads this process takes: the cores it may use, shared among the ranks on its node.

Each rank of ``mpiexec -n 2`` on a 2-core machine would otherwise start one BLAS thread per
core, and four threads fight over two cores (an epoch ran about 6x slower). The command line
chooses once, before training (``choose``), and sets it (``apply``): through threadpoolctl
where it is installed, else by OpenBLAS's own ``set_num_threads`` (NumPy's wheels bundle
OpenBLAS), and PyTorch's intra-op threads alike; else it says it could not.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

from xpnet.backend.resolve import LIBRARIES
from xpnet.errors import ConfigError

#: xpnet's own override (``--threads`` wins over it).
THREADS_VARIABLE = "XPNET_THREADS"
#: Set by launchers to the number of ranks on this node: Open MPI, MPICH's Hydra, Slurm (one task count).
LOCAL_SIZE_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE")
#: Thread counts a user may already have set for the BLAS; xpnet then leaves it alone.
BLAS_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")
#: OpenBLAS's setter under the names its builds export (NumPy's wheels: scipy_openblas, 64-bit ints).
_OPENBLAS_SETTERS = (
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
)


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count (None: leave the BLAS as the environment set it) and why."""

    threads: int | None
    reason: str
    applied: str = ""  # how ``apply`` set it; empty before

    def describe(self) -> str:
        if self.threads is None:
            return f"BLAS threads: {self.reason}"
        how = f"; {self.applied}" if self.applied else ""
        return f"BLAS threads: {self.threads} ({self.reason}){how}"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a launcher's binding narrows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def local_ranks(known: int | None = None) -> int:
    """The ranks on this node: ``known`` (from MPI's shared-memory split), else the launcher's word, else 1."""
    if known:
        return known
    for name in LOCAL_SIZE_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def _whole(text: str, source: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ConfigError(f"{source}: expected a whole number of threads >= 1, not {text!r}")
    return int(text)


def choose(given: int | None = None, local_size: int | None = None) -> ThreadChoice:
    """The thread count: ``--threads``, else ``$XPNET_THREADS``, else the BLAS's own variable if the
    user set one (left alone), else the usable cores divided among the ranks on this node (at least 1)."""
    if given is not None:
        return ThreadChoice(_whole(str(given), "--threads"), f"--threads {given}")
    if os.environ.get(THREADS_VARIABLE, "").strip():
        value = os.environ[THREADS_VARIABLE]
        return ThreadChoice(_whole(value, f"{THREADS_VARIABLE}={value!r}"), f"{THREADS_VARIABLE}={value.strip()}")
    for name in BLAS_VARIABLES:
        if os.environ.get(name, "").strip():
            return ThreadChoice(None, f"left as {name}={os.environ[name].strip()} sets them")
    cores, ranks = usable_cores(), local_ranks(local_size)
    rank_word = "rank" if ranks == 1 else "ranks"
    return ThreadChoice(max(1, cores // ranks), f"{cores} usable cores / {ranks} {rank_word} on this node")


def apply(choice: ThreadChoice, library: type | None = None) -> ThreadChoice:
    """Set the BLAS to ``choice.threads``, and each array library's own CPU threads where it is loaded
    (``library``, the run's, even if not yet); the choice saying how it went."""
    if choice.threads is None:
        return choice
    for cls in LIBRARIES.values():
        cls.set_cpu_threads(choice.threads, load=cls is library)
    how = _threadpoolctl_limit(choice.threads) or _openblas_limit(choice.threads)
    if how is None:
        how = (
            "could not be set (no threadpoolctl and no OpenBLAS found): set OPENBLAS_NUM_THREADS, "
            f"MKL_NUM_THREADS or OMP_NUM_THREADS to {choice.threads} before starting"
        )
    return ThreadChoice(choice.threads, choice.reason, how)


def _threadpoolctl_limit(threads: int) -> str | None:
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return None
    if not any(pool.get("user_api") == "blas" for pool in threadpool_info()):
        return None
    threadpool_limits(limits=threads, user_api="blas")  # process-wide until changed again
    return "set through threadpoolctl"


def _openblas_limit(threads: int) -> str | None:
    """OpenBLAS's ``set_num_threads`` in the copy this process loaded (Linux: found in /proc/self/maps)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line}
    except OSError:
        return None
    done = []
    for path in sorted(paths):  # every copy: NumPy's and SciPy's wheels each bundle their own
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        setter = next((getattr(library, s) for s in _OPENBLAS_SETTERS if hasattr(library, s)), None)
        if setter is not None:
            setter(ctypes.c_int(threads))
            done.append(os.path.basename(path))
    return f"set in OpenBLAS ({', '.join(done)})" if done else None
