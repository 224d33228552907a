"""The BLAS threads a process takes: its usable cores shared among the ranks on its node."""

from __future__ import annotations

import pytest

from xpnet.backend import TorchBackend, threads
from xpnet.cli import main
from xpnet.errors import ConfigError

threadpoolctl = pytest.importorskip("threadpoolctl")


@pytest.fixture
def clean_env(monkeypatch):
    """No thread variable of the user's or a launcher's: xpnet decides alone."""
    for name in (threads.THREADS_VARIABLE, *threads.BLAS_VARIABLES, *threads.LOCAL_SIZE_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def blas_restored():
    """Each BLAS's thread count put back after the test (``apply`` sets them process-wide)."""
    with threadpoolctl.ThreadpoolController().limit(limits=1, user_api="blas"):  # restores on exit
        yield


def _blas_threads() -> set[int]:
    """The thread counts of every BLAS loaded (NumPy's, and SciPy's where something loaded it)."""
    return {pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"}


def test_the_cores_are_divided_among_the_ranks_on_this_node(clean_env):
    clean_env.setattr(threads, "usable_cores", lambda: 8)
    assert threads.choose().threads == 8
    clean_env.setenv("MPI_LOCALNRANKS", "2")  # MPICH's Hydra
    assert threads.choose().threads == 4
    assert threads.choose(local_size=8).threads == 1  # MPI's shared-memory split, when known, first
    assert threads.choose(local_size=16).threads == 1  # never fewer than one
    assert "8 usable cores / 16 ranks on this node" in threads.choose(local_size=16).describe()


def test_threads_and_xpnet_threads_override_and_the_users_blas_variable_is_left_alone(clean_env):
    clean_env.setenv("OPENBLAS_NUM_THREADS", "3")
    assert threads.choose().threads is None
    assert "OPENBLAS_NUM_THREADS=3" in threads.choose().describe()
    clean_env.setenv("XPNET_THREADS", "2")
    assert threads.choose().threads == 2
    assert threads.choose(5).threads == 5
    assert "--threads 5" in threads.choose(5).describe()
    clean_env.setenv("XPNET_THREADS", "two")
    with pytest.raises(ConfigError, match="XPNET_THREADS"):
        threads.choose()


def test_apply_sets_the_blas_through_threadpoolctl_or_openblas_itself(clean_env, blas_restored):
    chosen = threads.apply(threads.ThreadChoice(1, "test"))
    assert _blas_threads() == {1}
    assert "set through threadpoolctl" in chosen.describe()
    clean_env.setattr(threads, "_threadpoolctl_limit", lambda n: None)  # as without threadpoolctl
    chosen = threads.apply(threads.ThreadChoice(2, "test"))
    assert _blas_threads() == {2}, chosen
    assert "set in OpenBLAS" in chosen.describe()


def test_apply_says_when_it_could_not(clean_env):
    clean_env.setattr(threads, "_threadpoolctl_limit", lambda n: None)
    clean_env.setattr(threads, "_openblas_limit", lambda n: None)
    assert "could not be set" in threads.apply(threads.ThreadChoice(1, "test")).describe()


def test_info_and_the_runs_first_line_say_the_threads(clean_env, blas_restored, tmp_path, capsys):
    clean_env.setattr(threads, "usable_cores", lambda: 6)
    clean_env.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "3")  # Open MPI
    assert main(["info"]) == 0
    assert "BLAS threads: 2 (6 usable cores / 3 ranks on this node)" in capsys.readouterr().out
    assert main(["info", "--threads", "1"]) == 0
    assert "BLAS threads: 1 (--threads 1)" in capsys.readouterr().out

    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", X=rng.standard_normal((60, 4)).astype(np.float32), y=rng.integers(0, 2, 60))
    args = ["train", "--dataset", str(tmp_path / "d.npz"), "--epochs", "1", "--out", str(tmp_path / "m.safetensors")]
    assert main([*args, "--threads", "1", "--no-progress"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("BLAS threads: 1 (--threads 1); set "), first
    assert _blas_threads() == {1}


def test_pytorchs_threads_follow_when_it_runs(clean_env, blas_restored):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        threads.apply(threads.ThreadChoice(1, "test"), TorchBackend)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
