"""Named recipes: valid settings, lookup errors, and a tiny training run of each."""

from __future__ import annotations

import numpy as np
import pytest

from xpnet import recipes
from xpnet.activations import get_activation
from xpnet.data import SCALINGS, Scaling, train_val_split
from xpnet.errors import ConfigError
from xpnet.init import INITIALIZERS, init_name
from xpnet.losses import loss_name
from xpnet.network import MLP
from xpnet.optim import SCHEDULES, get_optimizer, get_schedule
from xpnet.recipes import RECIPES, SETTINGS, Recipe, get_recipe
from xpnet.task import decide_task

ALL = sorted(RECIPES)
OPTIMIZER_KEYS = ("lr", "momentum", "nesterov", "weight_decay", "schedule")


def test_the_issue_names_every_recipe():
    assert {
        "sigmoid-mse",
        "quadratic-sigmoid",
        "relu-momentum",
        "sigmoid-bce",
        "early-stopping",
        "regression",
        "default",
    } <= set(RECIPES)


@pytest.mark.parametrize("name", ALL)
def test_settings_use_only_cli_option_names(name):
    recipe = RECIPES[name]
    assert recipe.name == name
    assert recipe.description
    assert set(recipe.settings) <= set(SETTINGS)


def test_recipe_settings_match_the_cli_options():
    from xpnet.run import BASE_SETTINGS

    assert set(SETTINGS) <= set(BASE_SETTINGS)


def test_a_recipe_runs_from_python(tmp_path, monkeypatch):
    """``run_recipe`` is ``python -m xpnet train --recipe NAME`` without the command line."""
    from xpnet.data import write_idx
    from xpnet.run import run_recipe

    rng = np.random.default_rng(0)
    for prefix, n in (("train", 120), ("t10k", 40)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)).astype(np.uint8))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels)
    result = run_recipe("relu-momentum", epochs=1, data_dir=str(tmp_path))
    assert result["epochs"] == 1 and 0.0 <= result["test"]["accuracy"] <= 1.0
    assert result["recipe"] == "relu-momentum"


@pytest.mark.parametrize("name", ALL)
def test_setting_values_are_valid(name):
    s = RECIPES[name].settings
    layers = s.get("layers", [])
    assert isinstance(layers, list) and all(isinstance(n, int) and n > 0 for n in layers)
    for key in ("activation", "output"):
        if s.get(key) is not None:
            get_activation(s[key])
    if "loss" in s:
        loss_name(s["loss"])
    if s.get("init", "auto") != "auto":
        assert init_name(s["init"]) in INITIALIZERS
    if "optimizer" in s:
        get_optimizer(s["optimizer"], **{k: s[k] for k in OPTIMIZER_KEYS if k in s})
    if "schedule" in s:
        assert s["schedule"] in SCHEDULES
        get_schedule(s["schedule"])
    if "scaling" in s:
        assert s["scaling"] in SCALINGS
    assert 0.0 <= s.get("dropout", 0.0) < 1.0
    assert 0.0 <= s.get("val_split", 0.0) < 1.0
    assert 0.0 <= s.get("label_smoothing", 0.0) < 1.0
    for key in ("batch_size", "epochs"):
        if key in s:
            assert isinstance(s[key], int) and s[key] > 0
    if s.get("patience") is not None:
        assert isinstance(s["patience"], int) and s["patience"] > 0
        assert s.get("val_split", 0.0) > 0, "early stopping needs a validation split"


def test_module_attributes_name_the_recipes():
    assert recipes.sigmoid_mse is RECIPES["sigmoid-mse"]
    assert recipes.quadratic_sigmoid.settings["lr"] == 3.0
    assert recipes.default is get_recipe("default")
    assert "early_stopping" in dir(recipes)
    with pytest.raises(AttributeError):
        recipes.no_such_recipe  # noqa: B018


def test_get_recipe_accepts_underscores():
    assert get_recipe("relu_momentum") is RECIPES["relu-momentum"]


def test_unknown_recipe_lists_the_names():
    with pytest.raises(ConfigError) as info:
        get_recipe("lenet")
    message = str(info.value)
    assert "'lenet'" in message
    for name in RECIPES:
        assert name in message


def test_recipes_are_frozen_and_refuse_unknown_settings():
    with pytest.raises(AttributeError):
        RECIPES["default"].name = "other"
    with pytest.raises(ConfigError, match="learning_rate"):
        Recipe("x", "typo", {"learning_rate": 0.1})


@pytest.mark.parametrize("name", ALL)
def test_each_recipe_trains_a_tiny_run(name):
    """1 epoch on 200 random samples, wired the way the CLI wires a recipe's settings."""
    s = RECIPES[name].settings
    rng = np.random.default_rng(0)
    regression = decide_task(s.get("loss", "cross_entropy"), s.get("output")) == "regression"
    features = 10 if regression else 784
    X = rng.integers(0, 256, (200, features)).astype(np.uint8 if not regression else np.float32)
    y = rng.standard_normal(200).astype(np.float32) if regression else rng.integers(0, 10, 200).astype(np.int32)
    X_train, y_train, X_val, y_val = train_val_split(X, y, s.get("val_split", 0.0), seed=s.get("seed", 0))
    net = MLP(
        [features, *s.get("layers", [128, 64]), 1 if regression else 10],
        activation=s.get("activation", "relu"),
        loss=s.get("loss", "cross_entropy"),
        output=s.get("output"),
        init=s.get("init", "auto"),
        dropout=s.get("dropout", 0.0),
        seed=s.get("seed", 0),
        huber_delta=s.get("huber_delta", 1.0),
    )
    net.set_scaling(Scaling.fit(s.get("scaling", "unit"), X_train))
    optimizer = get_optimizer(s.get("optimizer", "sgd"), **{k: s[k] for k in OPTIMIZER_KEYS if k in s})
    history = net.fit(
        X_train,
        y_train,
        epochs=1,
        batch_size=s.get("batch_size", 64),
        optimizer=optimizer,
        validation_data=(X_val, y_val) if len(X_val) else None,
        patience=s.get("patience"),
        label_smoothing=0.0 if regression else s.get("label_smoothing", 0.0),
        seed=s.get("seed", 0),
    )
    assert history.epoch == 1
    metrics = net.evaluate(X, y)
    assert np.isfinite(metrics["loss"])
    assert ("r2" in metrics) if regression else ("accuracy" in metrics)
