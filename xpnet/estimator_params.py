"""The estimators' hyperparameters, written once: names, defaults, and the ``__init__`` made from them.

scikit-learn reads an estimator's parameters from its ``__init__`` signature and wants
``__init__`` to store each one unchanged. The classifier and the regressor share almost all
of ``MLPClassifier``'s parameters, so instead of three copies of a 30-line signature each
class names only what it adds, and ``estimator_init`` builds an ``__init__`` whose signature
(``inspect.signature``, ``help()``, scikit-learn's ``get_params``) lists them all.
"""

from __future__ import annotations

import inspect

#: ``MLPClassifier``'s hyperparameters that xpnet takes, and xpnet's own, with their defaults.
SHARED_PARAMETERS = {
    "hidden_layer_sizes": (100,),
    "activation": "relu",
    "solver": "adam",
    "alpha": 0.0001,
    "batch_size": "auto",
    "learning_rate_init": 0.001,
    "schedule": "constant",
    "max_iter": 200,
    "shuffle": True,
    "random_state": None,
    "tol": 1e-4,
    "verbose": False,
    "warm_start": False,
    "momentum": 0.9,
    "nesterovs_momentum": True,
    "early_stopping": False,
    "validation_fraction": 0.1,
    "beta_1": 0.9,
    "beta_2": 0.999,
    "epsilon": 1e-8,
    "n_iter_no_change": 10,
    "dropout": 0.0,
    "norm": "none",
    "init": "auto",
    "scaling": None,
    "dtype": "float32",
    "backend": None,
    "device": None,
}
#: Passed by position too, as scikit-learn's MLPs allow; the rest are keyword-only.
POSITIONAL = ("hidden_layer_sizes", "activation")


def init_signature(own_parameters: dict) -> inspect.Signature:
    """``(self, hidden_layer_sizes, activation, *, ...)``: the shared parameters, then a class's own."""
    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for name, default in {**SHARED_PARAMETERS, **own_parameters}.items():
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if name in POSITIONAL else inspect.Parameter.KEYWORD_ONLY
        parameters.append(inspect.Parameter(name, kind, default=default))
    return inspect.Signature(parameters)


def estimator_init(own_parameters: dict):
    """An ``__init__`` that stores every parameter unchanged, as scikit-learn requires."""
    signature = init_signature(own_parameters)

    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        for name, value in list(bound.arguments.items())[1:]:
            setattr(self, name, value)

    __init__.__signature__ = signature
    __init__.__doc__ = "Store the hyperparameters unchanged; ``fit`` checks them (scikit-learn's rule)."
    return __init__
