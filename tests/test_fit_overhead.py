"""fit's own work per step, held to a budget by counting (not timing), and its batches made ahead
held to the numbers of the step-by-step path bit for bit.

At batch 64 a training step is some sixty small device operations; what ``fit`` did around
it (a dozen operations to gather, cast, scale and one-hot encode each batch, a dozen more
for the running accuracy, a registry lookup per metric) cost a third as much again. The
counts below (``xpnet.bench.overhead``: per step, two run lengths apart, so a fit call's
fixed cost cancels) fail when per-step work creeps back into the loop.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CPU_BACKENDS, NO_TORCH

from xpnet import batches
from xpnet.bench import overhead
from xpnet.evaluate import RunningSums
from xpnet.network import MLP
from xpnet.optim import SGD
from xpnet.scaling import Scaling
from xpnet.step import Step
from xpnet.train import fit

SIZES = (12, 10, 8, 4)
BATCH = 8
RUN_STEPS = 8  #: steps made ahead per run here (``xpnet.batches``), so a count takes 8 and 24 steps

#: fit's device operations per step beyond backprop + the optimizer: the loss sum (2), and a share of
#: each run's 30 (two gathers, the cast and scale, the one-hot targets, the unstacks, the run's hits).
OPERATIONS_BUDGET = 2 + 32 / RUN_STEPS
#: Calls into xpnet's own code per step beyond backprop + the optimizer: the step and its phase
#: marks, the schedule, the run's parts, the loss sum, the stop poll, and a share of each run's.
OWN_CALLS_BUDGET = 16 + 40 / RUN_STEPS


@pytest.fixture
def short_runs(monkeypatch):
    """Runs of ``RUN_STEPS`` steps for the test network (the default makes a run of megabytes)."""
    per_row = batches.row_bytes(SIZES[0], SIZES[-1], 4, smoothing=False)
    monkeypatch.setattr(batches, "AHEAD_BYTES", RUN_STEPS * BATCH * per_row)


@NO_TORCH
def test_a_fit_step_asks_the_device_for_little_beyond_its_math(short_runs):
    # Measured: 5.75 more than the core's, fewer than fit's own step in a bare loop (which gathers and
    # one-hot encodes each batch). Before the batches were made ahead: 34 more than the core's.
    fit_ops, step_ops, core_ops = (
        overhead.counts(kind, "torch", "cpu", BATCH, SIZES)["operations"] for kind in overhead.LOOPS
    )
    assert core_ops > 40, "the audit counted the step's operations"
    assert fit_ops - core_ops <= OPERATIONS_BUDGET, (fit_ops, core_ops)
    assert fit_ops < step_ops, (fit_ops, step_ops)


def test_a_fit_step_makes_few_calls_of_its_own(short_runs):
    fit_calls, core_calls = (
        overhead.counts(kind, "numpy", "cpu", BATCH, SIZES)["own_calls"] for kind in ("fit", "core")
    )
    assert core_calls > 30, "the profile counted the step's calls"
    assert fit_calls - core_calls <= OWN_CALLS_BUDGET, (fit_calls, core_calls)


def _data(n=84):
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (n, SIZES[0]), dtype=np.uint8), rng.integers(0, SIZES[-1], n)


def _step_by_step(net, X, y, epochs: int, smoothing: float, seed: int) -> list[tuple[float, float]]:
    """fit's epochs as the step-by-step path takes them: each step gathers its batch, each adds its hits."""
    optimizer, rng = SGD(lr=0.1, momentum=0.9), np.random.default_rng(seed)
    net.set_scaling(Scaling("unit", 0.0, float(np.float32(1 / 255))))  # as fit scales uint8 inputs
    X, y = net.to_device(X), net.to_device(y, labels=True)
    step, steps, sums_read = Step(net, optimizer, X, y, smoothing), X.shape[0] // BATCH, []
    with net.backend.step_policy(BATCH * net.macs_per_sample):
        for epoch in range(epochs):
            order = net.backend.upload(rng.permutation(X.shape[0]).astype(np.int32))
            sums = RunningSums.zero(net)
            for b in range(steps):
                optimizer.set_progress(epoch + b / steps, epochs)
                step(order[b * BATCH : (b + 1) * BATCH], sums)
            sums_read.append(tuple(float(v) for v in net.backend.to_host(net.xp.stack([sums.loss, sums.correct]))))
    return sums_read


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_batches_made_ahead_train_as_the_step_by_step_path_bit_for_bit(short_runs, backend, smoothing):
    # 10 steps an epoch: runs of 8 and 2; dropout draws in the steps as before.
    X, y = _data()
    nets = [MLP(list(SIZES), dropout=0.2, backend=backend[0], device=backend[1], seed=5) for _ in range(2)]
    options = {"epochs": 2, "batch_size": BATCH, "label_smoothing": smoothing, "seed": 7, "compile": False}
    history = fit(nets[0], X, y, optimizer=SGD(lr=0.1, momentum=0.9), restore_best=False, **options)
    expected = _step_by_step(nets[1], X, y, 2, smoothing, seed=7)
    seen = (X.shape[0] // BATCH) * BATCH
    assert [(r["loss"], r["accuracy"]) for r in history.records] == [(s / seen, c / seen) for s, c in expected]
    for a, b in zip(nets[0].params, nets[1].params):
        np.testing.assert_array_equal(nets[0].backend.to_host(a), nets[1].backend.to_host(b))


def test_a_run_holds_its_steps_in_order_and_the_last_run_is_short(short_runs):
    net = MLP(list(SIZES), seed=0)
    X, y = _data(n=11 * BATCH + 3)
    order = np.arange(X.shape[0], dtype=np.int32)[::-1].copy()
    step = Step(net, SGD(), net.to_device(X), net.to_device(y, labels=True))
    made = batches.Batches(step, order, steps=11, batch_size=BATCH)
    assert made.ahead == RUN_STEPS
    for b in range(11):
        rows, (inputs, truth, targets) = made(b)
        assert rows is None and targets is truth  # unweighted, no smoothing: nothing more to make
        expected = step.gather(order[b * BATCH : (b + 1) * BATCH])
        np.testing.assert_array_equal(inputs, expected[0])
        np.testing.assert_array_equal(truth, expected[1])
        assert made.ends_run(b) == (b in (7, 10)), b
