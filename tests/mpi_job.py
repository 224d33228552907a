"""What each rank runs in test_mpi.py's jobs (``mpiexec -n R python -m mpi4py tests/mpi_job.py MODE ...``).

Every mode writes what rank r saw to ``OUT/rank{r}.json`` (and arrays to ``.npz``) for
the test to compare; nothing here asserts, so a failing rank's numbers still come back.

- ``collectives OUT BACKEND:DEVICE ...``: the communicator's primitives on real ranks, per backend
  (results in ``OUT/BACKEND/``).
- ``nccl-standin OUT``: NCCLCommunicator, with the recording stand-in reducing by MPI.
- ``fit OUT DATA.npz CASE ...``: ``fit`` data-parallel for each named case of ``CASES``
  (results in ``OUT/CASE/``); test_mpi.py trains the same cases in one process.
- ``fail OUT RANK STEP ARGS ...``: ``python -m xpnet ARGS`` on every rank, the test hook making
  rank RANK raise at its STEP-th optimizer step (a bug, as far as xpnet can tell).
- ``nan OUT RANK STEP ARGS ...``: the same, the hook making rank RANK's loss NaN at its STEP-th
  step (its gradients and so everyone's weights stay finite).
- ``stream-passes OUT FOLDER CHUNK_ROWS``: the passes over a streamed ``.npy`` folder before
  training (the scaling's moments and range, the largest label), each rank recording the rows it read.

mpi4py is imported inside the modes, so that pytest can import ``train_case`` without
starting MPI.
"""

from __future__ import annotations

import itertools
import json
import sys
import warnings
from pathlib import Path

import numpy as np
from nccl_standin import RecordingNCCL

from xpnet.backend import Backend, NumpyBackend, get_backend
from xpnet.cli import main
from xpnet.data.sources import NpySource, Source
from xpnet.distributed import Communicator, FlatBuffer, MPICommunicator, NCCLCommunicator
from xpnet.network import MLP
from xpnet.optim import SGD, Adam, AdamW, Optimizer
from xpnet.stream_passes import fit_scaling, largest_label, standard_moments, value_range
from xpnet.streaming import Streamed

#: Training set-ups 1 process x B must match R ranks x B/R on: (network options, optimizer, fit options).
CASES = {
    "sgd-momentum-f64": (
        {"dtype": "float64"},
        lambda: SGD(lr=0.05, momentum=0.9, weight_decay=1e-4),
        {"epochs": 3},
    ),
    "adam-f64": ({"dtype": "float64"}, lambda: Adam(lr=3e-3), {"epochs": 3}),
    "adamw-schedule-dropout-f64": (
        {"dtype": "float64", "dropout": 0.2},
        lambda: AdamW(lr=3e-3, weight_decay=0.01, schedule="warmup-cosine"),
        {"epochs": 3, "label_smoothing": 0.1},
    ),
    "layernorm-adam-dropout-f64": (
        {"dtype": "float64", "norm": "layer", "dropout": 0.2},
        lambda: Adam(lr=3e-3),
        {"epochs": 3},
    ),
    "sgd-momentum-f32": ({"dtype": "float32"}, lambda: SGD(lr=0.05, momentum=0.9), {"epochs": 3}),
    "early-stopping-f64": ({"dtype": "float64"}, lambda: SGD(lr=0.5, momentum=0.9), {"epochs": 8, "patience": 1}),
    # sample weights (data["w"], validation data["w_val"]) times balanced class weights
    "weighted-f64": ({"dtype": "float64"}, lambda: Adam(lr=3e-3), {"epochs": 3, "class_weight": "balanced"}),
}
#: Cases trained with the data's sample weights, in training and in validation.
WEIGHTED = ("weighted-f64",)
BATCH = 24  # global: 2 ranks x 12, 3 ranks x 8


def train_case(name: str, data: dict, communicator: Communicator | None = None):
    """``(net, history)`` of case ``name`` on ``data`` (X, y, X_val, y_val), in one process or on this rank."""
    network, optimizer, options = CASES[name]
    net = MLP([data["X"].shape[1], 16, 8, int(data["y"].max()) + 1], seed=3, **network)
    validation = (data["X_val"], data["y_val"])
    if name in WEIGHTED:
        options = {**options, "sample_weight": data["w"]}
        validation += (data["w_val"],)
    if communicator is not None and communicator.rank > 0:  # other weights than rank 0's: the job starts from rank 0's
        net.params = [p + 0.25 for p in net.params]
    history = net.fit(
        data["X"], data["y"], batch_size=BATCH, optimizer=optimizer(), validation_data=validation,
        seed=5, communicator=communicator, **options,
    )  # fmt: skip
    return net, history


def fit_cases(out: Path, data_file: str, *names: str) -> None:
    comm = MPICommunicator()
    with np.load(data_file) as loaded:
        data = dict(loaded)
    for name in names:
        net, history = train_case(name, data, comm)
        folder = out / name
        folder.mkdir(exist_ok=True)
        record = {"records": history.records, "stopped_early": history.stopped_early, "rank": comm.rank}
        record["restored_best"] = history.restored_best
        _write(folder, comm.rank, record, **net.state_dict())


def _rank_arrays(backend, rank: int, dtype) -> list:
    """Arrays shaped like a small network's parameters, filled from a per-rank seed."""
    rng = np.random.default_rng(100 + rank)
    return [backend.upload(rng.standard_normal(shape), dtype) for shape in [(4, 3), (4,), (2, 4), (2,)]]


def _write(out: Path, rank: int, record: dict, **arrays) -> None:
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    np.savez(out / f"rank{rank}.npz", **arrays)


def collectives(out: Path, *specs: str) -> None:
    comm = MPICommunicator()
    for spec in specs:
        backend_name, _, device = spec.partition(":")
        folder = out / backend_name
        folder.mkdir(exist_ok=True)
        _collectives(comm, folder, get_backend(backend_name, device or None))


def _collectives(comm, out: Path, backend: Backend) -> None:
    dtype = backend.dtype("float64")
    mine = _rank_arrays(backend, comm.rank, dtype)
    flat = FlatBuffer(comm, backend, mine)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        means = [backend.to_host(m) for m in flat.mean(mine)]
        means_again = [backend.to_host(m) for m in flat.mean(mine)]
    broadcast = _rank_arrays(backend, comm.rank, dtype)
    FlatBuffer(comm, backend, broadcast).broadcast_into(broadcast)
    record = {
        "rank": comm.rank,
        "size": comm.size,
        "local_rank": comm.local_rank,
        "warnings": [str(w.message) for w in said],
        "sum_host": comm.sum_host([0.1 * (comm.rank + 1), 1.0]),
        "any_rank_1": comm.any(comm.rank == 1),
        "any_none": comm.any(False),
        "all_but_rank_1": comm.all(comm.rank != 1),
        "gathered": comm.allgather_json({"rank": comm.rank, "text": "é" * comm.rank}),
    }
    arrays = {f"mean{i}": m for i, m in enumerate(means)}
    arrays.update({f"again{i}": m for i, m in enumerate(means_again)})
    arrays.update({f"bcast{i}": backend.to_host(b) for i, b in enumerate(broadcast)})
    _write(out, comm.rank, record, **arrays)


class _PretendGPU(NumpyBackend):
    cuda_index = 0


def nccl_standin(out: Path) -> None:
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    nccl = RecordingNCCL(mpi_comm=world, unique_id=bytes(range(128)) if world.rank == 0 else b"not rank 0's")
    comm = NCCLCommunicator(world, nccl=nccl)
    backend = _PretendGPU(get_backend("numpy").xp, "cpu")
    mine = _rank_arrays(backend, comm.rank, np.float32)
    means = FlatBuffer(comm, backend, mine).mean(mine)
    made = [call for call in nccl.calls if call[0] == "NcclCommunicator"]
    record = {"rank": comm.rank, "made": [[c[1], list(c[2]), c[3]] for c in made], "calls": [c[0] for c in nccl.calls]}
    _write(out, comm.rank, record, **{f"mean{i}": m for i, m in enumerate(means)})


def fail(out: Path, rank: str, step: str, *argv: str) -> None:
    from mpi4py import MPI

    if MPI.COMM_WORLD.Get_rank() == int(rank):
        steps = itertools.count(1)
        original = Optimizer.step

        def failing_step(self, params, grads):
            if next(steps) == int(step):
                raise RuntimeError(f"injected failure at step {step}")
            return original(self, params, grads)

        Optimizer.step = failing_step
    sys.exit(main(list(argv)))


def nan(out: Path, rank: str, step: str, *argv: str) -> None:
    from mpi4py import MPI

    if MPI.COMM_WORLD.Get_rank() == int(rank):
        steps = itertools.count(1)
        original = MLP.backprop

        def nan_loss(self, x, y, **options):
            cost, grads, out = original(self, x, y, **options)
            return (cost * float("nan") if next(steps) == int(step) else cost), grads, out

        MLP.backprop = nan_loss
    sys.exit(main(list(argv)))


class RecordedReads(Source):
    """A source that notes the rows of each read (``[start, stop)``), then reads them from ``source``."""

    def __init__(self, source: Source):
        self.source, self.reads = source, []
        self.name, self.rows, self.features, self.task = source.name, source.rows, source.features, source.task

    def read(self, start, stop):
        self.reads.append([int(start), int(stop)])
        return self.source.read(start, stop)

    def _targets(self, start, stop):
        self.reads.append([int(start), int(stop)])
        return self.source._targets(start, stop)

    def take(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        self.reads.extend([int(i), int(i) + 1] for i in ids)
        return self.source.take(ids)


def stream_passes(out: Path, folder: str, chunk_rows: str) -> None:
    comm = MPICommunicator()
    source = RecordedReads(NpySource(Path(folder) / "X.npy", Path(folder) / "y.npy"))
    data = Streamed(source, int(chunk_rows))
    moments = standard_moments(data, comm)
    record = {"rank": comm.rank, "count": moments.count, "largest_label": largest_label(source, int(chunk_rows), comm)}
    record["range"] = value_range(data, comm)
    for kind in ("standard", "unit", "symmetric"):
        scaling = fit_scaling(kind, data, comm)
        record[kind] = [np.asarray(scaling.shift, dtype=np.float64).tolist(), np.asarray(scaling.scale).tolist()]
    record["reads"] = source.reads
    _write(out, comm.rank, record, mean=moments.mean, squares=moments.squares)


if __name__ == "__main__":
    mode, folder, *rest = sys.argv[1:]
    modes = {"collectives": collectives, "nccl-standin": nccl_standin, "fit": fit_cases, "fail": fail, "nan": nan}
    modes["stream-passes"] = stream_passes
    modes[mode](Path(folder), *rest)
