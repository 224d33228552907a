"""One rule decides classification or regression; the network, the run and the CLI all use it."""

from __future__ import annotations

import numpy as np
import pytest

from xpnet.cli import main
from xpnet.errors import ConfigError
from xpnet.network import MLP
from xpnet.run import task_of
from xpnet.task import decide_task

RULE = [
    ("cross_entropy", None, "classification"),
    ("cross_entropy", "tanh", "classification"),
    ("binary_cross_entropy", None, "classification"),
    ("mse", None, "regression"),
    ("mse", "identity", "regression"),
    ("mse", "linear", "regression"),
    ("mse", "tanh", "regression"),
    ("mse", "relu", "regression"),
    ("mse", "leaky_relu(0.1)", "regression"),
    ("mse", "softmax", "classification"),
    ("mse", "sigmoid", "classification"),
    ("Quadratic", "Sigmoid", "classification"),
]


@pytest.mark.parametrize(("loss", "output", "task"), RULE)
def test_the_rule_and_everyone_who_uses_it(loss, output, task):
    assert decide_task(loss, output) == task
    assert MLP([3, 4, 2], loss=loss, output=output).is_classifier == (task == "classification")
    assert task_of({"loss": loss, "output": output}) == task


def test_a_given_task_must_agree_with_the_model():
    assert decide_task("mse", "tanh", given="Regression") == "regression"
    with pytest.raises(ConfigError, match=r"--task regression says the data holds regression targets.*--loss mse"):
        decide_task("cross_entropy", None, given="regression")
    with pytest.raises(ConfigError, match=r"holds class labels, but --loss mse with a tanh output makes a regression"):
        task_of({"loss": "mse", "output": "tanh", "task": "classification"})
    with pytest.raises(ConfigError, match="unknown task 'both'; choose from classification, regression"):
        decide_task("mse", given="both")


def test_mse_with_tanh_trains_as_regression_on_a_user_file(tmp_path, capsys):
    """Before the one rule, the data loaded as classes while the network regressed: a crash."""
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (200, 3)).astype(np.float32)
    path = tmp_path / "d.npz"
    np.savez(path, X=X, y=(0.5 * X[:, 0] - 0.3 * X[:, 1]).astype(np.float32))
    out = tmp_path / "m.safetensors"
    argv = ["train", "--dataset", str(path), "--loss", "mse", "--output", "tanh", "--layers", "8"]
    assert main([*argv, "--epochs", "2", "--val-split", "0", "--out", str(out), "--quiet"]) == 0
    assert "r2" in capsys.readouterr().out
    assert main(["evaluate", str(out), "--dataset", str(path)]) == 0
    assert "r2" in capsys.readouterr().out


def test_data_that_disagrees_with_the_model_is_refused_up_front(tmp_path, capsys):
    path = tmp_path / "labels.npz"
    np.savez(path, X=np.ones((20, 3), np.float32), y=np.arange(20) % 2)
    argv = ["train", "--dataset", "friedman1", "--loss", "cross_entropy", "--out", str(tmp_path / "m.safetensors")]
    assert main(argv) == 2
    assert "dataset 'friedman1' holds regression targets, but --loss cross_entropy" in capsys.readouterr().err
    argv = ["train", "--dataset", str(path), "--task", "classification", "--loss", "mse", "--output", "tanh"]
    assert main([*argv, "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "--task classification says the data holds class labels" in capsys.readouterr().err
