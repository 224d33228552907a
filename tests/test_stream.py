"""Training on data streamed from disk: the same numbers as in memory, within the memory limit.

A buffer that holds every chunk draws ``fit``'s own permutation, so a streamed run equals the
in-memory run bit for bit (float64). A smaller buffer shuffles chunk-wise; such a run equals
``fit`` in memory on the rows in the plan's order, epoch by epoch, which is how the run on a
dataset four times the memory limit is checked; its peak of traced allocations (NumPy's
buffers) stays under the limit, and so does the CLI run's growth of resident memory (the memory
map's pages are handed back, ``MADV_DONTNEED``, as they are copied).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import NO_TORCH

from xpnet.batches import ahead_bytes
from xpnet.data.sources import ChunkSource, NpySource, open_source
from xpnet.data.stream import epoch_plan, load_buffer
from xpnet.data_parallel import rank_part
from xpnet.distributed import Communicator
from xpnet.errors import ConfigError, DataError
from xpnet.network import MLP
from xpnet.optim import SGD, Adam
from xpnet.prefetch import Prefetcher
from xpnet.scaling import Scaling
from xpnet.settings import BASE_SETTINGS
from xpnet.stream_passes import fit_scaling, largest_label, standard_moments
from xpnet.stream_run import load_streamed
from xpnet.streaming import Streamed, stream, stream_estimate
from xpnet.train import History, fit

ROOT = Path(__file__).resolve().parents[1]
pyarrow = pytest.importorskip("pyarrow")  # the parquet extra; CI installs it
import pyarrow.parquet as pq  # noqa: E402


def _data(n=1000, features=5, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, features)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int32) + (X[:, 2] > 1)
    return X, y


def _folder(tmp_path, X, y, name="set"):
    folder = tmp_path / name
    folder.mkdir()
    np.save(folder / "X.npy", X)
    np.save(folder / "y.npy", y)
    return folder


def _parquet(path, X, y, row_group=300):
    columns = {f"f{j}": X[:, j] for j in range(X.shape[1])}
    pq.write_table(pyarrow.table({**columns, "label": y}), path, row_group_size=row_group)
    return path


def _fit(data, y=None, epochs=3, seed=3, **options):
    net = MLP([5, 8, 3], dtype="float64", seed=0)
    history = fit(net, data, y, epochs=epochs, batch_size=32, optimizer=Adam(lr=0.01), seed=seed, **options)
    return net, history


def _same(a, b, tol=1e-10):
    return max(float(np.max(np.abs(np.asarray(p) - np.asarray(q)))) for p, q in zip(a.params, b.params)) <= tol


def test_plan_of_one_buffer_is_fits_own_permutation():
    buffers = list(epoch_plan(1000, 100, 10, 32, np.random.default_rng(7)))
    assert len(buffers) == 1
    expected = np.random.default_rng(7).permutation(1000)[: 1000 // 32 * 32]
    assert np.array_equal(buffers[0].ids[buffers[0].order], expected)


@pytest.mark.parametrize(("chunk", "chunks"), [(100, 3), (64, 1), (333, 2)])
def test_plan_uses_each_row_at_most_once_in_full_batches(chunk, chunks):
    buffers = list(epoch_plan(1000, chunk, chunks, 32, np.random.default_rng(0)))
    rows = np.concatenate([b.ids[b.order] for b in buffers])
    assert rows.size == 1000 // 32 * 32 and np.unique(rows).size == rows.size
    assert [b.first_step for b in buffers] == list(np.cumsum([0] + [b.steps(32) for b in buffers[:-1]]))
    order = [start for b in buffers for start, _ in b.chunks]
    assert order != sorted(order)  # the chunks were reordered
    unshuffled = list(epoch_plan(1000, chunk, chunks, 32, np.random.default_rng(0), shuffle=False))
    assert np.array_equal(np.concatenate([b.ids[b.order] for b in unshuffled]), np.arange(rows.size))


def test_streamed_fit_equals_in_memory_fit_from_npy_parquet_and_chunks(tmp_path):
    X, y = _data()
    validation = (X[:100], y[:100])
    reference, ref_history = _fit(X, y, validation_data=validation)
    parquet = _parquet(tmp_path / "d.parquet", X, y)
    chunks = [(X[i : i + 250], y[i : i + 250]) for i in range(0, 1000, 250)]
    for source in (str(_folder(tmp_path, X, y)), NpySource(tmp_path / "set/X.npy", tmp_path / "set/y.npy")):
        net, history = _fit(stream(source, chunk_rows=100, buffer_chunks=10), validation_data=validation)
        assert _same(net, reference, 0.0)
        assert [r["val_loss"] for r in history.records] == [r["val_loss"] for r in ref_history.records]
    for data in (stream(parquet, target="label", chunk_rows=128, buffer_chunks=8), stream(chunks, buffer_chunks=4)):
        assert _same(_fit(data, validation_data=validation)[0], reference, 0.0)
    assert not _same(
        _fit(stream(chunks, chunk_rows=250, buffer_chunks=2))[0], reference, 1e-3
    )  # a smaller buffer: other batches


def _plan_order(rows, chunk, chunks, batch, seed, epochs):
    """The rows streamed training visits, epoch by epoch, drawn as ``fit`` draws them."""
    rng = np.random.default_rng(seed)
    return [
        np.concatenate([b.ids[b.order] for b in epoch_plan(rows, chunk, chunks, batch, rng)]) for _ in range(epochs)
    ]


def _in_memory_on_plan(X, y, orders):
    """``fit`` in memory on the plan's rows, one epoch at a time, unshuffled: the streamed run's reference."""
    net, history, optimizer = MLP([X.shape[1], 8, 3], dtype="float64", seed=0), History(), Adam(lr=0.01)
    for epoch, rows in enumerate(orders, start=1):
        fit(net, X[rows], y[rows], epochs=epoch, batch_size=32, optimizer=optimizer, shuffle=False, history=history)
    return net


def test_a_set_four_times_the_memory_limit_trains_as_in_memory_under_the_limit(tmp_path):
    X, y = _data(n=60_000, features=5)  # 60,000 rows x 24 bytes (with the label) = 1.4 MB on disk
    folder = _folder(tmp_path, X, y)
    data = stream(str(folder), chunk_rows=250, buffer_chunks=2)
    buffers = sum(stream_estimate(data, 8).parts.values())  # the stream's own bytes: two buffers and a chunk
    ahead = ahead_bytes(5, 3, 8, 32, data.buffer_rows)  # and a buffer's batches made ahead (xpnet.batches)
    assert X.nbytes + y.nbytes >= 4 * (buffers + ahead)
    fit(MLP([5, 8, 3], dtype="float64"), stream([(X[:200], y[:200])]), None, epochs=1)  # what a fit imports
    net = MLP([5, 8, 3], dtype="float64", seed=0)
    tracemalloc.start()
    try:
        fit(net, data, None, epochs=2, batch_size=32, optimizer=Adam(lr=0.01), seed=3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < (X.nbytes + y.nbytes) / 4, peak
    assert _same(net, _in_memory_on_plan(X, y, _plan_order(len(X), 250, 2, 32, 3, 2)))


def test_numpy_steps_train_on_reused_blocks_as_on_fresh_ones(tmp_path, monkeypatch):
    """On NumPy the steps read the buffer's block in place; the reader fills a block again once its
    buffer is trained (no fresh 100 MB of page faults a buffer): the numbers stay those of fresh blocks."""
    from xpnet import streaming

    X, y = _data(n=6_000, features=5)
    data = stream(str(_folder(tmp_path, X, y)), chunk_rows=250, buffer_chunks=2)  # 12 buffers an epoch
    blocks, made = [], streaming._Reader._empty

    def spied(reader, shape, dtype):
        block = made(reader, shape, dtype)
        blocks.append(block if block.base is None else block.base)
        return block

    def trained(**options):
        net = MLP([5, 8, 3], seed=0)  # float32, as the file: the upload is the block itself
        fit(net, data, None, epochs=2, batch_size=32, optimizer=Adam(lr=0.01), seed=3, **options)
        return net

    monkeypatch.setattr(streaming._Reader, "_empty", spied)
    monkeypatch.setattr("xpnet.batches.AHEAD_BYTES", 4096)  # runs of two steps: the block is read to the end
    reused = trained()  # the blocks are kept alive in ``blocks``: distinct ids are distinct blocks
    assert len(blocks) == 24 and len({id(b) for b in blocks}) <= 4  # two at most an epoch (a reader each)
    monkeypatch.setattr(streaming._Reader, "recycle", lambda reader, host, trained: None)
    blocks.clear()
    fresh = trained()
    assert len({id(b) for b in blocks}) == 24  # the reference: a fresh block a buffer
    assert _same(reused, fresh, 0.0)
    assert not _same(reused, MLP([5, 8, 3], seed=0), 1e-3)  # it trained


def test_the_cli_trains_a_set_four_times_its_memory_limit(tmp_path):
    X, y = _data(n=420_000, features=40)  # 69 MB on disk
    folder = _folder(tmp_path, X, y)
    warm = _folder(tmp_path, X[:300], y[:300], "warm")
    args = ["train", "--epochs", "1", "--layers", "8", "--batch-size", "64", "--chunk-rows", "1000",
            "--shuffle-buffer", "2", "--val-split", "0.01", "--memory-limit", "16M", "--dtype", "float64"]  # fmt: skip
    # A run on a small set first imports what a run imports: the traced peak is then the big run's own memory.
    # Resident memory too: its high-water mark reset after the small run (Linux's clear_refs), the big
    # run's growth above the resident memory then; the map's pages are handed back as they are copied.
    code = (
        "import sys, tracemalloc; from xpnet.cli import main; "
        f"main({args!r} + ['--dataset', {str(warm)!r}]); "
        "status = lambda key: int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith(key))); "
        "open('/proc/self/clear_refs', 'w').write('5'); before = status('VmRSS'); "
        "tracemalloc.start(); code = main(sys.argv[1:]); "
        "print('grew', (status('VmHWM') - before) * 1024, 'peak', tracemalloc.get_traced_memory()[1]); sys.exit(code)"
    )
    done = _run([sys.executable, "-c", code, *args, "--dataset", str(folder), "--out", str(tmp_path / "m.safetensors")])
    assert done.returncode == 0, done.stderr
    grew, peak = (int(word) for word in done.stdout.split("grew")[-1].split()[::2])
    assert X.nbytes + y.nbytes >= 4 * 16 * 2**20
    assert peak < 16 * 2**20 and grew < 16 * 2**20, (peak, grew)
    assert (tmp_path / "m.safetensors").exists()


def test_resume_mid_epoch_continues_exactly(tmp_path):
    X, y = _data(n=1000)
    folder = _folder(tmp_path, X, y)
    whole, _ = _fit(stream(str(folder), chunk_rows=100, buffer_chunks=3), epochs=3)
    polls = iter(range(10**6))
    stop_at = 44  # epoch 2's step 13: in its second buffer (steps 9-17), whose carried rows are read again
    net = MLP([5, 8, 3], dtype="float64", seed=0)
    optimizer = Adam(lr=0.01)
    options = {"epochs": 3, "batch_size": 32, "optimizer": optimizer, "seed": 3}
    data = stream(str(folder), chunk_rows=100, buffer_chunks=3)
    history = fit(net, data, None, should_stop=lambda: next(polls) == stop_at, **options)
    assert (
        history.interrupted and history.epoch == 1 and history.batch == stop_at - 32 + 1
    )  # 31 steps and one poll at its end an epoch
    state = History.from_resume_state(history.resume_state())  # through JSON's shape, as a checkpoint keeps it
    fit(net, stream(str(folder), chunk_rows=100, buffer_chunks=3), None, history=state, **options)
    assert _same(net, whole, 0.0)


def test_cli_resume_from_a_checkpoint_continues_exactly(tmp_path):
    X, y = _data(n=1200)
    parquet = _parquet(tmp_path / "d.parquet", X, y, row_group=200)
    args = ["train", "--dataset", str(parquet), "--target", "label", "--layers", "8", "--batch-size", "32",
            "--chunk-rows", "200", "--shuffle-buffer", "2", "--dtype", "float64", "--optimizer", "adam",
            "--schedule", "constant"]  # fmt: skip
    whole = _cli([*args, "--epochs", "3", "--out", str(tmp_path / "whole.safetensors")])
    assert whole.returncode == 0, whole.stderr
    first = _cli([*args, "--epochs", "1", "--out", str(tmp_path / "part.safetensors")])
    assert first.returncode == 0, first.stderr
    ckpt = tmp_path / "part.ckpt.safetensors"
    resumed = _cli(["train", "--resume", str(ckpt), "--epochs", "3", "--out", str(tmp_path / "part.safetensors")])
    assert resumed.returncode == 0, resumed.stderr
    from xpnet.checkpoint import ModelFile

    a = ModelFile(tmp_path / "whole.safetensors").build()
    b = ModelFile(tmp_path / "part.safetensors").build()
    assert _same(a, b, 0.0)


def test_standard_scaling_in_one_pass_matches_two_passes():
    X, y = _data(n=3000, features=4)
    X = X * np.float32(1000) + np.float32(5e4)  # far from zero: a naive one-pass sum of squares would lose it
    one = fit_scaling(
        "standard", Streamed(ChunkSource([(X[i : i + 700], y[i : i + 700]) for i in range(0, 3000, 700)]))
    )
    two = Scaling.fit("standard", X)
    assert np.allclose(one.shift, two.shift, rtol=1e-6) and np.allclose(one.scale, two.scale, rtol=1e-5)
    unit = fit_scaling("unit", Streamed(ChunkSource([(X[:1500], y[:1500]), (X[1500:], y[1500:])]), chunk_rows=600))
    assert unit == Scaling.fit("unit", X)


def _audited_fit(X, y=None):
    """The device operations, host reads and uploads of a 2-epoch ``fit`` on PyTorch (after one to warm up)."""
    for _ in range(2):
        net = MLP([12, 10, 4], backend="torch", seed=0)
        with net.backend.audit() as audit:
            fit(net, X, y, epochs=2, batch_size=8, optimizer=SGD(lr=0.1), seed=1, compile=False)
    return audit


@NO_TORCH
def test_a_streamed_step_asks_the_device_for_what_a_step_in_memory_does():
    # A buffer's batches are made a run of steps at a time (xpnet.batches), as in memory: one buffer
    # holding the set asks for exactly in-memory fit's operations; each further buffer adds the making
    # of a run (about 30), not a dozen per step (before: 20 more per step, 3,144 here); one read an epoch.
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(640, 12)).astype(np.float32), rng.integers(0, 4, 640)
    memory = _audited_fit(X, y)
    chunks = [(X[i : i + 160], y[i : i + 160]) for i in range(0, 640, 160)]
    whole = _audited_fit(stream(chunks, chunk_rows=640, buffer_chunks=1, prefetch=False))
    four = _audited_fit(stream(chunks, chunk_rows=160, buffer_chunks=1, prefetch=False))  # 4 buffers an epoch
    assert memory.operations > 1000 and memory.violations == whole.violations == four.violations == []
    assert whole.operations == memory.operations
    assert four.operations - memory.operations <= 32 * 4 * 2, (four.operations, memory.operations)
    assert memory.reads == whole.reads == four.reads == 2
    assert (whole.uploads, four.uploads) == (3 * 2, 3 * 4 * 2)  # each buffer's inputs, targets and order


def test_prefetch_reads_ahead_by_one_and_hands_errors_over():
    alive, most = [0], [0]
    lock = threading.Lock()

    def produce(item):
        with lock:
            alive[0] += 1
            most[0] = max(most[0], alive[0])
        if item == 5:
            raise DataError("item 5 is bad")
        return item

    got = []
    with pytest.raises(DataError, match="item 5"), Prefetcher(range(10), produce) as feed:
        for item in feed:
            got.append(item)
            with lock:
                alive[0] -= 1
    assert got == [0, 1, 2, 3, 4] and most[0] <= 2
    feed = Prefetcher(iter(range(100)), lambda item: item)
    assert next(iter(feed)) == 0
    feed.close()  # a stop: the reader ends without reading the rest


def test_load_buffer_reads_a_ranks_share_and_carries_the_rest(tmp_path):
    X, y = _data(n=700)
    source = NpySource(_folder(tmp_path, X, y) / "X.npy", tmp_path / "set/y.npy")
    first, second = list(epoch_plan(700, 100, 3, 32, np.random.default_rng(2)))[:2]
    _, _, kept = load_buffer(source, first, np.arange(first.ids.size), None, False)
    mine = np.union1d(second.order.reshape(-1, 32)[:, :16].ravel(), second.rest)
    Xs, ys, _ = load_buffer(source, second, mine, kept, True)
    assert np.array_equal(Xs, X[second.ids[mine]]) and np.array_equal(ys, y[second.ids[mine]])
    assert Xs.shape[0] < second.ids.size


def _run(command, **kw):
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, **kw)


def _cli(args):
    return _run([sys.executable, "-m", "xpnet", *args, "--no-progress"])


def _test_line(output: str) -> str:
    """A run's ``test  loss ...`` line without its seconds."""
    return next(line for line in output.splitlines() if line.startswith("test ")).rsplit("(", 1)[0]


def _broken_sources(tmp_path):
    """``(name, CLI arguments, what the error must name)`` for each kind of bad source."""
    X, y = _data(n=400)
    bad_header = _folder(tmp_path, X, y, "header")
    (bad_header / "X.npy").write_bytes(b"\x93NUMPY\x01\x00garbage" + b"\x00" * 100)
    mismatch = _folder(tmp_path, X, y[:399], "mismatch")
    truncated_npy = _folder(tmp_path, X, y, "truncated")
    data = (truncated_npy / "X.npy").read_bytes()
    (truncated_npy / "X.npy").write_bytes(data[: len(data) // 2])
    parquet = _parquet(tmp_path / "good.parquet", X, y, row_group=100)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(parquet.read_bytes()[:-300])
    nan = X.copy()
    nan[123, 2] = np.nan
    with_nan = _parquet(tmp_path / "nan.parquet", nan, y, row_group=100)
    return [
        ("bad-npy-header", ["--dataset", str(bad_header)], [str(bad_header / "X.npy")]),
        ("row-mismatch", ["--dataset", str(mismatch)], ["400 rows", "399"]),
        ("truncated-npy", ["--dataset", str(truncated_npy)], [str(truncated_npy / "X.npy"), "truncated"]),
        ("no-target-column", ["--dataset", str(parquet), "--target", "lable"], [str(parquet), "'lable'"]),
        ("truncated-parquet", ["--dataset", str(cut), "--target", "label"], [str(cut), "truncated"]),
        ("nan-row", ["--dataset", str(with_nan), "--target", "label"], [str(with_nan), "rows", "(23, 2)"]),
    ]


def test_broken_sources_end_with_an_error_naming_the_file_and_no_model(tmp_path):
    for name, args, words in _broken_sources(tmp_path):
        out = tmp_path / f"{name}.safetensors"
        done = _cli(["train", *args, "--epochs", "1", "--layers", "4", "--chunk-rows", "100", "--out", str(out)])
        assert done.returncode == 2, (name, done.stderr)
        assert done.stderr.startswith("xpnet: error:"), (name, done.stderr)
        for word in words:
            assert word in done.stderr, (name, word, done.stderr)
        assert not out.exists() and not out.with_name(f"{name}.ckpt.safetensors").exists()


def test_sources_refuse_what_they_cannot_stream(tmp_path):
    X, y = _data(n=50)
    with pytest.raises(ConfigError, match="re-iterable"):
        ChunkSource(iter([(X, y)]))
    with pytest.raises(ConfigError, match="--target"):
        open_source(_parquet(tmp_path / "a.parquet", X, y))
    with pytest.raises(ConfigError, match="no y"):
        fit(MLP([5, 3]), stream([(X, y)]), y)
    with pytest.raises(DataError, match="chunk 1 has 4 features"):
        ChunkSource([(X, y), (X[:, :4], y)])


def test_two_ranks_stream_as_one_process_trains(tmp_path):
    mpi = pytest.importorskip("test_mpi")
    if not mpi.HAVE_MPI:
        pytest.skip('needs mpi4py and mpiexec (pip install "xpnet[mpi]")')
    X, y = _data(n=1200)
    y[700] = 4  # the largest label, in rank 1's share of the training rows (0..600 is rank 0's)
    folder = _folder(tmp_path, X, y)
    args = ["train", "--dataset", str(folder), "--layers", "8", "--batch-size", "32", "--chunk-rows", "200",
            "--shuffle-buffer", "2", "--dtype", "float64", "--epochs", "2", "--schedule", "constant",
            "--scaling", "standard", "--no-progress"]  # fmt: skip
    two = mpi.mpiexec(2, "-m", "xpnet", *args, "--distributed", "--out", tmp_path / "two.safetensors", cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    one = _cli([*args, "--out", str(tmp_path / "one.safetensors")])
    assert one.returncode == 0, one.stderr
    from xpnet.checkpoint import ModelFile

    nets = [ModelFile(tmp_path / f"{name}.safetensors").build() for name in ("one", "two")]
    assert nets[0].num_outputs == nets[1].num_outputs == 5  # classes 0..4, counted from both ranks' shares
    for part in ("shift", "scale"):  # the standard scaling, each rank's moments merged
        np.testing.assert_allclose(getattr(nets[1].scaling, part), getattr(nets[0].scaling, part), rtol=1e-6)
    assert _same(*nets, 1e-10)


def _one_process_passes(folder: Path, chunk_rows: int) -> dict:
    data = stream(str(folder), chunk_rows=chunk_rows)
    moments = standard_moments(data)
    passes = {"moments": moments, "largest_label": largest_label(data.source, chunk_rows)}
    return {**passes, **{kind: fit_scaling(kind, data) for kind in ("standard", "unit", "symmetric")}}


@pytest.mark.parametrize("chunk_rows", [100, 5000])  # 12 chunks, 6 a rank; one chunk, so rank 1 has none
def test_two_ranks_share_the_passes_before_training_and_agree_with_one_process(tmp_path, chunk_rows):
    mpi = pytest.importorskip("test_mpi")
    if not mpi.HAVE_MPI:
        pytest.skip('needs mpi4py and mpiexec (pip install "xpnet[mpi]")')
    X, y = _data(n=1200)
    X = X * np.float32(1000) + np.float32(5e4)  # far from zero: the moments' merge must be the careful one
    y[1150] = 7  # the largest label in rank 1's share
    folder = _folder(tmp_path, X, y)
    done = mpi.mpiexec(2, mpi.JOB, "stream-passes", tmp_path, folder, chunk_rows, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    one = _one_process_passes(folder, chunk_rows)
    exact = X.astype(np.float64)  # the two-pass moments, for the one process's merge
    np.testing.assert_allclose(one["moments"].mean, exact.mean(axis=0), rtol=1e-12, atol=0)
    np.testing.assert_allclose(one["moments"].squares, ((exact - exact.mean(axis=0)) ** 2).sum(axis=0), rtol=1e-10)
    chunks = [(a, b) for a, b in zip(range(0, 1200, chunk_rows), [*range(chunk_rows, 1200, chunk_rows), 1200])]
    read = np.zeros(1200, dtype=int)
    for rank, (record, arrays) in enumerate(mpi._rank_results(tmp_path, 2)):
        assert record["largest_label"] == one["largest_label"] == 7
        assert record["count"] == one["moments"].count == 1200
        np.testing.assert_allclose(arrays["mean"], one["moments"].mean, rtol=1e-12, atol=0)
        np.testing.assert_allclose(arrays["squares"], one["moments"].squares, rtol=1e-12, atol=0)
        for kind in ("unit", "symmetric"):  # min and max are exact
            assert record[kind] == [float(one[kind].shift), float(one[kind].scale)], kind
        np.testing.assert_allclose(record["standard"], [one["standard"].shift, one["standard"].scale], rtol=1e-6)
        part = chunks[rank_part(len(chunks), SimpleNamespace(rank=rank, size=2))]  # this rank's share
        low, high = (part[0][0], part[-1][1]) if part else (0, 0)
        assert all(low <= start < stop <= high for start, stop in record["reads"]), (rank, record["reads"])
        for start, stop in record["reads"]:
            read[start:stop] += 1
    assert (read > 0).all()  # the shares cover the rows: every row was read by a rank


def test_the_largest_label_of_a_row_range_reads_that_range(tmp_path):
    X, y = _data(n=1000)
    y[[5, 420, 999]] = [9, 8, 7]
    parquet = open_source(_parquet(tmp_path / "d.parquet", X, y, row_group=300), "label")
    npy = open_source(_folder(tmp_path, X, y))
    for start, stop in [(0, 1000), (6, 1000), (299, 421), (300, 420), (421, 999), (0, 5), (500, 500)]:
        expected = int(y[start:stop].max()) if stop > start else 0
        assert parquet.largest_label(start, stop) == npy.largest_label(start, stop) == expected, (start, stop)


class _SecondOfTwo(Communicator):
    """Rank 1 of a job of two, whose rank 0 found what this rank found (no MPI needed)."""

    rank, size = 1, 2

    def allgather_json(self, value):
        return [value, value]


def test_a_train_runs_passes_read_only_the_ranks_share_of_the_training_rows(tmp_path, monkeypatch):
    from mpi_job import RecordedReads

    X, y = _data(n=1200)
    opened = []

    def recorded(*args):
        opened.append(RecordedReads(open_source(*args)))
        return opened[-1]

    monkeypatch.setattr("xpnet.stream_run.open_source", recorded)
    settings = {**BASE_SETTINGS, "dataset": str(_folder(tmp_path, X, y)), "chunk_rows": 100, "val_split": 0.1}
    data, _ = load_streamed(settings, "classification", _SecondOfTwo())
    data.fit_scaling("standard")
    # 1,080 training rows in 11 chunks: rank 0 reads 0..600, rank 1 600..1080; the held-out 1080..1200 by both.
    assert data.class_names == ["0", "1", "2"]
    assert sorted(opened[0].reads)[0][0] == 600 and max(stop for _, stop in opened[0].reads) == 1200
    assert [1080, 1200] in opened[0].reads


def test_the_cli_trains_on_a_pandas_parquet_file_and_an_npy_pair(tmp_path):
    pandas = pytest.importorskip("pandas")
    X, y = _data(n=600)
    frame = pandas.DataFrame(X, columns=[f"feature {j}" for j in range(X.shape[1])]).assign(label=y)
    frame.to_parquet(tmp_path / "frame.parquet")  # pandas' own writer: one row group, an index column
    folder = _folder(tmp_path, X, y)
    for data in (["--dataset", str(tmp_path / "frame.parquet"), "--target", "label"],
                 ["--dataset", str(folder / "X.npy"), "--target", str(folder / "y.npy")]):  # fmt: skip
        out = tmp_path / "m.safetensors"
        done = _cli(["train", *data, "--epochs", "1", "--layers", "4", "--chunk-rows", "128", "--out", str(out)])
        assert done.returncode == 0 and out.exists(), done.stderr
        assert "MLP(5->4" in done.stdout and "540 training, 60 validation" in done.stdout
        out.unlink()


def test_a_parquet_file_of_large_row_groups_is_read_front_to_back_once_an_epoch(tmp_path, monkeypatch):
    X, y = _data(n=1000)
    parquet = _parquet(tmp_path / "big-groups.parquet", X, y, row_group=500)
    monkeypatch.setattr("xpnet.data.sources.RANDOM_ACCESS_GROUP_ROWS", 499)
    data = stream(str(parquet), target="label", chunk_rows=100, buffer_chunks=3)
    assert not data.source.random_access
    opened = []
    original = type(data.source)._open
    monkeypatch.setattr(type(data.source), "_open", lambda self, start: opened.append(start) or original(self, start))
    net, _ = _fit(data, epochs=2)
    # Row 0 read for its dtype, then each epoch's reads follow on from one another: one pass over the file.
    assert opened == [0, 0, 0]
    chunks = [(X[i : i + 100], y[i : i + 100]) for i in range(0, 1000, 100)]  # also read in order
    assert _same(net, _fit(stream(chunks, chunk_rows=100, buffer_chunks=3), epochs=2)[0], 0.0)


def test_a_validation_file_holds_the_validation_and_test_rows(tmp_path):
    X, y = _data(n=700)
    train, held = _folder(tmp_path, X[:600], y[:600], "train"), _folder(tmp_path, X[600:], y[600:], "held")
    out = tmp_path / "m.safetensors"
    args = ["train", "--dataset", str(train), "--val-data", str(held), "--epochs", "1", "--layers", "4"]
    done = _cli([*args, "--out", str(out)])
    assert done.returncode == 0 and out.exists(), done.stderr
    assert "600 training, 100 validation, 100 test samples" in done.stdout
    tested = _run(
        [sys.executable, "-m", "xpnet", "evaluate", str(out)]
    )  # the held-out rows again, as the model's settings name them
    assert tested.returncode == 0, tested.stderr
    assert _test_line(tested.stdout) == _test_line(done.stdout)
    other = _folder(tmp_path, X[600:, :4], y[600:], "narrow")
    done = _cli(["train", "--dataset", str(train), "--val-data", str(other), "--epochs", "1"])
    assert done.returncode == 2 and "--val-data" in done.stderr and "4 features" in done.stderr, done.stderr
    done = _cli(["train", "--dataset", "friedman1", "--target", "label", "--epochs", "1"])
    assert done.returncode == 2 and "is for datasets streamed from disk" in done.stderr, done.stderr
