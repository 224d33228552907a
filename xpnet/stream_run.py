"""A ``train`` run on a streamed ``--dataset`` (a ``.npy`` folder or pair, a Parquet file): its data and memory.

``run_training`` asks this module for the data when the dataset is read from disk as training
goes (``xpnet.data.sources.is_streamed_path``). The training rows stay on disk
(``xpnet.streaming.Streamed``); the validation rows, which are also the rows the finished model
is tested on, are read into memory: ``--val-data FILE``, or else the last ``--val-split`` of the
dataset's rows (a held-out range, not a random draw, so nothing is read to pick it). The classes
are counted in one pass over the training targets (data-parallel, each rank reads its share:
``xpnet.stream_passes``) and the held-out labels in memory; the memory check counts the stream's
buffers and the validation rows, not the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xpnet.data.sources import RowRange, Source, open_source
from xpnet.distributed import Communicator
from xpnet.errors import ConfigError, DataError
from xpnet.memory import DeviceRun, Estimate, device_training_estimate, training_estimate
from xpnet.optim import get_optimizer
from xpnet.precision import get_precision
from xpnet.settings import BASE_SETTINGS
from xpnet.stream_passes import fit_scaling, largest_label
from xpnet.streaming import Streamed, stream_estimate

#: Classes a streamed classification set may have (as a file loaded whole).
MAX_CLASSES = 100_000


@dataclass
class StreamDataset:
    """``xpnet.data.Dataset``'s face for a streamed set: ``X_train`` is the stream, the test rows are in memory."""

    name: str
    X_train: Streamed
    X_test: np.ndarray  #: the held-out rows: validation during training, the test after it
    y_test: np.ndarray
    class_names: list[str] = field(default_factory=list)
    task: str = "classification"
    y_train: None = None  #: the targets travel with the stream
    w_train: None = None
    #: The ranks that share the passes over the training rows (one process: a ``Communicator()``).
    communicator: Communicator = field(default_factory=Communicator, repr=False)

    @property
    def num_features(self) -> int:
        return self.X_train.source.features

    @property
    def num_classes(self) -> int:
        if self.task == "classification":
            return len(self.class_names)
        return 1 if self.y_test.ndim == 1 else int(self.y_test.shape[1])

    def memory_estimate(self, settings: dict, on_host: bool) -> Estimate:
        """The host's peak: the network, the stream's buffers and the held-out rows (``xpnet.memory``)."""
        itemsize = np.dtype(settings["dtype"]).itemsize
        pinned = 0 if on_host else itemsize  # a GPU's uploads go through page-locked blocks
        stream = stream_estimate(self.X_train, itemsize if on_host else 0, 1, pinned, settings["batch_size"])
        held = self.X_test.nbytes + self.y_test.nbytes
        data_bytes = sum(stream.parts.values()) + held * (2 if on_host else 1)
        rows = self.X_train.buffer_rows
        return training_estimate(
            self._sizes(settings), itemsize, _buffers(settings), data_bytes, rows, settings["batch_size"], 4
        )

    def device_estimate(self, settings: dict, ranks: int) -> Estimate:
        """The GPU's peak: two buffers of the stream and the held-out rows, besides the network."""
        itemsize = np.dtype(settings["dtype"]).itemsize
        rows = self.X_train.buffer_rows
        uploaded = 2 * rows * (self.num_features * itemsize + 8) + self.X_test.size * itemsize + self.y_test.nbytes
        precision = get_precision(settings["precision"])
        half = 2 if precision.mixed else 0
        run = DeviceRun(uploaded, rows, settings["batch_size"], 4, half, precision.loss_scaling, ranks)
        return device_training_estimate(self._sizes(settings), itemsize, _buffers(settings), run)

    def _sizes(self, settings: dict) -> list[int]:
        return [self.num_features, *settings["layers"], self.num_classes]

    def fit_scaling(self, kind: str):
        """The input scaling, fitted in one pass over the training rows (each rank over its share)."""
        return fit_scaling(kind, self.X_train, self.communicator)


def _buffers(settings: dict) -> int:
    return get_optimizer(settings.get("optimizer") or "sgd", **settings).buffers_per_param


def load_streamed(settings: dict, task: str, communicator: Communicator | None = None) -> tuple[StreamDataset, tuple]:
    """The streamed dataset ``settings`` name and ``run_training``'s split ``(X_train, y_train, X_val,
    y_val, w_train, w_val)``, the training part a stream, the validation rows in memory;
    ``communicator``: the ranks that share the passes over the training rows."""
    communicator = communicator or Communicator()
    source = open_source(settings["dataset"], settings.get("target"), task)
    train, held = _held_out(source, settings)
    data = Streamed(train, settings["chunk_rows"], settings["shuffle_buffer"])
    X_val, y_val = held.read(0, held.rows) if held.rows else _empty(source)
    class_names = _class_names(data, y_val, task, communicator)
    dataset = StreamDataset(str(settings["dataset"]), data, X_val, y_val, class_names, task, communicator=communicator)
    return dataset, (data, None, X_val, y_val, None, None)


def held_out_data(dataset: str, training: dict, task: str) -> StreamDataset:
    """A streamed dataset with the held-out rows a model's ``training`` settings chose: what
    ``xpnet evaluate`` tests on (a model trained with no held-out rows has none to test)."""
    settings = {**BASE_SETTINGS, **training, "dataset": dataset}
    data, _ = load_streamed(settings, task)
    if not len(data.X_test):
        raise ConfigError(f"dataset {dataset!r}: the model was trained with no held-out rows to test on")
    return data


def _held_out(source: Source, settings: dict) -> tuple[Source, Source]:
    """``(training rows, held-out rows)``: ``--val-data``'s file, or the last ``--val-split`` of the rows."""
    if settings.get("val_data"):
        held = open_source(settings["val_data"], settings.get("target"), source.task)
        if held.features != source.features:
            raise DataError(
                f"--val-data {settings['val_data']}: {held.features} features, but {source.name} has {source.features}"
            )
        return source, held
    count = min(round(source.rows * settings["val_split"]), source.rows - 1)
    return RowRange(source, 0, source.rows - count), RowRange(source, source.rows - count, source.rows)


def _class_names(data: Streamed, y_held: np.ndarray, task: str, communicator: Communicator) -> list[str]:
    """Classes ``0..top``, ``top`` the largest label of the training rows (a pass, shared among the
    ranks) and of the held-out rows (already in memory)."""
    if task != "classification":
        return []
    source = data.source
    top = max(largest_label(source, data.chunk_rows, communicator), int(y_held.max()) if y_held.size else 0)
    if top >= MAX_CLASSES:
        raise DataError(f"{source.name}: labels go up to {top}, over {MAX_CLASSES} classes; number them 0, 1, 2, ...")
    if top == 0:
        raise DataError(f"{source.name}: every label is 0, a single class; a classifier needs at least two")
    return [str(c) for c in range(top + 1)]


def _empty(source: Source) -> tuple[np.ndarray, np.ndarray]:
    X, y = source.read(0, 1)
    return X[:0], y[:0]
