"""Benchmarks of the torch-eager implementation (see xpnet.bench.runners for what it is)."""

import pytest
from _common import bench_epoch, bench_step

pytest.importorskip("torch", reason="torch-eager needs PyTorch")
IMPL = "torch-eager"


def test_torch_eager_step(benchmark, target, batch_size, data):
    bench_step(benchmark, IMPL, target, batch_size, data)


def test_torch_eager_epoch(benchmark, target, batch_size, data):
    bench_epoch(benchmark, IMPL, target, batch_size, data)
