"""The communicators, in one process: flat buffers, the NCCL calls (against a recording
stand-in, as no GPU is here), host staging, the start-up checks and the dropout rows.

Runs across real ranks are in test_mpi.py.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from conftest import CPU_BACKENDS, HAVE_JAX, HAVE_TORCH, build_mlp, host
from nccl_standin import NCCL_AVG, NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM, RecordingNCCL

import xpnet.data_parallel
from xpnet import distributed
from xpnet.backend import NumpyBackend, get_backend
from xpnet.cli import main
from xpnet.data_parallel import DataParallel, RankRows, check_same_job, data_digest, rank_part
from xpnet.distributed import Communicator, FlatBuffer, NCCLCommunicator
from xpnet.errors import ConfigError

HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
NEEDS_MPI4PY = pytest.mark.skipif(not HAVE_MPI4PY, reason='needs mpi4py (pip install "xpnet[mpi]")')
#: The backends whose arrays collectives can write into (JAX's cannot: data-parallel is refused there).
WRITABLE = [p for p in CPU_BACKENDS if p.values[0][0] != "jax"]


def _grads(net):
    rng = np.random.default_rng(1)
    return [net.backend.upload(rng.standard_normal(tuple(p.shape)), net.dtype) for p in net.params]


@pytest.mark.parametrize("spec", WRITABLE)
def test_flat_buffer_views_share_its_memory(spec):
    net = build_mlp(spec, [5, 4, 3])
    grads = _grads(net)
    flat = FlatBuffer(Communicator(), net.backend, grads)
    assert [tuple(v.shape) for v in flat.views] == [tuple(g.shape) for g in grads]
    flat.pack(grads)
    expected = np.concatenate([host(net, g).ravel() for g in grads])
    assert np.array_equal(host(net, flat.buffer), expected)
    flat.buffer *= 2.0  # what an in-place allreduce does to the buffer shows in every view
    for view, g in zip(flat.views, grads):
        assert np.array_equal(host(net, view), 2 * host(net, g))


def test_one_process_data_parallel_hands_everything_back_untouched():
    net = build_mlp(("numpy", None), [5, 4, 3], dropout=0.5)
    parallel = DataParallel(Communicator(), batch_size=7)
    grads = _grads(net)
    assert parallel.mean_gradients(net, grads) is grads
    assert parallel.rows == slice(0, 7) and parallel.local_batch == 7
    validation = (np.zeros((5, 5)), np.zeros(5))
    assert parallel.validation_part(validation) is validation and parallel.validation_part(None) is None
    idx = np.arange(7)
    assert parallel.local_rows(idx) is idx
    assert parallel.sum_host([1.5, 2.0]) == [1.5, 2.0] and parallel.stop_requested(True)
    generator = net.dropout_rng
    with parallel.rank_dropout(net):
        assert net.dropout_rng is generator


class _Ranks(Communicator):
    """A communicator that says it is rank ``rank`` of ``size`` and gathers given fingerprints."""

    def __init__(self, rank, size, gathered=None):
        self.rank, self.size, self.gathered = rank, size, gathered

    def allgather_json(self, value):
        return self.gathered


@pytest.mark.skipif(not HAVE_JAX, reason='needs JAX (pip install "xpnet[jax]")')
def test_data_parallel_training_on_immutable_arrays_is_refused_naming_the_backend():
    net = build_mlp(("jax", "cpu"), [4, 3])
    with pytest.raises(ConfigError, match=r"data-parallel training is not supported on backend 'jax'"):
        DataParallel(_Ranks(0, 2), batch_size=8).start(net, None, {}, {"seed": 0})


def test_a_batch_the_ranks_do_not_divide_is_refused():
    with pytest.raises(ConfigError, match=r"batch size 64 does not split evenly among 3 ranks.*multiple of 3"):
        DataParallel(_Ranks(0, 3), batch_size=64)
    parallel = DataParallel(_Ranks(2, 3), batch_size=63)
    assert parallel.rows == slice(42, 63) and parallel.local_batch == 21


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_rank_parts_are_contiguous_and_cover_every_row_once(size):
    for n in (0, 1, 7, 10):
        parts = [rank_part(n, _Ranks(rank, size)) for rank in range(size)]
        assert [i for part in parts for i in range(n)[part]] == list(range(n))
        assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def test_rank_rows_are_the_one_process_masks_rows(spec):
    """Dropout across ranks: rank r's uniforms are rows [r b, (r+1) b) of the global batch's draw."""
    one = build_mlp(spec, [3, 8, 2], dropout=0.5, seed=4)
    whole = host(one, one.dropout_rng.uniform((6, 8), one.dtype))
    for rank in range(3):
        net = build_mlp(spec, [3, 8, 2], dropout=0.5, seed=4)
        part = host(net, RankRows(net.dropout_rng, rank, 3).uniform((2, 8), net.dtype))
        assert np.array_equal(part, whole[2 * rank : 2 * rank + 2])


def _fingerprint(**changes):
    print_ = {"sizes": {"training inputs": [100, 4]}, "settings": {"lr": 0.1, "seed": 0}, "data": "abc"}
    for part, value in changes.items():
        print_[part] = {**print_[part], **value} if isinstance(value, dict) else value
    return print_


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (_fingerprint(sizes={"training inputs": [90, 4]}), r"rank 1 has training inputs shaped \[90, 4\], rank 0 "),
        (_fingerprint(settings={"lr": 0.2}), "rank 1 has lr = 0.2, rank 0 lr = 0.1: every rank must run the same"),
        (_fingerprint(data="abd"), "rank 1's training data differ from rank 0's"),
    ],
)
def test_ranks_with_other_data_or_settings_are_refused(other, message):
    with pytest.raises(ConfigError, match=message):
        check_same_job(_Ranks(0, 2, [_fingerprint(), other]), _fingerprint())
    check_same_job(_Ranks(0, 2, [_fingerprint(), _fingerprint()]), _fingerprint())


def test_data_digest_tells_one_changed_value_apart():
    backend = get_backend("numpy")
    X = np.arange(12.0).reshape(3, 4)
    changed = X.copy()
    changed[2, 3] += 1e-9
    assert data_digest(backend, [X]) == data_digest(backend, [X.copy()])
    assert data_digest(backend, [X]) != data_digest(backend, [changed])
    assert data_digest(backend, [X]) != data_digest(backend, [X.astype(np.float32)])


def test_local_rank_comes_from_the_launcher_or_the_override(monkeypatch):
    for name in distributed.LOCAL_RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert distributed.launcher_local_rank(default=5) == 5
    monkeypatch.setenv("MPI_LOCALRANKID", "1")
    assert distributed.launcher_local_rank() == 1
    monkeypatch.setenv("XPNET_LOCAL_RANK", "3")
    assert distributed.launcher_local_rank() == 3
    monkeypatch.setenv("XPNET_LOCAL_RANK", "one")
    with pytest.raises(ConfigError, match="XPNET_LOCAL_RANK='one' must be a whole number"):
        distributed.launcher_local_rank()


def test_each_rank_takes_the_gpu_of_its_local_rank():
    ranks = _Ranks(1, 4)
    ranks.local_rank = 1
    assert distributed.rank_device("cuda", ranks, gpus=4) == "cuda:1"
    assert distributed.rank_device("cuda:3", ranks) == "cuda:3"  # an explicit device is the user's choice
    assert distributed.rank_device(None, ranks) is None
    assert distributed.rank_device("cuda", Communicator()) == "cuda"


def test_a_rank_that_sees_one_gpu_takes_cuda_0(monkeypatch):
    """SLURM --gpus-per-task=1 shows each task only its GPU: local rank 1 must not ask for cuda:1."""
    ranks = _Ranks(1, 4)
    ranks.local_rank = 1
    monkeypatch.setattr(distributed, "visible_gpu_count", lambda: 1)
    assert distributed.rank_device("cuda", ranks) == "cuda:0"
    ranks.local_rank = 5
    assert distributed.rank_device("cuda", ranks, gpus=2) == "cuda:1"
    assert "local rank modulo the 1 GPU(s)" in distributed.transports()["GPU per rank"]


# -- NCCL, against the recording stand-in ------------------------------------------------------


class _PretendGPU(NumpyBackend):
    """NumPy arrays, presented to the communicators as if they lived on cuda:0."""

    cuda_index = 0


class _FakeMPI:
    """Just enough of an mpi4py communicator for NCCLCommunicator: rank 0 of ``size``; Bcasts recorded."""

    def __init__(self, size):
        self.size, self.bcasts = size, []

    def Get_rank(self):
        return 0

    def Get_size(self):
        return self.size

    def Split_type(self, kind):
        return self

    def Free(self):
        pass

    def Bcast(self, buffer, root):
        self.bcasts.append((np.array(buffer, copy=True), root))


def _nccl_setup(version, dtype="float32"):
    backend = _PretendGPU(get_backend("numpy").xp, "cpu")
    rng = np.random.default_rng(0)
    shapes = [(4, 3), (4,), (2, 4), (2,)]
    mine = [rng.standard_normal(s).astype(dtype) for s in shapes]
    theirs = [rng.standard_normal(s).astype(dtype) for s in shapes]
    nccl = RecordingNCCL(version=version, others=[np.concatenate([t.ravel() for t in theirs])])
    return backend, mine, theirs, nccl


@NEEDS_MPI4PY
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("version", [23203, 2708], ids=["NCCL-2.32-avg", "NCCL-2.7-sum"])
def test_nccl_mean_is_one_in_place_allreduce_of_the_flat_buffer(version, dtype):
    backend, mine, theirs, nccl = _nccl_setup(version, dtype)
    mpi = _FakeMPI(size=2)
    comm = NCCLCommunicator(mpi, nccl=nccl)
    flat = FlatBuffer(comm, backend, mine)
    for _ in range(2):
        means = flat.mean(mine)
        for mean, a, b in zip(means, mine, theirs):
            np.testing.assert_allclose(mean, (a + b) / 2, rtol=1e-6)
    # The unique id came from rank 0 once, went to the others by MPI, and made one communicator.
    assert [call[0] for call in nccl.calls].count("get_unique_id") == 1
    assert bytes(mpi.bcasts[1][0]) == nccl.unique_id and all(root == 0 for _, root in mpi.bcasts)
    assert ("NcclCommunicator", 2, nccl.unique_id, 0) in nccl.calls
    reduces = [call for call in nccl.calls if call[0] == "allReduce"]
    count = sum(a.size for a in mine)
    datatype = NCCL_FLOAT32 if dtype == "float32" else NCCL_FLOAT64
    op = NCCL_AVG if version >= 21000 else NCCL_SUM
    pointer = flat.buffer.ctypes.data
    # One call per step, in place on the whole flat buffer, on the current stream (0 off the GPU).
    assert reduces == [("allReduce", pointer, pointer, count, datatype, op, 0)] * 2


@NEEDS_MPI4PY
def test_nccl_broadcast_sends_rank_0s_buffer_and_the_old_tuple_ids_survive():
    backend, mine, _, nccl = _nccl_setup(23203)
    nccl.unique_id = tuple([-3, 127, -128, 0] * 32)  # CuPy before 14: signed chars in a tuple
    comm = NCCLCommunicator(_FakeMPI(size=2), nccl=nccl)
    flat = FlatBuffer(comm, backend, mine)
    flat.broadcast_into(mine)
    assert ("NcclCommunicator", 2, nccl.unique_id, 0) in nccl.calls
    count = sum(a.size for a in mine)
    assert ("bcast", flat.buffer.ctypes.data, count, NCCL_FLOAT32, 0, 0) in nccl.calls


@NEEDS_MPI4PY
def test_nccl_refuses_arrays_off_the_gpu():
    comm = NCCLCommunicator(_FakeMPI(size=2), nccl=RecordingNCCL())
    backend = get_backend("numpy")
    with pytest.raises(ConfigError, match="NCCL communicator moves CUDA arrays only, not numpy arrays on cpu"):
        FlatBuffer(comm, backend, [np.zeros(3, np.float32)]).mean([np.ones(3, np.float32)])


def test_nccl_version_codes_read_as_text():
    assert distributed.nccl_version_text(23203) == "2.32.3"
    assert distributed.nccl_version_text(2708) == "2.7.8"


# -- MPI in this one process (a job of one rank) -----------------------------------------------


@NEEDS_MPI4PY
@pytest.mark.parametrize("spec", WRITABLE)
def test_host_arrays_reach_mpi_without_a_copy_and_device_arrays_through_one_said_once(spec):
    comm = distributed.MPICommunicator()
    net = build_mlp(spec, [5, 4, 3])
    grads = _grads(net)
    flat = FlatBuffer(comm, net.backend, grads)
    staged = net.backend.host_alias(flat.buffer) is None
    assert staged == (spec[0] == "array-api-strict")  # its device1 stands in for a GPU
    reads = net.backend.host_reads
    with pytest.warns(RuntimeWarning, match="through host memory") if staged else _no_warning():
        flat.mean(grads)
    with _no_warning():
        means = flat.mean(grads)  # said once only
    assert net.backend.host_reads - reads == (2 if staged else 0)
    for mean, g in zip(means, grads):
        assert np.array_equal(host(net, mean), host(net, g))


class _no_warning:
    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)


@NEEDS_MPI4PY
def test_one_rank_collectives_hand_back_their_input():
    comm = distributed.MPICommunicator()
    assert (comm.rank, comm.size) == (0, 1)
    assert comm.sum_host([1.25, -2.0]) == [1.25, -2.0]
    assert comm.any(True) and not comm.any(False) and comm.all(True)
    assert comm.allgather_json({"a": [1, "x"]}) == [{"a": [1, "x"]}]
    assert distributed.connect().size == 1  # no mpiexec: the one-process job


def test_info_says_whether_mpi_and_nccl_are_usable(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "distributed (--distributed under mpiexec):" in out
    mpi_line = next(line for line in out.splitlines() if line.strip().startswith("MPI "))
    nccl_line = next(line for line in out.splitlines() if line.strip().startswith("NCCL "))
    if HAVE_MPI4PY:
        assert "usable: mpi4py" in mpi_line and "libmpi" in mpi_line
    else:
        assert "not usable" in mpi_line and 'pip install "xpnet[mpi]"' in mpi_line
    nccl, reason = distributed.load_nccl()
    assert ("loaded: NCCL" in nccl_line) == (nccl is not None)
    if nccl is None:
        assert reason in nccl_line and "nvidia-nccl-cu12" in nccl_line


def test_ranks_without_a_seed_are_refused_before_any_collective():
    net = build_mlp(("numpy", None), [5, 4, 3], dropout=0.5, seed=None)
    parallel = DataParallel(_Ranks(0, 2, gathered=None), batch_size=4)  # a collective would fail on None
    with pytest.raises(ConfigError, match="data-parallel training needs a seed"):
        parallel.start(net, None, {"X": np.zeros((4, 5))}, {"seed": 0})
    net = build_mlp(("numpy", None), [5, 4, 3], seed=1)
    with pytest.raises(ConfigError, match="needs a seed"):
        parallel.start(net, None, {"X": np.zeros((4, 5))}, {"seed": None})


class _Fingerprinted(Exception):
    pass


@pytest.mark.skipif(not HAVE_TORCH, reason='needs PyTorch (pip install "xpnet[torch]")')
def test_ranks_fingerprint_the_host_data_without_reading_the_device_back(monkeypatch):
    """Each rank hashed backend.to_host(X) after the upload: a full device-to-host copy and a
    second host copy of the training set at start. The host arrays are hashed instead."""
    net = build_mlp(("torch", "cpu"), [5, 4, 3], seed=1)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((8, 5)).astype(np.float32), rng.integers(0, 3, 8)
    seen = []

    def fingerprinted(communicator, fingerprint):
        seen.append((fingerprint, net.backend.host_reads))
        raise _Fingerprinted

    monkeypatch.setattr(xpnet.data_parallel, "check_same_job", fingerprinted)
    reads = net.backend.host_reads
    with pytest.raises(_Fingerprinted):
        net.fit(X, y, epochs=1, batch_size=4, seed=0, communicator=_Ranks(0, 2))
    ((fingerprint, reads_then),) = seen
    assert reads_then == reads  # nothing read back from the device
    assert fingerprint["data"] == data_digest(net.backend, [X, y])
    assert fingerprint["sizes"] == {"X": [8, 5], "y": [8]}


class _PretendCudaAware(NumpyBackend):
    """NumPy arrays presented as GPU memory MPI cannot alias: the CUDA-aware path takes them whole."""

    cuda_index = 0
    synchronized = 0

    def host_alias(self, array):
        return None

    def synchronize(self):
        self.synchronized += 1


@NEEDS_MPI4PY
def test_cuda_aware_mpi_gets_the_device_buffer_itself_after_the_stream_is_done():
    backend = _PretendCudaAware(get_backend("numpy").xp, "cpu")
    grads = [np.full((2, 3), 1.5), np.arange(3.0)]
    comm = distributed.MPICommunicator(cuda_aware=True)
    with _no_warning():  # no host staging, so nothing to say
        means = FlatBuffer(comm, backend, grads).mean(grads)
    assert backend.synchronized == 1 and backend.host_reads == 0
    assert all(np.array_equal(m, g) for m, g in zip(means, grads))
    assert comm.for_backend(backend) is comm  # CUDA-aware MPI asked for: no NCCL
