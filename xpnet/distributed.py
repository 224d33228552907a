"""Data-parallel training across processes: the communicators ``fit`` trains through.

One process (a rank) per device, started by ``mpiexec``. Every rank holds the whole
network and the whole training set, draws the same permutation each epoch and takes
its contiguous part of each global batch. After backprop its gradients go into one
flat buffer, one allreduce averages them over the ranks, and the unchanged optimizer
steps. Losses are batch means, so the average is the gradient one process computes on
the global batch, and the weights stay the same on every rank.

Three transports behind one interface (``Communicator``):

- ``Communicator`` itself: the one-process job, where every collective is the identity.
- ``MPICommunicator`` (mpi4py): host arrays (NumPy; PyTorch CPU tensors through DLPack)
  go to MPI without a copy. GPU arrays go through host memory, which it says once,
  unless the MPI is CUDA-aware and ``cuda_aware=True`` (or ``XPNET_CUDA_AWARE_MPI=1``).
- ``NCCLCommunicator`` (``cupy.cuda.nccl``): CUDA arrays, CuPy's or PyTorch's, shaped
  after ChainerMN's ``pure_nccl`` communicator: NCCL's unique id broadcast by MPI from
  rank 0, one in-place allreduce on the current stream, no host synchronisation.
  Host-side agreements (epoch metrics, stop requests) still go through MPI.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from xpnet.backend.cuda import nccl_version_text, visible_gpu_count
from xpnet.errors import BackendError, ConfigError

MPI_HINT = 'install mpi4py and an MPI with: pip install "xpnet[mpi]"'
NCCL_HINT = "install NCCL for CuPy with: pip install nvidia-nccl-cu12 (nvidia-nccl-cu13 for CUDA 13)"

#: Where launchers say which process this is on its node (its GPU's number); xpnet's override first.
LOCAL_RANK_VARIABLES = ("XPNET_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID")
#: Set by mpiexec (MPICH's Hydra, Open MPI) to the job's size.
_LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
#: NCCL_AVG, the allreduce that divides by the rank count itself, came with NCCL 2.10.
_NCCL_AVG_VERSION = 21000


class Communicator:
    """The one-process job, and the interface every transport keeps.

    Every rank makes the same collective calls in the same order (``fit`` sees to it);
    a rank that skipped one would leave the others waiting in it.
    """

    name = "single process"
    rank = 0
    size = 1
    local_rank = 0
    local_size = 1  # ranks on this node (BLAS threads are shared among them: xpnet.backend.threads)

    @property
    def is_root(self) -> bool:
        """Rank 0: the one that prints and writes files."""
        return self.rank == 0

    def describe(self) -> str:
        return self.name

    def for_backend(self, backend) -> Communicator:
        """The communicator that suits ``backend``'s arrays (NCCL for CUDA, where every rank has it)."""
        return self

    def allreduce_mean(self, backend, buffer) -> None:
        """Replace the 1-D device array ``buffer`` by its mean over the ranks, in place."""

    def broadcast(self, backend, buffer) -> None:
        """Replace the 1-D device array ``buffer`` by rank 0's, in place."""

    def sum_host(self, values: Sequence[float]) -> list[float]:
        """Host numbers summed over the ranks; every rank gets rank 0's result, bit for bit,
        so decisions taken from it (early stopping, divergence) agree everywhere."""
        return [float(v) for v in values]

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any (a stop request, say)."""
        return bool(flag)

    def all(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on all."""
        return not self.any(not flag)

    def allgather_json(self, value: Any) -> list:
        """Every rank's JSON-able ``value``, in rank order, on every rank."""
        return [json.loads(json.dumps(value))]

    def finish(self) -> None:
        """Wait for every rank, then end the job's communication (the CLI's last call)."""

    def abort(self, status: int) -> None:
        """End every rank of the job now, with exit ``status`` (a failure on one rank)."""


class FlatBuffer:
    """Arrays shaped like ``like`` packed in one flat device buffer, allocated once.

    ``views[i]`` is shaped like ``like[i]`` and shares the buffer's memory (made once),
    so one collective moves them all: ChainerMN's pure_nccl buffer, PyTorch DDP's buckets
    with a single bucket.
    """

    def __init__(self, communicator: Communicator, backend, like: Sequence):
        xp = backend.xp
        sizes = [math.prod(a.shape) for a in like]
        self.communicator, self.backend = communicator, backend
        self.buffer = xp.zeros((sum(sizes),), dtype=like[0].dtype, device=backend.device_of(like[0]))
        starts = itertools.accumulate(sizes, initial=0)
        self.views = [xp.reshape(self.buffer[s : s + n], tuple(a.shape)) for s, n, a in zip(starts, sizes, like)]

    def pack(self, arrays: Sequence) -> None:
        for view, array in zip(self.views, arrays):
            view[...] = array

    def mean(self, grads: Sequence) -> list:
        """This rank's gradients in; their mean over the ranks out, as the views (one allreduce)."""
        self.pack(grads)
        self.communicator.allreduce_mean(self.backend, self.buffer)
        return self.views

    def broadcast_into(self, arrays: Sequence) -> None:
        """Overwrite ``arrays``, in place, with rank 0's."""
        self.pack(arrays)
        self.communicator.broadcast(self.backend, self.buffer)
        for array, view in zip(arrays, self.views):
            array[...] = view


class MPICommunicator(Communicator):
    """Collectives through mpi4py over ``comm`` (default: every rank mpiexec started)."""

    name = "MPI"

    def __init__(self, comm=None, *, cuda_aware: bool | None = None):
        self.MPI = import_mpi()
        self.comm = comm if comm is not None else self.MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.local_rank, self.local_size = _local_placement(self.comm, self.MPI)
        self.cuda_aware = _env_flag("XPNET_CUDA_AWARE_MPI") if cuda_aware is None else bool(cuda_aware)
        self.staged_reason = "no NCCL communicator was asked for"
        self._flag = np.zeros(1, dtype=np.int32)
        self._staged_said = False

    def describe(self) -> str:
        return f"{self.name} ({mpi_library(self.MPI)})"

    def for_backend(self, backend) -> Communicator:
        if backend.cuda_index is None or self.cuda_aware:
            return self
        nccl, reason = load_nccl()
        if not self.all(nccl is not None):  # one transport for the whole job, or the ranks talk past each other
            self.staged_reason = reason or "NCCL does not load on every rank"
            return self
        return NCCLCommunicator(self.comm, nccl=nccl)

    def allreduce_mean(self, backend, buffer) -> None:
        self._in_place(backend, buffer, lambda data: self.comm.Allreduce(self.MPI.IN_PLACE, data, op=self.MPI.SUM))
        buffer /= self.size

    def broadcast(self, backend, buffer) -> None:
        self._in_place(backend, buffer, lambda data: self.comm.Bcast(data, root=0))

    def _in_place(self, backend, buffer, collective) -> None:
        """Run ``collective`` on ``buffer``'s memory: directly where MPI can reach it, else through a host copy."""
        host = backend.host_alias(buffer)
        if host is not None:
            collective(host)
        elif self.cuda_aware and backend.cuda_index is not None:
            backend.synchronize()  # MPI knows no CUDA streams: the buffer must be complete first
            collective(buffer)
        else:
            self._say_staged()
            host = backend.to_host(buffer)
            collective(host)
            buffer[...] = backend.upload(host, buffer.dtype)

    def _say_staged(self) -> None:
        if not self._staged_said and self.is_root:
            warnings.warn(
                f"xpnet: gradients travel between devices through host memory, copied off and back onto "
                f"the device every step ({self.staged_reason}); for GPUs, {NCCL_HINT}, or use a CUDA-aware "
                "MPI with XPNET_CUDA_AWARE_MPI=1",
                RuntimeWarning,
                stacklevel=4,
            )
        self._staged_said = True

    def sum_host(self, values: Sequence[float]) -> list[float]:
        data = np.asarray(values, dtype=np.float64)
        total = np.zeros_like(data)
        self.comm.Reduce(data, total, op=self.MPI.SUM, root=0)
        self.comm.Bcast(total, root=0)  # rank 0's sum everywhere: an allreduce may round differently per rank
        return total.tolist()

    def any(self, flag: bool) -> bool:
        self._flag[0] = 1 if flag else 0
        self.comm.Allreduce(self.MPI.IN_PLACE, self._flag, op=self.MPI.MAX)
        return bool(self._flag[0])

    def allgather_json(self, value: Any) -> list:
        data = np.frombuffer(json.dumps(value, sort_keys=True).encode(), dtype=np.uint8)
        counts = np.zeros(self.size, dtype=np.int64)
        self.comm.Allgather(np.array([data.size], dtype=np.int64), counts)
        received = np.empty(int(counts.sum()), dtype=np.uint8)
        displacements = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.comm.Allgatherv(data, [received, counts, displacements, self.MPI.BYTE])
        bounds = zip(displacements.tolist(), (displacements + counts).tolist())
        return [json.loads(received[start:stop].tobytes()) for start, stop in bounds]

    def finish(self) -> None:
        self.comm.Barrier()
        if not self.MPI.Is_finalized():
            self.MPI.Finalize()  # a clean end: mpi4py's runner would otherwise abort the job on a non-zero exit

    def abort(self, status: int) -> None:
        self.comm.Abort(status)


class NCCLCommunicator(MPICommunicator):
    """Gradients and weights of CUDA arrays through NCCL; MPI for the rest.

    ``nccl`` is CuPy's binding (``cupy.cuda.nccl``) unless a test passes a stand-in.
    The NCCL communicator itself is made on first use, inside the backend's device
    context: NCCL binds it to the GPU current at that moment.
    """

    name = "NCCL"

    def __init__(self, comm=None, *, nccl=None):
        super().__init__(comm)
        if nccl is None:
            nccl, reason = load_nccl()
            if nccl is None:
                raise BackendError(f"NCCL is not usable here: {reason}; {NCCL_HINT}")
        self.nccl = nccl
        self.version = nccl.get_version()
        #: NCCL_AVG divides by the rank count inside the allreduce; older NCCL sums and xpnet divides.
        self.average = self.version >= _NCCL_AVG_VERSION and hasattr(nccl, "NCCL_AVG")
        self._nccl_comm = None

    def describe(self) -> str:
        return f"NCCL {nccl_version_text(self.version)} (MPI: {mpi_library(self.MPI)})"

    def for_backend(self, backend) -> Communicator:
        return self

    def allreduce_mean(self, backend, buffer) -> None:
        comm, pointer, count, datatype = self._operands(backend, buffer)
        op = self.nccl.NCCL_AVG if self.average else self.nccl.NCCL_SUM
        comm.allReduce(pointer, pointer, count, datatype, op, backend.stream_pointer())
        if not self.average:
            buffer /= self.size  # queued on the same stream, after the sum

    def broadcast(self, backend, buffer) -> None:
        comm, pointer, count, datatype = self._operands(backend, buffer)
        comm.bcast(pointer, count, datatype, 0, backend.stream_pointer())

    def _operands(self, backend, buffer) -> tuple:
        if backend.cuda_index is None:
            raise ConfigError(
                f"the NCCL communicator moves CUDA arrays only, not {backend.name} arrays on {backend.device_name}; "
                "use MPICommunicator (or distributed.connect(backend)) for them"
            )
        if self._nccl_comm is None:
            unique_id = self._broadcast_unique_id(self.nccl.get_unique_id() if self.is_root else None)
            with backend.activated():
                self._nccl_comm = self.nccl.NcclCommunicator(self.size, unique_id, self.rank)
        if buffer.dtype == backend.xp.float32:
            datatype = self.nccl.NCCL_FLOAT32
        elif buffer.dtype == backend.xp.float64:
            datatype = self.nccl.NCCL_FLOAT64
        else:
            raise ConfigError(f"NCCL collectives on {buffer.dtype} arrays are not supported; use float32 or float64")
        return self._nccl_comm, backend.pointer(buffer), math.prod(buffer.shape), datatype

    def _broadcast_unique_id(self, unique_id):
        """Rank 0's NCCL unique id on every rank, by MPI (bytes in CuPy 14, signed chars before)."""
        header = np.zeros(2, dtype=np.int64)  # [given as a tuple, length]
        if self.is_root:
            raw = bytes(b & 0xFF for b in unique_id) if isinstance(unique_id, tuple) else bytes(unique_id)
            header[:] = (isinstance(unique_id, tuple), len(raw))
        self.comm.Bcast(header, root=0)
        data = np.frombuffer(raw, dtype=np.uint8).copy() if self.is_root else np.empty(header[1], dtype=np.uint8)
        self.comm.Bcast(data, root=0)
        if header[0]:
            return tuple(int(b) - 256 if b > 127 else int(b) for b in data.tolist())
        return data.tobytes()


# -- finding the job ------------------------------------------------------------------------


def connect(backend=None, *, cuda_aware: bool | None = None) -> Communicator:
    """This process's communicator: MPI's when mpiexec started several ranks, else the one-process job.

    Given ``backend``, the transport its arrays travel best by (``Communicator.for_backend``).
    Started by mpiexec without mpi4py installed, it refuses rather than train R separate copies.
    """
    try:
        world = MPICommunicator(cuda_aware=cuda_aware)
    except BackendError:
        if launcher_size() > 1:
            raise
        return Communicator()
    if world.size == 1:
        return Communicator()
    return world.for_backend(backend) if backend is not None else world


def import_mpi():
    """mpi4py's ``MPI`` module (importing it starts MPI), or a ``BackendError`` saying how to get it."""
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError, OSError) as exc:
        raise BackendError(f"distributed training needs mpi4py and an MPI library ({exc}); {MPI_HINT}") from None
    return MPI


def launcher_size() -> int:
    """The job size mpiexec announced in the environment (1 when none did)."""
    for name in _LAUNCHER_SIZE_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 1


def launcher_local_rank(default: int = 0) -> int:
    """This process's rank on its node as the launcher (or ``XPNET_LOCAL_RANK``) says; else ``default``."""
    for name in LOCAL_RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            if not value.isdigit():
                raise ConfigError(f"{name}={value!r} must be a whole number >= 0 (it picks this rank's GPU)")
            return int(value)
    return default


def _local_placement(comm, MPI) -> tuple[int, int]:
    """This rank's number on its node (the launcher's word first) and the number of ranks there."""
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)  # collective: every rank calls it, overridden or not
    rank, size = node.Get_rank(), node.Get_size()
    node.Free()
    return launcher_local_rank(default=rank), size


def rank_device(device: str | None, communicator: Communicator, gpus: int | None = None) -> str | None:
    """``cuda`` becomes ``cuda:<local rank mod gpus>``, one GPU per rank on each node; other devices
    stay as given. ``gpus`` is the count this process sees (asked for when None): a launcher that
    shows each task only its own GPU (SLURM ``--gpus-per-task=1``) makes it 1, so every rank takes cuda:0."""
    if device is not None and device.strip() in ("cuda", "gpu") and communicator.size > 1:
        gpus = visible_gpu_count() if gpus is None else gpus
        return f"cuda:{communicator.local_rank % gpus if gpus > 0 else communicator.local_rank}"
    return device


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def load_nccl():
    """``(cupy.cuda.nccl, None)`` where CuPy loads NCCL, else ``(None, the reason)``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # CuPy warns when libnccl is missing; the reason is returned instead
            from cupy.cuda import nccl
    except Exception as exc:  # no CuPy, or a CuPy that cannot start: either way no NCCL
        return None, f"CuPy does not import ({type(exc).__name__}: {exc})"
    if not getattr(nccl, "available", False):
        return None, "CuPy cannot load libnccl.so.2"
    return nccl, None


# -- what `python -m xpnet info` says ---------------------------------------------------------


def transports() -> dict[str, str]:
    """ "MPI" and "NCCL", each mapped to whether it is usable here and which library loaded."""
    report = {}
    try:
        MPI = import_mpi()
        import mpi4py

        report["MPI"] = f"usable: mpi4py {mpi4py.__version__}, {mpi_library(MPI)}"
    except BackendError as exc:
        report["MPI"] = f"not usable: {exc}"
    nccl, reason = load_nccl()
    if nccl is None:
        report["NCCL"] = f"not usable: {reason}; {NCCL_HINT}"
    else:
        version = nccl_version_text(nccl.get_version())
        report["NCCL"] = f"loaded: NCCL {version} through CuPy ({_loaded_library('libnccl') or 'libnccl'})"
    report["GPU per rank"] = f"--device cuda: cuda:<local rank modulo the {visible_gpu_count()} GPU(s) it sees>"
    return report


def mpi_library(MPI) -> str:
    """The MPI library's name and version, and the file it was loaded from."""
    first = MPI.Get_library_version().strip().splitlines()[0]
    name = " ".join(first.replace("Version:", "").split())
    path = _loaded_library("libmpi")
    return f"{name} ({path})" if path else name


def _loaded_library(fragment: str) -> str:
    """The path of the loaded shared library whose file name starts with ``fragment`` (Linux), or ''."""
    with contextlib.suppress(OSError), open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if os.path.basename(path).startswith(fragment):
                return path
    return ""
