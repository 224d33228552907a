"""Benchmarks of the direct implementation (see xpnet.bench.runners for what it is)."""

from _common import bench_epoch, bench_step

IMPL = "direct"


def test_direct_step(benchmark, target, batch_size, data):
    bench_step(benchmark, IMPL, target, batch_size, data)


def test_direct_epoch(benchmark, target, batch_size, data):
    bench_epoch(benchmark, IMPL, target, batch_size, data)
