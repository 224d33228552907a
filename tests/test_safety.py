"""Nothing lost, nothing run: divergence, interruption, crashes and bad data, end to end.

These tests drive ``python -m xpnet`` in a subprocess where the user would: a
diverging run exits 1 with advice and keeps its last good checkpoint; SIGINT or
SIGTERM mid-epoch leaves a checkpoint that ``--resume`` continues to the same
bits as a run never interrupted; bad data files end as ``xpnet: error:`` naming
the file; the same seed gives the same history and weights, run after run.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from xpnet.checkpoint import ModelFile, save_model
from xpnet.data import write_idx
from xpnet.errors import DivergenceError
from xpnet.network import MLP
from xpnet.optim import SGD, Adam
from xpnet.run import BASE_SETTINGS, checkpoint_path, run_training
from xpnet.safetensors import load_tensors
from xpnet.train import History, fit

ROOT = Path(__file__).resolve().parent.parent
TIMING = ("seconds", "samples_per_s")
#: Flags that pin every setting the default recipe would otherwise choose.
PINNED = [
    "--layers", "32", "--dropout", "0.2", "--optimizer", "adam", "--lr", "0.001", "--weight-decay", "0",
    "--schedule", "constant", "--label-smoothing", "0", "--batch-size", "4", "--val-split", "0.1",
    "--scaling", "standard", "--seed", "3",
]  # fmt: skip


def _xpnet(*args, cwd, **options) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "xpnet", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, **options
    )


def _popen(*args, cwd) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "xpnet", *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in TIMING} for record in records]


def _assert_same_model(a, b) -> None:
    """Two model files hold bit-identical weights and the same history, timings aside."""
    tensors_a, meta_a = load_tensors(a)
    tensors_b, meta_b = load_tensors(b)
    assert sorted(tensors_a) == sorted(tensors_b)
    for name in tensors_a:
        np.testing.assert_array_equal(tensors_a[name], tensors_b[name], err_msg=name)
    assert _without_timing(json.loads(meta_a["history"])) == _without_timing(json.loads(meta_b["history"]))


def _blobs_npz(path, n=1500, features=20, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, features)).astype(np.float32)
    np.savez(path, X=X, y=X[:, :3].argmax(axis=1))
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with a 1,500-sample dataset and one uninterrupted 6-epoch reference run."""
    folder = tmp_path_factory.mktemp("safety")
    _blobs_npz(folder / "blobs.npz")
    done = _xpnet("train", "--dataset", "blobs.npz", *PINNED, "--epochs", 6, "--out", "ref.safetensors", cwd=folder)
    assert done.returncode == 0, done.stderr
    return folder


# -- divergence ---------------------------------------------------------------------


def test_divergence_exits_1_with_advice(tmp_path):
    _blobs_npz(tmp_path / "d.npz", n=200, features=8)
    # A checkpoint left by an earlier run must not be passed off as this run's last good state.
    (tmp_path / "m.ckpt.safetensors").write_bytes(b"from an earlier run")
    args = ["--dataset", "d.npz", "--layers", "16", "--loss", "mse", "--activation", "identity", "--lr", "1e6"]
    done = _xpnet("train", *args, "--epochs", 5, "--batch-size", 8, "--out", "m.safetensors", "--quiet", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "xpnet: error: training diverged in epoch 1" in done.stderr
    assert "try a smaller learning rate (now 1e+06)" in done.stderr
    assert "last good checkpoint" not in done.stderr
    assert not (tmp_path / "m.safetensors").exists()


class _Exploding(SGD):
    """Plain SGD until step ``after``, then weights of NaN: a divergence at a known epoch."""

    def __init__(self, after=20, **options):
        super().__init__(**options)
        self.after = after

    def step(self, params, grads):
        super().step(params, grads)
        if self.steps > self.after:
            for p in params:
                p[...] = np.nan


def _settings(dataset, **changes) -> dict:
    settings = {**BASE_SETTINGS, "dataset": str(dataset), "layers": [8], "batch_size": 10, "val_split": 0.0}
    return {**settings, **changes}


def test_divergence_after_good_epochs_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import xpnet.run

    dataset = _blobs_npz(tmp_path / "d.npz", n=100, features=5)  # 80 training samples: 8 steps per epoch
    monkeypatch.setattr(xpnet.run, "build_optimizer", lambda settings: _Exploding.from_settings(settings))
    # Epochs 1 and 2 are good (16 steps); step 21, in epoch 3, turns the loss NaN.
    good = run_training(_settings(dataset, epochs=2), out=tmp_path / "good.safetensors")
    assert good["epochs"] == 2
    out = tmp_path / "m.safetensors"
    with pytest.raises(DivergenceError, match="diverged in epoch 3") as info:
        run_training(_settings(dataset, epochs=6), out=out)
    assert f"the last good checkpoint is {checkpoint_path(out)}" in str(info.value)
    saved = ModelFile(checkpoint_path(out))
    assert saved.checkpoint["state"]["epoch"] == 2
    net = saved.build()
    assert all(np.all(np.isfinite(p)) for p in net.params)
    reference = load_tensors(tmp_path / "good.safetensors")[0]
    for name, value in net.state_dict().items():
        np.testing.assert_array_equal(value, reference[name], err_msg=name)  # the weights of epoch 2, exactly


# -- interruption -------------------------------------------------------------------


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    """Poll until ``path`` exists (it appears whole: saves are atomic) or ``proc`` has ended."""
    deadline = time.monotonic() + 120
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    assert path.exists(), f"{path.name} never appeared"


#: Steps per epoch of the reference run: of 1,500 samples, 300 are the test split and 120 (val-split
#: 0.1) validation; the other 1,080 train in batches of 4.
STEPS = 1080 // 4


def _held_at(poll: int, *args, cwd: Path) -> tuple[subprocess.Popen, Path]:
    """``python -m xpnet`` (through tests/stop_at.py) that holds still at stop-flag poll ``poll``
    (an epoch polls ``STEPS + 1`` times) until a signal comes; and the file that says it is there."""
    marker = cwd / "held" / "marker"
    marker.parent.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(ROOT / "tests" / "stop_at.py"), str(poll), str(marker), *map(str, args)]
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, marker


def _signal_and_wait(proc: subprocess.Popen, signum, after: Path | None = None) -> str:
    """Send ``signum`` once ``after`` exists (at once without it); the process's stderr once it ended."""
    try:
        if after is not None:
            _wait_for(after, proc)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return stderr


def _assert_interrupted_and_resumes(workdir, out: Path, proc, stderr: str, signum) -> dict:
    """The run ended 128 + signum saying how to resume, left only its checkpoint, and resuming it
    ends bit-identical to the uninterrupted reference run. Returns the checkpoint's resume state."""
    ckpt = checkpoint_path(out)
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    assert f"resume with: python -m xpnet train --resume {ckpt} --out {out}" in stderr
    assert not out.exists()
    state = ModelFile(ckpt).checkpoint["state"]
    done = _xpnet("train", "--resume", ckpt, "--out", out, "--quiet", cwd=workdir)
    assert done.returncode == 0, done.stderr
    _assert_same_model(out, workdir / "ref.safetensors")
    return state


@pytest.mark.parametrize(
    ("poll", "where"),
    [(STEPS + 1 + 5, (1, 5)), (STEPS + 1, (1, 0))],
    ids=["mid-epoch", "epoch-end"],
)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_checkpoints_and_resume_matches_an_uninterrupted_run(workdir, tmp_path, signum, poll, where):
    # The process holds still at a known poll of its stop flag (after step 5 of epoch 2, or at
    # epoch 1's end) until the signal has come: where it stops is decided, not raced.
    out = tmp_path / "m.safetensors"
    args = ["train", "--dataset", workdir / "blobs.npz", *PINNED, "--epochs", 6, "--out", out]
    proc, marker = _held_at(poll, *args, cwd=tmp_path)
    stderr = _signal_and_wait(proc, signum, after=marker)
    state = _assert_interrupted_and_resumes(workdir, out, proc, stderr, signum)
    assert (state["epoch"], state["batch"]) == where, state
    assert bool(state["partial"]) == (where[1] > 0), state


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_at_any_moment_after_epoch_1_resumes_to_the_uninterrupted_run(workdir, tmp_path, signum):
    # The plain CLI, signalled once epoch 1's checkpoint exists: depending on the machine's load the
    # signal lands mid-epoch or at an epoch's end; either checkpoint must resume to the same bits.
    out = tmp_path / "m.safetensors"
    args = ["train", "--dataset", workdir / "blobs.npz", *PINNED, "--epochs", 6, "--out", out]
    proc = _popen(*args, cwd=tmp_path)
    stderr = _signal_and_wait(proc, signum, after=checkpoint_path(out))
    state = _assert_interrupted_and_resumes(workdir, out, proc, stderr, signum)
    assert 1 <= state["epoch"] < 6
    assert bool(state["partial"]) == (state["batch"] > 0), state  # mid-epoch or epoch-end, consistently


def _state_after_each_epoch(net, optimizer, saved):
    def on_epoch_end(history):
        best = [p.copy() for p in history.best_params] if history.best_params else None
        arrays = [p.copy() for p in optimizer.state_arrays()]  # updated in place by later steps
        saved.append((copy.deepcopy(history.resume_state()), [p.copy() for p in net.params], arrays, best))
        assert optimizer.steps == 12 * history.epoch  # 100 // 8 steps per epoch

    return on_epoch_end


def test_resuming_a_per_epoch_checkpoint_matches_an_uninterrupted_run():
    # What a crash (SIGKILL, power cut) leaves is the checkpoint written at the end of an epoch.
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((100, 5)).astype(np.float32), np.arange(100) % 3
    options = {"epochs": 3, "batch_size": 8, "seed": 2, "validation_data": (X[:20], y[:20])}
    reference = MLP([5, 8, 3], dropout=0.2, seed=1)
    fit(reference, X, y, optimizer=Adam(lr=0.01), **options)

    net, optimizer, saved = MLP([5, 8, 3], dropout=0.2, seed=1), Adam(lr=0.01), []
    fit(net, X, y, optimizer=optimizer, on_epoch_end=_state_after_each_epoch(net, optimizer, saved), **options)
    state, params, buffers, best = saved[0]
    resumed, optimizer = MLP([5, 8, 3], dropout=0.2, seed=1), Adam(lr=0.01)
    resumed.params = [p.copy() for p in params]
    optimizer.load_state_arrays(buffers, 12, resumed.params)
    fit(resumed, X, y, optimizer=optimizer, history=History.from_resume_state(state, best), **options)
    for mine, theirs in zip(resumed.params, reference.params):
        np.testing.assert_array_equal(mine, theirs)


# -- bad data through the CLI ---------------------------------------------------------


def _fashion(folder, *, n_train=20, labels=None):
    folder.mkdir()
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8))
    write_idx(folder / "train-labels-idx1-ubyte", np.arange(20, dtype=np.uint8) % 10 if labels is None else labels)
    write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (10, 28, 28), dtype=np.uint8))
    write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(10, dtype=np.uint8))
    return folder


def _truncated(folder):
    _fashion(folder)
    images = folder / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    return ["--dataset", "fashion-mnist", "--data-dir", folder], images.name


def _count_mismatch(folder):
    _fashion(folder, n_train=19)
    return ["--dataset", "fashion-mnist", "--data-dir", folder], "train-images-idx3-ubyte"


def _label_out_of_range(folder):
    _fashion(folder, labels=np.full(20, 10, dtype=np.uint8))
    return ["--dataset", "fashion-mnist", "--data-dir", folder], "train-labels-idx1-ubyte"


def _nan_in_npz(folder):
    folder.mkdir()
    X = np.ones((20, 3), np.float32)
    X[7, 1] = np.nan
    np.savez(folder / "nan.npz", X=X, y=np.arange(20) % 2)
    return ["--dataset", folder / "nan.npz"], "nan.npz"


@pytest.mark.parametrize("make", [_truncated, _count_mismatch, _label_out_of_range, _nan_in_npz])
def test_bad_data_files_exit_2_naming_the_file(tmp_path, make):
    args, name = make(tmp_path / "data")
    done = _xpnet("train", *args, "--layers", "4", "--epochs", 1, "--out", "m.safetensors", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("xpnet: error: ") and "Traceback" not in done.stderr
    assert name in done.stderr
    assert not (tmp_path / "m.safetensors").exists()


# -- determinism --------------------------------------------------------------------


def test_same_seed_same_history_and_weights_in_process():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((120, 6)).astype(np.float32), np.arange(120) % 3
    runs = []
    for _ in range(2):
        net = MLP([6, 16, 3], dropout=0.3, seed=4)
        history = fit(net, X, y, epochs=3, batch_size=8, optimizer=Adam(lr=0.01), validation_data=(X[:30], y[:30]))
        runs.append((_without_timing(history.records), net.state_dict()))
    assert runs[0][0] == runs[1][0]
    for name, value in runs[0][1].items():
        np.testing.assert_array_equal(value, runs[1][1][name], err_msg=name)


def test_same_seed_same_history_and_weights_from_the_cli(workdir, tmp_path):
    done = _xpnet("train", "--dataset", "blobs.npz", *PINNED, "--epochs", 6, "--out", tmp_path / "again.safetensors",
                  cwd=workdir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    _assert_same_model(tmp_path / "again.safetensors", workdir / "ref.safetensors")


def test_killed_training_leaves_a_loadable_checkpoint(workdir, tmp_path):
    # SIGKILL cannot be caught: killed at step 5 of epoch 3, the run leaves epoch 2's checkpoint, whole.
    out = tmp_path / "m.safetensors"
    args = ["train", "--dataset", workdir / "blobs.npz", *PINNED, "--epochs", 6, "--out", out]
    proc, marker = _held_at(2 * (STEPS + 1) + 5, *args, cwd=tmp_path)
    _signal_and_wait(proc, signal.SIGKILL, after=marker)
    assert proc.returncode == -signal.SIGKILL
    saved = ModelFile(checkpoint_path(out))
    assert (saved.checkpoint["state"]["epoch"], saved.checkpoint["state"]["batch"]) == (2, 0)
    done = _xpnet("train", "--resume", checkpoint_path(out), "--out", out, "--quiet", cwd=workdir)
    assert done.returncode == 0, done.stderr
    _assert_same_model(out, workdir / "ref.safetensors")


def test_save_model_is_atomic_against_a_failing_write(tmp_path, monkeypatch):
    # A write that fails halfway (disk full) keeps the previous file and reports the path.
    import xpnet.safetensors
    from xpnet.errors import XpnetError

    path = tmp_path / "m.safetensors"
    net = MLP([3, 4, 2])
    save_model(path, net)
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(xpnet.safetensors, "_LENGTH", _FailingPacker(full_disk))
    with pytest.raises(XpnetError, match="No space left on device"):
        save_model(path, MLP([3, 4, 2], seed=9))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


class _FailingPacker:
    """Stands in for the header-length packer: the write fails after the temporary file is open."""

    def __init__(self, fail):
        self.fail = fail

    def pack(self, *args):
        self.fail()
