"""The speed harness: samples/s, step time and GFLOP/s per backend, device and batch size.

``python -m xpnet bench`` (and ``scripts/bench.py``) trains the benchmark network
(784-128-64-10, ReLU, softmax cross-entropy, SGD momentum 0.9, float32) one epoch at a
time and reports, for every backend/device available here and every batch size:

- samples/s and the time of one training step (the epoch's median over repeats),
- achieved GFLOP/s, from ``workload.flops_per_sample`` (matmuls only, documented there),
- the percentage of two matmul ceilings measured in the same run on the same device
  (``ceilings``: one large square GEMM, and the step's own six GEMMs),
- peak memory of one epoch (NumPy: tracemalloc; CUDA: the library's allocator),
- the ratios to the peers run in the same loop (``runners``: the same math straight in
  NumPy, and PyTorch eager).

One idea per module, in the order data flows:

- ``workload``: the network, batch sizes, optimizer, and the FLOP/MAC counts;
- ``data``: the uint8 rows the runners train on; ``targets``: backend/device pairs here;
- ``runners``: xpnet's ``fit``, the direct NumPy loop, PyTorch eager; ``memory``: peak bytes;
- ``ceilings``: the GEMM ceilings; ``sweep``: runners alternating, repeat by repeat, into rows;
- ``results``: the records (``Row``, ``BenchResult``); ``environment``: where it ran;
- ``table``, ``report``: text, Markdown and PNG; ``profile``: the step, phase by phase;
- ``options`` (light, imported by the product CLI) and ``cli`` (the command).

The names below are importable from ``xpnet.bench`` itself, loaded on first use so that
importing ``xpnet.bench.options`` (as ``python -m xpnet`` does) loads nothing else.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "SIZES": "workload",
    "BATCH_SIZES": "workload",
    "IMPLS": "workload",
    "LR": "workload",
    "MOMENTUM": "workload",
    "PAUSE": "workload",
    "flops_per_sample": "workload",
    "step_macs": "workload",
    "load_data": "data",
    "Target": "targets",
    "available_targets": "targets",
    "Runner": "runners",
    "RUNNERS": "runners",
    "XpnetRunner": "runners",
    "DirectRunner": "runners",
    "TorchEagerRunner": "runners",
    "peak_gemms": "ceilings",
    "own_gemms": "ceilings",
    "measure": "ceilings",
    "Row": "results",
    "BenchResult": "results",
    "run_bench": "sweep",
    "add_ratios": "sweep",
    "COLUMNS": "table",
    "format_bytes": "table",
    "format_rows": "table",
    "markdown_table": "table",
    "markdown_report": "report",
    "plot": "report",
    "profile_step": "profile",
    "profile_markdown": "profile",
    "add_bench_arguments": "options",
    "bench_main": "cli",
    "main": "cli",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    """``xpnet.bench.run_bench`` and friends, imported from their module when first asked for."""
    if name not in _HOMES:
        raise AttributeError(f"module 'xpnet.bench' has no attribute {name!r}")
    return getattr(importlib.import_module(f"xpnet.bench.{_HOMES[name]}"), name)
