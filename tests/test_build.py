"""One builder and one step: the profilers time exactly the network and step run_training trains.

``xpnet.build`` makes the network and optimizer from settings for runs, resume, the
estimators, the bench harness and scripts/; ``xpnet.step.Step`` is the minibatch step of
``fit``, the bench runners and both profilers. Here every call of ``Step`` is recorded, in
a run of ``run_training`` and in scripts/profile_recipe.py's profile of the same recipe,
and what they stepped is compared.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from xpnet import run
from xpnet.build import build
from xpnet.data.dataset import Dataset
from xpnet.step import PHASES, Step

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "profile_recipe.py"


@pytest.fixture(scope="module")
def profile_recipe():
    spec = importlib.util.spec_from_file_location("profile_recipe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _toy_images(*args, **kwargs) -> Dataset:
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (160, 20), dtype=np.uint8)
    y = rng.integers(0, 10, 160).astype(np.int32)
    return Dataset("toy", X[:128], y[:128], X[128:], y[128:], class_names=[str(k) for k in range(10)])


def _record_steps(monkeypatch) -> list[dict]:
    """Every Step call from now on: what it stepped, read before its first update."""
    seen, original = [], Step.__call__

    def recording(self, idx, sums, mark=None, **batch):
        if not any(entry["step"] is self for entry in seen):
            net, optimizer = self.net, self.optimizer
            hyper = {k: v for k, v in vars(optimizer).items() if k not in ("state", "xp", "kernel", "steps", "lr")}
            seen.append(
                {
                    "step": self,
                    "config": net.config(),
                    "repr": repr(net),
                    "weights": net.state_dict(),
                    "scaling": net.scaling.kind,
                    "optimizer": (type(optimizer), {k: str(v) for k, v in hyper.items()}),
                    "smoothing": self.label_smoothing,
                    "scaler": self.scaler,
                }
            )
        return original(self, idx, sums, **batch) if mark is None else original(self, idx, sums, mark, **batch)

    monkeypatch.setattr(Step, "__call__", recording)
    return seen


@pytest.mark.parametrize("recipe", ["default", "default-long"])
def test_the_profiler_times_the_network_and_step_run_training_trains(monkeypatch, profile_recipe, recipe):
    monkeypatch.setattr(run, "load_dataset", _toy_images)
    monkeypatch.setattr(profile_recipe, "load_dataset", _toy_images)
    settings = run.resolve_settings(recipe, {"layers": [16, 8], "epochs": 1, "batch_size": 32})
    seen = _record_steps(monkeypatch)
    run.run_training(settings, quiet=True)
    assert len(seen) == 1  # one Step, called for every step of the run
    phases = profile_recipe.profile(settings, 32, 128, "wall")
    assert len(seen) == 2
    ours, theirs = seen
    for key in ("config", "repr", "scaling", "optimizer", "smoothing", "scaler"):
        assert ours[key] == theirs[key], key
    assert ours["config"]["dropout"][0] == (0.2 if recipe == "default-long" else 0.0)
    assert ours["weights"].keys() == theirs["weights"].keys()
    for name, value in ours["weights"].items():
        np.testing.assert_array_equal(theirs["weights"][name], value)
    assert set(PHASES) <= set(phases)


def test_the_bench_runner_steps_with_fits_step(monkeypatch):
    from xpnet.bench.runners import XpnetRunner
    from xpnet.bench.targets import Target

    X = np.random.default_rng(0).integers(0, 256, (64, 784), dtype=np.uint8)
    y = np.random.default_rng(1).integers(0, 10, 64).astype(np.int32)
    seen = _record_steps(monkeypatch)
    runner = XpnetRunner(Target("numpy", "cpu"), X, y, 16)
    runner.step()
    runner.epoch()
    assert len(seen) == 2 and all(entry["config"]["sizes"] == [784, 128, 64, 10] for entry in seen)


def test_build_takes_each_optimizers_declared_hyperparameters():
    settings = {"layers": [4], "optimizer": "adam", "lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6}
    net, optimizer = build({**settings, "momentum": 0.9, "norm": "layer"}, 3, 2)
    assert (optimizer.beta1, optimizer.beta2, optimizer.eps, optimizer.lr) == (0.8, 0.99, 1e-6, 0.01)
    assert net.norm == "layer" and net.sizes == [3, 4, 2]
    _, sgd = build({"layers": [4], "optimizer": "sgd", "momentum": 0.5, "beta1": 0.1}, 3, 2)
    assert sgd.momentum == 0.5 and not hasattr(sgd, "beta1")
