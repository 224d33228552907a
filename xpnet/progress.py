"""A one-line progress bar for the batches of an epoch, drawn on a terminal by xpnet itself.

``python -m xpnet train`` shows it when stderr is a terminal (not in pipes, files or CI,
where ``CI`` is set) unless ``--no-progress`` or ``--quiet``. It is ~50 lines rather
than a dependency: the core needs only NumPy and array-api-compat. The line is redrawn
at most ``REFRESH_S`` apart, so a fast loop spends no time on it, and erased when the
epoch ends so the epoch's log line takes its place.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

REFRESH_S = 0.1
WIDTH = 24  #: characters of the bar itself


def wanted(stream: TextIO | None = None, environ: dict | None = None) -> bool:
    """Whether a bar belongs on ``stream`` (stderr): a terminal, and not a CI job."""
    stream = sys.stderr if stream is None else stream
    environ = os.environ if environ is None else environ
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not environ.get("CI")


class ProgressBar:
    """``epoch 3/10 [#########...............] 120/235 batches  4,100 samples/s  ETA 3 s``."""

    def __init__(self, total: int, label: str, *, unit_samples: int = 1, initial: int = 0, stream=None, clock=None):
        self.total = total
        self.label = label
        self.unit_samples = unit_samples  #: samples per batch, for the rate
        self.done = initial
        self.stream = sys.stderr if stream is None else stream
        self.clock = clock or time.perf_counter
        self.started = self.clock()
        self.counted_from = initial  # the rate counts this run's batches only (a resumed epoch starts midway)
        self.drawn_at = -REFRESH_S
        self.width = 0

    def update(self, batches: int = 1) -> None:
        self.done += batches
        now = self.clock()
        if now - self.drawn_at >= REFRESH_S or self.done == self.total:
            self.drawn_at = now
            self._draw(self.line(now - self.started))

    def line(self, elapsed: float) -> str:
        filled = WIDTH * self.done // max(self.total, 1)
        text = f"{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] {self.done}/{self.total} batches"
        counted = self.done - self.counted_from
        if elapsed > 0 and counted > 0:
            rate = counted / elapsed
            text += f"  {rate * self.unit_samples:,.0f} samples/s  ETA {(self.total - self.done) / rate:.0f} s"
        return text

    def _draw(self, text: str) -> None:
        padding = " " * max(self.width - len(text), 0)  # covers the end of a longer previous line
        self.stream.write(f"\r{text}{padding}")
        self.stream.flush()
        self.width = len(text)

    def close(self) -> None:
        """Erase the line, leaving the cursor at its start for the next output."""
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0
