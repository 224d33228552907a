"""The settings table: the CLI's train options, recipes, run_training and resumed checkpoints all read it."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from conftest import blobs

from xpnet.checkpoint import save_model
from xpnet.cli import build_parser
from xpnet.errors import ConfigError, XpnetError
from xpnet.network import MLP
from xpnet.optim import SGD
from xpnet.recipes import RECIPES, Recipe
from xpnet.run import resumed_settings, run_recipe, run_training
from xpnet.settings import BASE_SETTINGS, RECIPE_SETTINGS, RUN_SETTINGS, TABLE, checked
from xpnet.train import fit

#: The train command's options that are about this invocation, not what is trained.
NOT_SETTINGS = {
    "help",
    "recipe",
    "out",
    "resume",
    "history",
    "plot",
    "tensorboard",
    "quiet",
    "progress",
    "compile_steps",
    "threads",
}


def _train_parser() -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["train"]


def test_every_train_option_is_a_table_row_and_back():
    actions = {action.dest: action for action in _train_parser()._actions}
    assert set(actions) - NOT_SETTINGS == set(TABLE)
    for name, setting in TABLE.items():
        assert setting.flag in actions[name].option_strings
        assert actions[name].help.startswith(setting.help)  # then the default recipe's value, where it has one
        assert actions[name].default is None  # a flag not given leaves the recipe's value


def test_cli_values_pass_the_tables_check_and_come_back_canonical():
    args = _train_parser().parse_args(
        ["--schedule", "Warmup_Cosine", "--backend", "NumPy", "--loss", "CE", "--init", "Kaiming-Normal"]
    )
    canonical = ("warmup-cosine", "numpy", "cross_entropy", "he_normal")
    assert (args.schedule, args.backend, args.loss, args.init) == canonical
    args = _train_parser().parse_args(["--layers", "16,8", "--lr", "0.5", "--nesterov", "--patience", "3"])
    assert (args.layers, args.lr, args.nesterov, args.patience) == ([16, 8], 0.5, True, 3)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr", "-1"], "argument --lr: expected a positive number"),
        (["--weight-decay", "-0.1"], "argument --weight-decay: expected a number >= 0"),
        (["--schedule", "linear"], "unknown schedule 'linear'; choose from constant, step, cosine, warmup-cosine"),
        (["--dtype", "int8"], "unknown dtype 'int8'; choose from float32, float64"),
    ],
)
def test_cli_refuses_what_the_table_refuses(argv, message, capsys):
    with pytest.raises(SystemExit):
        _train_parser().parse_args(argv)
    assert message in capsys.readouterr().err


def test_defaults_pass_their_own_checks():
    assert checked(BASE_SETTINGS) == BASE_SETTINGS
    assert set(RUN_SETTINGS) == {"backend", "device", "data_dir", "epochs", "distributed", "tf32", "memory_limit"}
    assert set(BASE_SETTINGS) == set(TABLE) - {"backend", "device", "data_dir", "distributed", "memory_limit"}
    streamed = {"target", "val_data", "chunk_rows", "shuffle_buffer"}  # a dataset's, not a recipe's
    assert set(RECIPE_SETTINGS) == set(BASE_SETTINGS) - {
        "task",
        "dtype",
        "precision",
        "tf32",
        "sample_weight",
        *streamed,
    }


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_validates_and_is_already_canonical(name):
    assert checked(RECIPES[name].settings) == RECIPES[name].settings


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lr": -1.0}, "recipe 'x': setting 'lr' = -1.0 is not valid: expected a positive number"),
        ({"layers": "128"}, "setting 'layers'"),
        ({"activation": "swish"}, "unknown activation 'swish'"),
        ({"batch_size": 0}, "setting 'batch_size'"),
        ({"dtype": "float64"}, "unknown settings dtype"),
    ],
)
def test_a_recipe_with_a_bad_value_is_refused_when_defined(settings, message):
    with pytest.raises(ConfigError, match=message):
        Recipe("x", "a typo", settings)


def test_run_training_checks_its_settings_before_any_data():
    with pytest.raises(ConfigError, match=r"setting 'epochs' = -1 is not valid: expected a whole number >= 0"):
        run_recipe("default", epochs=-1, dataset="/nonexistent/never-read.npz")
    with pytest.raises(ConfigError, match="setting 'momentum'"):
        run_training({"momentum": 1.5, "dataset": "/nonexistent/never-read.npz"})


def _checkpoint(path, training: dict):
    X, y = blobs(n=40, features=4, classes=3)
    net = MLP([4, 6, 3])
    optimizer = SGD(lr=0.01)
    history = fit(net, X, y, epochs=1, batch_size=10, optimizer=optimizer)
    save_model(path, net, training=training, history=history, optimizer=optimizer)
    return path


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("lr", -0.5, "expected a positive number"),
        ("lr", "0.1", "expected a positive number"),
        ("epochs", 2.5, "expected a whole number >= 0"),
        ("schedule", "sometimes", "unknown schedule 'sometimes'"),
        ("layers", [8, 0], "layer widths must be from 1 to"),
        ("backend", 7, "unknown backend 7"),
    ],
)
def test_resume_refuses_a_bad_saved_setting_naming_file_and_key(tmp_path, key, value, reason):
    path = _checkpoint(tmp_path / "m.ckpt.safetensors", {**BASE_SETTINGS, key: value})
    with pytest.raises(XpnetError) as info:  # the model file's schema checks each saved setting by its row
        resumed_settings(str(path), {})
    message = str(info.value)
    assert message.startswith(f"{path}: metadata training.{key}:")
    assert reason in message


def test_resume_accepts_old_spellings_and_takes_only_run_settings_from_now(tmp_path):
    old = {**BASE_SETTINGS, "schedule": "Warmup_Cosine", "activation": "ReLU", "recipe": "default"}
    path = _checkpoint(tmp_path / "m.ckpt.safetensors", old)
    settings = resumed_settings(str(path), {"epochs": 7, "lr": 9.0, "backend": "numpy"})
    assert (settings["schedule"], settings["activation"], settings["recipe"]) == ("warmup-cosine", "relu", "default")
    assert (settings["epochs"], settings["lr"], settings["backend"]) == (7, BASE_SETTINGS["lr"], "numpy")
    assert np.isfinite(settings["lr"])
