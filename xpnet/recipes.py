"""Named training recipes: the classic from-scratch networks, reproduced, and xpnet's own default.

A recipe is a dict of CLI settings (the option names of ``python -m xpnet``, without the
dashes, underscored), checked against the settings table (``xpnet.settings``) when it is
defined. The CLI applies a recipe's settings as defaults and lets any flag override them;
a recipe lists only the settings it cares about. ``docs/RECIPES.md``
explains each one and holds the accuracy ``scripts/recipes.py`` measured for it.

    >>> from xpnet import recipes
    >>> recipes.quadratic_sigmoid.settings["lr"]
    3.0
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xpnet.names import canonical
from xpnet.settings import RECIPE_SETTINGS, check_recipe

#: Every setting a recipe may give; the same names as the CLI's options.
SETTINGS = RECIPE_SETTINGS


@dataclass(frozen=True)
class Recipe:
    """A named configuration: ``settings`` maps CLI option names (``SETTINGS``) to values."""

    name: str
    description: str
    settings: dict = field(default_factory=dict)

    def __post_init__(self):
        check_recipe(self.name, self.settings)  # a typo or a bad value fails when the module is imported

    @property
    def attribute(self) -> str:
        """The module attribute this recipe is reachable as: ``xpnet.recipes.<attribute>``."""
        return self.name.replace("-", "_")


#: The regression recipe's settings, which regression-huber shares but for its loss.
_REGRESSION = {
    "dataset": "diabetes",
    "layers": [32],
    "activation": "leaky_relu(0.01)",
    "output": "identity",
    "loss": "mse",
    "optimizer": "sgd",
    "lr": 0.002,
    "batch_size": 442,
    "epochs": 1000,
    "val_split": 0.0,
    "scaling": "standard",
}

_RECIPES = [
    Recipe(
        "sigmoid-mse",
        "784-128-64-10, sigmoid hidden layers, softmax output, MSE on one-hot targets, N(0, 1) "
        "weights, plain SGD at 0.01 on mini-batches of 32: the Fashion-MNIST CLI program that "
        "reported 56-65% test accuracy. Saturated sigmoids and a tiny step make it crawl.",
        {
            "dataset": "fashion-mnist",
            "layers": [128, 64],
            "activation": "sigmoid",
            "output": "softmax",
            "loss": "mse",
            "init": "standard_normal",
            "optimizer": "sgd",
            "lr": 0.01,
            "batch_size": 32,
            "epochs": 10,
            "val_split": 0.0,
            "scaling": "unit",
        },
    ),
    Recipe(
        "quadratic-sigmoid",
        "784-30-10, sigmoid everywhere, quadratic cost C = 1/(2n) Σ||a - y||², N(0, 1) weights and "
        "biases, SGD with η = 3.0 on mini-batches of 10: the network of Nielsen's book, chapter 1 "
        "(5 epochs here; the book runs 30).",
        {
            "dataset": "fashion-mnist",
            "layers": [30],
            "activation": "sigmoid",
            "output": "sigmoid",
            "loss": "mse",
            "init": "standard_normal",
            "optimizer": "sgd",
            "lr": 3.0,
            "batch_size": 10,
            "epochs": 5,
            "val_split": 0.0,
            "scaling": "unit",
        },
    ),
    Recipe(
        "relu-momentum",
        "784-128-64-10 ReLU, softmax cross-entropy, SGD at 0.01 with momentum 0.9, batches of 64, "
        "5 epochs, inputs normalised to [-1, 1]: the usual PyTorch tutorial MLP.",
        {
            "dataset": "fashion-mnist",
            "layers": [128, 64],
            "activation": "relu",
            "loss": "cross_entropy",
            "optimizer": "sgd",
            "lr": 0.01,
            "momentum": 0.9,
            "batch_size": 64,
            "epochs": 5,
            "val_split": 0.0,
            "scaling": "symmetric",
        },
    ),
    Recipe(
        "sigmoid-bce",
        "784-256-10, sigmoid hidden and output units, binary cross-entropy per output, Glorot "
        "uniform weights with the 4x sigmoid gain and zero biases, plain SGD at 0.001 on batches "
        "of 100 for 10 epochs: the from-scratch notebook.",
        {
            "dataset": "fashion-mnist",
            "layers": [256],
            "activation": "sigmoid",
            "output": "sigmoid",
            "loss": "binary_cross_entropy",
            "init": "glorot_uniform_sigmoid",
            "optimizer": "sgd",
            "lr": 0.001,
            "batch_size": 100,
            "epochs": 10,
            "val_split": 0.0,
            "scaling": "unit",
        },
    ),
    Recipe(
        "early-stopping",
        "784-128-64-10 ReLU with Adam at 0.001, batches of 64; 10% of the training set held out, "
        "training stops once the validation loss has not improved for 3 epochs and the best "
        "weights are put back: the train/test script.",
        {
            "dataset": "fashion-mnist",
            "layers": [128, 64],
            "activation": "relu",
            "loss": "cross_entropy",
            "optimizer": "adam",
            "lr": 0.001,
            "batch_size": 64,
            "epochs": 50,
            "val_split": 0.1,
            "patience": 3,
            "scaling": "unit",
        },
    ),
    Recipe(
        "regression",
        "10-32-1 LeakyReLU(0.01), linear output, MSE, full-batch gradient descent (the batch is "
        "larger than the whole data set) at 0.002 for 1000 steps, standardised inputs, on "
        "scikit-learn's diabetes data (442 patients; targets in original units).",
        _REGRESSION,
    ),
    Recipe(
        "regression-huber",
        "The regression recipe's network and steps with the Huber loss (huber_delta 50 progression "
        "points: squared error within 50 of the target, linear beyond), so the patients the model "
        "misses by most pull no harder than 50 points' worth.",
        {**_REGRESSION, "loss": "huber", "huber_delta": 50.0},
    ),
    Recipe(
        "default",
        "xpnet's own recipe, about 20 seconds on two CPU cores: 784-512-256-10 ReLU, He init, "
        "AdamW at 0.003 with weight decay 0.05, one warm-up epoch then cosine decay, label "
        "smoothing 0.1, batches of 512 for 12 epochs, standardised inputs, 10% held out for "
        "validation; docs/RECIPES.md logs the experiments behind each choice and the measured "
        "time to accuracy.",
        {
            "dataset": "fashion-mnist",
            "layers": [512, 256],
            "activation": "relu",
            "loss": "cross_entropy",
            "init": "auto",
            "dropout": 0.0,
            "optimizer": "adamw",
            "lr": 0.003,
            "weight_decay": 0.05,
            "schedule": "warmup-cosine",
            "batch_size": 512,
            "epochs": 12,
            "val_split": 0.1,
            "scaling": "standard",
            "label_smoothing": 0.1,
            "seed": 0,
        },
    ),
    Recipe(
        "default-long",
        "xpnet's longer recipe, about a minute for a few tenths of a point more: the default's network "
        "and optimizer with dropout 0.2 for 40 epochs, keeping the epoch with the highest validation "
        "accuracy; docs/RECIPES.md.",
        {
            "dataset": "fashion-mnist",
            "layers": [512, 256],
            "activation": "relu",
            "loss": "cross_entropy",
            "init": "auto",
            "dropout": 0.2,
            "optimizer": "adamw",
            "lr": 0.003,
            "weight_decay": 0.05,
            "schedule": "warmup-cosine",
            "batch_size": 512,
            "epochs": 40,
            "val_split": 0.1,
            "scaling": "standard",
            "label_smoothing": 0.1,
            "monitor": "val_accuracy",
            "seed": 0,
        },
    ),
]

#: Recipes by name, in the order the docs list them.
RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in _RECIPES}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (any case; underscores work for hyphens)."""
    return RECIPES[canonical(name, RECIPES, "recipe")]


def __getattr__(attribute: str) -> Recipe:
    # xpnet.recipes.sigmoid_mse and friends, without a second copy of each name.
    for recipe in _RECIPES:
        if recipe.attribute == attribute:
            return recipe
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *(recipe.attribute for recipe in _RECIPES)])
