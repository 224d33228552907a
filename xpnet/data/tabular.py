"""User data as NumPy ``.npz`` archives or CSV text: features ``X`` and targets ``y``.

Both loaders return the same thing after the same checks (``check_xy``), so the
training loop never sees a NaN, a ragged table or a label it cannot one-hot encode.
``.npz`` files are opened without pickle: an archive is data, never code.
"""

from __future__ import annotations

import csv
import io
import math
import os
import struct
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np

from xpnet.errors import ConfigError, DataError, XpnetError
from xpnet.fileio import open_input, read_failure
from xpnet.memory import require
from xpnet.task import TASKS

#: Largest array (in bytes) an ``.npz`` member may declare before xpnet refuses it.
MAX_NPZ_ARRAY_BYTES = 2**32

# What zipfile and numpy's .npy reader raise on damaged input.
_NPZ_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    RuntimeError,
    struct.error,
    KeyError,
    SyntaxError,  # numpy parses the .npy header as a Python literal
    tokenize.TokenError,
    RecursionError,
    OverflowError,
)


def check_task(task: str) -> str:
    """Validate the ``task`` argument."""
    if task not in TASKS:
        raise ConfigError(f"task: got {task!r}; use one of {', '.join(TASKS)}")
    return task


def read_npz_arrays(path: str | os.PathLike, *key_sets: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read the arrays of the first complete key set (e.g. ``("X", "y")``) from an ``.npz``.

    No pickle, and bounded memory: each member's ``.npy`` header is checked (numeric
    dtype, declared size no larger than the member really is, at most
    ``MAX_NPZ_ARRAY_BYTES``) before numpy reads it.
    """
    path = Path(path)
    try:
        with open_input(path, "an .npz file") as raw, _zip_archive(path, raw) as archive:
            members = {
                name[: -len(".npy")] if name.endswith(".npy") else name: archive.getinfo(name)
                for name in archive.namelist()
            }
            for keys in key_sets:
                if all(key in members for key in keys):
                    return {key: _read_member(path, archive, members[key], key) for key in keys}
            found = ", ".join(sorted(members)) or "none"
            wanted = " or ".join(", ".join(keys) for keys in key_sets)
            example = ", ".join(f"{k}={k}" for k in key_sets[0])
            raise DataError(
                f"{path}: needs the arrays {wanted} (found: {found}); save it with np.savez({path.name!r}, {example})"
            )
    except XpnetError:  # xpnet's own refusals (a memory limit, a setting) are not the file's fault
        raise
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise read_failure(path, exc, "an .npz file") from exc
    except MemoryError as exc:
        raise DataError(f"{path}: too large to load into memory; use a smaller file") from exc
    except _NPZ_ERRORS as exc:
        raise DataError(
            f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc}); "
            "re-create it with numpy.savez or numpy.savez_compressed"
        ) from exc


def _zip_archive(path: Path, raw) -> zipfile.ZipFile:
    """The archive in the already opened ``raw`` stream (opening the path twice could meet another file)."""
    if raw.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise DataError(
            f"{path}: not an .npz archive (it does not start with the zip signature); "
            "create it with numpy.savez or numpy.savez_compressed"
        )
    raw.seek(0)
    return zipfile.ZipFile(raw)


def _read_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str) -> np.ndarray:
    fmt = np.lib.format
    with archive.open(info) as stream:
        version = fmt.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = fmt.read_array_header_2_0(stream)
        else:
            raise DataError(f"{path}: array {key!r} has unsupported .npy version {version}; re-save it")
        if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None:
            raise DataError(
                f"{path}: array {key!r} has dtype {dtype}, not a plain number type; "
                "save it as an integer or float array"
            )
        declared = math.prod(shape) * dtype.itemsize
        if declared > MAX_NPZ_ARRAY_BYTES or declared > info.file_size:
            raise DataError(
                f"{path}: array {key!r} declares shape {shape} ({declared} bytes) but the archive member "
                f"holds {info.file_size} bytes; the file is corrupt, re-create it"
            )
        require(2 * declared, f"{path}: array {key!r} of shape {shape}")  # decompressed, then the array itself
    with archive.open(info) as stream:
        return fmt.read_array(stream, allow_pickle=False)


def load_npz(path: str | os.PathLike, task: str = "classification") -> tuple[np.ndarray, np.ndarray]:
    """Load ``(X, y)`` from an ``.npz`` with keys ``X`` and ``y``; see ``check_xy`` for the rules."""
    check_task(task)
    arrays = read_npz_arrays(path, ("X", "y"))
    return check_xy(arrays["X"], arrays["y"], task, f"{Path(path)}")


def check_xy(X: np.ndarray, y: np.ndarray, task: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate and normalise one (features, targets) pair.

    ``X``: numeric, at least 2-D, flattened to ``(n, features)``; uint8 stays uint8 (so
    image scaling can use 1/255), everything else becomes float32. ``y``: see ``check_y``.
    Both finite, non-empty and of equal length. ``where`` names the source.
    """
    check_task(task)
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise DataError(f"{where}: X has dtype {X.dtype}; features must be numbers")
    if X.ndim < 2:
        raise DataError(f"{where}: X has shape {X.shape}; it needs one row per sample, e.g. X.reshape(-1, 1)")
    if X.shape[0] == 0 or math.prod(X.shape[1:]) == 0:
        raise DataError(f"{where}: X has shape {X.shape}, no samples or no features; the data is empty")
    X = X.reshape(X.shape[0], -1)
    X = X if X.dtype == np.uint8 else _to_float32(X, "X", where)
    return X, check_y(y, X.shape[0], task, where)


def check_y(y: np.ndarray, samples: int, task: str, where: str) -> np.ndarray:
    """The targets of ``samples`` rows, checked: 1-D non-negative whole numbers -> int32 for
    classification; 1-D or 2-D -> float32 for regression; finite."""
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise DataError(f"{where}: y has dtype {y.dtype}; targets must be numbers")
    if y.ndim == 0 or len(y) != samples:
        raise DataError(f"{where}: X has {samples} samples but y has shape {y.shape}; they need one target per sample")
    if task == "classification":
        return _labels(y, where)
    if y.ndim > 2:
        raise DataError(f"{where}: y has shape {y.shape}; regression targets must be 1-D or 2-D")
    if y.ndim == 2 and y.shape[1] == 0:
        raise DataError(f"{where}: y has shape {y.shape}, no target columns; the data is empty")
    return _to_float32(y, "y", where)


def _to_float32(a: np.ndarray, name: str, where: str) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        out = a.astype(np.float32)
        if np.isfinite(np.sum(out, dtype=np.float32)):  # one pass and no mask: every value is finite
            return out
    bad = ~np.isfinite(out)  # a NaN/Inf, or finite values whose sum overflowed: find which
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        value = a[first]
        raise DataError(
            f"{where}: {name} has {int(bad.sum())} NaN/Inf value(s) (or values too large for float32), "
            f"the first at index {first} = {value}; clean or impute them before training"
        )
    return out


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    if y.ndim != 1:
        raise DataError(f"{where}: y has shape {y.shape}; class labels must be 1-D (one integer per sample)")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y)
        if bad.any():
            first = int(np.argmax(bad))
            raise DataError(
                f"{where}: y has {int(bad.sum())} NaN/Inf label(s), the first at index {first}; "
                "every sample needs a class label"
            )
        frac = y != np.round(y)
        if frac.any():
            first = int(np.argmax(frac))
            raise DataError(
                f"{where}: label y[{first}] = {y[first]} is not a whole number; class labels must be "
                "integers 0, 1, 2, ... (use --task regression for continuous targets)"
            )
    if y.dtype.kind != "b":
        low, high = y.min(), y.max()
        if low < 0:
            first = int(np.argmax(y < 0))
            raise DataError(f"{where}: label y[{first}] = {y[first]} is negative; class labels must be 0, 1, 2, ...")
        if high >= 2**31 - 1:
            raise DataError(f"{where}: label {high} is too large; number the classes 0, 1, 2, ...")
    return y.astype(np.int32)


def _parse_float(field: str) -> float:
    text = field.strip()
    if not text or "_" in text:
        raise ValueError(text)
    return float(text)


def load_csv(
    path: str | os.PathLike,
    task: str = "classification",
    target_column: int | str = -1,
    header: bool | str = "auto",
    weight_column: int | str | None = None,
) -> tuple[np.ndarray, ...]:
    """Load ``(X, y)`` from a comma-separated file of numbers, one sample per line.

    ``target_column`` is the index (negative counts from the end) or, with a header,
    the name of the column holding ``y``. ``header="auto"`` treats the first line as
    column names when any of its fields is not a number. Blank lines are skipped.
    Features come back as float32; ``y`` as for ``check_xy``. ``weight_column`` (named or
    numbered as the target) holds per-sample weights: it leaves the features, and
    ``(X, y, weights)`` comes back.
    """
    check_task(task)
    if header not in (True, False, "auto"):
        raise ConfigError(f"header: got {header!r}; use True, False or 'auto'")
    if isinstance(target_column, bool) or not isinstance(target_column, int | str):
        raise ConfigError(f"target_column: got {target_column!r}; use a column index or a header name")
    path = Path(path)
    rows = _read_rows(path)
    names: list[str] | None = None
    first = rows[0][1]
    if header is True or (header == "auto" and not _all_numbers(first)):
        names = [field.strip() for field in first]
        rows = rows[1:]
        if not rows:
            raise DataError(f"{path}: only a header line, no data rows; the CSV file is empty")
    width = len(names) if names is not None else len(rows[0][1])
    if width < 2:
        raise DataError(f"{path}: line {rows[0][0]} has {width} column(s); need features plus a target column")
    target = _target_index(target_column, names, width, path)
    values = _numbers(path, rows, width)
    if weight_column is None:
        return check_xy(np.delete(values, target, axis=1), values[:, target], task, str(path))
    weight = _target_index(weight_column, names, width, path, "sample_weight")
    if weight == target:
        raise ConfigError(f"sample_weight {weight_column!r}: that is the target column of {path}")
    X, y = check_xy(np.delete(values, [target, weight], axis=1), values[:, target], task, str(path))
    return X, y, values[:, weight].astype(np.float64)


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    """The CSV's non-blank rows, each with its line number."""
    try:
        with open_input(path, "a CSV file") as raw:
            # Every field becomes a Python string in a list of rows: about ten bytes held per byte of text.
            require(10 * os.fstat(raw.fileno()).st_size, f"{path} (a CSV file read as text fields)")
            with io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as stream:
                rows = [(number, row) for number, row in enumerate(csv.reader(stream), start=1)]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the CSV as UTF-8") from exc
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc}); save it as plain comma-separated numbers") from exc
    except OSError as exc:
        raise read_failure(path, exc, "a CSV file") from exc
    rows = [(number, row) for number, row in rows if any(field.strip() for field in row)]
    if not rows:
        raise DataError(f"{path}: no data rows; the CSV file is empty")
    return rows


def _numbers(path: Path, rows: list[tuple[int, list[str]]], width: int) -> np.ndarray:
    """The rows as a finite float64 table, every field checked, errors naming line and column."""
    values = np.empty((len(rows), width), dtype=np.float64)
    for i, (number, row) in enumerate(rows):
        if len(row) != width:
            raise DataError(
                f"{path}: line {number} has {len(row)} fields, expected {width}; every row needs the "
                "same number of columns"
            )
        for j, field in enumerate(row):
            try:
                values[i, j] = _parse_float(field)
            except ValueError:
                raise DataError(
                    f"{path}: line {number}, column {j + 1}: {field.strip()[:40]!r} is not a number; "
                    "the CSV must hold only numbers (plus an optional header line)"
                ) from None
    if not np.isfinite(values).all():
        bad = np.argwhere(~np.isfinite(values))
        line = rows[int(bad[0][0])][0]
        raise DataError(
            f"{path}: {len(bad)} NaN/Inf value(s), the first on line {line}, column {int(bad[0][1]) + 1}; "
            "clean or impute them before training"
        )
    return values


def _all_numbers(row: list[str]) -> bool:
    try:
        for field in row:
            _parse_float(field)
    except ValueError:
        return False
    return True


def _target_index(
    target_column: int | str, names: list[str] | None, width: int, path: Path, what: str = "target_column"
) -> int:
    numbered = isinstance(target_column, str) and target_column.lstrip("-").isdigit()
    if numbered and (names is None or target_column not in names):
        target_column = int(target_column)  # --sample-weight 3: the fourth column
    if isinstance(target_column, str):
        if names is None:
            raise ConfigError(f"{what}: {target_column!r} is a name but {path} has no header line; pass an index")
        if target_column not in names:
            raise ConfigError(f"{what}: {target_column!r} is not a column of {path} (columns: {', '.join(names)})")
        return names.index(target_column)
    if not -width <= target_column < width:
        raise ConfigError(f"{what}: {target_column} is out of range for {path}, which has {width} columns")
    return target_column % width
