"""IDX files (the MNIST / Fashion-MNIST format), raw or gzip-compressed.

Layout: two zero bytes, a type code, the number of dimensions, then one big-endian
uint32 per dimension, then the values in C order (big-endian for multi-byte types).
Files come from the internet, so the reader trusts nothing: every header field is
checked, the data length must match the header exactly, and a header that declares
more than ``MAX_IDX_BYTES`` is refused *before* anything that size is allocated.
Gzip input is decompressed in chunks and never past the declared size plus one byte,
so a zip bomb costs at most ``MAX_IDX_BYTES``.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from xpnet.errors import ConfigError, DataError
from xpnet.fileio import atomic_write_bytes, open_input, read_failure
from xpnet.memory import require

#: Largest data block (in bytes) a header may declare: 2 GiB, over 40x Fashion-MNIST.
MAX_IDX_BYTES = 2**31

#: IDX type code -> big-endian NumPy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
_HINT = "re-download the file or check that it is an IDX file"


def read_idx(path: str | os.PathLike, where: str = "the path") -> np.ndarray:
    """Read an IDX file (raw or gzip, detected by its magic bytes) into a native-endian array.

    ``where`` is what a missing file's message asks to check (a dataset's: its --data-dir folder)."""
    path = Path(path)
    try:
        with open_input(path, "an IDX file") as raw:
            is_gzip = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if is_gzip:
                return _read_gzip(path, raw)
            return _read_stream(path, raw, total_size=os.fstat(raw.fileno()).st_size)
    except OSError as exc:
        raise read_failure(path, exc, "an IDX file", where) from exc


def _read_gzip(path: Path, raw: BinaryIO) -> np.ndarray:
    try:
        with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            return _read_stream(path, stream, total_size=None)
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{path}: corrupt gzip stream ({exc}); {_HINT}") from exc


def _read_exact(stream: BinaryIO, n: int) -> bytearray:
    """Read up to ``n`` bytes in chunks: gzip streams return short reads, and a chunked
    read only ever holds what the stream really produced, never what a header claims."""
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(min(_CHUNK, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def _parse_header(path: Path, stream: BinaryIO) -> tuple[np.dtype, tuple[int, ...], int]:
    """Check the header; return (dtype, shape, header length in bytes)."""
    magic = _read_exact(stream, 4)
    if len(magic) < 4:
        raise DataError(f"{path}: only {len(magic)} bytes, too short for an IDX header; {_HINT}")
    if magic[0] != 0 or magic[1] != 0:
        raise DataError(f"{path}: bad magic number {magic.hex()} (IDX files start with two zero bytes); {_HINT}")
    type_code, ndim = magic[2], magic[3]
    if type_code not in IDX_DTYPES:
        known = ", ".join(f"0x{code:02X}" for code in IDX_DTYPES)
        raise DataError(f"{path}: unknown IDX type code 0x{type_code:02X} (expected one of {known}); {_HINT}")
    if not 1 <= ndim <= 4:
        raise DataError(f"{path}: IDX header declares {ndim} dimensions (xpnet reads 1 to 4); {_HINT}")
    dims_raw = _read_exact(stream, 4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise DataError(f"{path}: header truncated inside the {ndim} dimension sizes; {_HINT}")
    shape = struct.unpack(f">{ndim}I", dims_raw)
    for axis, size in enumerate(shape):
        if size == 0:
            raise DataError(f"{path}: dimension {axis} has size 0, so the file holds no data; {_HINT}")
    return IDX_DTYPES[type_code], shape, 4 + 4 * ndim


def _read_stream(path: Path, stream: BinaryIO, total_size: int | None) -> np.ndarray:
    dtype, shape, header_len = _parse_header(path, stream)
    expected = math.prod(shape) * dtype.itemsize
    if expected > MAX_IDX_BYTES:
        raise DataError(
            f"{path}: header declares shape {shape} = {expected} bytes, over the {MAX_IDX_BYTES}-byte "
            f"limit (MAX_IDX_BYTES); the header is probably corrupt; {_HINT}"
        )
    if total_size is not None and total_size - header_len != expected:
        # Raw files: compare sizes before reading a byte of data.
        got = total_size - header_len
        raise DataError(f"{path}: header declares shape {shape}, {expected} data bytes, but got {got}; {_HINT}")
    # Read in growing chunks (a reallocation holds two copies) and byte-swapped (a third for multi-byte types).
    require(expected * (2 if dtype.itemsize == 1 else 3), f"{path} (shape {shape}, {dtype})")
    data = _read_exact(stream, expected + 1)
    if len(data) != expected:
        got = f"{len(data)}" if len(data) <= expected else f"more than {expected}"
        raise DataError(f"{path}: header declares shape {shape}, {expected} data bytes, but got {got}; {_HINT}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool = False) -> None:
    """Write ``array`` as an IDX file (gzip when ``compress``), atomically."""
    array = np.asarray(array)
    codes = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        allowed = ", ".join(str(d) for d in codes)
        raise ConfigError(f"array: dtype {array.dtype} has no IDX type code; convert it to one of {allowed}")
    if not 1 <= array.ndim <= 4 or 0 in array.shape:
        raise ConfigError(f"array: shape {array.shape} cannot be written; IDX needs 1 to 4 non-empty dimensions")
    if max(array.shape) >= 2**32:
        raise ConfigError(f"array: shape {array.shape} has a dimension too large for IDX (max 2**32 - 1)")
    header = bytes([0, 0, codes[native], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    be = array.astype(native.newbyteorder(">"), copy=False)
    data = header + np.ascontiguousarray(be).tobytes()
    if compress:
        data = gzip.compress(data, mtime=0)
    atomic_write_bytes(path, data)
