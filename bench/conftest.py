"""pytest-benchmark suite: ``pytest bench/ --benchmark-only`` (add ``--benchmark-json=out.json``).

Its own history and comparison (``--benchmark-autosave``, ``--benchmark-compare``) and
the import of its JSON into bench/history/ are described in bench/HISTORY.md.

Every test is parametrised over batch size and over every backend/device pair the
sweep knows; pairs not usable here (no GPU, no PyTorch, no CuPy) are collected as
skips with the reason, so ``-ra`` lists them instead of hiding them.
"""

from __future__ import annotations

import pytest

from xpnet.bench.data import load_data
from xpnet.bench.targets import Target, available_targets
from xpnet.bench.workload import BATCH_SIZES

SAMPLES = 2 * max(BATCH_SIZES)  # two steps even at the largest batch size

_FOUND, _SKIPPED = available_targets(["numpy", "torch", "cupy"])
_ALL = [Target("numpy", "cpu"), Target("torch", "cpu"), Target("torch", "cuda"), Target("cupy", "cuda")]


def _target_params(impl: str) -> list:
    params = []
    for target in _ALL:
        if impl == "direct" and target.backend != "numpy":
            continue
        if impl == "torch-eager" and target.backend != "torch":
            continue
        usable = any(t.label == target.label for t in _FOUND)
        reason = next((s for s in _SKIPPED if s.startswith(target.label + ":")), "not available")
        marks = () if usable else pytest.mark.skip(reason=reason)
        params.append(pytest.param(target, id=target.label.replace("/", "-"), marks=marks))
    return params


def pytest_generate_tests(metafunc):
    if "batch_size" in metafunc.fixturenames:
        metafunc.parametrize("batch_size", BATCH_SIZES)
    if "target" in metafunc.fixturenames:
        impl = getattr(metafunc.module, "IMPL", "xpnet")
        metafunc.parametrize("target", _target_params(impl))


@pytest.fixture(scope="session")
def data():
    X, y, _ = load_data(SAMPLES)
    return X, y
