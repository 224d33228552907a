"""Wrong calls through the Python API raise XpnetError, never NumPy's or Python's own exceptions.

Hypothesis builds calls of ``fit``, ``predict``, ``predict_proba``, ``evaluate`` and
``gradients`` with inputs a user could get wrong (the wrong number of features, 1-D or
3-D arrays, empty sets, strings, ragged lists, NaN, labels out of range, targets of the
wrong width, None), on a classifier and a regression network. Each call either works
or raises an ``XpnetError``; the wrong feature count and out-of-range labels always
raise. Then: a one-class dataset and a softmax over one output are refused, and class
names that look like CSV (commas, quotes, newlines) stay one field in predict's CSV.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpnet.checkpoint import save_model
from xpnet.cli import main
from xpnet.errors import ConfigError, DataError, XpnetError
from xpnet.network import MLP

CALLS = settings(max_examples=200, deadline=None, derandomize=True)
FEW = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def _good(n=6, features=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, features)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(np.int32)


_numbers = st.sampled_from([0.0, 1.0, -1.0, math.nan, math.inf, 1e38])
X_VALUES = st.one_of(
    st.tuples(st.integers(0, 5), st.integers(0, 6)).map(lambda s: np.zeros(s, np.float32)),  # any 2-D shape
    st.integers(0, 5).map(lambda n: np.zeros(n, np.float32)),  # 1-D
    st.just(np.zeros((2, 3, 1), np.float32)),  # 3-D
    st.lists(_numbers, min_size=3, max_size=3).map(lambda row: np.array([row], np.float32)),  # NaN, inf
    st.just([["a", "b", "c"]]),
    st.just([[1.0, 2.0, 3.0], [1.0]]),  # ragged
    st.just(np.zeros((2, 3), np.complex64)),
    st.none(),
    st.just({"X": 1}),
    st.just(np.zeros((4, 3), np.uint8)),  # a valid one now and then
    st.just(_good(4)[0]),
)
Y_VALUES = st.one_of(
    st.lists(st.integers(-3, 4), min_size=0, max_size=6).map(lambda v: np.array(v, np.int64)),  # out of range
    st.lists(_numbers, min_size=0, max_size=6).map(lambda v: np.array(v, np.float32)),
    st.tuples(st.integers(0, 5), st.integers(0, 3)).map(lambda s: np.zeros(s, np.float32)),
    st.just(["cat", "dog", "cat", "dog"]),
    st.none(),
    st.just(np.ones(4, np.bool_)),
    st.just(_good(4)[1]),
)


@CALLS
@given(call=st.sampled_from(["fit", "predict", "predict_proba", "evaluate", "gradients"]), X=X_VALUES, y=Y_VALUES,
       regression=st.booleans())  # fmt: skip
def test_every_wrong_call_raises_an_xpnet_error(call, X, y, regression):
    net = MLP([3, 4, 1], loss="mse") if regression else MLP([3, 4, 2])
    try:
        _call(net, call, X, y)
    except XpnetError:
        return
    shape = np.shape(X) if isinstance(X, np.ndarray) else None
    assert shape is not None and len(shape) == 2 and shape[0] > 0 and shape[1] == 3, f"{call} accepted X {X!r}"
    if call in ("fit", "evaluate", "gradients") and not regression and np.asarray(y).dtype.kind in "iu":
        assert np.asarray(y).min() >= 0 and np.asarray(y).max() < 2, f"{call} accepted labels {y!r}"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("call", ["fit", "predict", "predict_proba", "evaluate", "gradients"])
def test_nan_or_infinite_inputs_are_refused_before_any_work(call, bad):
    # The fuzzer above accepts any XpnetError (a NaN loss ends fit with a DivergenceError anyway, and
    # predict would just answer NaN): here each call must refuse the value itself, naming its argument.
    X, y = _good()
    X[2, 1] = bad
    net = MLP([3, 4, 2])
    with pytest.raises(ConfigError, match=r"^[xX] holds NaN or infinite values"):  # gradients(x, y) says x
        _call(net, call, X, y)


def _call(net, call: str, X, y) -> None:
    """The public call ``call`` on ``(X, y)``, as a user makes it (one epoch of batch 2 for ``fit``)."""
    if call == "fit":
        net.fit(X, y, epochs=1, batch_size=2)
    elif call in ("predict", "predict_proba"):
        getattr(net, call)(X)
    else:
        getattr(net, call)(X, y)


@pytest.mark.parametrize("labels", [[0, 1, 2, 0], [0, 1, -1, 0], [5, 5, 5, 5]])
def test_fit_refuses_labels_the_network_has_no_output_for(labels):
    X, _ = _good(4)
    with pytest.raises(ConfigError, match="labels run from"):
        MLP([3, 4, 2]).fit(X, np.array(labels), epochs=1, batch_size=2)


def test_a_softmax_over_one_output_is_refused():
    with pytest.raises(ConfigError, match="softmax over 1 output"):
        MLP([3, 4, 1], loss="cross_entropy")


def test_a_one_class_dataset_is_refused_by_name(tmp_path, capsys):
    X, _ = _good(20)
    np.savez(tmp_path / "one.npz", X=X, y=np.zeros(20, np.int32))
    code = main(["train", "--dataset", str(tmp_path / "one.npz"), "--epochs", "1", "--out", str(tmp_path / "m")])
    assert code == 2
    assert "one.npz: every label is 0, a single class" in capsys.readouterr().err
    from xpnet.data import load_dataset

    with pytest.raises(DataError, match="single class"):
        load_dataset(tmp_path / "one.npz")


_names = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)


@FEW
@given(names=st.lists(_names, min_size=2, max_size=2))
def test_class_names_stay_one_csv_field(tmp_path_factory, names):
    folder = tmp_path_factory.mktemp("names")
    X, _ = _good(6)
    net = MLP([3, 4, 2])
    save_model(folder / "m.safetensors", net, class_names=names)
    np.savez(folder / "x.npz", X=X)
    assert main(["predict", str(folder / "m.safetensors"), str(folder / "x.npz"), "--out", str(folder / "p.csv")]) == 0
    with open(folder / "p.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.reader(stream))
    labels = net.predict(X)
    assert rows[0] == ["index", "label", "class"]
    assert rows[1:] == [[str(i), str(label), names[label]] for i, label in enumerate(labels)]


def test_predict_on_an_empty_input_says_so(tmp_path, capsys):
    net = MLP([3, 4, 2])
    save_model(tmp_path / "m.safetensors", net)
    np.savez(tmp_path / "x.npz", X=np.zeros((0, 3), np.float32))
    assert main(["predict", str(tmp_path / "m.safetensors"), str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xpnet: error: ") and "x.npz" in err and "no samples" in err
    assert "Traceback" not in err
