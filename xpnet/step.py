"""One training step, the one ``fit`` takes: used by ``fit``, the bench runners and the profilers.

A ``Step`` holds what every step of a run shares (the network, the optimizer, the data
on the device, label smoothing, float16's loss scaler, the data-parallel share); calling
it with a batch's row indices takes the step:

    batch                   the rows gathered, cast and scaled (``MLP.prepare``)
    targets                 one-hot (and smoothed) targets (``MLP.targets``)
    forward+loss+backward   ``MLP.backprop``: BP1-BP4
    optimizer               the update (one allreduce first, across ranks)
    metrics                 the running loss and accuracy sums, on the device

``mark``, when given, is called with each phase's name as it ends: a profiler times the
very step ``fit`` runs instead of a copy of it. ``batch``, when given, is the first two
phases done ahead: ``fit`` gathers, prepares and one-hot encodes many steps' rows at once
(``xpnet.batches``) and hands each step its slices, the same numbers with a few device
operations per run of steps instead of a dozen per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xpnet.weights import batch_shares

PHASES = ("batch", "targets", "forward+loss+backward", "optimizer", "metrics")


def _no_mark(phase: str) -> None:
    return None


@dataclass
class Step:
    """``step(idx, sums)``: one minibatch step on the rows ``idx`` of ``X`` and ``y``."""

    net: Any
    optimizer: Any
    X: Any  #: the training inputs, on the device
    y: Any  #: their labels or targets, on the device
    label_smoothing: float = 0.0
    scaler: Any = None  #: float16's ``LossScaler``, or None
    parallel: Any = None  #: ``DataParallel`` (this rank's rows, the gradient mean), or None: one process
    weights: Any = None  #: each training row's weight on the device (sample and class weights), or None
    #: The last targets gathered were made from class labels: exact one-hot rows (``count_correct``).
    labels: bool = field(init=False, default=False)

    def __call__(self, idx, sums, mark: Callable[[str], None] = _no_mark, batch: tuple | None = None) -> None:
        """``idx``: the global batch's rows (None: unweighted, with ``batch`` given); ``batch``: this rank's
        ``(inputs prepared, one-hot truth, training targets)`` for them, or None: gathered here."""
        net, xp, parallel = self.net, self.net.xp, self.parallel
        shares = None  # each row's part of the batch's weight (xpnet.weights), or None: the plain mean
        if parallel is not None:
            shares = parallel.weight_shares(xp, self.weights, idx)
        elif self.weights is not None:
            shares = batch_shares(xp, self.weights, idx, idx, 1)
        if batch is None:
            xb, truth, targets = self.gather(idx if parallel is None else parallel.local_rows(idx), mark)
        else:
            xb, truth, targets = batch
            mark("batch")
            mark("targets")
        loss_scale = None if self.scaler is None else self.scaler.scale
        cost, grads, out = net.backprop(xb, targets, train=True, loss_scale=loss_scale, weights=shares)
        mark("forward+loss+backward")
        if parallel is not None:
            grads = parallel.mean_gradients(net, grads)  # one allreduce across ranks
        if self.scaler is None:
            self.optimizer.step(net.params, grads)
        else:  # float16: a step with an inf or NaN gradient (on any rank) is undone
            self.scaler.step(self.optimizer, net.params, grads)
        mark("optimizer")
        if sums is not None:
            sums.add(net, cost, out, truth, xb.shape[0], one_hot=self.labels)
        mark("metrics")

    def gather(self, rows, mark: Callable[[str], None] = _no_mark) -> tuple:
        """``(inputs, truth, targets)`` of ``rows`` (of ``X`` and ``y``): the inputs cast and scaled
        (``MLP.prepare``), the one-hot truth the metrics count against, the (smoothed) training targets."""
        net, xp = self.net, self.net.xp
        xb, yb = net.prepare(xp.take(self.X, rows, axis=0)), xp.take(self.y, rows, axis=0)
        mark("batch")
        self.labels = net.is_classifier and xp.isdtype(yb.dtype, "integral")
        truth = net.targets(yb)
        targets = net.targets(yb, self.label_smoothing) if self.label_smoothing else truth
        mark("targets")
        return xb, truth, targets
