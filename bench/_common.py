"""Shared bodies of the benchmark modules: one step and one epoch per implementation."""

from __future__ import annotations

from xpnet.bench.runners import RUNNERS


def bench_step(benchmark, impl, target, batch_size, data):
    """One training step on a fixed batch; grouped by batch size so rows compare like with like."""
    runner = RUNNERS[impl](target, *data, batch_size)
    benchmark.group = f"step, batch {batch_size:>5}"
    benchmark.extra_info.update(impl=impl, backend=target.backend, device=target.device, batch_size=batch_size)
    benchmark.pedantic(runner.step, warmup_rounds=3, rounds=max(5, 4096 // batch_size), iterations=1)


def bench_epoch(benchmark, impl, target, batch_size, data):
    """One epoch of ``2 x 8192`` samples; ``samples_per_s`` goes into extra_info (and the JSON)."""
    runner = RUNNERS[impl](target, *data, batch_size)
    benchmark.group = f"epoch, batch {batch_size:>5}"
    samples = data[0].shape[0] // batch_size * batch_size
    benchmark.extra_info.update(
        impl=impl, backend=target.backend, device=target.device, batch_size=batch_size, samples=samples
    )
    benchmark.pedantic(runner.epoch, warmup_rounds=1, rounds=3, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable (a run-once smoke test)
        benchmark.extra_info["samples_per_s"] = samples / benchmark.stats.stats.median
