"""Input scaling and the validation split."""

import json

import numpy as np
import pytest

from xpnet.data.prep import Scaling, train_val_split
from xpnet.errors import ConfigError, DataError


def test_unit_on_uint8_is_divide_by_255():
    X = np.array([[0, 51, 255]], dtype=np.uint8)
    scaling = Scaling.fit("unit", X[:, :2])  # uses the dtype's range, not the data's
    assert scaling.shift == 0.0
    np.testing.assert_allclose(scaling.apply(X), [[0.0, 0.2, 1.0]], rtol=1e-6)
    assert scaling.apply(X).dtype == np.float32


def test_unit_and_symmetric_on_floats():
    X = np.array([[2.0, 4.0], [6.0, 10.0]])
    np.testing.assert_allclose(Scaling.fit("unit", X).apply(X), [[0, 0.25], [0.5, 1]], rtol=1e-6)
    np.testing.assert_allclose(Scaling.fit("symmetric", X).apply(X), [[-1, -0.5], [0, 1]], rtol=1e-6)
    u8 = np.array([[0, 255]], dtype=np.uint8)
    np.testing.assert_allclose(Scaling.fit("symmetric", u8).apply(u8), [[-1, 1]], rtol=1e-6)


def test_standard_per_feature_and_constant_feature_left_alone():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(5, 3, 1000), np.full(1000, 7.0)])
    scaling = Scaling.fit("standard", X)
    Z = scaling.apply(X)
    np.testing.assert_allclose(Z[:, 0].mean(), 0, atol=1e-5)
    np.testing.assert_allclose(Z[:, 0].std(), 1, atol=1e-4)
    assert scaling.scale[1] == 1.0
    np.testing.assert_allclose(scaling.apply(np.array([[5.0, 8.0]]))[0, 1], 1.0)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("rows", [1, 7, 1000, 2**17 // 3 + 5])  # one row, fewer than a block, several blocks
def test_standard_equals_numpys_float64_mean_and_std(dtype, rows):
    rng = np.random.default_rng(rows)
    X = (rng.random((rows, 3)) * 255).astype(dtype)
    scaling = Scaling.fit("standard", X)
    flat = X.astype(np.float64)
    np.testing.assert_array_equal(scaling.shift, flat.mean(axis=0).astype(np.float32))
    std = flat.std(axis=0)
    expected = np.where(std > 1e-8, 1.0 / np.maximum(std, 1e-8), 1.0).astype(np.float32)
    np.testing.assert_allclose(scaling.scale, expected, rtol=2e-7)


def test_constant_data_does_not_divide_by_zero():
    X = np.full((3, 2), 4.0)
    assert np.isfinite(Scaling.fit("unit", X).apply(X)).all()
    assert np.isfinite(Scaling.fit("symmetric", X).apply(X)).all()


def test_none_is_identity():
    X = np.array([[1.5, -2.0]])
    np.testing.assert_array_equal(Scaling.fit("none", X).apply(X), X.astype(np.float32))


@pytest.mark.parametrize("kind", ["unit", "symmetric", "standard", "none"])
def test_dict_round_trip_through_json(kind):
    X = np.random.default_rng(1).normal(size=(20, 3)).astype(np.float32)
    scaling = Scaling.fit(kind, X)
    back = Scaling.from_dict(json.loads(json.dumps(scaling.to_dict())), num_features=3)
    np.testing.assert_array_equal(back.apply(X), scaling.apply(X))


@pytest.mark.parametrize(
    "d",
    [
        None,
        [],
        {"kind": "unit", "shift": 0.0},
        {"kind": "unit", "shift": 0.0, "scale": 1.0, "code": "import os"},
        {"kind": "log", "shift": 0.0, "scale": 1.0},
        {"kind": 3, "shift": 0.0, "scale": 1.0},
        {"kind": "unit", "shift": "0", "scale": 1.0},
        {"kind": "unit", "shift": True, "scale": 1.0},
        {"kind": "unit", "shift": float("nan"), "scale": 1.0},
        {"kind": "unit", "shift": 10**400, "scale": 1.0},
        {"kind": "unit", "shift": 1e300, "scale": 1.0},
        {"kind": "standard", "shift": [], "scale": 1.0},
        {"kind": "standard", "shift": [1.0, "x"], "scale": 1.0},
        {"kind": "standard", "shift": [[1.0]], "scale": 1.0},
        {"kind": "standard", "shift": [1.0, 2.0], "scale": [1.0]},
        {"kind": "standard", "shift": [1.0, 2.0, 3.0], "scale": 1.0},
    ],
)
def test_from_dict_rejects_untrusted_input(d):
    with pytest.raises(DataError, match="scaling"):
        Scaling.from_dict(d, num_features=2)


def test_apply_checks_feature_count():
    scaling = Scaling.fit("standard", np.ones((2, 3)))
    with pytest.raises(DataError, match="4 features"):
        scaling.apply(np.ones((1, 4)))


def test_fit_refusals():
    with pytest.raises(ConfigError, match="scaling"):
        Scaling.fit("minmax", np.ones((2, 2)))
    with pytest.raises(DataError, match="empty"):
        Scaling.fit("standard", np.ones((0, 2)))


def test_split_is_seeded_and_partitions():
    X = np.arange(100).reshape(50, 2)
    y = np.arange(50)
    X_tr, y_tr, X_val, y_val = train_val_split(X, y, 0.2, seed=3)
    assert len(X_val) == 10 and len(X_tr) == 40
    assert sorted(np.concatenate([y_tr, y_val]).tolist()) == list(range(50))
    np.testing.assert_array_equal(X_tr[:, 0] // 2, y_tr)  # rows stay paired
    again = train_val_split(X, y, 0.2, seed=3)
    np.testing.assert_array_equal(again[3], y_val)
    assert not np.array_equal(train_val_split(X, y, 0.2, seed=4)[3], y_val)


def test_split_zero_and_tiny():
    X, y = np.ones((5, 2)), np.arange(5)
    X_tr, _, X_val, y_val = train_val_split(X, y, 0.0, seed=0)
    assert len(X_tr) == 5 and X_val.shape == (0, 2) and y_val.shape == (0,)
    assert len(train_val_split(X[:1], y[:1], 0.9, seed=0)[0]) == 1


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5, "0.2", True, None, float("nan")])
def test_split_bad_fraction(fraction):
    with pytest.raises(ConfigError, match="val_split"):
        train_val_split(np.ones((4, 1)), np.ones(4), fraction, seed=0)
