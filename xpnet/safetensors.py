"""Read and write the safetensors format with NumPy alone, so weights move to and from PyTorch.

A file is an 8-byte little-endian header length ``N``, ``N`` bytes of UTF-8 JSON,
then one raw little-endian buffer that the tensors tile exactly::

    {"__metadata__": {"key": "value"},
     "fc1.weight": {"dtype": "F32", "shape": [128, 784], "data_offsets": [0, 401408]}}

Files are byte-compatible with the ``safetensors`` package. Loading never executes
anything from the file (plain ``json.loads`` and raw byte reads), and every declared
size is checked against the file before anything that large is allocated, so a
hostile or damaged file costs at most its header in memory and raises
``ModelFileError``. Saves go through ``atomic_writer``: a crash leaves the old file
intact, plus at worst a stray temporary file named ``.<name>.<random>.tmp`` beside it.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Mapping

import numpy as np

from xpnet.checks import is_whole
from xpnet.errors import ConfigError, ModelFileError
from xpnet.fileio import atomic_writer, open_input

__all__ = ["DTYPES", "MAX_HEADER_BYTES", "load_tensors", "read_metadata", "save_tensors"]

#: safetensors dtype codes NumPy can hold, as little-endian NumPy dtypes.
#: BF16 and the F8 variants have no NumPy dtype and are refused by name.
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
}
_CODES = {(dt.kind, dt.itemsize): code for code, dt in DTYPES.items()}
_UNSUPPORTED = {"BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64"}

#: The same cap the reference implementation puts on the JSON header.
MAX_HEADER_BYTES = 100_000_000
_LENGTH = struct.Struct("<Q")
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}
_MAX_DIMS = 64  # NumPy's limit on array dimensions


def save_tensors(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` (host NumPy arrays) and string ``metadata`` to ``path`` atomically.

    Tensors are laid out in the buffer in the mapping's order; pass names sorted if
    you want byte-identical output to ``safetensors.numpy.save_file``.
    """
    if not isinstance(tensors, Mapping):
        raise ConfigError(f"save_tensors: tensors must be a dict of name -> array, not {type(tensors).__name__}")
    meta = _check_save_metadata(metadata)
    header: dict[str, object] = {"__metadata__": meta} if meta else {}
    arrays = []
    offset = 0
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise ConfigError(f"save_tensors: tensor names must be str, got {name!r}")
        if name == "__metadata__":
            raise ConfigError("save_tensors: '__metadata__' is reserved and cannot name a tensor")
        _check_encodable(name, f"tensor name {name!r}")
        if not isinstance(value, (np.ndarray, np.generic)):
            raise ConfigError(
                f"save_tensors: tensor {name!r} is a {type(value).__name__}, not a NumPy array; "
                "move it to the host first"
            )
        code = _CODES.get((value.dtype.kind, value.dtype.itemsize))
        if code is None:
            raise ConfigError(
                f"save_tensors: tensor {name!r} has dtype {value.dtype}, which safetensors cannot hold; "
                f"use one of {', '.join(str(np.dtype(d).newbyteorder('=')) for d in DTYPES.values())}"
            )
        # Little-endian, C order: the byte layout the format defines.
        array = np.asarray(value, dtype=DTYPES[code], order="C")
        end = offset + array.nbytes
        header[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [offset, end]}
        offset = end
        arrays.append(array)
    blob = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    # Pad with spaces so the buffer starts 8-byte aligned, as the reference writer does.
    blob += b" " * (-len(blob) % 8)
    with atomic_writer(path) as stream:
        stream.write(_LENGTH.pack(len(blob)))
        stream.write(blob)
        for array in arrays:
            if array.nbytes:
                stream.write(array.reshape(-1).view(np.uint8).data)


def load_tensors(
    path: str | os.PathLike, *, max_bytes: int = 2**31, check_header: Callable[[dict, dict], None] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file into native-endian, writable NumPy arrays and its metadata.

    ``max_bytes`` caps the tensor data this call will allocate; raise it only for
    files you trust to be that large. ``check_header(metadata, shapes)`` runs after
    the header is read and before any tensor is allocated (``shapes`` maps each
    tensor's name to its shape), so a caller can refuse a file on its metadata alone.
    """
    name = str(path)
    try:
        with open_input(path, "a model file", ModelFileError) as stream:
            entries, metadata, start = _read_header(stream, name, max_bytes)
            if check_header is not None:
                check_header(metadata, {key: shape for key, _, shape, *_ in entries})
            tensors = {}
            # The tensors tile the buffer in offset order, so one forward pass reads each byte once.
            for key, dtype, shape, begin, end in sorted(entries, key=lambda e: e[3]):
                array = np.empty(shape, dtype=dtype)
                if end > begin:
                    stream.seek(start + begin)
                    got = stream.readinto(array.reshape(-1).view(np.uint8))
                    if got != end - begin:
                        raise ModelFileError(f"{name}: file ended inside tensor {key!r} (changed while reading?)")
                if dtype.kind == "b" and array.size and array.view(np.uint8).max() > 1:
                    raise ModelFileError(f"{name}: BOOL tensor {key!r} holds bytes other than 0 and 1")
                if not dtype.isnative:
                    array = array.astype(dtype.newbyteorder("="))
                tensors[key] = array
    except OSError as exc:
        raise _os_error(name, exc) from exc
    return {key: tensors[key] for key, *_ in entries}, metadata


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Return the ``__metadata__`` of a safetensors file, reading and checking only its header."""
    name = str(path)
    try:
        with open_input(path, "a model file", ModelFileError) as stream:
            return _read_header(stream, name, max_bytes=None)[1]
    except OSError as exc:
        raise _os_error(name, exc) from exc


def _read_header(stream, name: str, max_bytes: int | None):
    """Parse and validate the header against the file size; allocates nothing but the header."""
    size = os.fstat(stream.fileno()).st_size
    if size < _LENGTH.size:
        raise ModelFileError(f"{name}: {size} bytes is too short for a safetensors file (need at least 8)")
    (length,) = _LENGTH.unpack(stream.read(_LENGTH.size))
    if length > MAX_HEADER_BYTES:
        raise ModelFileError(
            f"{name}: header length {length} exceeds the {MAX_HEADER_BYTES}-byte limit; not a safetensors file?"
        )
    if length > size - _LENGTH.size:
        raise ModelFileError(
            f"{name}: header length {length} runs past the end of the {size}-byte file "
            "(truncated, or not a safetensors file)"
        )
    buffer_size = size - _LENGTH.size - length
    if max_bytes is not None and buffer_size > max_bytes:
        raise ModelFileError(
            f"{name}: holds {buffer_size} bytes of tensor data, more than max_bytes={max_bytes}; "
            "pass a larger max_bytes if you trust this file"
        )
    raw = stream.read(length)
    if len(raw) != length:
        raise ModelFileError(f"{name}: file ended inside the header (changed while reading?)")
    header = _parse_json(raw, name)
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ModelFileError(f"{name}: __metadata__ must be an object of string keys to string values")
    entries = [_check_entry(name, key, entry) for key, entry in header.items()]
    _check_layout(name, entries, buffer_size)
    return entries, metadata, _LENGTH.size + length


def _parse_json(raw: bytes, name: str) -> dict:
    if not raw.startswith(b"{"):
        raise ModelFileError(f"{name}: header does not start with '{{'; not a safetensors file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelFileError(f"{name}: header is not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except RecursionError as exc:
        raise ModelFileError(f"{name}: header JSON is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, duplicate keys, NaN, over-long integers
        raise ModelFileError(f"{name}: header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ModelFileError(f"{name}: header must be a JSON object")
    return header


def _no_duplicates(pairs):
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constants(token):
    raise ValueError(f"{token} is not allowed")


def _check_entry(name: str, key: str, entry) -> tuple[str, np.dtype, tuple[int, ...], int, int]:
    """One tensor's header entry, checked with Python ints so no declared size can overflow."""
    where = f"{name}: tensor {key!r}"
    if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
        got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise ModelFileError(f"{where} must have exactly the keys dtype, shape, data_offsets (got {got})")
    code = entry["dtype"]
    if isinstance(code, str) and code in _UNSUPPORTED:
        raise ModelFileError(f"{where} has dtype {code}, which NumPy cannot hold")
    if not isinstance(code, str) or code not in DTYPES:
        raise ModelFileError(f"{where} has unknown dtype {code!r}; expected one of {', '.join(DTYPES)}")
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(is_whole(d) and d >= 0 for d in shape):
        raise ModelFileError(f"{where} has shape {shape!r}; expected a list of non-negative integers")
    if len(shape) > _MAX_DIMS:
        raise ModelFileError(f"{where} has {len(shape)} dimensions; NumPy supports at most {_MAX_DIMS}")
    offsets = entry["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_whole(o) and o >= 0 for o in offsets)):
        raise ModelFileError(f"{where} has data_offsets {offsets!r}; expected [begin, end] of non-negative integers")
    begin, end = offsets
    if begin > end:
        raise ModelFileError(f"{where} has data_offsets [{begin}, {end}] that end before they begin")
    dtype = DTYPES[code]
    # Exact: Python ints cannot overflow, and dims are few (<= 64) and short (JSON int limit).
    nbytes = math.prod(shape) * dtype.itemsize
    if not nbytes and math.prod(d for d in shape if d) * dtype.itemsize >= 2**63:  # NumPy refuses these, 0 or not
        raise ModelFileError(f"{where} has shape {str(shape)[:80]}, dimensions too large for any array")
    if nbytes != end - begin:
        raise ModelFileError(
            f"{where} declares shape {shape} ({nbytes} bytes) but its data_offsets span {end - begin} bytes"
        )
    return key, dtype, tuple(shape), begin, end


def _check_layout(name: str, entries, buffer_size: int) -> None:
    """The spec requires tensors to tile the buffer: no overlaps, no gaps, nothing past the end."""
    position = 0
    for key, _, _, begin, end in sorted(entries, key=lambda e: (e[3], e[4])):
        if end > buffer_size:
            raise ModelFileError(
                f"{name}: tensor {key!r} has data_offsets [{begin}, {end}] past the end of the "
                f"{buffer_size}-byte data buffer (truncated file?)"
            )
        if begin < position:
            raise ModelFileError(f"{name}: tensor {key!r} overlaps another tensor at byte {begin}")
        if begin > position:
            raise ModelFileError(f"{name}: bytes {position}..{begin} of the data buffer belong to no tensor")
        position = end
    if position != buffer_size:
        raise ModelFileError(
            f"{name}: bytes {position}..{buffer_size} of the data buffer belong to no tensor "
            "(trailing data, or a damaged header)"
        )


def _check_save_metadata(metadata) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ConfigError(f"save_tensors: metadata must be a dict of str -> str, not {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(
                f"save_tensors: metadata must map str -> str; got {key!r}: {type(value).__name__} "
                "(convert numbers with str() or json.dumps())"
            )
        _check_encodable(key, f"metadata key {key!r}")
        _check_encodable(value, f"metadata value for {key!r}")
    return dict(metadata)


def _check_encodable(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(f"save_tensors: {what} is not valid Unicode ({exc.reason})") from exc


def _os_error(name: str, exc: OSError) -> ModelFileError:
    if isinstance(exc, FileNotFoundError):
        return ModelFileError(f"no such model file {name}")
    return ModelFileError(f"cannot read {name}: {exc.strerror or exc}")
