"""The passes over streamed data before training: the input scaling and the largest class label.

Each is one pass over the chunks. Data-parallel, each rank reads only its share of them (a
contiguous run of chunks, ``rank_chunks``) and the ranks' partial results are combined on the
host: minimum and maximum by reduction, the largest label by its maximum, and the means and
sums of squared deviations (float64) by Chan et al.'s pairwise update in rank order, the very
update that merges one process's chunks, so every rank gets the same scaling. One process
reads every chunk, in order, exactly as before there were ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xpnet.data.stream import chunk_ranges
from xpnet.data_parallel import rank_part
from xpnet.distributed import Communicator
from xpnet.scaling import Scaling


def rank_chunks(rows: int, chunk_rows: int, communicator: Communicator | None = None) -> list[tuple[int, int]]:
    """This rank's share of the ``(start, stop)`` chunks of ``rows`` rows: a contiguous run of them
    (the runs differ by one chunk at most; a rank beyond the chunk count gets none)."""
    chunks = chunk_ranges(rows, chunk_rows)
    return chunks[rank_part(len(chunks), communicator or Communicator())]


@dataclass
class Moments:
    """Rows seen, their per-feature mean and sum of squared deviations (float64), merged part by part."""

    count: int = 0
    mean: Any = 0.0
    squares: Any = 0.0

    def add(self, X: np.ndarray) -> None:
        """The rows ``X`` (one chunk), merged in."""
        mean = X.mean(axis=0, dtype=np.float64)
        deviation = X.astype(np.float64) - mean
        self.merge(len(X), mean, np.einsum("ij,ij->j", deviation, deviation))

    def merge(self, count: int, mean, squares) -> None:
        """Another part's moments merged in (Chan, Golub and LeVeque's pairwise update)."""
        if count == 0:
            return
        delta, total = mean - self.mean, self.count + count
        self.mean = self.mean + delta * (count / total)
        self.squares = self.squares + squares + delta * delta * (self.count * count / total)
        self.count = total


def fit_scaling(kind: str, data, communicator: Communicator | None = None) -> Scaling:
    """The input scaling of ``data`` (a ``xpnet.streaming.Streamed``) fitted in one pass over its chunks,
    each rank of ``communicator`` reading its share: min and max, or mean and standard deviation."""
    if kind == "none":
        return Scaling("none", 0.0, 1.0)
    if kind == "standard":
        moments = standard_moments(data, communicator)
        return Scaling.from_moments(moments.mean, np.sqrt(moments.squares / moments.count))
    extremes = value_range(data, communicator)
    if extremes is None:  # uint8 inputs: 0..255 whatever the rows hold
        return Scaling.fit(kind, np.zeros((1, 1), dtype=np.uint8))
    return Scaling.fit(kind, np.array([[extremes[0]], [extremes[1]]], dtype=np.float32))


def value_range(data, communicator: Communicator | None = None) -> tuple[float, float] | None:
    """The smallest and largest input of ``data``'s rows, each rank reading its share; None for uint8
    inputs (whose range is 0..255 whatever they hold: one chunk says so)."""
    communicator = communicator or Communicator()
    low = high = None
    pixels = False
    for start, stop in rank_chunks(data.source.rows, data.chunk_rows, communicator):
        X, _ = data.source.read(start, stop)
        if X.dtype == np.uint8:
            pixels = True
            break
        low = X.min() if low is None else min(low, X.min())
        high = X.max() if high is None else max(high, X.max())
    if communicator.size > 1:  # float32 extremes are exact as JSON's floats
        parts = communicator.allgather_json([pixels, *(None if v is None else float(v) for v in (low, high))])
        pixels = any(part[0] for part in parts)
        low = min(part[1] for part in parts if part[1] is not None) if not pixels else None
        high = max(part[2] for part in parts if part[2] is not None) if not pixels else None
    return None if pixels else (low, high)


def standard_moments(data, communicator: Communicator | None = None) -> Moments:
    """The per-feature moments of ``data``'s rows (float64): this rank's chunks merged in order, then
    the ranks' parts in rank order, so every rank holds the same."""
    communicator = communicator or Communicator()
    moments = Moments()
    for start, stop in rank_chunks(data.source.rows, data.chunk_rows, communicator):
        moments.add(data.source.read(start, stop)[0])
    if communicator.size == 1:
        return moments
    mine = [moments.count, *(np.asarray(v, dtype=np.float64).tolist() for v in (moments.mean, moments.squares))]
    moments = Moments()
    for count, mean, squares in communicator.allgather_json(mine):  # JSON keeps float64 exactly
        moments.merge(count, np.asarray(mean), np.asarray(squares))
    return moments


def largest_label(source, chunk_rows: int, communicator: Communicator | None = None) -> int:
    """The largest class label of ``source``'s rows: each rank reads the targets of its share of the chunks."""
    communicator = communicator or Communicator()
    chunks = rank_chunks(source.rows, chunk_rows, communicator)
    top = source.largest_label(chunks[0][0], chunks[-1][1]) if chunks else 0
    return max(communicator.allgather_json(top)) if communicator.size > 1 else top
