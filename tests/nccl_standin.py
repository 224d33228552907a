"""A recording stand-in for CuPy's NCCL binding (``cupy.cuda.nccl``), for machines without a GPU.

It keeps the names xpnet calls (``get_version``, ``get_unique_id``, ``NcclCommunicator``
with ``allReduce`` and ``bcast``, the ``NCCL_*`` constants), records every call, and
carries the collective out on the memory the pointer names, so a wrong pointer, count
or type shows up in the numbers:

- in one process, the other ranks are simulated by ``others`` (their buffers);
- under mpiexec, pass ``mpi_comm`` and the real ranks' buffers are reduced by MPI.

The CUDA stream argument is recorded, not used: host memory has none.
"""

from __future__ import annotations

import ctypes

import numpy as np

NCCL_SUM, NCCL_AVG = 0, 4
NCCL_FLOAT32, NCCL_FLOAT64 = 7, 8
_TYPES = {NCCL_FLOAT32: np.float32, NCCL_FLOAT64: np.float64}


class RecordingNCCL:
    """The binding's module-level names; ``calls`` lists every call made through it."""

    NCCL_SUM, NCCL_AVG = NCCL_SUM, NCCL_AVG
    NCCL_FLOAT32, NCCL_FLOAT64 = NCCL_FLOAT32, NCCL_FLOAT64

    def __init__(self, version=23203, others=(), mpi_comm=None, unique_id=b"\x01\xfe" * 64):
        self.version = version
        self.others = [np.asarray(other) for other in others]
        self.mpi_comm = mpi_comm
        self.unique_id = unique_id
        self.calls: list[tuple] = []

    def get_version(self) -> int:
        return self.version

    def get_unique_id(self):
        self.calls.append(("get_unique_id",))
        return self.unique_id

    def NcclCommunicator(self, ndev, unique_id, rank):
        self.calls.append(("NcclCommunicator", ndev, unique_id, rank))
        return _Communicator(self, ndev, rank)


class _Communicator:
    def __init__(self, library: RecordingNCCL, ndev: int, rank: int):
        self.library, self.ndev, self.rank = library, ndev, rank

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        self.library.calls.append(("allReduce", sendbuf, recvbuf, count, datatype, op, stream))
        data = _memory(recvbuf, count, datatype)
        data[...] = _memory(sendbuf, count, datatype)
        if self.library.mpi_comm is not None:
            from mpi4py import MPI

            self.library.mpi_comm.Allreduce(MPI.IN_PLACE, data, op=MPI.SUM)
        else:
            for other in self.library.others:
                data += other.astype(data.dtype)
        if op == NCCL_AVG:
            data /= self.ndev

    def bcast(self, buff, count, datatype, root, stream):
        self.library.calls.append(("bcast", buff, count, datatype, root, stream))
        if self.library.mpi_comm is not None:
            self.library.mpi_comm.Bcast(_memory(buff, count, datatype), root=root)
        elif self.rank != root and self.library.others:
            _memory(buff, count, datatype)[...] = self.library.others[0]


def _memory(pointer: int, count: int, datatype: int) -> np.ndarray:
    """The ``count`` elements at ``pointer`` as a NumPy array sharing that memory."""
    dtype = np.dtype(_TYPES[datatype])
    raw = (ctypes.c_char * (count * dtype.itemsize)).from_address(pointer)
    return np.frombuffer(raw, dtype=dtype)
