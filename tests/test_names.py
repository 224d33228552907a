"""One spelling rule: every user-facing name accepts any case and `-` or `_`, and errors list the choices."""

from __future__ import annotations

import pytest

from xpnet import recipes
from xpnet.activations import ACTIVATIONS, get_activation
from xpnet.backend import BACKENDS, get_backend
from xpnet.data.datasets import SOURCES, load_dataset
from xpnet.data.regression import REGRESSION_DATASETS, load_regression
from xpnet.errors import ConfigError
from xpnet.init import INIT_CHOICES, init_spec
from xpnet.losses import LOSSES, loss_name
from xpnet.names import canonical, find
from xpnet.optim import OPTIMIZERS, SCHEDULES, get_optimizer, get_schedule


def spellings(name: str) -> list[str]:
    """The canonical name, upper-cased, and with every `-`/`_` swapped for the other."""
    swapped = name.translate(str.maketrans("-_", "_-"))
    return [name, name.upper(), swapped, swapped.title(), f"  {name}  "]


def test_canonical_accepts_case_and_separators_and_returns_the_choice():
    for spelling in spellings("warmup-cosine"):
        assert canonical(spelling, SCHEDULES, "schedule") == "warmup-cosine"
    assert canonical("CE", ("cross_entropy",), "loss", {"ce": "cross_entropy"}) == "cross_entropy"
    assert find("nope", SCHEDULES) is None
    assert find(3, SCHEDULES) is None


def test_canonical_refuses_with_every_choice_listed():
    with pytest.raises(ConfigError) as info:
        canonical("hinge", LOSSES, "loss")
    choices = "mse, cross_entropy, binary_cross_entropy, poisson, huber"
    assert str(info.value) == f"unknown loss 'hinge'; choose from {choices}"


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations(name):
    for spelling in spellings(name):
        assert get_activation(spelling).name == name
    assert get_activation("Leaky-ReLU(0.2)").spec() == "leaky_relu(0.2)"


@pytest.mark.parametrize("name", LOSSES)
def test_losses(name):
    assert {loss_name(spelling) for spelling in spellings(name)} == {name}


@pytest.mark.parametrize("name", INIT_CHOICES)
def test_inits(name):
    assert {init_spec(spelling) for spelling in spellings(name)} == {name}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizers(name):
    assert {type(get_optimizer(spelling, lr=0.1)) for spelling in spellings(name)} == {OPTIMIZERS[name]}


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedules(name):
    assert len({get_schedule(spelling) for spelling in spellings(name)}) == 1


@pytest.mark.parametrize("name", ["numpy", "array-api-strict"])
def test_backends(name):
    pytest.importorskip(name.replace("-", "_"))
    assert {get_backend(spelling).name for spelling in spellings(name)} == {name}


@pytest.mark.parametrize("name", list(recipes.RECIPES))
def test_recipes(name):
    assert {recipes.get_recipe(spelling).name for spelling in spellings(name)} == {name}


def test_dataset_names():
    for name in SOURCES:
        assert {find(spelling, SOURCES) for spelling in spellings(name)} == {name}
    assert load_regression("FRIEDMAN1").name == "friedman1"
    assert load_dataset("Friedman1").name == "friedman1"
    for name in REGRESSION_DATASETS:
        assert {find(spelling, REGRESSION_DATASETS) for spelling in spellings(name)} == {name}


@pytest.mark.parametrize(
    ("lookup", "choices"),
    [
        (get_activation, ACTIVATIONS),
        (loss_name, LOSSES),
        (init_spec, INIT_CHOICES),
        (lambda name: get_optimizer(name), OPTIMIZERS),
        (get_schedule, SCHEDULES),
        (get_backend, BACKENDS),
        (recipes.get_recipe, recipes.RECIPES),
    ],
)
def test_every_error_lists_the_choices(lookup, choices):
    with pytest.raises(ConfigError) as info:
        lookup("no-such-name")
    message = str(info.value)
    assert "'no-such-name'" in message
    assert message.endswith("choose from " + ", ".join(choices))
