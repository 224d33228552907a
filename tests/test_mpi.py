"""Real jobs of several ranks: ``mpiexec -n R python -m mpi4py ...`` launched from pytest.

Each rank runs with one BLAS thread, bound to its own core where there are enough of
them (more ranks than cores run oversubscribed, unbound). Every launch has a timeout,
so a hang fails the test instead of stalling CI. Skipped where mpi4py or mpiexec is
missing (``pip install "xpnet[mpi]"`` brings both).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import HAVE_TORCH
from mpi_job import CASES, train_case

from xpnet.checkpoint import ModelFile
from xpnet.safetensors import load_tensors

ROOT = Path(__file__).resolve().parent.parent
JOB = Path(__file__).with_name("mpi_job.py")


def _find_mpiexec() -> str | None:
    """The mpiexec beside this Python (the MPICH wheel's), else the first on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


MPIEXEC = _find_mpiexec()
HAVE_MPI = importlib.util.find_spec("mpi4py") is not None and MPIEXEC is not None
pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(not HAVE_MPI, reason='needs mpi4py and mpiexec (pip install "xpnet[mpi]")'),
]


def launch_command(ranks: int, *args) -> list[str]:
    """``mpiexec`` for ``ranks`` ranks of ``python -m mpi4py ARGS``, pinned one rank per core when they fit."""
    flags = ["-n", str(ranks)]
    open_mpi = "Open MPI" in subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True).stdout
    if ranks <= (os.cpu_count() or 1):
        flags += ["--bind-to", "core"]
    elif open_mpi:
        flags += ["--oversubscribe"]  # MPICH's Hydra oversubscribes unasked
    return [MPIEXEC, *flags, sys.executable, "-m", "mpi4py", *map(str, args)]


def job_environment(**extra) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        **extra,
    }


def mpiexec(ranks: int, *args, cwd, timeout: float = 90, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a job to its end; a job still running after ``timeout`` seconds is killed and fails the test."""
    proc = subprocess.Popen(
        launch_command(ranks, *args),
        cwd=cwd,
        env=env or job_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a timeout kills every rank with it
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"mpiexec -n {ranks} {' '.join(map(str, args))} hung for {timeout} s:\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def end_job(proc: subprocess.Popen) -> None:
    """Kill a job still running (its whole process group: every rank), so no test leaves ranks behind."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def _rank_results(folder: Path, ranks: int) -> list[tuple[dict, dict]]:
    results = []
    for rank in range(ranks):
        with np.load(folder / f"rank{rank}.npz") as arrays:
            results.append((json.loads((folder / f"rank{rank}.json").read_text()), dict(arrays)))
    return results


def _rank_arrays(rank: int, dtype) -> list[np.ndarray]:
    """mpi_job.py's per-rank arrays, made here on the host."""
    rng = np.random.default_rng(100 + rank)
    return [rng.standard_normal(shape).astype(dtype) for shape in [(4, 3), (4,), (2, 4), (2,)]]


# -- the communicator's collectives ---------------------------------------------------------------


def test_collectives_across_two_ranks(tmp_path):
    specs = ["numpy:", "array-api-strict:device1", *(["torch:cpu"] if HAVE_TORCH else [])]
    done = mpiexec(2, JOB, "collectives", tmp_path, *specs, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for spec in specs:
        _check_collectives(tmp_path / spec.partition(":")[0], spec.partition(":")[0])


def _check_collectives(folder: Path, backend: str) -> None:
    (first, first_arrays), (second, second_arrays) = _rank_results(folder, 2)
    mine, theirs = _rank_arrays(0, np.float64), _rank_arrays(1, np.float64)
    for i, (a, b) in enumerate(zip(mine, theirs)):
        # One allreduce of the flat buffer gave both ranks the same mean, bit for bit, step after step.
        assert np.array_equal(first_arrays[f"mean{i}"], (a + b) / 2), backend
        assert np.array_equal(second_arrays[f"mean{i}"], first_arrays[f"mean{i}"])
        assert np.array_equal(second_arrays[f"again{i}"], first_arrays[f"mean{i}"])
        # A broadcast gives every rank rank 0's arrays.
        assert np.array_equal(first_arrays[f"bcast{i}"], a) and np.array_equal(second_arrays[f"bcast{i}"], a)
    assert [first["size"], second["size"]] == [2, 2]
    assert [first["local_rank"], second["local_rank"]] == [0, 1]
    assert first["sum_host"] == second["sum_host"] == [0.1 + 0.2, 2.0]
    assert first["any_rank_1"] and second["any_rank_1"]
    assert not first["any_none"] and not second["any_none"]
    assert not first["all_but_rank_1"] and not second["all_but_rank_1"]
    assert first["gathered"] == second["gathered"] == [{"rank": 0, "text": ""}, {"rank": 1, "text": "é"}]
    staged = backend == "array-api-strict"  # device1 stands in for a GPU: host-staged, said once, by rank 0
    assert len(first["warnings"]) == staged and not second["warnings"]
    if staged:
        assert "through host memory" in first["warnings"][0] and "nvidia-nccl-cu12" in first["warnings"][0]


def test_nccl_communicator_across_two_ranks_with_the_recording_stand_in(tmp_path):
    """The NCCL path on real ranks: rank 0's unique id reaches rank 1 by MPI; the stand-in reduces by MPI."""
    done = mpiexec(2, JOB, "nccl-standin", tmp_path, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (first, first_arrays), (second, second_arrays) = _rank_results(tmp_path, 2)
    assert first["made"] == [[2, list(range(128)), 0]] and second["made"] == [[2, list(range(128)), 1]]
    assert first["calls"] == ["get_unique_id", "NcclCommunicator", "allReduce"]
    assert second["calls"] == ["NcclCommunicator", "allReduce"]  # rank 1 never makes an id of its own
    for i, (a, b) in enumerate(zip(_rank_arrays(0, np.float32), _rank_arrays(1, np.float32))):
        assert np.array_equal(first_arrays[f"mean{i}"], (a + b) / np.float32(2))
        assert np.array_equal(second_arrays[f"mean{i}"], first_arrays[f"mean{i}"])


# -- fit across ranks equals fit in one process --------------------------------------------------


def _overlapping_classes(n=240, n_val=60, features=12, classes=4, seed=0, spread=1.5) -> dict:
    """Four overlapping Gaussian classes: hard enough that the metrics move and early stopping acts."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, features))
    y = rng.integers(0, classes, n + n_val)
    X = centres[y] + spread * rng.standard_normal((n + n_val, features))
    weights = rng.uniform(0.0, 3.0, n + n_val)  # mpi_job.py's weighted case
    return {"X": X[:n], "y": y[:n], "X_val": X[n:], "y_val": y[n:], "w": weights[:n], "w_val": weights[n:]}


@pytest.fixture(scope="module")
def fit_data(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("mpi") / "classes.npz"
    data = _overlapping_classes()
    np.savez(path, **data)
    return path, data


@pytest.mark.parametrize("ranks", [2, 3], ids=["2-ranks", "3-ranks-oversubscribed"])
def test_ranks_train_as_one_process_would(tmp_path, fit_data, ranks):
    """R ranks x B/R against 1 process x B, 3 epochs: float64 weights within 1e-12 (SGD with momentum,
    Adam, AdamW with a schedule, dropout and label smoothing, sample and class weights), float32 within 1e-5, the same
    per-epoch metrics, the same early stop; and every rank's weights bit-identical to rank 0's."""
    path, data = fit_data
    done = mpiexec(ranks, JOB, "fit", tmp_path, path, *CASES, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for name in CASES:
        net, history = train_case(name, data)  # one process, no communicator: MLP.fit as ever
        results = _rank_results(tmp_path / name, ranks)
        tolerance = 1e-5 if name.endswith("f32") else 1e-12
        for key, expected in net.state_dict().items():
            for record, arrays in results:
                assert np.array_equal(arrays[key], results[0][1][key]), (name, key, record["rank"])
            assert np.max(np.abs(results[0][1][key] - expected)) <= tolerance, (name, key)
        _assert_same_records(results[0][0]["records"], history.records, tolerance, name)
        assert all(record["stopped_early"] == history.stopped_early for record, _ in results), name
        assert all(record["restored_best"] == history.restored_best for record, _ in results), name
    assert train_case("early-stopping-f64", data)[1].stopped_early  # so the collective stop was exercised


def _assert_same_records(records: list[dict], expected: list[dict], tolerance: float, name: str) -> None:
    assert [r["epoch"] for r in records] == [r["epoch"] for r in expected], name
    for record, reference in zip(records, expected):
        for key in ("loss", "val_loss", "lr", "accuracy", "val_accuracy"):
            assert record[key] == pytest.approx(reference[key], rel=tolerance, abs=tolerance), (name, key)


# -- the command line under mpiexec ---------------------------------------------------------------

#: Flags pinning a small run: dropout and Adam, so a resume must carry both RNG and optimizer state.
TRAIN = [
    "train", "--distributed", "--layers", "16", "--dropout", "0.2", "--optimizer", "adam", "--lr", "0.003",
    "--weight-decay", "0", "--schedule", "constant", "--label-smoothing", "0", "--batch-size", "4",
    "--val-split", "0.1", "--scaling", "standard", "--seed", "3",
]  # fmt: skip


def _xpnet_on_ranks(ranks: int, *args) -> list[str]:
    return launch_command(ranks, "-m", "xpnet", *args)


def _blobs_npz(path: Path, n: int = 6000, features: int = 8, classes: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    centres = 2 * rng.standard_normal((classes, features))
    y = rng.integers(0, classes, n)
    np.savez(path, X=(centres[y] + rng.standard_normal((n, features))).astype(np.float32), y=y)
    return path


@pytest.fixture(scope="module")
def cli_folder(tmp_path_factory) -> Path:
    """A dataset, and the model an uninterrupted 2-rank job trains on it in 3 epochs."""
    folder = tmp_path_factory.mktemp("cli")
    _blobs_npz(folder / "blobs.npz")
    done = mpiexec(2, "-m", "xpnet", *TRAIN, "--dataset", "blobs.npz", "--epochs", 3, "--out", "ref.safetensors",
                   "--quiet", cwd=folder)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return folder


def _same_weights(path: Path, reference: Path) -> None:
    mine, theirs = load_tensors(path)[0], load_tensors(reference)[0]
    assert set(mine) == set(theirs)
    for key in theirs:
        assert np.array_equal(mine[key], theirs[key]), key


#: Steps per epoch of ``cli_folder``'s runs: of 6,000 samples 1,200 are the test split and 480
#: (val-split 0.1) validation; the other 4,320 train in batches of 4.
STEPS = 4320 // 4
STOP_AT = Path(__file__).with_name("stop_at.py")


def test_sigint_to_one_rank_stops_every_rank_at_the_same_step_and_resume_ends_as_an_uninterrupted_job(
    cli_folder, tmp_path
):
    out = tmp_path / "m.safetensors"
    marker = tmp_path.parent / f"{tmp_path.name}-held"  # outside tmp_path, which must hold the checkpoint alone
    # Every rank holds still after step 5 of epoch 2 (stop-flag poll STEPS + 1 + 5, tests/stop_at.py);
    # rank 1 alone gets SIGINT there, then rank 0 goes on with no stop asked: the ranks must agree to
    # stop at that step (a stop on any rank is a stop for all), or rank 0 trains on alone and hangs.
    args = [STOP_AT, STEPS + 1 + 5, marker, *TRAIN, "--dataset", cli_folder / "blobs.npz", "--epochs", 3, "--out", out]
    proc = subprocess.Popen(
        launch_command(2, *args), cwd=tmp_path, env=job_environment(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        for rank in (0, 1):
            _wait_for(marker.with_name(f"{marker.name}.rank{rank}"), proc)
        os.kill(int(marker.with_name(f"{marker.name}.rank1").read_text()), signal.SIGINT)
        marker.with_name(f"{marker.name}.go").touch()
        _, stderr = proc.communicate(timeout=60)
    finally:
        end_job(proc)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Abort" not in stderr, stderr
    checkpoint = tmp_path / "m.ckpt.safetensors"
    assert f"resume with: mpiexec -n 2 python -m mpi4py -m xpnet train --distributed --resume {checkpoint}" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt.safetensors"]  # one file, from rank 0
    state = ModelFile(checkpoint).checkpoint["state"]
    assert (state["epoch"], state["batch"]) == (1, 5) and state["partial"], state  # stopped mid-epoch 2
    done = mpiexec(2, "-m", "xpnet", *TRAIN, "--resume", checkpoint, "--out", out, "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    _same_weights(out, cli_folder / "ref.safetensors")


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    assert path.exists(), f"{path.name} never appeared"


def _mpmd(*programs: list) -> list[str]:
    """One mpiexec running a different command line on each rank (MPMD): rank i runs programs[i]."""
    command = [MPIEXEC]
    for i, args in enumerate(programs):
        command += [":"] if i else []
        command += ["-n", "1", sys.executable, "-m", "mpi4py", *map(str, args)]
    return command


def _run(command: list[str], cwd: Path, timeout: float = 90) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=cwd, env=job_environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"the job hung for {timeout} s:\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr), time.monotonic() - started


def test_a_rank_whose_data_file_is_unreadable_ends_the_job_naming_itself(cli_folder, tmp_path):
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip file")
    common = [*TRAIN, "--epochs", 3, "--out", tmp_path / "m.safetensors"]
    good = ["-m", "xpnet", *common, "--dataset", cli_folder / "blobs.npz"]
    broken = ["-m", "xpnet", *common, "--dataset", tmp_path / "broken.npz"]
    done, seconds = _run(_mpmd(good, broken), tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"xpnet: error: rank 1: {tmp_path / 'broken.npz'}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert seconds < 30, seconds  # rank 0, waiting at its first collective, was ended with the job
    assert not (tmp_path / "m.safetensors").exists()


def test_an_exception_on_one_rank_mid_epoch_ends_the_job_naming_rank_and_cause(cli_folder, tmp_path):
    args = [*TRAIN, "--dataset", cli_folder / "blobs.npz", "--epochs", 3, "--out", tmp_path / "m.safetensors"]
    done, seconds = _run(launch_command(2, JOB, "fail", tmp_path, 1, 50, *args), tmp_path)
    assert done.returncode == 1, done.stderr
    assert "xpnet: error: rank 1: RuntimeError: injected failure at step 50" in done.stderr, done.stderr
    assert seconds < 30, seconds  # rank 0 was waiting in the allreduce of step 51
    assert not (tmp_path / "m.safetensors").exists()


def test_a_nan_loss_on_one_rank_stops_every_rank_at_the_same_epoch(cli_folder, tmp_path):
    out = tmp_path / "m.safetensors"
    args = [*TRAIN, "--dataset", cli_folder / "blobs.npz", "--epochs", 3, "--out", out]
    done, _ = _run(launch_command(2, JOB, "nan", tmp_path, 1, 1500, *args), tmp_path)  # 1080 steps an epoch
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("xpnet: error: training diverged in epoch 2: the loss became nan") == 1, done.stderr
    assert "Abort" not in done.stderr and "Traceback" not in done.stderr  # decided together, ended cleanly
    assert f"the last good checkpoint is {out.with_name('m.ckpt.safetensors')}" in done.stderr
    assert ModelFile(out.with_name("m.ckpt.safetensors")).checkpoint["state"]["epoch"] == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("rank_1", "message"),
    [
        (["--lr", "0.004"], "xpnet: error: rank 1 has optimizer base_lr = 0.004, rank 0 optimizer base_lr = 0.003"),
        (["--dataset", "small.npz"], "xpnet: error: rank 1 has X shaped [1728, 8], rank 0 X shaped [4320, 8]"),
    ],
    ids=["settings", "data"],
)
def test_ranks_started_differently_are_refused_at_start_up(cli_folder, tmp_path, rank_1, message):
    _blobs_npz(tmp_path / "small.npz", n=2400)
    common = ["-m", "xpnet", *TRAIN, "--epochs", 1, "--out", tmp_path / "m.safetensors"]
    first = [*common, "--dataset", cli_folder / "blobs.npz"]
    done, _ = _run(_mpmd(first, [*first, *rank_1]), tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr, done.stderr
    assert done.stderr.count("xpnet: error:") == 1 and "Abort" not in done.stderr  # agreed: one message, clean end


def test_distributed_without_mpiexec_trains_as_without_it(cli_folder, tmp_path):
    args = [*TRAIN, "--dataset", cli_folder / "blobs.npz", "--epochs", 1, "--quiet"]
    for name, extra in (("plain", ["--no-distributed"]), ("one-rank", [])):
        done = subprocess.run(
            [sys.executable, "-m", "xpnet", *map(str, args), *extra, "--out", tmp_path / f"{name}.safetensors"],
            cwd=tmp_path, env=job_environment(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    _same_weights(tmp_path / "one-rank.safetensors", tmp_path / "plain.safetensors")


def test_the_scaling_benchmark_runs_and_counts_one_allreduce_per_step(tmp_path):
    done = subprocess.run(
        [sys.executable, ROOT / "scripts" / "bench_ranks.py", "--ranks", "1,2", "--batch-sizes", "8,32",
         "--steps", "3", "--model", "--json", tmp_path / "ranks.json"],
        cwd=tmp_path, env=job_environment(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "| 2 | 32 | 16 |" in done.stdout and "one bare allreduce of the gradient buffer" in done.stdout
    results = json.loads((tmp_path / "ranks.json").read_text())["results"]
    assert [row["allreduces"] for row in results["2"]["rows"]] == [3, 3]  # one per step of the timed epoch
    assert [row["allreduces"] for row in results["1"]["rows"]] == [0, 0]  # one process: none at all
    assert all(row["gradient_bytes"] == 437_544 for row in results["2"]["rows"])


def test_readmes_launch_shares_the_cores_among_the_ranks_without_any_flag(cli_folder, tmp_path):
    """README's command, unbound and with no thread variable: each rank takes its share of the cores."""
    env = {key: value for key, value in job_environment().items() if not key.endswith("_NUM_THREADS")}
    command = [MPIEXEC, "-n", "2", sys.executable, "-m", "mpi4py", "-m", "xpnet", *map(str, TRAIN)]
    command += ["--dataset", str(cli_folder / "blobs.npz"), "--epochs", "1", "--out", str(tmp_path / "m.safetensors")]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cores = len(os.sched_getaffinity(0))
    first = done.stdout.splitlines()[0]
    expected = f"BLAS threads: {max(1, cores // 2)} ({cores} usable cores / 2 ranks on this node); set"
    assert first.startswith(expected), first
