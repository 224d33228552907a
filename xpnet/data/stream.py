"""The chunked shuffle of streamed data, and reading one shuffle buffer's rows from a source.

An epoch over ``rows`` rows in chunks of ``chunk_rows``: the chunks' order is permuted
(seeded), then ``buffer_chunks`` chunks at a time are read into a buffer whose rows are
permuted and cut into batches. The rows a buffer leaves over (fewer than a batch) are carried
into the next buffer, so every batch is full and an epoch has ``rows // batch_size`` of them,
as in memory. When one buffer holds every chunk, the chunk order is left alone and the one
draw is ``rng.permutation(rows)``: in-memory ``fit``'s own draw, so the batches, and the
numbers, are the same. A source read front to back (``random_access`` False) keeps its chunk order.

The plan is a function of the generator's state at the epoch's start alone: a checkpoint's
``rng_state`` and batch count say where a stream stands, so ``--resume`` replays the plan and
reads from the buffer that holds its next batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from xpnet.data.sources import Source


@dataclass
class Buffer:
    """One shuffle buffer: the rows it holds and the batches cut from them."""

    ids: np.ndarray  #: the global row ids it holds: the carried ones first, then its chunks' rows
    carried: int  #: how many of ``ids`` the previous buffer left over
    chunks: list  #: its chunks' ``(start, stop)`` row ranges, in the order read
    order: np.ndarray  #: positions in ``ids`` of each batch's rows, batch after batch
    rest: np.ndarray  #: positions of the rows left over for the next buffer
    first_step: int  #: the epoch's step its first batch is

    def steps(self, batch_size: int) -> int:
        return self.order.size // batch_size


def chunk_ranges(rows: int, chunk_rows: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_rows, rows)) for start in range(0, rows, chunk_rows)]


def epoch_plan(
    rows: int, chunk_rows: int, buffer_chunks: int, batch_size: int, rng, shuffle=True, reorder=True
) -> Iterator[Buffer]:
    """The epoch's buffers, drawn lazily from ``rng`` (each buffer's draws when it is asked for)."""
    chunks = chunk_ranges(rows, chunk_rows)
    whole = buffer_chunks >= len(chunks)
    if shuffle and reorder and not whole:
        chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    carried, step = np.zeros(0, dtype=np.int64), 0
    for g in range(0, len(chunks), buffer_chunks):
        group = chunks[g : g + buffer_chunks]
        ids = np.concatenate([carried, *(np.arange(a, b, dtype=np.int64) for a, b in group)])
        positions = rng.permutation(ids.size) if shuffle else np.arange(ids.size)
        used = ids.size // batch_size * batch_size
        yield Buffer(ids, carried.size, group, positions[:used], positions[used:], step)
        carried, step = ids[positions[used:]], step + used // batch_size


@dataclass
class Kept:
    """The rows a loaded buffer left over, kept on the host for the next one (fewer than a batch)."""

    ids: np.ndarray
    X: np.ndarray
    y: np.ndarray


def load_buffer(
    source: Source, buffer: Buffer, positions: np.ndarray, kept: Kept | None, row_access: bool, empty=np.empty
):
    """``(X, y, kept)``: the rows at ``positions`` (sorted) of ``buffer``, and what it leaves over.

    Carried rows come from ``kept`` (or the source, after a resume); chunk rows are read chunk
    by chunk, or, with ``row_access``, just the rows wanted (a memory map: a rank's share). Where
    the source knows its features' dtype before reading, whole chunks are read straight into the
    buffer (``Source.read_into``): one copy of each row on its way from the file. ``empty(shape, dtype)``
    makes the buffer's features array (``np.empty``, or a block the reader reuses).
    """
    carried = positions[positions < buffer.carried]
    fresh = buffer.ids[positions[positions >= buffer.carried]]
    dtype = None if row_access else source.feature_dtype
    X = None if dtype is None else empty((positions.size, source.features), dtype)
    parts = _fresh_rows(source, buffer, fresh, row_access, None if X is None else X[carried.size :])
    if carried.size:
        parts = itertools.chain([_carried_rows(source, buffer.ids[carried], kept)], parts)
    ys, at = [], 0
    for Xp, yp in parts:
        if X is None:  # the buffer's array, allocated once: no concatenated copy beside the parts
            X = empty((positions.size, *Xp.shape[1:]), Xp.dtype)
        if Xp is not None:  # None: read into its place already
            X[at : at + len(yp)] = Xp
        ys.append(yp)
        at += len(yp)
    y = np.concatenate(ys)
    rest = np.searchsorted(positions, buffer.rest)
    return X, y, Kept(buffer.ids[buffer.rest], X[rest], y[rest])


def _carried_rows(source: Source, ids: np.ndarray, kept: Kept | None):
    if kept is not None and np.isin(ids, kept.ids).all():
        where = {int(i): k for k, i in enumerate(kept.ids)}
        picked = np.array([where[int(i)] for i in ids], dtype=np.int64)
        return kept.X[picked], kept.y[picked]
    return source.take(ids)  # the first buffer after a resume: its carried rows are read again


def _fresh_rows(source: Source, buffer: Buffer, ids: np.ndarray, row_access: bool, into: np.ndarray | None):
    """The buffer's own rows ``ids`` (in buffer order: chunk by chunk, ascending in each), as ``(X, y)``;
    a whole chunk as ``(None, y)`` where ``into`` (the buffer's rows from the first fresh one) took its X."""
    if row_access:
        yield source.take(ids)
        return
    at = 0
    for start, stop in buffer.chunks:
        inside = ids[(ids >= start) & (ids < stop)]
        if inside.size == 0:
            continue
        if into is not None and inside.size == stop - start:
            yield None, source.read_into(start, stop, into[at : at + inside.size])
        else:
            X, y = source.read(start, stop)
            yield (X, y) if inside.size == stop - start else (X[inside - start], y[inside - start])
        at += inside.size
