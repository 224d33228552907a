"""What a data-parallel job promises on the surfaces the adversarial sweep broke, each over generated
cases: the ranks agree on the backend and the device kind as on every setting; a rank started
without --distributed ends the whole job (it never trains alone while rank 0 waits); a second
SIGINT to one rank, at any moment after the first, ends the job with 130."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import HAVE_TORCH
from test_mpi import HAVE_MPI, TRAIN, _blobs_npz, _mpmd, _run, _xpnet_on_ranks, end_job, job_environment

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(not HAVE_MPI, reason='needs mpi4py and mpiexec (pip install "xpnet[mpi]")'),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _blobs_npz(tmp_path_factory.mktemp("promises") / "blobs.npz", n=1200)


OTHER_BACKENDS = [["--backend", "array-api-strict"], *([["--backend", "torch"]] if HAVE_TORCH else [])]


@pytest.mark.parametrize("rank_1", OTHER_BACKENDS, ids=lambda a: a[-1])
@pytest.mark.parametrize("rank_0", [[], ["--backend", "numpy"]], ids=["default", "numpy"])
def test_ranks_on_other_backends_are_refused_at_start_up(data, tmp_path, rank_0, rank_1):
    common = ["-m", "xpnet", *TRAIN, "--epochs", 1, "--out", tmp_path / "m.safetensors", "--dataset", data]
    done, _ = _run(_mpmd([*common, *rank_0], [*common, *rank_1]), tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"rank 1 has backend = {rank_1[-1]}, rank 0 backend = numpy" in done.stderr, done.stderr
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("undistributed", [0, 1])
@pytest.mark.parametrize("flag", [["--no-distributed"], []], ids=["no-distributed", "flag-left-out"])
def test_a_rank_without_distributed_ends_the_job(data, tmp_path, undistributed, flag):
    common = [*TRAIN, "--epochs", 1, "--dataset", data, "--quiet"]
    programs = [["-m", "xpnet", *common, "--out", tmp_path / f"rank{rank}.safetensors"] for rank in (0, 1)]
    programs[undistributed] = [a for a in programs[undistributed] if a != "--distributed"] + flag
    done, seconds = _run(_mpmd(*programs), tmp_path, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"xpnet: error: rank {undistributed}: this process is one of the 2 ranks" in done.stderr, done.stderr
    assert seconds < 30 and not list(tmp_path.glob("rank*.safetensors")), (seconds, done.stderr)


def _rank_pids(launcher: int) -> list[int]:
    """The Python ranks under ``mpiexec`` (its proxy's children), in start order."""

    def children(pid: int) -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat_text = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                if int(stat_text.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        return sorted(found)

    return sorted(pid for proxy in children(launcher) for pid in children(proxy))


@pytest.mark.parametrize("delay", [0.0, 0.03, 0.05, 0.15])
@pytest.mark.parametrize("rank", [0, 1])
def test_a_second_sigint_to_one_rank_ends_the_job_with_130(data, tmp_path, rank, delay):
    args = [*TRAIN, "--dataset", data, "--epochs", 50, "--out", tmp_path / "m.safetensors"]
    proc = subprocess.Popen(
        _xpnet_on_ranks(2, *args), cwd=tmp_path, env=job_environment(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        for line in proc.stdout:  # rank 0 prints each epoch: every rank is in the training loop
            if line.startswith("epoch"):
                break
        pid = _rank_pids(proc.pid)[rank]
        os.kill(pid, signal.SIGINT)
        time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):  # the job may have ended already: nothing to change
            os.kill(pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        end_job(proc)
    assert proc.returncode == 130, stderr
    assert "BAD TERMINATION" not in stderr and "Traceback" not in stderr, stderr
