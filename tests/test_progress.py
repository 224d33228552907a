"""The training progress bar: drawn on terminals only, throttled, and erased after each epoch."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys

import numpy as np
import pytest

from xpnet.progress import REFRESH_S, ProgressBar, wanted


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_is_wanted_on_a_terminal_but_not_in_pipes_files_or_ci():
    assert wanted(_Terminal(), environ={})
    assert not wanted(io.StringIO(), environ={})  # a pipe or a file
    assert not wanted(_Terminal(), environ={"CI": "true"})


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_bar_redraws_at_most_every_refresh_and_always_at_the_end():
    out, clock = _Terminal(), _Clock()
    bar = ProgressBar(100, "epoch 1/3", unit_samples=64, stream=out, clock=clock)
    for _ in range(10):  # ten batches in no time: one draw
        bar.update()
    clock.now = REFRESH_S
    bar.update()
    assert out.getvalue().count("\r") == 2
    assert "epoch 1/3 [##......................] 11/100 batches" in out.getvalue()
    assert "7,040 samples/s" in out.getvalue()  # 11 batches of 64 in 0.1 s
    bar.update(89)
    assert out.getvalue().endswith("100/100 batches  " + f"{100 * 64 / REFRESH_S:,.0f} samples/s  ETA 0 s")


def test_close_erases_the_line_and_a_shorter_line_covers_a_longer_one():
    out, clock = _Terminal(), _Clock()
    bar = ProgressBar(10, "epoch 10/10", stream=out, clock=clock)
    clock.now = 5.0
    bar.update()
    long_line = out.getvalue()
    bar.label = "e"
    clock.now = 6.0
    bar.update()
    second = out.getvalue()[len(long_line) :]
    assert len(second) == len(long_line), "the shorter line is padded over the longer one"
    drawn = len(second.rstrip(" ")) - 1  # the shorter text, without "\r" and padding
    bar.close()
    assert out.getvalue().endswith("\r" + " " * drawn + "\r")


def test_a_resumed_epoch_rates_only_the_batches_of_this_run():
    out, clock = _Terminal(), _Clock()
    bar = ProgressBar(100, "epoch 2/2", initial=50, stream=out, clock=clock)
    clock.now = 1.0
    bar.update(10)
    assert "60/100 batches  10 samples/s  ETA 4 s" in out.getvalue()


def _tabular(tmp_path) -> str:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6)).astype(np.float32)
    np.savez(tmp_path / "data.npz", X=X, y=(X[:, 0] > 0).astype(np.int64))
    return str(tmp_path / "data.npz")


def _train_on_a_terminal(tmp_path, *flags, ci: bool = False) -> str:
    """``python -m xpnet train`` with stderr on a pseudo-terminal; what the terminal received."""
    args = ["--dataset", _tabular(tmp_path), "--layers", "8", "--epochs", "2", "--batch-size", "8"]
    args += ["--out", str(tmp_path / "m.safetensors"), *flags]
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": "true"} if ci else {})
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    leader, follower = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "xpnet", "train", *args], stdout=subprocess.DEVNULL, stderr=follower, env=env
    ) as process:
        os.close(follower)
        received = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            received += chunk
        assert process.wait() == 0, received.decode(errors="replace")
    os.close(leader)
    return received.decode(errors="replace")


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal (POSIX)")
def test_train_draws_the_bar_on_a_terminal_only(tmp_path):
    assert "\repoch 1/2 [" in _train_on_a_terminal(tmp_path)
    assert "\repoch" not in _train_on_a_terminal(tmp_path, "--no-progress")
    assert "\repoch" not in _train_on_a_terminal(tmp_path, ci=True)
    args = ["--dataset", _tabular(tmp_path), "--epochs", "1", "--layers", "8", "--out", str(tmp_path / "p.safetensors")]
    piped = subprocess.run(
        [sys.executable, "-m", "xpnet", "train", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert piped.returncode == 0 and "\r" not in piped.stderr
