"""IDX reader/writer: round trips and every way a file can be wrong."""

import gzip
import struct

import numpy as np
import pytest

from xpnet.data.idx import MAX_IDX_BYTES, read_idx, write_idx
from xpnet.errors import ConfigError, DataError


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_every_type(tmp_path, dtype, compress):
    array = (np.arange(2 * 3 * 4).reshape(2, 3, 4) * 3 - 7).astype(dtype)
    path = tmp_path / "a.idx"
    write_idx(path, array, compress=compress)
    back = read_idx(path)
    assert back.dtype == array.dtype and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("shape", [(5,), (2, 3), (2, 1, 3), (1, 2, 1, 2)])
def test_round_trip_every_rank(tmp_path, shape):
    array = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    write_idx(tmp_path / "a", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), array)


def test_gzip_detected_by_magic_not_extension(tmp_path):
    array = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "plain.gz", array, compress=False)
    write_idx(tmp_path / "packed.idx", array, compress=True)
    np.testing.assert_array_equal(read_idx(tmp_path / "plain.gz"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "packed.idx"), array)


def test_big_endian_on_disk(tmp_path):
    write_idx(tmp_path / "a", np.array([1, 256], dtype=np.int16))
    assert (tmp_path / "a").read_bytes() == bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0, 1, 1, 0])


def test_result_is_writable(tmp_path):
    write_idx(tmp_path / "a", np.arange(4, dtype=np.uint8), compress=True)
    read_idx(tmp_path / "a")[0] = 9


def _header(code=0x08, dims=(3,)):
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def _write(tmp_path, data, compress=False):
    path = tmp_path / "bad.idx"
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "too short"),
        (b"\x00\x00", "too short"),
        (b"\x01\x00\x08\x01" + b"\x00\x00\x00\x01" + b"\x05", "magic"),
        (b"\x00\x07\x08\x01" + b"\x00\x00\x00\x01" + b"\x05", "magic"),
        (_header(code=0x0A) + b"abc", "type code 0x0A"),
        (bytes([0, 0, 8, 0]), "0 dimensions"),
        (bytes([0, 0, 8, 5]) + b"\x00\x00\x00\x01" * 5 + b"x", "5 dimensions"),
        (bytes([0, 0, 8, 2]) + b"\x00\x00\x00\x01", "truncated inside"),
        (_header(dims=(3, 0)), "size 0"),
        (_header() + b"ab", "3 data bytes, but got 2"),
        (_header() + b"abcd", "3 data bytes, but got"),
        (_header(code=0x0C, dims=(2,)) + b"\x00" * 7, "8 data bytes, but got 7"),
    ],
)
def test_malformed_files_raise_data_error(tmp_path, data, match, compress):
    path = _write(tmp_path, data, compress)
    with pytest.raises(DataError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("compress", [False, True])
def test_huge_declared_size_refused_before_allocating(tmp_path, compress):
    path = _write(tmp_path, _header(code=0x0E, dims=(2**16, 2**16)) + b"\x00" * 8, compress)
    with pytest.raises(DataError, match="MAX_IDX_BYTES"):
        read_idx(path)
    assert MAX_IDX_BYTES < 2**16 * 2**16 * 8


def test_gzip_bomb_stops_at_declared_size(tmp_path):
    # Declares 1 KiB, inflates to 64 MiB: reading stops one byte past the declared size.
    bomb = gzip.compress(_header(dims=(1024,)) + bytes(64 << 20), compresslevel=9)
    path = tmp_path / "bomb"
    path.write_bytes(bomb)
    assert len(bomb) < 1 << 20
    with pytest.raises(DataError, match="1024 data bytes, but got more than 1024"):
        read_idx(path)


@pytest.mark.parametrize("cut", [5, 20, -3])
def test_truncated_or_corrupt_gzip(tmp_path, cut):
    packed = bytearray(gzip.compress(_header(dims=(100,)) + bytes(range(100))))
    if cut == -3:
        packed[-6] ^= 0xFF  # CRC no longer matches
    else:
        packed = packed[:cut]
    path = tmp_path / "c.gz"
    path.write_bytes(bytes(packed))
    with pytest.raises(DataError, match=r"c\.gz"):
        read_idx(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope")
    with pytest.raises(DataError, match="folder"):
        read_idx(tmp_path)


@pytest.mark.parametrize(
    "array",
    [np.zeros(3, dtype=np.int64), np.zeros(3, dtype=bool), np.zeros((1,) * 5, dtype=np.uint8), np.zeros(0, np.uint8)],
)
def test_write_refuses_what_idx_cannot_hold(tmp_path, array):
    with pytest.raises(ConfigError, match="array"):
        write_idx(tmp_path / "a", array)
    assert not (tmp_path / "a").exists()
