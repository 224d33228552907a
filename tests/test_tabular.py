"""npz and CSV loaders: what comes back, and every refusal a user may meet."""

import zipfile

import numpy as np
import pytest

from xpnet.data.tabular import check_xy, load_csv, load_npz
from xpnet.errors import ConfigError, DataError


def _npz(tmp_path, compressed=False, **arrays):
    path = tmp_path / "d.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_classification(tmp_path, compressed):
    X = np.arange(24, dtype=np.float64).reshape(4, 2, 3)
    path = _npz(tmp_path, compressed, X=X, y=np.array([0.0, 2.0, 1.0, 2.0]))
    X2, y2 = load_npz(path)
    assert X2.dtype == np.float32 and X2.shape == (4, 6)
    np.testing.assert_array_equal(X2, X.reshape(4, 6))
    assert y2.dtype == np.int32 and y2.tolist() == [0, 2, 1, 2]


def test_npz_uint8_features_stay_uint8(tmp_path):
    X, y = load_npz(_npz(tmp_path, X=np.ones((3, 4), np.uint8), y=np.array([0, 1, 1], np.uint8)))
    assert X.dtype == np.uint8 and y.dtype == np.int32


@pytest.mark.parametrize("y", [np.arange(3.0) * 0.5, np.ones((3, 2))])
def test_npz_regression(tmp_path, y):
    _, y2 = load_npz(_npz(tmp_path, X=np.ones((3, 2)), y=y), task="regression")
    assert y2.dtype == np.float32 and y2.shape == y.shape


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"X": np.ones((2, 2))}, r"needs the arrays X, y \(found: X\)"),
        ({"X": np.ones(2), "y": np.ones(2)}, "reshape"),
        ({"X": np.ones((0, 2)), "y": np.ones(0)}, "empty"),
        ({"X": np.ones((3, 2)), "y": np.ones(2)}, "3 samples but y has shape"),
        ({"X": np.array([[1, np.nan], [np.inf, 2]]), "y": np.ones(2)}, r"2 NaN/Inf value\(s\).*\(0, 1\)"),
        ({"X": np.ones((2, 2)), "y": np.array([0, np.nan])}, "NaN/Inf label"),
        ({"X": np.ones((2, 2)), "y": np.array([0, 1.5])}, r"y\[1\] = 1.5 is not a whole number"),
        ({"X": np.ones((2, 2)), "y": np.array([0, -1])}, "negative"),
        ({"X": np.ones((2, 2)), "y": np.ones((2, 2))}, "must be 1-D"),
        ({"X": np.ones((2, 2), complex), "y": np.ones(2)}, "not a plain number type"),
        ({"X": np.array([["a"], ["b"]]), "y": np.ones(2)}, "not a plain number type"),
        ({"X": np.array([[1e300], [1.0]]), "y": np.ones(2)}, "too large for float32"),
    ],
)
def test_npz_refusals(tmp_path, arrays, match):
    path = _npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=match) as info:
        load_npz(path)
    assert str(path) in str(info.value)


def test_npz_object_arrays_never_unpickled(tmp_path):
    path = _npz(tmp_path, X=np.array([[{}], [{}]], dtype=object), y=np.ones(2))
    with pytest.raises(DataError, match="not a plain number type"):
        load_npz(path)


def test_npz_not_a_zip_and_corrupt_zip(tmp_path):
    path = tmp_path / "d.npz"
    path.write_bytes(b"\x93NUMPY not an archive")
    with pytest.raises(DataError, match="zip signature"):
        load_npz(path)
    good = _npz(tmp_path, X=np.ones((2, 2)), y=np.ones(2)).read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        load_npz(path)


def test_npz_header_larger_than_member_refused(tmp_path):
    path = tmp_path / "d.npz"
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (100000000000, 4), }"
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("X.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)
        archive.writestr("y.npy", b"")
    with pytest.raises(DataError, match="declares shape"):
        load_npz(path)


def test_npz_bad_task_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="task"):
        load_npz(tmp_path / "x.npz", task="clustering")
    with pytest.raises(DataError, match="not found"):
        load_npz(tmp_path / "x.npz")


def _csv(tmp_path, text):
    path = tmp_path / "d.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_with_header_and_blank_lines(tmp_path):
    X, y = load_csv(_csv(tmp_path, "a,b,label\n1,2,0\n\n 3 , 4 ,1\n"))
    assert X.dtype == np.float32 and X.tolist() == [[1, 2], [3, 4]]
    assert y.dtype == np.int32 and y.tolist() == [0, 1]


def test_csv_without_header_and_target_choice(tmp_path):
    path = _csv(tmp_path, "1,2,3\n4,5,6\n")
    X, y = load_csv(path, task="regression", target_column=0)
    assert X.tolist() == [[2, 3], [5, 6]] and y.tolist() == [1, 4]
    X, y = load_csv(path, target_column=1, header=False)
    assert y.tolist() == [2, 5]
    X, y = load_csv(path, header=True)  # the first line is taken as names
    assert X.tolist() == [[4, 5]]


def test_csv_target_by_name(tmp_path):
    _, y = load_csv(_csv(tmp_path, "p,q\n0.5,1\n"), target_column="p", task="regression")
    assert y.tolist() == [0.5]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("a,b\n", "only a header"),
        ("1\n2\n", "1 column"),
        ("1,2\n3\n", "line 2 has 1 fields, expected 2"),
        ("x,y\n1,2\n3,abc\n", "line 3, column 2: 'abc' is not a number"),
        ("1,2\n1,\n", "line 2, column 2"),
        ("1,2\n3,1_0\n", "line 2"),
        ("1,0\nnan,1\n", "first on line 2, column 1"),
        ("1,0\n2,1\ninf,0\n", r"1 NaN/Inf value\(s\), the first on line 3"),
        ("1,0.5\n", "not a whole number"),
        ("1,-1\n", "negative"),
    ],
)
def test_csv_refusals(tmp_path, text, match):
    path = _csv(tmp_path, text)
    with pytest.raises(DataError, match=match) as info:
        load_csv(path)
    assert str(path) in str(info.value)


def test_csv_not_utf8(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"1,2\n\xff\xfe,3\n")
    with pytest.raises(DataError, match="UTF-8"):
        load_csv(path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_column": 5}, "target_column"),
        ({"target_column": "zz"}, "target_column"),
        ({"target_column": True}, "target_column"),
        ({"header": "yes"}, "header"),
        ({"task": "ranking"}, "task"),
    ],
)
def test_csv_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        load_csv(_csv(tmp_path, "a,b\n1,0\n"), **kwargs)


def test_csv_name_needs_header(tmp_path):
    with pytest.raises(ConfigError, match="no header"):
        load_csv(_csv(tmp_path, "1,0\n"), target_column="a")


def test_check_xy_accepts_bool_labels():
    _, y = check_xy(np.ones((2, 1)), np.array([True, False]), "classification", "test")
    assert y.tolist() == [1, 0]
