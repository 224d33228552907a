"""evaluate, predict, export and MLP.predict never hold more than the memory limit (generated
models, data and limits, as tests/test_memory.py does for training): each finishes within the
limit or is refused with ``MemoryLimitError`` (``xpnet: error:``, exit 2) before it allocates."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_memory import MiB, _peak

from xpnet.cli import main
from xpnet.errors import MemoryLimitError
from xpnet.memory import ENV, limited
from xpnet.network import MLP

RUNS = settings(
    max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """Every command once first: the modules they import on first use are not their memory."""
    folder = tmp_path_factory.mktemp("warm")
    _files(folder, 8, 4, 20)
    for command in _commands(folder):
        _quiet(command)


def _files(folder, width: int, features: int, n: int) -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, features)).astype(np.float32)
    np.savez(folder / "d.npz", X=X, y=np.arange(n) % 3)
    MLP([features, width, 3], seed=0).save(folder / "m.safetensors", training={"dataset": str(folder / "d.npz")})


def _commands(folder) -> list[list[str]]:
    model, data = str(folder / "m.safetensors"), str(folder / "d.npz")
    return [
        ["evaluate", model],
        ["predict", model, data, "--out", str(folder / "p.csv")],
        ["export", model, "--onnx", str(folder / "m.onnx")],
    ]


def _quiet(argv) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        status = main(argv)
    if status == 2 and "memory limit" in err.getvalue():
        raise MemoryLimitError(err.getvalue())
    assert status == 0, err.getvalue()
    return status


@RUNS
@given(
    width=st.integers(8, 1024),
    features=st.integers(2, 512),
    n=st.integers(10, 4000),
    limit_mib=st.integers(5, 40),
    command=st.integers(0, 2),
)
def test_a_command_never_holds_more_than_the_limit(warm, tmp_path_factory, width, features, n, limit_mib, command):
    pytest.importorskip("onnx")
    folder = tmp_path_factory.mktemp("cmd")
    _files(folder, width, features, n)
    argv = _commands(folder)[command]
    _quiet(argv)  # once without a limit: what its first call imports and caches is not its memory
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV, f"{limit_mib}M")
        peak, refused = _peak(lambda: _quiet(argv))
    assert peak <= limit_mib * MiB, f"{argv[0]} held {peak / MiB:.1f} MiB under {limit_mib} MiB (refused: {refused})"


@RUNS
@given(
    n=st.integers(1, 60_000), features=st.integers(1, 300), outputs=st.integers(2, 300), limit_mib=st.integers(5, 40)
)
def test_mlp_predict_never_holds_more_than_the_limit(n, features, outputs, limit_mib):
    X = np.random.default_rng(0).standard_normal((n, features))  # float64, the caller's
    net = MLP([features, 16, outputs], seed=0)
    with limited(limit_mib * MiB):
        peak, refused = _peak(lambda: net.predict_proba(X))
    assert peak <= limit_mib * MiB, f"held {peak / MiB:.1f} MiB under {limit_mib} MiB (refused: {refused})"
