"""Property tests: whatever bytes the readers are given, only ``DataError`` escapes.

Each reader sees arbitrary byte strings and mutations (bit flips, inserted, deleted,
overwritten bytes, truncation) of a small valid file. An IndexError, struct.error,
MemoryError, ValueError or a hang would be a bug: users feed these readers
downloads and files of unknown origin.

Refusing is all these tests ask, so a reader that refused every file would pass them: that
valid files are read, value for value, is tested in tests/test_idx.py (round trips of every
type and rank) and tests/test_tabular.py.
"""

import contextlib
import gzip
import io
import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpnet.data.idx import read_idx, write_idx
from xpnet.data.prep import Scaling
from xpnet.data.tabular import load_csv, load_npz
from xpnet.errors import DataError

FUZZ = settings(
    max_examples=1000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


def _idx_bytes(compress: bool) -> bytes:
    buffer = Path(tempfile.mkdtemp()) / "v.idx"
    write_idx(buffer, np.arange(24, dtype=np.int16).reshape(2, 3, 4), compress=compress)
    data = buffer.read_bytes()
    buffer.unlink()
    buffer.parent.rmdir()
    return data


def _npz_bytes(compressed: bool) -> bytes:
    stream = io.BytesIO()
    save = np.savez_compressed if compressed else np.savez
    save(stream, X=np.arange(12, dtype=np.float32).reshape(4, 3), y=np.array([0, 1, 2, 1], dtype=np.uint8))
    return stream.getvalue()


VALID = {
    "idx": _idx_bytes(False),
    "idx.gz": _idx_bytes(True),
    "idx-then-gz": _idx_bytes(False),  # mutated first, then compressed: a valid gzip of a bad IDX
    "npz": _npz_bytes(False),
    "npz-compressed": _npz_bytes(True),
    "csv": b"a,b,label\n1.5,2,0\n3,-4e2,1\n\n5,6,2\n",
}

_op = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "set", "truncate"]),
    st.integers(min_value=0, max_value=2**16),
    st.integers(min_value=0, max_value=255),
)


def mutate(data: bytes, ops) -> bytes:
    """Apply byte-level edits; positions wrap around the current length."""
    buf = bytearray(data)
    for kind, position, value in ops:
        at = position % (len(buf) + 1)
        if kind == "insert":
            buf[at:at] = bytes([value])
        elif kind == "truncate":
            del buf[at:]
        elif not buf or at == len(buf):
            continue
        elif kind == "flip":
            buf[at] ^= 1 << (value % 8)
        elif kind == "delete":
            del buf[at]
        else:
            buf[at] = value
    return bytes(buf)


mutations = st.lists(_op, min_size=1, max_size=6)


def only_data_error(read, path: Path, data: bytes) -> None:
    path.write_bytes(data)
    with contextlib.suppress(DataError):
        read(path)


idx_like = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda code, ndim, rest: bytes([0, 0, code, ndim]) + rest,
        st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x0A, 0xFF]),
        st.integers(min_value=0, max_value=6),
        st.binary(max_size=120),
    ),
)


@FUZZ
@given(data=idx_like)
def test_idx_arbitrary_bytes(folder, data):
    only_data_error(read_idx, folder / "a.idx", data)


@FUZZ
@given(data=idx_like)
def test_idx_arbitrary_gzip_payload(folder, data):
    only_data_error(read_idx, folder / "b.idx", gzip.compress(data))


@FUZZ
@given(data=st.binary(max_size=300))
def test_gzip_magic_then_garbage(folder, data):
    only_data_error(read_idx, folder / "c.idx", b"\x1f\x8b\x08\x00" + data)


@FUZZ
@given(ops=mutations, kind=st.sampled_from(["idx", "idx.gz", "idx-then-gz"]))
def test_idx_mutations(folder, ops, kind):
    data = mutate(VALID[kind], ops)
    if kind == "idx-then-gz":
        data = gzip.compress(data)
    only_data_error(read_idx, folder / "d.idx", data)


@FUZZ
@given(data=st.one_of(st.binary(max_size=400), st.binary(max_size=400).map(lambda b: b"PK\x03\x04" + b)))
def test_npz_arbitrary_bytes(folder, data):
    only_data_error(load_npz, folder / "a.npz", data)


@FUZZ
@given(ops=mutations, kind=st.sampled_from(["npz", "npz-compressed"]))
def test_npz_mutations(folder, ops, kind):
    only_data_error(load_npz, folder / "b.npz", mutate(VALID[kind], ops))


def _npy_bytes(array) -> bytes:
    stream = io.BytesIO()
    np.save(stream, array)
    return stream.getvalue()


NPY_X = _npy_bytes(np.arange(12, dtype=np.float32).reshape(4, 3))
NPY_Y = _npy_bytes(np.array([0, 1, 2, 1], dtype=np.uint8))


@FUZZ
@given(ops=mutations, member=st.sampled_from(["X", "y"]), deflate=st.booleans())
def test_npz_member_mutations(folder, ops, member, deflate):
    """A well-formed zip holding a damaged .npy: exercises the array header checks."""
    members = {"X.npy": NPY_X, "y.npy": NPY_Y}
    members[f"{member}.npy"] = mutate(members[f"{member}.npy"], ops)
    stream = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(stream, "w", compression=method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    only_data_error(load_npz, folder / "c.npz", stream.getvalue())


csv_text = st.text(alphabet=st.sampled_from(list("0123456789.,-+eE \n\r\"'naiNfIx_\t")), max_size=200)


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), csv_text.map(str.encode)))
def test_csv_arbitrary_bytes(folder, data):
    only_data_error(load_csv, folder / "a.csv", data)


@FUZZ
@given(ops=mutations)
def test_csv_mutations(folder, ops):
    only_data_error(load_csv, folder / "b.csv", mutate(VALID["csv"], ops))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
scaling_dicts = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {
            "kind": st.one_of(st.sampled_from(["unit", "symmetric", "standard", "none"]), json_values),
            "shift": st.one_of(st.floats(), st.lists(st.floats(), max_size=4), json_values),
            "scale": st.one_of(st.floats(), st.lists(st.floats(), max_size=4), json_values),
        }
    ),
)


@FUZZ
@given(d=scaling_dicts)
def test_scaling_from_untrusted_json(d):
    try:
        scaling = Scaling.from_dict(json.loads(json.dumps(d)), num_features=3)
    except DataError:
        return
    with np.errstate(over="ignore"):  # finite parameters can still overflow float32 when multiplied
        out = scaling.apply(np.ones((2, 3)))
    assert out.shape == (2, 3) and out.dtype == np.float32


def test_mutate_really_changes_files():
    assert mutate(b"abc", [("delete", 0, 0)]) == b"bc"
    assert mutate(b"abc", [("truncate", 1, 0)]) == b"a"
    assert mutate(b"abc", [("flip", 2, 0)]) == b"abb"
    assert mutate(b"", [("set", 5, 1)]) == b""
