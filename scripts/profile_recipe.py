#!/usr/bin/env python
"""Where the time of a recipe's training step goes, phase by phase, at the recipe's batch size.

    python scripts/profile_recipe.py                       # the default recipe
    python scripts/profile_recipe.py --recipe default-long --batch-size 512 --clock cpu

The recipe's own network, optimizer, label smoothing and batch size, on real data, stepped
as ``fit`` steps it (its pieces, called in its order, under its ``Backend.step_policy``),
each phase timed on its own: the batch (gather, cast and scale), the targets (one-hot and
smoothed), forward+loss+backward (``backprop``: BP1-BP4), the optimizer's update and the
running metric sums. ``of which GEMMs`` is the time the step's matrix products take alone,
back to back on the same shapes. ``--clock cpu`` reads this thread's CPU time instead of
the wall clock: a steadier figure on a shared machine, but blind to the BLAS thread's work.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from xpnet.data import load_dataset
from xpnet.evaluate import RunningSums
from xpnet.network import MLP
from xpnet.optim import get_optimizer
from xpnet.run import resolve_settings
from xpnet.scaling import Scaling

PHASES = ("batch", "targets", "forward+loss+backward", "optimizer", "metrics")
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def build(settings: dict, X: np.ndarray):
    """The recipe's network and optimizer, as ``run_training`` builds them."""
    net = MLP(
        [X.shape[1], *settings["layers"], 10],
        activation=settings["activation"],
        loss=settings["loss"],
        init=settings["init"],
        seed=settings["seed"],
    )
    net.set_scaling(Scaling.fit(settings["scaling"], X))
    options = {key: settings[key] for key in ("lr", "momentum", "nesterov", "weight_decay", "schedule")}
    return net, get_optimizer(settings["optimizer"], **options)


def timed_pass(net, optimizer, X, y, order, size: int, smoothing: float, clock) -> list[float]:
    """Seconds per step in each of ``PHASES``, medians over one pass through ``order``."""
    xp, spent = net.xp, [[] for _ in PHASES]
    sums = RunningSums.zero(net)
    for b in range(len(order) // size):
        t0 = clock()
        idx = order[b * size : (b + 1) * size]
        xb, yb = net.prepare(xp.take(X, idx, axis=0)), xp.take(y, idx, axis=0)
        t1 = clock()
        truth = net.targets(yb)
        targets = net.targets(yb, smoothing) if smoothing else truth
        t2 = clock()
        cost, grads, out = net.backprop(xb, targets, train=True)
        t3 = clock()
        optimizer.step(net.params, grads)
        t4 = clock()
        sums.add(net, cost, out, truth, size)
        t5 = clock()
        for phase, seconds in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            phase.append(seconds)
    return [statistics.median(seconds) for seconds in spent]


def gemm_seconds(net, size: int, clock, repeats: int = 20) -> float:
    """The step's own matrix products alone: forward, BP4 for every layer, BP2 below the top."""
    rng = np.random.default_rng(0)
    acts = [rng.random((size, n), dtype=np.float32) for n in net.sizes]
    Ws = [layer.W for layer in net.layers]
    runs = []
    for _ in range(repeats):
        start = clock()
        for l, W in enumerate(Ws):
            _ = acts[l] @ W.T  # forward
            _ = acts[l + 1].T @ acts[l]  # BP4
            if l:
                _ = acts[l + 1] @ W  # BP2
        runs.append(clock() - start)
    return statistics.median(runs)


def profile(settings: dict, batch_size: int, samples: int, clock_name: str) -> dict[str, float]:
    """Median seconds per step of each phase, after one warm-up pass."""
    data = load_dataset(settings["dataset"])
    X, y = data.X_train[:samples], data.y_train[:samples].astype(np.int32)
    net, optimizer = build(settings, X)
    order = np.random.default_rng(0).permutation(len(X)).astype(np.int32)
    clock = CLOCKS[clock_name]
    with net.backend.step_policy(batch_size * net.macs_per_sample), net.backend.quiet_float_errors():
        args = (net, optimizer, X, y, order, batch_size, settings["label_smoothing"], clock)
        timed_pass(*args)  # warm-up
        phases = dict(zip(PHASES, timed_pass(*args)))
        phases["of which GEMMs"] = gemm_seconds(net, batch_size, clock)
    return phases


def markdown(recipe: str, batch_size: int, phases: dict[str, float], clock: str) -> str:
    total = sum(seconds for phase, seconds in phases.items() if phase in PHASES)
    lines = [f"| {recipe}, batch {batch_size} ({clock} clock) | µs per step | share |", "|---|---:|---:|"]
    for phase, seconds in phases.items():
        lines.append(f"| {phase} | {seconds * 1e6:,.0f} | {100 * seconds / total:.0f}% |")
    lines.append(f"| step | {total * 1e6:,.0f} | 100% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="default", help="the recipe whose step to profile")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--samples", type=int, default=16384, help="training images to step through")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="wall (default) or cpu time")
    args = parser.parse_args(argv)
    settings = resolve_settings(args.recipe, {})
    batch_size = args.batch_size or settings["batch_size"]
    phases = profile(settings, batch_size, args.samples, args.clock)
    print(markdown(args.recipe, batch_size, phases, args.clock))
    return 0


if __name__ == "__main__":
    sys.exit(main())
