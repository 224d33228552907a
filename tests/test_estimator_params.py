"""The estimators' signature, written once (xpnet/estimator_params.py), as scikit-learn reads it."""

from __future__ import annotations

import inspect

import pytest

pytest.importorskip("sklearn")
from sklearn.neural_network import MLPClassifier, MLPRegressor

from xpnet.estimator_params import SHARED_PARAMETERS
from xpnet.estimators import XpnetClassifier, XpnetRegressor


def _defaults(cls) -> dict:
    return {name: p.default for name, p in inspect.signature(cls).parameters.items()}


@pytest.mark.parametrize(("ours", "theirs"), [(XpnetClassifier, MLPClassifier), (XpnetRegressor, MLPRegressor)])
def test_parameters_scikit_learn_shares_keep_its_defaults(ours, theirs):
    mine, sklearns = _defaults(ours), _defaults(theirs)
    shared = set(mine) & set(sklearns)
    assert {"hidden_layer_sizes", "activation", "solver", "alpha", "batch_size", "beta_2"} <= shared
    assert {name: mine[name] for name in shared} == {name: sklearns[name] for name in shared}


def test_each_class_adds_its_own_parameters_to_the_shared_ones():
    assert set(_defaults(XpnetClassifier)) == set(SHARED_PARAMETERS) | {"class_weight"}
    assert set(_defaults(XpnetRegressor)) == set(SHARED_PARAMETERS) | {"loss", "huber_delta"}
    assert XpnetClassifier().get_params()["class_weight"] is None
    assert XpnetRegressor(loss="huber").get_params()["loss"] == "huber"


def test_two_parameters_by_position_the_rest_by_keyword_and_unknown_names_refused():
    net = XpnetClassifier((8,), "tanh", max_iter=3)
    assert (net.hidden_layer_sizes, net.activation, net.max_iter) == ((8,), "tanh", 3)
    with pytest.raises(TypeError):
        XpnetClassifier((8,), "tanh", "sgd")
    with pytest.raises(TypeError, match="learning_rat"):
        XpnetRegressor(learning_rat=0.1)


def test_values_are_stored_unchanged_as_scikit_learn_requires():
    sizes = [16, 8]
    assert XpnetRegressor(hidden_layer_sizes=sizes).hidden_layer_sizes is sizes


def test_a_subclass_with_its_own_init_keeps_it():
    class Mine(XpnetClassifier):
        def __init__(self, width=4):
            super().__init__(hidden_layer_sizes=(width,))
            self.width = width

    assert Mine(width=6).hidden_layer_sizes == (6,)
    assert "width" in inspect.signature(Mine).parameters
