"""Fuzzing the safetensors loader: whatever the bytes, only ModelFileError escapes, and fast.

A model file is untrusted input. Damaged or hostile bytes must never crash the loader
with another exception, hang it, or make it allocate what a header merely declares.

A loader that refused every file would pass these tests: that valid files are read exactly,
ours and the reference package's, is tested in tests/test_safetensors.py (round trips of every
dtype and shape, reference files both ways).
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpnet.errors import ModelFileError
from xpnet.safetensors import DTYPES, load_tensors, read_metadata, save_tensors

FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def valid(folder) -> bytes:
    path = folder / "valid.safetensors"
    tensors = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.array([1, -2, 3], np.int64),
        "s": np.array(0.5, np.float16),
        "m": np.array([True, False]),
        "e": np.zeros((0, 2), np.uint8),
    }
    save_tensors(path, tensors, {"format": "xpnet", "epochs": "3"})
    return path.read_bytes()


def frame(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def split(raw: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def survives(folder, raw: bytes) -> None:
    """Load ``raw`` both ways: success or ModelFileError; any other exception fails the test."""
    path = folder / "fuzzed.safetensors"
    path.write_bytes(raw)
    try:
        tensors, metadata = load_tensors(path)
    except ModelFileError as exc:
        assert str(path) in str(exc)
    else:
        # Whatever loaded came from the file's own bytes, never from a declared size alone.
        assert sum(a.nbytes for a in tensors.values()) <= len(raw)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
        assert read_metadata(path) == metadata
        return
    with contextlib.suppress(ModelFileError):
        read_metadata(path)


# --- (a) arbitrary bytes --------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(st.binary(max_size=256))
def test_arbitrary_bytes(folder, raw):
    survives(folder, raw)


@FUZZ
@given(st.binary(max_size=128), st.binary(max_size=64))
def test_arbitrary_header_bytes_with_a_correct_length(folder, header, data):
    survives(folder, frame(b"{" + header, data))


@FUZZ
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5), st.binary(max_size=64))
def test_arbitrary_json_headers(folder, header, data):
    survives(folder, frame(json.dumps(header).encode(), data))


# --- (b) mutations of a valid file ----------------------------------------------------------------

flip = st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255))
insert = st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=8))
delete = st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 8))
truncate = st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(None))


def mutate(raw: bytes, ops) -> bytes:
    data = bytearray(raw)
    for op, position, arg in ops:
        at = position % (len(data) + 1)
        if op == "flip" and at < len(data):
            data[at] ^= arg
        elif op == "insert":
            data[at:at] = arg
        elif op == "delete":
            del data[at : at + arg]
        elif op == "truncate":
            del data[at:]
    return bytes(data)


@FUZZ
@given(st.lists(flip | insert | delete | truncate, min_size=1, max_size=4))
def test_byte_mutations(folder, valid, ops):
    survives(folder, mutate(valid, ops))


huge = st.sampled_from([10**12, 2**31, 2**32, 2**62, 2**63, 2**64, 10**30, 10**300])
evil_ints = huge | st.integers(-(2**70), 2**70) | st.sampled_from([-1, 0, 1, 2, 3])
evil_values = (
    evil_ints
    | st.sampled_from(["F32", "F64", "I64", "BOOL", "BF16", "F8_E4M3", "f32", "", "F32 ", "__metadata__"])
    | st.floats()
    | st.text(max_size=4)
    | st.none()
    | st.booleans()
    | st.lists(evil_ints | st.text(max_size=2) | st.floats() | st.booleans(), max_size=4)
    | st.dictionaries(st.text(max_size=4), evil_ints | st.text(max_size=4), max_size=3)
)
evil_shapes = st.lists(huge | st.sampled_from([0, 1, 2, -1, "2", 2.0, True, None]), max_size=5)


@st.composite
def tampered_headers(draw, valid: bytes):
    """Change one or more header values, optionally keeping offsets consistent with a new shape."""
    header, data = split(valid)
    names = [n for n in header if n != "__metadata__"]
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from([*names, "__metadata__", "new"]))
        if target == "__metadata__":
            header["__metadata__"] = draw(evil_values)
            continue
        entry = header.setdefault(target, {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]})
        if not isinstance(entry, dict):
            continue
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra", "delete"]))
        if field == "delete":
            entry.pop(draw(st.sampled_from(["dtype", "shape", "data_offsets"])), None)
        elif field == "shape":
            entry["shape"] = draw(evil_shapes | evil_values)
        else:
            entry[field] = draw(evil_values)
        if draw(st.booleans()) and _consistent(entry):
            begin = entry["data_offsets"][0]
            size = math.prod(entry["shape"]) * DTYPES[entry["dtype"]].itemsize
            entry["data_offsets"] = [begin, begin + size]
    blob = json.dumps(header).encode()
    keep_length = draw(st.booleans())
    return (valid[:8] if keep_length else struct.pack("<Q", len(blob))) + blob + data


def _consistent(entry) -> bool:
    offsets, shape = entry.get("data_offsets"), entry.get("shape")
    return (
        isinstance(entry.get("dtype"), str)
        and entry["dtype"] in DTYPES
        and isinstance(shape, list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and isinstance(offsets[0], int)
    )


@FUZZ
@given(st.data())
def test_header_tampering(folder, valid, data):
    survives(folder, data.draw(tampered_headers(valid)))


@FUZZ
@given(
    st.lists(st.integers(1, 10**15), min_size=1, max_size=6).filter(lambda s: math.prod(s) > 2**24),
    st.sampled_from(list(DTYPES)),
)
def test_huge_declared_shapes_fail_fast_without_allocating(folder, shape, code):
    """A self-consistent header declaring a huge tensor over a tiny file is refused before allocation."""
    size = math.prod(shape) * DTYPES[code].itemsize
    raw = frame(json.dumps({"big": {"dtype": code, "shape": shape, "data_offsets": [0, size]}}).encode(), b"\0" * 64)
    path = folder / "huge.safetensors"
    path.write_bytes(raw)
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match="past the end"):
            load_tensors(path, max_bytes=2**70)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000
