"""Training data that stays on disk: ``.npy`` pairs opened as memory maps, Parquet files, Python chunks.

A source knows its rows and features without reading them, and reads a range or a set of rows
on request (``read``, ``take``), checked as ``check_xy`` checks a file loaded whole; what it reads
it hands back as host arrays, so no more than the rows asked for are ever in memory at once
(besides the page cache, which the kernel gives back under pressure). Errors name the file and
the row range or column.

``NpySource``: ``X.npy`` and ``y.npy`` (a folder holding both, or the two paths), opened with
``mmap_mode="r"``; any set of rows is read directly. ``ParquetSource``: feature columns and a
target column, read with ``pyarrow.parquet.ParquetFile.iter_batches`` from the row group that
holds the first row wanted (pip install "xpnet[parquet]"). ``ChunkSource``: any re-iterable of
``(X, y)`` chunks, read front to back.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from xpnet.data.tabular import check_task, check_xy, check_y
from xpnet.errors import ConfigError, DataError

#: Rows read at a time to pick scattered rows from a source without row access.
BLOCK_ROWS = 8192


class Source:
    """Rows ``0..rows`` of ``features`` columns, read a range or a set of rows at a time."""

    name: str
    rows: int
    features: int
    task: str = "classification"
    random_access: bool = True  #: a range can be read without reading what comes before it
    #: The dtype ``read`` gives the features, where known before reading (``read_into`` then writes them
    #: straight into a buffer); None: known from the first read.
    feature_dtype: np.dtype | None = None

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``start..stop``, checked (``check_xy``): float32 (or uint8) features, labels or targets."""
        X, y = self._raw(start, stop)
        return check_xy(X, y, self.task, f"{self.name} rows {start}..{stop - 1}")

    def read_into(self, start: int, stop: int, into: np.ndarray) -> np.ndarray:
        """``read``'s features of rows ``start..stop`` written into ``into``; their targets returned."""
        X, y = self.read(start, stop)
        into[...] = X
        return y

    def take(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows ``ids`` (any order, at least one), read a block of ``BLOCK_ROWS`` at a time."""
        ids = np.asarray(ids, dtype=np.int64)
        X = y = None
        for block in np.unique(ids // BLOCK_ROWS):
            start = int(block) * BLOCK_ROWS
            inside = np.flatnonzero(ids // BLOCK_ROWS == block)
            Xb, yb = self.read(start, min(start + BLOCK_ROWS, self.rows))
            if X is None:
                X = np.empty((ids.size, *Xb.shape[1:]), dtype=Xb.dtype)
                y = np.empty((ids.size, *yb.shape[1:]), dtype=yb.dtype)
            X[inside], y[inside] = Xb[ids[inside] - start], yb[ids[inside] - start]
        return X, y

    def _raw(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _targets(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start..stop`` of the targets alone, unchecked (a Parquet file reads just that column)."""
        return self._raw(start, stop)[1]

    def largest_label(self, start: int = 0, stop: int | None = None) -> int:
        """The largest class label of rows ``start..stop`` (all of them by default), in one pass over
        their targets (a file's rows are checked as they are read)."""
        top, stop = 0, self.rows if stop is None else stop
        for first in range(start, stop, 16 * BLOCK_ROWS):
            top = max(top, _top(self._targets(first, min(first + 16 * BLOCK_ROWS, stop))))
        return top

    def describe(self) -> dict:
        """What identifies the data, for a checkpoint and for the ranks to compare."""
        return {"source": self.name, "rows": self.rows, "features": self.features}


class NpySource(Source):
    """``X.npy`` and ``y.npy`` opened as memory maps: nothing is read until rows are asked for."""

    def __init__(self, X_path, y_path, task: str = "classification"):
        self.task = check_task(task)
        self.X = _open_npy(Path(X_path), 2)
        self.y = _open_npy(Path(y_path), 1)
        self.name = str(X_path)
        if self.X.shape[0] != self.y.shape[0]:
            raise DataError(
                f"{X_path} has {self.X.shape[0]} rows but {y_path} has {self.y.shape[0]}; they need one target "
                "per row (row counts differ)"
            )
        self.rows = int(self.X.shape[0])
        self.features = int(np.prod(self.X.shape[1:]))
        if self.rows == 0 or self.features == 0:
            raise DataError(f"{X_path}: X has shape {self.X.shape}, no samples or no features; the data is empty")

    def read(self, start, stop):
        try:
            return super().read(start, stop)
        finally:
            _release(self.X, start, stop)
            _release(self.y, start, stop)

    @property
    def feature_dtype(self) -> np.dtype | None:
        kind = self.X.dtype.kind
        return None if kind not in "biuf" else np.dtype(np.uint8 if self.X.dtype == np.uint8 else np.float32)

    def read_into(self, start, stop, into):
        """One copy from the map into the stream's buffer (``read`` casts into a chunk of its own, which
        the buffer then copied again: a third of the reader thread's time beside two BLAS threads)."""
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                np.copyto(into, self.X[start:stop].reshape(stop - start, -1), casting="unsafe")
                finite = into.dtype == np.uint8 or np.isfinite(np.sum(into, dtype=np.float32))
            if not finite:  # a NaN/Inf (or a sum that overflowed): ``read`` says which, or passes it
                return super().read_into(start, stop, into)
            return check_y(self.y[start:stop], stop - start, self.task, f"{self.name} rows {start}..{stop - 1}")
        finally:
            _release(self.X, start, stop)
            _release(self.y, start, stop)

    def _raw(self, start, stop):
        return self.X[start:stop], self.y[start:stop]  # views of the map: ``check_xy``'s cast makes the copy

    def _targets(self, start, stop):
        try:
            return np.array(self.y[start:stop])
        finally:
            _release(self.y, start, stop)

    def take(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:  # a rank whose share of a buffer is all carried rows
            X, y = self.read(0, 1)
            return X[:0], y[:0]
        order = np.argsort(ids, kind="stable")
        back = np.empty_like(order)
        back[order] = np.arange(order.size)
        sorted_ids = ids[order]  # a sorted gather touches each page of the map once, in file order
        X, y = check_xy(self.X[sorted_ids], self.y[sorted_ids], self.task, f"{self.name} rows {_span(ids)}")
        for array in (self.X, self.y):
            _release(array, int(sorted_ids[0]), int(sorted_ids[-1]) + 1)
        return X[back], y[back]


def _release(array: np.ndarray, start: int, stop: int) -> None:
    """Hand the map's pages of rows ``start..stop`` back (``MADV_DONTNEED``) once they are copied: they
    stay in the kernel's page cache, but leave this process's resident memory, which then holds the
    stream's buffers and not the file. Where the platform has no ``madvise``, the kernel evicts them alone."""
    mapped, advice = getattr(array, "_mmap", None), getattr(mmap, "MADV_DONTNEED", None)
    if mapped is None or advice is None or stop <= start:
        return
    row = array.strides[0]
    first = array.offset % mmap.ALLOCATIONGRANULARITY + start * row  # numpy maps from an aligned offset
    aligned = first - first % mmap.PAGESIZE
    with contextlib.suppress(OSError, ValueError):
        mapped.madvise(advice, aligned, first + (stop - start) * row - aligned)


def _open_npy(path: Path, least_dims: int) -> np.ndarray:
    """A memory map of ``path``; a missing file, a bad header or a file shorter than its header says: DataError."""
    if not path.is_file():
        raise DataError(f"{path}: no such file; a streamed .npy dataset is a folder with X.npy and y.npy")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # NumPy's words for a bad magic, header or size
        raise DataError(f"{path}: not a readable .npy file ({exc}); the file is corrupt or truncated") from None
    if not isinstance(array, np.ndarray) or array.ndim < least_dims:
        raise DataError(f"{path}: holds an array of shape {getattr(array, 'shape', '?')}; expected one row per sample")
    if array.dtype.kind not in "biuf":
        raise DataError(f"{path}: dtype {array.dtype}; streamed data must be numbers")
    return array


#: Parquet row groups up to this many rows let chunks be read in any order (a read decodes from its
#: group's start); a file with larger groups is read front to back, its rows shuffled inside each buffer.
RANDOM_ACCESS_GROUP_ROWS = 65536


class ParquetSource(Source):
    """A Parquet file's feature columns and its ``target`` column, read in row batches (pyarrow)."""

    def __init__(self, path, target: str, task: str = "classification", batch_rows: int = 65536):
        pq = _pyarrow_parquet()
        self.task, self.name, self.batch_rows = check_task(task), str(path), batch_rows
        try:
            self.file = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises its own ArrowInvalid/OSError for a bad footer
            raise DataError(f"{path}: not a readable Parquet file ({exc}); the file is corrupt or truncated") from None
        names = self.file.schema_arrow.names
        if target not in names:
            raise DataError(f"{path}: no column {target!r} for --target; its columns are {', '.join(names)}")
        self.columns = [name for name in names if name != target]
        self.target = target
        if not self.columns:
            raise DataError(f"{path}: column {target!r} is the only one; there are no feature columns")
        for field in self.file.schema_arrow:
            if not (_numeric(field.type)):
                raise DataError(f"{path}: column {field.name!r} has type {field.type}; every column must be numeric")
        self.rows, self.features = int(self.file.metadata.num_rows), len(self.columns)
        sizes = [self.file.metadata.row_group(i).num_rows for i in range(self.file.num_row_groups)]
        self.group_starts = np.cumsum([0, *sizes])
        self._cursor = None  #: (next row, its batches, a batch's rest): where a read that follows on goes on
        # A range is read from its row group's start: chunks are taken in shuffled order only where that is cheap.
        self.random_access = max(sizes, default=0) <= RANDOM_ACCESS_GROUP_ROWS

    def _raw(self, start, stop):
        at, batches, pending = self._cursor if self._cursor and self._cursor[0] == start else self._open(start)
        parts = []
        try:
            while at < stop:
                batch = pending if pending is not None else next(batches, None)
                pending = None
                if batch is None:
                    break
                lo, hi = max(start - at, 0), min(stop - at, batch.num_rows)
                if hi > lo:
                    parts.append(batch.slice(lo, hi - lo))
                if at + batch.num_rows > stop:  # the rest of this batch starts the next read, if it follows on
                    pending, at = batch.slice(stop - at), stop
                else:
                    at += batch.num_rows
        except Exception as exc:  # a damaged page, or a file cut short after its footer was read
            self._cursor = None
            raise DataError(
                f"{self.name} rows {start}..{stop - 1}: cannot be read ({exc}); the file is corrupt"
            ) from None
        if at < stop:
            raise DataError(f"{self.name}: ends at row {at}, before row {stop - 1}; the file is truncated")
        self._cursor = (stop, batches, pending)
        return self._arrays(parts, start)

    def _open(self, start: int) -> tuple:
        """Batches from the row group holding row ``start`` to the end (a read that follows on continues them)."""
        first = int(np.searchsorted(self.group_starts, start, side="right") - 1)
        groups = range(first, self.file.num_row_groups)
        return int(self.group_starts[first]), iter(self.file.iter_batches(self.batch_rows, row_groups=groups)), None

    def largest_label(self, start: int = 0, stop: int | None = None) -> int:
        """The target column alone, from the row group that holds row ``start``."""
        top, stop = 0, self.rows if stop is None else stop
        if start >= stop:
            return top
        first = int(np.searchsorted(self.group_starts, start, side="right") - 1)
        at, groups = int(self.group_starts[first]), range(first, self.file.num_row_groups)
        try:
            for batch in self.file.iter_batches(self.batch_rows, row_groups=groups, columns=[self.target]):
                lo, hi = max(start - at, 0), min(stop - at, batch.num_rows)
                if hi > lo:
                    top = max(top, _top(_column(batch.slice(lo, hi - lo), self.target, self.name, at + lo)))
                at += batch.num_rows
                if at >= stop:
                    break
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{self.name} column {self.target!r} after row {at}: cannot be read ({exc})") from None
        return top

    def _arrays(self, parts, start):
        X = np.empty((sum(p.num_rows for p in parts), self.features), dtype=np.float32)
        y, row = [], 0
        for part in parts:
            for j, name in enumerate(self.columns):
                X[row : row + part.num_rows, j] = _column(part, name, self.name, start + row)
            y.append(_column(part, self.target, self.name, start + row))
            row += part.num_rows
        return X, np.concatenate(y)


def _numeric(kind) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def _column(batch, name: str, path: str, first_row: int) -> np.ndarray:
    column = batch.column(name)
    if column.null_count:
        row = first_row + int(np.argmax(np.asarray(column.is_null())))
        raise DataError(f"{path}: column {name!r} is empty (null) at row {row}; fill or drop such rows")
    return column.to_numpy(zero_copy_only=False)


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError('Parquet datasets need pyarrow: pip install "xpnet[parquet]"') from None
    return pq


class ChunkSource(Source):
    """Any re-iterable of ``(X, y)`` chunks (a list, or an object whose ``__iter__`` reads them anew).

    It is read front to back: one pass at the start counts the rows; a range is read by
    iterating up to it, so the chunked shuffle keeps such a source's chunk order.
    """

    random_access = False

    def __init__(self, chunks: Iterable, name: str = "chunks", task: str = "classification"):
        if iter(chunks) is chunks:
            raise ConfigError(f"{name}: a one-pass iterator cannot be read every epoch; pass a list or a re-iterable")
        self.chunks, self.name, self.task = chunks, name, check_task(task)
        sizes, features = [], None
        for i, (X, _) in enumerate(self.chunks):
            shape = np.shape(X)
            width = int(np.prod(shape[1:])) if len(shape) > 1 else 0
            if features is not None and width != features:
                raise DataError(f"{name}: chunk {i} has {width} features, chunk 0 has {features}; they must agree")
            features = width
            sizes.append(int(shape[0]))
        if not sizes or not sum(sizes):
            raise DataError(f"{name}: no rows; the source is empty")
        self.bounds = np.cumsum([0, *sizes])
        self.rows, self.features = int(self.bounds[-1]), int(features)

    def _raw(self, start, stop):
        Xs, ys = [], []
        for i, (X, y) in enumerate(self.chunks):
            lo, hi = int(self.bounds[i]), int(self.bounds[i + 1])
            if hi > start and lo < stop:
                part = slice(max(start - lo, 0), min(stop, hi) - lo)
                X = np.asarray(X)
                Xs.append(X.reshape(X.shape[0], -1)[part])
                ys.append(np.asarray(y)[part])
            if hi >= stop:
                break
        return np.concatenate(Xs), np.concatenate(ys)


class RowRange(Source):
    """Rows ``start..stop`` of another source: a held-out range, or the training part beside it."""

    def __init__(self, source: Source, start: int, stop: int):
        self.source, self.start = source, start
        self.rows, self.features, self.task = stop - start, source.features, source.task
        self.name, self.random_access = source.name, source.random_access

    @property
    def feature_dtype(self) -> np.dtype | None:
        return self.source.feature_dtype

    def read(self, start, stop):
        return self.source.read(self.start + start, self.start + stop)

    def read_into(self, start, stop, into):
        return self.source.read_into(self.start + start, self.start + stop, into)

    def _targets(self, start, stop):
        return self.source._targets(self.start + start, self.start + stop)

    def largest_label(self, start: int = 0, stop: int | None = None) -> int:
        return self.source.largest_label(self.start + start, self.start + (self.rows if stop is None else stop))

    def take(self, ids):
        return self.source.take(np.asarray(ids, dtype=np.int64) + self.start)

    def describe(self) -> dict:
        return {**self.source.describe(), "range": [self.start, self.start + self.rows]}


def open_source(path: str | os.PathLike, target: str | None = None, task: str = "classification") -> Source:
    """The source a ``--dataset`` path names: a folder of ``X.npy``/``y.npy``, an ``X`` ``.npy`` with
    ``target`` its ``y`` ``.npy``, or a Parquet file with ``target`` its label column."""
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        return NpySource(path / "X.npy", path / "y.npy", task)
    if suffix == ".npy":
        if not target:
            raise ConfigError(f"--dataset {path}: a single .npy holds X; give its targets' file: --target y.npy")
        return NpySource(path, target, task)
    if suffix in (".parquet", ".pq"):
        if not target:
            raise ConfigError(f"--dataset {path}: name the label column of the Parquet file with --target COLUMN")
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        return ParquetSource(path, target, task)
    raise ConfigError(f"--dataset {path}: a streamed dataset is a folder (X.npy, y.npy), a .npy or a .parquet file")


def is_streamed_path(name: str | os.PathLike) -> bool:
    """Whether a ``--dataset`` names data read from disk chunk by chunk rather than loaded whole."""
    path = Path(name)
    folder = path.is_dir() and ((path / "X.npy").exists() or str(name).endswith(("/", os.sep)))
    return path.suffix.lower() in (".npy", ".parquet", ".pq") or folder


def _top(y: np.ndarray) -> int:
    """The largest finite value (a NaN label is reported where the rows are read)."""
    y = np.asarray(y, dtype=np.float64)
    finite = y[np.isfinite(y)]
    return int(finite.max()) if finite.size else 0


def _span(ids: np.ndarray) -> str:
    return f"{int(ids.min())}..{int(ids.max())}" if ids.size else "(none)"
