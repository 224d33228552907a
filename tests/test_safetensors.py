"""safetensors files: round trips, compatibility with the reference package, every refusal, crash safety."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from xpnet.errors import ConfigError, ModelFileError
from xpnet.safetensors import DTYPES, load_tensors, read_metadata, save_tensors

REPO = Path(__file__).resolve().parents[1]
SHAPES = [(), (0,), (3,), (2, 0, 3), (3, 4), (2, 3, 4)]


def raw_file(path: Path, header, data: bytes = b"", *, length: int | None = None) -> Path:
    """Write a file by hand, so tests can say exactly which bytes are wrong."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if length is None else length) + blob + data)
    return path


def sample(dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    values = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    if dtype.kind == "b":
        return values % 3 == 0
    return (values * 7 - 5).astype(dtype.newbyteorder("="))


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_round_trip_every_dtype_and_shape(tmp_path, code, shape):
    original = sample(DTYPES[code], shape)
    save_tensors(tmp_path / "m.safetensors", {"t": original})
    tensors, metadata = load_tensors(tmp_path / "m.safetensors")
    (loaded,) = tensors.values()
    assert metadata == {}
    assert loaded.dtype == original.dtype and loaded.shape == shape
    np.testing.assert_array_equal(loaded, original)
    assert loaded.flags.writeable and loaded.dtype.isnative


def test_round_trip_keeps_names_order_and_metadata(tmp_path):
    tensors = {
        "layers.1.weight": np.ones((2, 3), np.float32),
        "layers.0.weight": np.arange(12, dtype=np.float64).reshape(3, 4),
        "scale": np.array(0.5, np.float16),
        "ünïcode ✓": np.array([1, 2], np.int32),
    }
    metadata = {"format": "xpnet", "layers": json.dumps([784, 30, 10]), "é": "✓", "": ""}
    save_tensors(tmp_path / "m.safetensors", tensors, metadata)
    loaded, meta = load_tensors(tmp_path / "m.safetensors")
    assert list(loaded) == list(tensors)
    assert meta == metadata == read_metadata(tmp_path / "m.safetensors")
    for name, array in tensors.items():
        np.testing.assert_array_equal(loaded[name], array)


def test_layout_follows_the_spec(tmp_path):
    """Padded header, tensors in the order written, buffer tiled exactly."""
    path = tmp_path / "m.safetensors"
    save_tensors(path, {"b": np.zeros(3, np.uint8), "a": np.zeros(2, np.float64)}, {"k": "v"})
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    assert length % 8 == 0
    header = json.loads(raw[8 : 8 + length])
    assert raw[8 : 8 + length].endswith(b"}" + b" " * (length - len(raw[8 : 8 + length].rstrip())))
    assert header["b"]["data_offsets"] == [0, 3] and header["a"]["data_offsets"] == [3, 19]
    assert len(raw) == 8 + length + 19


def test_accepts_any_layout_and_byte_order(tmp_path):
    big_endian = np.arange(6, dtype=">i4").reshape(2, 3)
    fortran = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    strided = np.arange(20, dtype=np.int16)[::3]
    save_tensors(tmp_path / "m.safetensors", {"be": big_endian, "f": fortran, "s": strided, "g": np.float32(2)})
    loaded, _ = load_tensors(tmp_path / "m.safetensors")
    for name, original in [("be", big_endian), ("f", fortran), ("s", strided), ("g", np.float32(2))]:
        np.testing.assert_array_equal(loaded[name], original)
        assert loaded[name].dtype.isnative
    assert loaded["be"].dtype == np.int32


def test_empty_file_round_trips(tmp_path):
    save_tensors(tmp_path / "m.safetensors", {})
    assert load_tensors(tmp_path / "m.safetensors") == ({}, {})


def test_overwrite_replaces_contents(tmp_path):
    path = tmp_path / "m.safetensors"
    save_tensors(path, {"a": np.zeros(1000)})
    save_tensors(path, {"b": np.ones(2, np.float32)})
    loaded, _ = load_tensors(path)
    assert list(loaded) == ["b"]


# --- compatibility with the reference package ----------------------------------------------------


def mixed_tensors() -> dict[str, np.ndarray]:
    return {f"t.{code}": sample(DTYPES[code], (2, 3)) for code in DTYPES} | {
        "scalar": np.array(3.0, np.float64),
        "empty": np.zeros((0, 4), np.float32),
    }


def test_reference_package_reads_our_files(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    tensors = mixed_tensors()
    save_tensors(tmp_path / "ours.safetensors", tensors, {"who": "xpnet"})
    loaded = st.load_file(tmp_path / "ours.safetensors")
    assert set(loaded) == set(tensors)
    for name, array in tensors.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
        np.testing.assert_array_equal(loaded[name], array)


def test_we_read_reference_files(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    tensors = mixed_tensors()
    st.save_file(tensors, tmp_path / "ref.safetensors", metadata={"who": "reference", "é": "✓"})
    loaded, metadata = load_tensors(tmp_path / "ref.safetensors")
    assert metadata == {"who": "reference", "é": "✓"}
    assert set(loaded) == set(tensors)
    for name, array in tensors.items():
        assert loaded[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded[name], array)


def _split_file(blob: bytes) -> tuple[dict, bytes]:
    """A safetensors file as (parsed header, data buffer)."""
    length = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + length]), blob[8 + length :]


def test_same_layout_as_reference_for_sorted_names(tmp_path):
    """The reference orders data by dtype then name; with one dtype and sorted names we match it.

    Compared as parsed headers plus data: the reference writes metadata keys in hash-map
    order, which changes from process to process, so its bytes are not reproducible.
    """
    st = pytest.importorskip("safetensors.numpy")
    tensors = {"a.bias": np.arange(3, dtype=np.float32), "a.weight": np.ones((3, 5), np.float32)}
    metadata = {"format": "pt", "ü": "x"}
    save_tensors(tmp_path / "ours.safetensors", tensors, metadata)
    ours, reference = (tmp_path / "ours.safetensors").read_bytes(), st.save(tensors, metadata=metadata)
    assert len(ours) == len(reference)
    assert _split_file(ours) == _split_file(reference)


# --- refusals on load ----------------------------------------------------------------------------

GOOD = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


def with_entry(**changes):
    return {"w": GOOD["w"] | changes}


BAD_HEADERS = {
    "metadata not an object": (GOOD | {"__metadata__": ["a"]}, b"\0" * 8, "__metadata__ must be"),
    "metadata value not str": (GOOD | {"__metadata__": {"a": 1}}, b"\0" * 8, "__metadata__ must be"),
    "entry not an object": ({"w": [1, 2]}, b"", "exactly the keys"),
    "missing key": ({"w": {"dtype": "F32", "shape": [0]}}, b"", "exactly the keys"),
    "extra key": ({"w": GOOD["w"] | {"extra": 1}}, b"\0" * 8, "exactly the keys"),
    "unknown dtype": (with_entry(dtype="F31"), b"\0" * 8, "unknown dtype 'F31'"),
    "dtype not str": (with_entry(dtype=4), b"\0" * 8, "unknown dtype 4"),
    "bf16": (with_entry(dtype="BF16", data_offsets=[0, 4]), b"\0" * 4, "BF16, which NumPy cannot hold"),
    "shape not list": (with_entry(shape=2), b"\0" * 8, "shape 2"),
    "negative dim": (with_entry(shape=[-2]), b"\0" * 8, "non-negative integers"),
    "float dim": (with_entry(shape=[2.0]), b"\0" * 8, "non-negative integers"),
    "bool dim": (with_entry(shape=[True, 2]), b"\0" * 8, "non-negative integers"),
    "string dim": (with_entry(shape=["2"]), b"\0" * 8, "non-negative integers"),
    "too many dims": (with_entry(shape=[1] * 65, data_offsets=[0, 4]), b"\0" * 4, "65 dimensions"),
    "offsets not list": (with_entry(data_offsets=8), b"\0" * 8, "data_offsets 8"),
    "one offset": (with_entry(data_offsets=[8]), b"\0" * 8, "[begin, end]"),
    "negative offset": (with_entry(data_offsets=[-8, 0]), b"\0" * 8, "[begin, end]"),
    "string offset": (with_entry(data_offsets=["0", 8]), b"\0" * 8, "[begin, end]"),
    "reversed offsets": (with_entry(shape=[0], data_offsets=[8, 0]), b"\0" * 8, "end before they begin"),
    "size mismatch": (
        {"layers.0.weight": {"dtype": "F32", "shape": [128, 784], "data_offsets": [0, 12]}},
        b"\0" * 12,
        "tensor 'layers.0.weight' declares shape [128, 784] (401408 bytes) but its data_offsets span 12 bytes",
    ),
    "huge shape": (with_entry(shape=[10**12, 10**12], data_offsets=[0, 8]), b"\0" * 8, "declares shape"),
    "past the end": (with_entry(shape=[4], data_offsets=[0, 16]), b"\0" * 8, "past the end"),
    "gap": (
        with_entry(data_offsets=[4, 12]),
        b"\0" * 12,
        "bytes 0..4 of the data buffer belong to no tensor",
    ),
    "trailing data": (GOOD, b"\0" * 12, "bytes 8..12 of the data buffer belong to no tensor"),
    "overlap": (
        GOOD | {"v": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}},
        b"\0" * 8,
        "overlaps another tensor",
    ),
    "duplicate name": (b'{"w":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"w":{}}', b"", "duplicate key"),
    "nan": (b'{"w":{"dtype":"F32","shape":[NaN],"data_offsets":[0,0]}}', b"", "NaN is not allowed"),
    "not json": (b'{"w": ', b"", "not valid JSON"),
    "not utf-8": (b'{"\xff": 1}', b"", "not valid UTF-8"),
    "not an object": (b'["w"]', b"", "does not start with '{'"),
    "deep nesting": (b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", b"", "header"),
    "huge integer": (
        b'{"w":{"dtype":"U8","shape":[' + b"9" * 5000 + b'],"data_offsets":[0,0]}}',
        b"",
        "JSON",
    ),
}


@pytest.mark.parametrize(("header", "data", "message"), BAD_HEADERS.values(), ids=BAD_HEADERS)
def test_refuses_bad_header(tmp_path, header, data, message):
    path = raw_file(tmp_path / "model.safetensors", header, data)
    for read in (load_tensors, lambda p: read_metadata(p)):
        with pytest.raises(ModelFileError, match=r"model\.safetensors: ") as info:
            read(path)
        assert message in str(info.value)


def test_refuses_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match=r"no such model file .*nope\.safetensors"):
        load_tensors(tmp_path / "nope.safetensors")
    with pytest.raises(ModelFileError, match="no such model file"):
        read_metadata(tmp_path / "nope.safetensors")


def test_refuses_directory(tmp_path):
    with pytest.raises(ModelFileError, match="cannot read"):
        load_tensors(tmp_path)


@pytest.mark.parametrize("size", [0, 1, 7])
def test_refuses_files_shorter_than_the_length_prefix(tmp_path, size):
    (tmp_path / "m.safetensors").write_bytes(b"\0" * size)
    with pytest.raises(ModelFileError, match=f"{size} bytes is too short"):
        load_tensors(tmp_path / "m.safetensors")


def test_refuses_header_longer_than_the_file(tmp_path):
    path = raw_file(tmp_path / "m.safetensors", b"{}", length=3)
    with pytest.raises(ModelFileError, match="header length 3 runs past the end of the 10-byte file"):
        load_tensors(path)


def test_refuses_header_over_100_mb(tmp_path):
    path = raw_file(tmp_path / "m.safetensors", b"{}", length=100_000_001)
    with pytest.raises(ModelFileError, match="exceeds the 100000000-byte limit"):
        read_metadata(path)


def test_refuses_data_over_max_bytes(tmp_path):
    path = tmp_path / "m.safetensors"
    save_tensors(path, {"w": np.zeros(1000, np.float64)})
    assert load_tensors(path, max_bytes=8000)[0]["w"].shape == (1000,)
    with pytest.raises(ModelFileError, match="8000 bytes of tensor data, more than max_bytes=7999"):
        load_tensors(path, max_bytes=7999)


def test_refuses_bool_bytes_other_than_0_and_1(tmp_path):
    path = raw_file(
        tmp_path / "m.safetensors", {"m": {"dtype": "BOOL", "shape": [3], "data_offsets": [0, 3]}}, b"\1\0\2"
    )
    with pytest.raises(ModelFileError, match="BOOL tensor 'm' holds bytes other than 0 and 1"):
        load_tensors(path)


@pytest.mark.parametrize(
    "shape",
    [[10**12, 10**12], [2**31, 2**31, 2**31], [2**62], [1024, 1024, 1024, 1024]],
    ids=str,
)
def test_huge_declared_sizes_fail_without_allocating(tmp_path, shape):
    """Offsets that agree with an absurd shape still point past a tiny file: refused, nothing allocated."""
    nbytes = int(np.prod(shape, dtype=object)) * 4
    header = {"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, nbytes]}}
    path = raw_file(tmp_path / "m.safetensors", header, b"\0" * 64)
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match="past the end"):
            load_tensors(path, max_bytes=2**62)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


# --- refusals on save ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tensors", "metadata", "message"),
    [
        ([np.zeros(2)], None, "must be a dict"),
        ({1: np.zeros(2)}, None, "names must be str"),
        ({"__metadata__": np.zeros(2)}, None, "reserved"),
        ({"\ud800": np.zeros(2)}, None, "not valid Unicode"),
        ({"w": [1.0, 2.0]}, None, "not a NumPy array"),
        ({"w": np.zeros(2, np.complex64)}, None, "complex64, which safetensors cannot hold"),
        ({"w": np.array(["a"])}, None, "which safetensors cannot hold"),
        ({"w": np.array([None])}, None, "which safetensors cannot hold"),
        ({}, ["a"], "metadata must be a dict"),
        ({}, {"epochs": 3}, "metadata must map str -> str"),
        ({}, {1: "a"}, "metadata must map str -> str"),
        ({}, {"a": "\udcff"}, "not valid Unicode"),
    ],
)
def test_save_refuses_bad_arguments(tmp_path, tensors, metadata, message):
    path = tmp_path / "m.safetensors"
    with pytest.raises(ConfigError, match=message):
        save_tensors(path, tensors, metadata)
    assert not path.exists() and list(tmp_path.iterdir()) == []


# --- crash safety --------------------------------------------------------------------------------

VERSIONS_SRC = """
import numpy as np
def version(k):
    rng = np.random.default_rng(k)
    return {
        "w": rng.standard_normal((512, 1024)).astype(np.float32),
        "b": np.full(300_000, k, dtype=np.float64),
        "tag": np.array(k, dtype=np.int64),
    }
"""

WRITER_SRC = (
    VERSIONS_SRC
    + """
import sys
from xpnet.safetensors import save_tensors
path, versions = sys.argv[1], [version(0), version(1)]
print("ready", flush=True)
k = 1
while True:
    save_tensors(path, versions[k], {"version": str(k)})
    print("saved", flush=True)
    k = 1 - k
"""
)


def test_killed_save_never_leaves_a_corrupt_file(tmp_path):
    """SIGKILL a process mid-save, over and over: the file always holds one whole good version."""
    namespace: dict = {}
    exec(VERSIONS_SRC, namespace)
    versions = [namespace["version"](k) for k in (0, 1)]
    path = tmp_path / "model.safetensors"
    save_tensors(path, versions[0], {"version": "0"})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    # Kill after a number of finished saves, sometimes at once (mid-write of the next),
    # sometimes after a short varied delay: the moments differ from run to run.
    plan = [(0, 0.0), (1, 0.0), (0, 0.003), (2, 0.0), (1, 0.007), (0, 0.015), (3, 0.0), (1, 0.001), (0, 0.03)]
    plan += [(2, 0.011)]
    for saves_before_kill, delay in plan:
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER_SRC, str(path)], stdout=subprocess.PIPE, env=env, text=True
        )
        try:
            assert child.stdout.readline() == "ready\n"
            for _ in range(saves_before_kill):
                assert child.stdout.readline() == "saved\n"
            if delay:
                time.sleep(delay)
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait()
            child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        tensors, metadata = load_tensors(path)
        k = int(metadata["version"])
        assert set(tensors) == set(versions[k])
        for name, array in versions[k].items():
            np.testing.assert_array_equal(tensors[name], array)

    # Stray temporaries (".model.safetensors.<random>.tmp") may remain; they never block a save.
    leftovers = list(tmp_path.glob(".model.safetensors.*.tmp"))
    assert {p.name for p in tmp_path.iterdir()} - {p.name for p in leftovers} == {"model.safetensors"}
    save_tensors(path, {"after": np.ones(3)}, {"version": "after"})
    assert read_metadata(path) == {"version": "after"}
