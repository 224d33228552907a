"""The PyTorch twin of a recipe (the peer of scripts/time_to_accuracy.py) trains what xpnet's fit trains."""

import numpy as np
import pytest

from xpnet.data import train_val_split
from xpnet.errors import ConfigError
from xpnet.network import MLP
from xpnet.optim import get_optimizer
from xpnet.run import resolve_settings
from xpnet.scaling import Scaling
from xpnet.train import fit

torch = pytest.importorskip("torch")
torch_recipe = pytest.importorskip("xpnet.bench.torch_recipe")

SIZES = [20, 16, 8, 4]


def _data(seed=1):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (1000, SIZES[0]), dtype=np.uint8)
    y = X[:, : SIZES[-1]].argmax(axis=1)  # learnable from the inputs
    return X, y.astype(np.int32)


@pytest.mark.parametrize(
    "overrides",
    [
        {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.05, "schedule": "cosine", "label_smoothing": 0.1},
        {"optimizer": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": True, "schedule": "warmup-cosine"},
        {"optimizer": "adamw", "lr": 0.01, "schedule": "warmup-cosine", "monitor": "val_accuracy"},
    ],
)
def test_the_twin_trains_and_keeps_the_weights_fit_does(overrides):
    settings = resolve_settings(
        "default", {"layers": SIZES[1:-1], "epochs": 4, "batch_size": 32, "dtype": "float64", "seed": 3, **overrides}
    )
    X, y = _data()
    X_train, y_train, X_val, y_val = train_val_split(X, y, 0.2, seed=3)
    scaling = Scaling.fit("unit", X_train)

    net = MLP(SIZES, "relu", "cross_entropy", init=settings["init"], dtype="float64", seed=3)
    net.set_scaling(scaling)
    options = {k: settings[k] for k in ("lr", "momentum", "nesterov", "weight_decay", "schedule")}
    history = fit(
        net,
        X_train,
        y_train,
        epochs=4,
        batch_size=32,
        optimizer=get_optimizer(settings["optimizer"], **options),
        validation_data=(X_val, y_val),
        label_smoothing=settings["label_smoothing"],
        monitor=settings["monitor"],
        seed=3,
    )

    model = torch_recipe.build_model(settings, SIZES)
    labels = lambda v: torch.from_numpy(v.astype(np.int64))  # noqa: E731
    train = (torch_recipe.Inputs(X_train, scaling, torch.float64), labels(y_train))
    validation = (torch_recipe.Inputs(X_val, scaling, torch.float64), labels(y_val))
    settings["patience"] = None
    result = torch_recipe.fit(model, torch_recipe.build_optimizer(settings, model), settings, train, validation)

    # float64 on both sides: the two differ only in rounding (Adam amplifies it a little)
    np.testing.assert_allclose([r["val_loss"] for r in result["records"]], history.column("val_loss"), rtol=1e-6)
    np.testing.assert_allclose([r["loss"] for r in result["records"]], history.column("loss"), rtol=1e-6)
    assert result["best_epoch"] == history.best_epoch  # both put back the weights of that epoch
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    for i, linear in enumerate(linears):
        for name in ("weight", "bias"):
            mine = getattr(linear, name).detach().numpy()
            np.testing.assert_allclose(mine, net.state_dict()[f"layers.{i}.{name}"], rtol=1e-5, atol=1e-8)


def test_the_twin_refuses_what_it_does_not_reproduce():
    with pytest.raises(ConfigError, match="activation"):
        torch_recipe.check_supported(resolve_settings("sigmoid-mse", {}))
    with pytest.raises(ConfigError, match="unweighted training only, not class_weight 'balanced'"):
        torch_recipe.check_supported(resolve_settings("default", {"class_weight": "balanced"}))
