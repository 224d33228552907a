"""One builder: the network and the optimizer a run's settings describe.

``python -m xpnet train`` (``run_training``), a resumed run, the scikit-learn estimators,
the bench harness and scripts/ all build here, from a settings dict keyed as the table of
``xpnet.settings`` (``layers``, ``activation``, ``norm``, ``optimizer``, ``lr``, ...), so
that what a profiler times or an estimator trains is the network a run trains.
"""

from __future__ import annotations

from xpnet.network import MLP
from xpnet.optim import Optimizer, get_optimizer
from xpnet.scaling import Scaling

#: The settings that shape the network (beside the data's widths); a missing one takes MLP's default.
NETWORK_SETTINGS = (
    "activation", "loss", "huber_delta", "output", "init", "dropout", "norm", "dtype", "precision", "seed",
)  # fmt: skip


def build_network(
    settings: dict, num_features: int, num_outputs: int, X_train=None, *, backend=None, device=None
) -> MLP:
    """The MLP of ``settings``: ``num_features`` inputs, the hidden ``layers``, ``num_outputs`` outputs;
    with ``X_train`` (host), its input scaling fitted on it (``settings["scaling"]``, default unit)."""
    options = {key: settings[key] for key in NETWORK_SETTINGS if settings.get(key) is not None}
    net = MLP([num_features, *settings["layers"], num_outputs], **options, backend=backend, device=device)
    if X_train is not None:
        net.set_scaling(Scaling.fit(settings.get("scaling") or "unit", X_train))
    return net


def build_optimizer(settings: dict) -> Optimizer:
    """The optimizer of ``settings``: ``optimizer`` names it; it takes the hyperparameters it declares."""
    return get_optimizer(settings.get("optimizer") or "sgd", **settings)


def build(settings: dict, num_features: int, num_outputs: int, X_train=None, **where) -> tuple[MLP, Optimizer]:
    """``(network, optimizer)`` as a run of ``settings`` trains them; ``where``: backend, device."""
    return build_network(settings, num_features, num_outputs, X_train, **where), build_optimizer(settings)
