"""An epoch's batches made ahead: a run of steps' rows gathered, prepared and one-hot encoded at once.

Each step of ``fit`` needs its batch's inputs cast and scaled (``MLP.prepare``), its one-hot
truth and its training targets. Made step by step (``Step.gather``) that is about a dozen
small device operations (two gathers with their index checks, a cast, a scale, the one-hot
comparison and its cast) around a step of some sixty: kernel launches on a GPU, Python and
dispatch overhead on a CPU, where a batch of 64 runs at the speed of those calls. Here they
are made for a run of consecutive steps at once, into buffers of about ``AHEAD_BYTES``, split
into the steps' parts by one ``unstack`` each (views where the library has them). Every
operation involved is a gather or elementwise, so a step sees the very numbers it would have
made itself.

A run's steps are a fixed stretch of the epoch (runs start at multiples of their length),
a resumed epoch's too, so each batch lies at the same place of the same buffer either way.
Data-parallel, a rank gathers only its own part of each batch.
"""

from __future__ import annotations

import numpy as np

#: About how many bytes one run's inputs and targets take on the device (at least one batch's).
AHEAD_BYTES = 4 * 2**20


def row_bytes(features: int, outputs: int, itemsize: int, smoothing: bool = True) -> int:
    """What a run holds per sample: the raw and the prepared inputs, the truth, smoothed targets
    where they differ, and the outputs kept for the run's count of correct predictions (``RunningSums.settle``)."""
    return itemsize * (2 * features + outputs * (3 if smoothing else 2))


def steps_ahead(net, features: int, rows: int, smoothing: float) -> int:
    """How many steps of ``rows`` samples each make a run of about ``AHEAD_BYTES`` (at least one)."""
    per_row = row_bytes(features, net.num_outputs, np.dtype(net.dtype_name).itemsize, bool(smoothing))
    return max(1, AHEAD_BYTES // (per_row * rows))


def ahead_bytes(features: int, outputs: int, itemsize: int, batch: int, samples: int) -> int:
    """The most one run of batches made ahead holds (for ``xpnet.memory``'s estimates)."""
    per_row = row_bytes(features, outputs, itemsize)
    steps = min(max(1, AHEAD_BYTES // (per_row * batch)), max(samples // batch, 1))
    return steps * min(batch, samples) * per_row


class Batches:
    """``batches(b)``: step ``b``'s ``(rows, (inputs, truth, targets))`` for ``Step``, run by run.

    ``rows`` are the global batch's row indices where the step needs them (weighted training:
    the batch's weight sum), else None. ``local``: this rank's part of each batch (None: all of it).
    """

    def __init__(self, step, order, steps: int, batch_size: int, local: slice | None = None):
        self.step, self.order, self.steps, self.size = step, order, steps, batch_size
        self.local = local
        self.rows = batch_size if local is None else local.stop - local.start  # this rank's rows per step
        self.ahead = min(steps_ahead(step.net, step.X.shape[1], self.rows, step.label_smoothing), max(steps, 1))
        self.weighted = step.weights is not None
        self.start = -1  #: the first step of the run held (-1: none yet)
        self.run: tuple = ()

    def __call__(self, b: int) -> tuple:
        start = b - b % self.ahead
        if start != self.start:
            self.run = ()  # the last run's buffers go before the next one's are made
            self.run, self.start = self._gather(start), start
        rows = self.order[b * self.size : (b + 1) * self.size] if self.weighted else None
        inputs, truth, targets = self.run
        return rows, (inputs[b - start], truth[b - start], targets[b - start])

    def ends_run(self, b: int) -> bool:
        """Whether step ``b`` is the last of its run (or of the epoch)."""
        return (b + 1) % self.ahead == 0 or b + 1 == self.steps

    def _gather(self, start: int) -> tuple:
        """The inputs, truth and targets of the run of steps from ``start``, each a tuple of the
        steps' parts: one gather each, split by one ``unstack`` (views, or one call returning all)."""
        xp, end = self.step.net.xp, min(start + self.ahead, self.steps)
        steps = end - start
        rows = self.order[start * self.size : end * self.size]
        if self.local is not None:  # this rank's contiguous part of each of the run's batches
            rows = xp.reshape(xp.reshape(rows, (steps, self.size))[:, self.local], (-1,))
        made = self.step.gather(rows)
        if steps == 1:
            return tuple((part,) for part in made)
        inputs, truth = (xp.unstack(xp.reshape(part, (steps, self.rows, part.shape[1]))) for part in made[:2])
        same = made[2] is made[1]  # no label smoothing: the targets are the truth
        return inputs, truth, truth if same else xp.unstack(xp.reshape(made[2], (steps, self.rows, -1)))
