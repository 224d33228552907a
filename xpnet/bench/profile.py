"""Where the time of xpnet's training step goes, phase by phase (a profile, not a throughput).

Each phase is synchronised on its own, so on a GPU the sum is slower than a real step;
on the CPU it shows which part of ``fit``'s step to work on next.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from xpnet.bench.ceilings import measure, own_gemms
from xpnet.bench.data import load_data
from xpnet.bench.runners import XpnetRunner
from xpnet.bench.targets import Target
from xpnet.bench.workload import flops_per_sample
from xpnet.evaluate import RunningSums

PHASES = ("batch", "forward+loss+backward", "optimizer", "metrics")


def _timed_pass(runner: XpnetRunner, order, steps: int) -> list[float]:
    """Seconds spent in each of ``PHASES`` over ``steps`` of fit's steps, summed."""
    net, xp, opt, sync = runner.net, runner.net.xp, runner.optimizer, runner.backend.synchronize
    bs = runner.batch_size
    spent = [0.0] * len(PHASES)
    sums = RunningSums.zero(net)
    for b in range(steps):
        t0 = time.perf_counter()
        idx = order[b * bs : (b + 1) * bs]
        xb = net.prepare(xp.take(runner.X, idx, axis=0))
        targets = net.targets(xp.take(runner.y, idx, axis=0))
        sync()
        t1 = time.perf_counter()
        cost, grads, out = net.backprop(xb, targets, train=True)
        sync()
        t2 = time.perf_counter()
        opt.step(net.params, grads)
        sync()
        t3 = time.perf_counter()
        sums.add(net, cost, out, targets, bs)  # fit's own running sums
        sync()
        t4 = time.perf_counter()
        for i, dt in enumerate((t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            spent[i] += dt
    return spent


def profile_step(batch_size: int, samples: int = 16384, backend: str = "numpy", device: str = "cpu") -> dict:
    """Seconds per step spent in each phase of xpnet's fit step, under fit's step policy.

    ``of which matmuls`` is the part of forward+backward the six GEMMs take when timed
    alone (the ``own`` ceiling at this batch size).
    """
    X, y, _ = load_data(samples)
    runner = XpnetRunner(Target(backend, device), X, y, batch_size)
    steps = max(1, min(samples // batch_size, 400))
    order = runner.backend.upload(np.random.default_rng(0).permutation(X.shape[0]).astype(np.int32))
    with runner.backend.step_policy(batch_size * runner.net.macs_per_sample):
        _timed_pass(runner, order, steps)  # warms up
        spent = _timed_pass(runner, order, steps)
    phases = {phase: seconds / steps for phase, seconds in zip(PHASES, spent)}
    own = measure(own_gemms(Target(backend, device), batch_size))
    phases["of which matmuls"] = flops_per_sample() * batch_size / (own.gflops * 1e9)
    return phases


def profile_markdown(batch_sizes: Sequence[int]) -> str:
    """The profile at each batch size as a Markdown table: µs per step and share of the step."""
    lines = ["| batch | phase | µs per step | share |", "|---|---|---|---|"]
    for batch_size in batch_sizes:
        phases = profile_step(batch_size)
        total = sum(v for k, v in phases.items() if not k.startswith("of which"))
        for key, seconds in phases.items():
            lines.append(f"| {batch_size} | {key} | {seconds * 1e6:,.1f} | {100 * seconds / total:.0f}% |")
    return "\n".join(lines)
