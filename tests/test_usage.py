"""Usage errors come first: a bad XPNET_MEMORY_LIMIT or --device ends every command as
``xpnet: error:`` with exit status 2, before any work, never as selfcheck FAIL lines and never
blamed on a data file (generated limits x every command)."""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from xpnet import MLP
from xpnet.cli import main
from xpnet.data.tabular import read_npz_arrays
from xpnet.errors import ConfigError
from xpnet.memory import parse_size

BAD_LIMITS = ["abc", "0", "-1", "101%", "0%", "nan", "inf", "1e3", "8X", "%", " ", "-5G", "0.0001"]
#: Sizes parse_size accepts: digits, an optional fraction, a unit, an optional B or iB.
_GOOD = st.builds(
    lambda n, unit, suffix: f"{n}{unit}{suffix}" if unit else f"{max(n, 1)}",
    st.integers(1, 900), st.sampled_from(["", "k", "M", "G", "T"]), st.sampled_from(["", "B", "iB"]),
)  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("usage")
    X = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    np.savez(folder / "d.npz", X=X, y=(X[:, 0] > 0).astype(np.int64))
    MLP([3, 4, 2], seed=0).save(folder / "m.safetensors", training={"dataset": str(folder / "d.npz")})
    return folder


def _commands(folder):
    npz, model = str(folder / "d.npz"), str(folder / "m.safetensors")
    return {
        "train": ["train", "--dataset", npz, "--epochs", "1", "--out", str(folder / "o.safetensors")],
        "evaluate": ["evaluate", model, "--dataset", npz],
        "predict": ["predict", model, npz],
        "export": ["export", model, "--onnx", str(folder / "m.onnx")],
        "selfcheck": ["selfcheck"],
        "bench": ["bench", "--batch-sizes", "8"],
        "info": ["info"],
    }


def _refused(limit: str) -> bool:
    try:
        parse_size(limit)
    except ConfigError:
        return True
    return False


@settings(max_examples=30, deadline=None)
@given(limit=st.sampled_from(BAD_LIMITS) | st.text(max_size=6))
def test_a_bad_memory_limit_is_a_usage_error_of_every_command(files, limit):
    assume(limit.strip() and "\x00" not in limit and _refused(limit))  # empty: not set; NUL: not in an environment
    old = os.environ.get("XPNET_MEMORY_LIMIT")
    os.environ["XPNET_MEMORY_LIMIT"] = limit
    try:
        for name, argv in _commands(files).items():
            _expect_usage_error(argv, "XPNET_MEMORY_LIMIT", name)
    finally:
        del os.environ["XPNET_MEMORY_LIMIT"]
        if old is not None:
            os.environ["XPNET_MEMORY_LIMIT"] = old


def _expect_usage_error(argv, named, command):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    assert status == 2, (command, argv, out.getvalue()[-300:], err.getvalue()[-300:])
    assert err.getvalue().startswith("xpnet: error: ") and named in err.getvalue(), (command, err.getvalue())
    assert "FAIL" not in out.getvalue() and "re-create" not in err.getvalue()


@settings(max_examples=20, deadline=None)
@given(limit=_GOOD)
def test_valid_limits_pass_the_check(limit):
    assert parse_size(limit) >= 1


@pytest.mark.parametrize("device", ["bogus", "cuda:x", "cpu:0", "gpu0", "CUDA_0"])
def test_a_device_no_backend_takes_is_a_usage_error_of_selfcheck_and_the_commands(files, device):
    for name, argv in _commands(files).items():
        if name in ("selfcheck", "evaluate", "predict", "train"):
            _expect_usage_error([*argv, "--device", device], repr(device), name)


def test_selfcheck_refuses_a_limit_below_what_its_checks_hold(capsys):
    assert main(["selfcheck", "--memory-limit", "8M"]) == 2
    captured = capsys.readouterr()
    assert "memory limit" in captured.err and "PASS" not in captured.out


def test_a_bad_limit_is_not_blamed_on_the_data_file(files, monkeypatch):
    monkeypatch.setenv("XPNET_MEMORY_LIMIT", "abc")
    with pytest.raises(ConfigError, match="XPNET_MEMORY_LIMIT") as caught:
        read_npz_arrays(files / "d.npz", ("X", "y"))
    assert "re-create" not in str(caught.value)
