#!/usr/bin/env python
"""Where the time of a recipe's training step goes, phase by phase, at the recipe's batch size.

    python scripts/profile_recipe.py                       # the default recipe
    python scripts/profile_recipe.py --recipe default-long --batch-size 512 --clock cpu

The recipe's own network, optimizer, label smoothing and batch size, built by ``xpnet.build``
as ``run_training`` builds them, on real data, stepped by ``fit``'s own step function
(``xpnet.step.Step``) under its ``Backend.step_policy``, each phase timed on its own: the
batch (gather, cast and scale), the targets (one-hot and smoothed), forward+loss+backward
(``backprop``: BP1-BP4), the optimizer's update and the running metric sums. ``of which
GEMMs`` is the time the step's matrix products take alone, back to back on the same shapes.
``--clock cpu`` reads this thread's CPU time instead of the wall clock: a steadier figure
on a shared machine, but blind to the BLAS thread's work.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from xpnet.bench.profile import timed_pass
from xpnet.build import build
from xpnet.data import load_dataset
from xpnet.layers import Dense
from xpnet.run import resolve_settings
from xpnet.step import PHASES, Step

CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def build_recipe(settings: dict, data, X: np.ndarray):
    """The recipe's network and optimizer: ``xpnet.build``'s, as ``run_training`` builds them."""
    return build(settings, X.shape[1], data.num_classes, X)


def gemm_seconds(net, size: int, clock, repeats: int = 20) -> float:
    """The step's own matrix products alone: forward, BP4 for every layer, BP2 below the top."""
    rng = np.random.default_rng(0)
    acts = [rng.random((size, n), dtype=np.float32) for n in net.sizes]
    Ws = [params[0] for layer, params in net.layer_params() if isinstance(layer, Dense)]
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
    net, optimizer = build_recipe(settings, data, X)
    order = net.backend.upload(np.random.default_rng(0).permutation(len(X)).astype(np.int32))
    smoothing = settings["label_smoothing"] if net.loss.classification else 0.0  # as run_training's fit
    step = Step(net, optimizer, net.to_device(X), net.to_device(y, labels=True), smoothing)
    clock, sync, steps = CLOCKS[clock_name], net.backend.synchronize, len(X) // batch_size
    with net.backend.step_policy(batch_size * net.macs_per_sample), net.backend.quiet_float_errors():
        timed_pass(step, order, batch_size, steps, sync, clock)  # warm-up
        spent = timed_pass(step, order, batch_size, steps, sync, clock)
        phases = {phase: statistics.median(seconds) for phase, seconds in zip(PHASES, spent)}
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
