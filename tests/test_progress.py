"""The training progress bar: drawn on terminals only, throttled, and erased after each epoch."""

from __future__ import annotations

import io

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
