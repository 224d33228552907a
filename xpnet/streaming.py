"""``fit`` on data read from disk chunk by chunk: shuffled in buffers, read ahead in a background thread.

``stream(source)`` wraps a ``xpnet.data.sources.Source`` (or a path, or a list of ``(X, y)``
chunks) as ``fit``'s ``X``; ``fit`` hands such data here. Each epoch follows the chunked
shuffle of ``xpnet.data.stream``: a buffer of ``buffer_chunks`` chunks is read, its rows
uploaded, its batches trained, while the next buffer is read and uploaded by a
``xpnet.prefetch.Prefetcher`` thread (double-buffered: two buffers at most are alive; on CUDA
through page-locked blocks and a copy stream, ``xpnet.backend.staging``). The
steps are ``fit``'s own (``xpnet.step.Step``), their batches made ahead over the buffer's rows
as ``fit`` makes them over data in memory (``xpnet.batches``: one gather, prepare and one-hot
per run of steps), with the epoch's sums, reads, checkpoints and stops exactly as ``fit`` has
them; a buffer that holds the whole set draws ``fit``'s own permutation, so training equals
in-memory training. The passes before training (the scaling, the class count) are made in
``xpnet.stream_passes``.

Data-parallel: every rank plans the same buffers; a rank reads only the rows of its part of
each batch (and the rows a buffer carries to the next), straight from a memory map, or from
the chunks that hold them for a source without row access (Parquet, Python chunks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xpnet.backend.staging import ALIGN, BackgroundUploads
from xpnet.batches import Batches
from xpnet.data.sources import ChunkSource, NpySource, Source, open_source
from xpnet.data.stream import epoch_plan, load_buffer
from xpnet.data_parallel import DataParallel
from xpnet.distributed import Communicator
from xpnet.errors import ConfigError
from xpnet.inputs import check_validation
from xpnet.memory import Estimate
from xpnet.optim import SGD
from xpnet.prefetch import Prefetcher, in_order
from xpnet.scaling import Scaling
from xpnet.train import (
    FitOptions,
    History,
    _agreed,
    _check_fit_args,
    _continue_random_streams,
    _Loop,
    _restore_best,
    _train_epochs,
    epoch_around,
)
from xpnet.weights import validation_weights

#: Rows per chunk and chunks per shuffle buffer unless asked otherwise (``--chunk-rows``, ``--shuffle-buffer``).
CHUNK_ROWS = 8192
BUFFER_CHUNKS = 4


@dataclass
class Streamed:
    """Training data read from ``source`` as ``fit`` goes: pass it as ``fit``'s ``X`` (no ``y``)."""

    source: Source
    chunk_rows: int = CHUNK_ROWS
    buffer_chunks: int = BUFFER_CHUNKS
    prefetch: bool = True  #: read the next buffer in a background thread while training on this one
    streamed: bool = field(default=True, init=False)  #: what ``fit`` looks for

    def __post_init__(self):
        for name in ("chunk_rows", "buffer_chunks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, not {value!r}")

    def __len__(self) -> int:
        return self.source.rows

    @property
    def buffer_rows(self) -> int:
        return min(self.chunk_rows * self.buffer_chunks, self.source.rows)

    def fit(self, net, y=None, **options) -> History:
        """``fit(net, self, ...)``: see ``xpnet.train.fit``."""
        return fit_streamed(net, self, y, **options)

    def describe(self) -> dict:
        return {**self.source.describe(), "chunk rows": self.chunk_rows, "buffer chunks": self.buffer_chunks}


def stream(data, target: str | None = None, task: str = "classification", **options) -> Streamed:
    """``fit``'s ``X`` for data that is not in memory: a ``Source``, a path (``open_source``), or a
    re-iterable of ``(X, y)`` chunks; ``options``: ``chunk_rows``, ``buffer_chunks``, ``prefetch``."""
    if isinstance(data, Source):
        source = data
    elif isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        source = open_source(data, target, task)
    else:
        source = ChunkSource(data, task=task)
    return Streamed(source, **options)


def stream_estimate(
    data: Streamed, sizes_itemsize: int, ranks: int = 1, pinned_itemsize: int = 0, batch_size: int = 1
) -> Estimate:
    """What the stream holds at its peak: two buffers (one trained on, one being read), each on the
    host (a block with room for two batches more than a buffer: ``_Reader._empty``) and on the
    device, the host's chunk being read, and the rows carried between buffers. On
    CUDA (``pinned_itemsize``: the network dtype's size) also the two page-locked blocks the buffers
    are copied from (``xpnet.backend.staging``): a buffer and the rows it carries over (fewer than
    ``batch_size``), rounded up to a power of two as the blocks are."""
    row = data.source.features * 4 + 8  # float32 features (uint8 takes less), a label or target
    device_row = data.source.features * sizes_itemsize + 8
    rows = data.buffer_rows
    estimate = Estimate().add("stream buffers on the host (2)", 2 * (rows + 2 * batch_size) * row)
    estimate.add("stream buffers on the device (2)", 2 * rows * device_row + 2 * rows * 12)
    if pinned_itemsize:
        block = (rows + batch_size - 1) * (data.source.features * pinned_itemsize + 8 + 4) + 3 * ALIGN
        estimate.add("page-locked staging blocks (2)", 2 * (1 << (block - 1).bit_length()))
    return estimate.add("a chunk being read", data.chunk_rows * row * 2)


def fit_streamed(net, data: Streamed, y=None, **options) -> History:
    """``xpnet.train.fit`` for ``Streamed`` data: the same options, the same numbers."""
    _refuse(y, options)
    epochs, batch_size, patience = _check_fit_args(
        net, options.get("epochs", 10), options.get("batch_size", 64), options.get("patience"),
        options.get("monitor", "val_loss"), options.get("label_smoothing", 0.0),
    )  # fmt: skip
    _default_scaling(net, data, options.get("verbose", False), options.get("log", print))
    validation, given = _validation(net, options.get("validation_data"))
    fit_options = FitOptions(
        epochs, min(batch_size, data.source.rows), options.get("label_smoothing", 0.0), options.get("shuffle", True),
        patience, options.get("progress", False), options.get("monitor", "val_loss"),
    )  # fmt: skip
    parallel = DataParallel(options.get("communicator") or Communicator(), fit_options.batch_size)
    log = options.get("log", print) if options.get("verbose") and parallel.communicator.is_root else None
    seed = options.get("seed", 0)
    history, rng = _continue_random_streams(net, options.get("history") or History(), seed)
    optimizer = options.get("optimizer") or SGD()
    loop = _StreamLoop(
        net, optimizer, None, None, validation, fit_options, options.get("should_stop"), log, parallel,
        None, history.loss_scaler,
    )  # fmt: skip
    loop.data = data
    backend = net.backend
    with backend.activated(), backend.quiet_float_errors(), backend.flush_denormals(), parallel.rank_dropout(net):
        agreed = {**_agreed(loop, seed, history), "data": data.describe()}
        parallel.start(net, optimizer, {"validation": given}, agreed)
        if not _train_epochs(loop, history, rng, options.get("on_epoch_end"), _stream_epoch):
            return history
        if options.get("restore_best", True):
            _restore_best(net, history, loop.log, fit_options.monitor)
    return history


def _refuse(y, options: dict) -> None:
    if y is not None:
        raise ConfigError("streamed data brings its own targets: call fit(net, stream(...)) with no y")
    for name in ("sample_weight", "class_weight"):
        if options.get(name) is not None:
            raise ConfigError(f"{name} is not supported with streamed data yet; train in memory to weigh rows")


def _default_scaling(net, data: Streamed, verbose: bool, log) -> None:
    """uint8 inputs with no scaling set are scaled to [0, 1], as ``fit`` does in memory."""
    if net.scaling is None and data.source.read(0, 1)[0].dtype == np.uint8:
        net.set_scaling(Scaling("unit", 0.0, float(np.float32(1 / 255))))
        if verbose:
            log("uint8 inputs and no scaling set: scaling them to [0, 1] (x / 255)")


def _validation(net, validation_data) -> tuple:
    """``((X_val, y_val[, weights]) on the device or None, the checked host arrays)``."""
    checked = check_validation(net, validation_data)
    if checked is None:
        return None, None
    validation = net.to_device(checked[0]), net.to_device(checked[1], labels=True)
    return validation + validation_weights(net, validation[1], checked), checked


class _StreamLoop(_Loop):
    """``fit``'s loop state with the steps of a streamed epoch (the data lives in the buffers)."""

    data: Streamed

    @property
    def steps(self) -> int:
        return self.data.source.rows // self.batch_size


def _stream_epoch(loop: _StreamLoop, history: History, rng):
    """One epoch from ``history.batch`` on, as ``xpnet.train._run_epoch`` runs it on data in memory."""
    history.rng_state = rng.bit_generator.state  # the plan replays from here on a resume
    return epoch_around(loop, history, lambda sums, first, bar: _stream_steps(loop, history, rng, sums, first, bar))


def _stream_steps(loop: _StreamLoop, history: History, rng, sums, first: int, bar) -> int | None:
    """The epoch's steps from ``first``, buffer after buffer; the batches done if a stop came, else None.

    A buffer's batches are made a run of steps at a time (``xpnet.batches``), as ``fit`` makes them
    from data in memory, and each run's correct predictions counted at its end (``RunningSums.settle``)."""
    data, size, steps, net = loop.data, loop.batch_size, loop.steps, loop.net
    reorder = data.source.random_access
    plan = epoch_plan(data.source.rows, data.chunk_rows, data.buffer_chunks, size, rng, loop.options.shuffle, reorder)
    uploads = net.backend.background_uploads()  # made here: the arrays are for this thread's stream
    reader, local = _Reader(loop, uploads), loop.parallel.rows if loop.parallel.active else None
    wanted = (buffer for buffer in plan if buffer.first_step + buffer.steps(size) > first)
    feed = Prefetcher(wanted, reader, context=net.backend.activated) if data.prefetch else None
    sums.pending = []
    try:
        for buffer, arrival, host in feed or in_order(wanted, reader):
            X, y, order = arrival.take()  # before their first use: on CUDA this stream waits for the copy
            loop.step.X, loop.step.y = X, y
            batches = Batches(loop.step, order, buffer.steps(size), size, local)
            for k in range(max(first - buffer.first_step, 0), buffer.steps(size)):
                b = buffer.first_step + k
                loop.optimizer.set_progress(history.epoch + b / steps, loop.epochs)
                rows, batch = batches(k)
                loop.step(rows, sums, batch=batch)
                batch = None  # not held while the next run is made: its run's buffers may go first
                if batches.ends_run(k):
                    sums.settle(net)
                if bar is not None:
                    bar.update(1)
                if loop.stop_requested() and b + 1 < steps:
                    sums.settle(net)
                    return b + 1
            # this buffer is done: its memory may go, or be filled again where the step read it in place
            reader.recycle(host, X)
            loop.step.X = loop.step.y = X = y = order = arrival = batches = host = None
    finally:
        if feed is not None:
            feed.close()
        uploads.close()
    return None


class _Reader:
    """Reads a buffer's rows (this rank's share) and starts their upload: what the prefetch thread runs.

    Where the steps compute on the host rows themselves (NumPy: the upload is the array itself), a
    buffer's block, once its steps are done, is filled again for a later buffer instead of a fresh one:
    a fresh 100 MB block is 25,000 page faults and zeroed pages in the reader thread, CPU time it took
    from the BLAS threads (15-30 ms a buffer of 32,768 x 784 on 2 cores, beside ~20 ms of copying).
    """

    def __init__(self, loop: _StreamLoop, uploads: BackgroundUploads):
        self.loop, self.uploads, self.kept = loop, uploads, None
        self.spare: list = []  #: blocks the steps are done with (list append and pop are atomic: thread-safe)
        source = loop.data.source
        # A memory map reads any row directly: a rank reads only its share of each buffer.
        self.row_access = loop.parallel.active and isinstance(getattr(source, "source", source), NpySource)

    def __call__(self, buffer):
        loop, net = self.loop, self.loop.net
        positions = np.arange(buffer.ids.size)
        if loop.parallel.active:  # this rank's part of each batch, and the rows the next buffer carries on
            mine = buffer.order.reshape(-1, loop.batch_size)[:, loop.parallel.rows].ravel()
            positions = np.union1d(mine, buffer.rest)
        X, y, self.kept = load_buffer(loop.data.source, buffer, positions, self.kept, self.row_access, self._empty)
        # Positions in the rows read: another rank's rows map anywhere; ``local_rows`` drops them.
        order = np.minimum(np.searchsorted(positions, buffer.order), positions.size - 1)
        (X_put, x_type), (y, y_type) = net.device_form(X), net.device_form(y, labels=True)
        return buffer, self.uploads.start([X_put, y, order.astype(np.int32)], [x_type, y_type, None]), X

    def _empty(self, shape: tuple, dtype) -> np.ndarray:
        """The leading rows of the spare block where it fits, else a new block with a batch's rows to
        spare: a buffer holds its chunks and fewer than a batch carried over, so every later one fits."""
        block = self.spare.pop() if self.spare else None
        if block is None or block.dtype != dtype or block.shape[1:] != shape[1:] or len(block) < shape[0]:
            block = np.empty((shape[0] + self.loop.batch_size, *shape[1:]), dtype=dtype)
        return block[: shape[0]]

    def recycle(self, host: np.ndarray, trained) -> None:
        """Called by the training thread when a buffer's steps are done: its block may be filled again if
        the steps read it in place (every batch was gathered into arrays of their own: ``xpnet.batches``);
        a block that was copied to the device went with its upload."""
        if trained is host and len(self.spare) < 2:  # two: the most the prefetcher holds at once
            self.spare.append(host.base if host.base is not None else host)
