"""One number check (``xpnet.checks``) behind every number a user passes: generated cases.

Each NumPy integer and float scalar type is passed, at generated values, to every entry
point that checks a number: ``MLP.fit``'s epochs and batch_size, the estimators'
max_iter/batch_size/alpha, the optimizers' lr, the settings table. A scalar of the right
kind is accepted (and stored as a Python number, so JSON metadata can hold it); a bool
(``True``, ``np.True_``) is refused where a number belongs, whatever the entry point.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpnet import MLP
from xpnet.checks import is_number, is_whole
from xpnet.errors import ConfigError
from xpnet.estimators import XpnetClassifier
from xpnet.optim import SGD, Adam
from xpnet.settings import check_setting

INTS = [int, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
FLOATS = [float, np.float16, np.float32, np.float64]
BOOLS = [True, False, np.True_, np.False_]
_X = np.random.default_rng(0).normal(size=(24, 3)).astype(np.float32)
_Y = (_X[:, 0] > 0).astype(np.int64)


def test_the_helpers_take_numpy_scalars_and_refuse_bools_and_oddities():
    for kind in INTS:
        assert is_whole(kind(3)) and is_number(kind(3))
    for kind in FLOATS:
        assert is_number(kind(0.5)) and not is_whole(kind(2.0))
    for value in [*BOOLS, None, "3", [3], 10**400, float("nan"), np.float32("inf"), np.array([1])]:
        assert not is_number(value)
    assert not any(is_whole(v) for v in BOOLS)


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(INTS), epochs=st.integers(0, 2), batch=st.integers(1, 30))
def test_fit_takes_numpy_integers_for_epochs_and_batch_size(kind, epochs, batch):
    net = MLP([3, 4, 2], seed=0)
    history = net.fit(_X, _Y, epochs=kind(epochs), batch_size=kind(batch), verbose=False)
    assert history.epoch == epochs and type(history.epoch) is int


@pytest.mark.parametrize("value", BOOLS)
@pytest.mark.parametrize("name", ["epochs", "batch_size", "patience"])
def test_fit_refuses_a_bool_for_a_count(name, value):
    with pytest.raises(ConfigError, match=name):
        MLP([3, 4, 2], seed=0).fit(_X, _Y, **{name: value}, verbose=False)


@settings(max_examples=12, deadline=None)
@given(whole=st.sampled_from(INTS), real=st.sampled_from(FLOATS), iters=st.integers(1, 3), batch=st.integers(1, 24))
def test_estimators_take_numpy_scalars_for_every_number(whole, real, iters, batch):
    clf = XpnetClassifier(
        hidden_layer_sizes=(whole(4),), max_iter=whole(iters), batch_size=whole(batch), alpha=real(0.001),
        learning_rate_init=real(0.01), n_iter_no_change=whole(2), random_state=0,
    )  # fmt: skip
    clf.fit(_X, _Y)
    assert clf.n_iter_ <= iters


@pytest.mark.parametrize("value", BOOLS)
@pytest.mark.parametrize("name", ["max_iter", "batch_size", "alpha", "n_iter_no_change"])
def test_estimators_refuse_a_bool_for_a_number(name, value):
    with pytest.raises(ConfigError, match=name):
        XpnetClassifier(**{name: value}).fit(_X, _Y)


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(INTS + FLOATS), value=st.integers(1, 100))
def test_the_settings_table_and_optimizers_take_numpy_scalars(kind, value):
    assert type(check_setting("epochs", np.int64(value))) is int
    assert check_setting("lr", kind(value)) == float(kind(value))
    assert SGD(lr=kind(value)).lr == float(kind(value))
    Adam(lr=kind(value), eps=np.float32(1e-8))
    if kind in INTS:
        assert type(check_setting("batch_size", kind(value))) is int
        assert check_setting("layers", [kind(value)]) == [value]


@pytest.mark.parametrize("value", BOOLS)
def test_the_settings_table_and_optimizers_refuse_bools(value):
    for name in ("epochs", "lr", "batch_size", "seed", "dropout"):
        with pytest.raises(ConfigError):
            check_setting(name, value)
    with pytest.raises(ConfigError, match="lr"):
        SGD(lr=value)


def test_grid_search_over_numpy_ranges():
    from sklearn.model_selection import GridSearchCV

    search = GridSearchCV(XpnetClassifier(hidden_layer_sizes=(4,)), {"max_iter": np.arange(2, 4)}, cv=2)
    search.fit(_X, _Y)
    assert search.best_params_["max_iter"] in (2, 3)
