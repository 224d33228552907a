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
from xpnet.step import PHASES, Step


def timed_pass(step: Step, order, batch_size: int, steps: int, sync, clock=time.perf_counter) -> list[list[float]]:
    """Seconds each of ``PHASES`` took in each of ``steps`` of fit's own steps (``step``), each phase
    ended by ``sync`` (the device's synchronize) before its clock is read."""
    spent: list[list[float]] = [[] for _ in PHASES]
    sums = RunningSums.zero(step.net)  # fit's own running sums
    last = [0.0]

    def mark(phase: str) -> None:
        sync()
        now = clock()
        spent[PHASES.index(phase)].append(now - last[0])
        last[0] = now

    for b in range(steps):
        last[0] = clock()
        step(order[b * batch_size : (b + 1) * batch_size], sums, mark)
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
    step, sync = Step(runner.net, runner.optimizer, runner.X, runner.y), runner.backend.synchronize
    with runner.backend.step_policy(batch_size * runner.net.macs_per_sample):
        timed_pass(step, order, batch_size, steps, sync)  # warms up
        spent = timed_pass(step, order, batch_size, steps, sync)
    phases = {phase: sum(seconds) / steps for phase, seconds in zip(PHASES, spent)}
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
