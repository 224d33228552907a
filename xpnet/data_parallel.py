"""One ``fit`` across the ranks of a job: who trains which rows, and what the ranks must agree on.

The semantics are those of one process training on the global batch: every rank
draws the same permutation, takes its contiguous part of each global batch (and of the
validation set), and its gradients are averaged over the ranks before the unchanged
optimizer steps (``xpnet.distributed`` moves them). Dropout masks are each rank's rows
of the global batch's masks. Everything that steers the loop -- epoch metrics, early
stopping, divergence, a stop request -- is taken from numbers every rank shares, so
no rank leaves the loop alone while the others wait in a collective.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from xpnet.distributed import Communicator, FlatBuffer
from xpnet.errors import ConfigError, RanksDifferError
from xpnet.weights import batch_shares


class RankRows:
    """A dropout generator drawing the global batch's numbers and keeping this rank's rows.

    Every rank draws from the same seeded stream exactly what one process draws for the
    whole batch, so rank r's masks are rows [r b, (r + 1) b) of the one-process masks:
    the same training, bit for bit, for the price of drawing R times the numbers used.
    """

    def __init__(self, generator, rank: int, size: int):
        self.generator, self.rank, self.size = generator, rank, size

    def uniform(self, shape: tuple, dtype: Any):
        rows = shape[0]
        drawn = self.generator.uniform((rows * self.size, *shape[1:]), dtype)
        return drawn[self.rank * rows : (self.rank + 1) * rows, ...]

    def get_state(self):
        return self.generator.get_state()

    def set_state(self, state) -> None:
        self.generator.set_state(state)


def rank_part(n: int, communicator: Communicator) -> slice:
    """This rank's contiguous part of ``n`` rows (parts differ in size by at most one)."""
    base, extra = divmod(n, communicator.size)
    start = communicator.rank * base + min(communicator.rank, extra)
    return slice(start, start + base + (communicator.rank < extra))


def check_same_job(communicator: Communicator, fingerprint: dict) -> None:
    """Refuse, on every rank alike, a job whose ranks train different data or settings.

    ``fingerprint`` holds ``sizes`` (name -> shape), ``settings`` (name -> JSON-able value)
    and ``data`` (a digest of the contents); each rank's are compared with rank 0's and
    the first difference is named.
    """
    prints = communicator.allgather_json(fingerprint)
    reference = prints[0]
    for rank, other in enumerate(prints[1:], start=1):
        for part, says in (("sizes", "{key} shaped {value}"), ("settings", "{key} = {value}")):
            for key in sorted(set(reference[part]) | set(other[part])):
                mine, theirs = other[part].get(key), reference[part].get(key)
                if mine != theirs:
                    raise RanksDifferError(
                        f"rank {rank} has {says.format(key=key, value=mine)}, rank 0 "
                        f"{says.format(key=key, value=theirs)}: every rank must run the same command on the same data"
                    )
        if other["data"] != reference["data"]:
            raise RanksDifferError(
                f"rank {rank}'s training data differ from rank 0's (same sizes, other contents): "
                "every rank must read the same files"
            )


def data_digest(backend, arrays: Sequence) -> str:
    """A short hash of arrays' contents, to tell two ranks' data apart. ``fit`` passes the host
    arrays as given, hashed where they are; only an array the caller put on the device is read back."""
    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        if array is None:  # no weights, no validation: as np.asarray(None) it would hash a pointer
            digest.update(b"none")
            continue
        on_device = not isinstance(array, np.ndarray) and backend.same_library(array)
        host = np.ascontiguousarray(backend.to_host(array) if on_device else np.asarray(array))
        digest.update(f"{host.dtype.str}{host.shape}".encode())
        digest.update(host.data)
    return digest.hexdigest()


def settings_digest(value: Any) -> str:
    """A short hash of a JSON-able value (a per-feature scaling, say) too long to compare in full."""
    text = json.dumps(value, sort_keys=True, default=repr)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class DataParallel:
    """One ``fit`` call's part on this rank, and the collectives it makes, in the order it makes them.

    With one rank every method hands its input back untouched, so a one-process ``fit``
    runs exactly as it did before there were ranks.
    """

    def __init__(self, communicator: Communicator, batch_size: int):
        self.communicator = communicator
        rank, size = communicator.rank, communicator.size
        if batch_size % size:
            raise ConfigError(
                f"batch size {batch_size} does not split evenly among {size} ranks (each takes an equal part "
                f"of every batch); choose a multiple of {size}"
            )
        self.local_batch = batch_size // size
        #: This rank's rows of each global batch.
        self.rows = slice(rank * self.local_batch, (rank + 1) * self.local_batch)
        self._gradients = None

    @property
    def active(self) -> bool:
        return self.communicator.size > 1

    def start(self, net, optimizer, arrays: dict, options: dict) -> None:
        """Before the first step: refuse ranks that differ, then give all rank 0's weights and optimizer state.

        ``arrays`` names the whole training and validation data (``None`` where absent),
        ``options`` the ``fit`` settings the ranks must share.
        """
        if not self.active:
            return
        if not net.backend.writable:
            raise ConfigError(
                f"data-parallel training is not supported on backend {net.backend.name!r}: its arrays cannot be "
                "written into, and the collectives reduce gradients in place; use --backend numpy or torch"
            )
        if options.get("seed") is None or (net.dropout_rng is not None and net.seed is None):
            raise ConfigError(
                "data-parallel training needs a seed (fit's seed and, with dropout, the network's): "
                "every rank must draw the same permutation and the same dropout masks"
            )
        arrays = {name: array for name, array in _flat_items(arrays)}
        check_same_job(self.communicator, fit_fingerprint(net, optimizer, arrays, options))
        FlatBuffer(self.communicator, net.backend, net.params).broadcast_into(net.params)
        state = optimizer.state_arrays()
        if state:
            FlatBuffer(self.communicator, net.backend, state).broadcast_into(state)

    def mean_gradients(self, net, grads: list) -> list:
        """The step's gradients averaged over the ranks: one flat buffer, one allreduce."""
        if not self.active:
            return grads
        if self._gradients is None:
            self._gradients = FlatBuffer(self.communicator, net.backend, grads)
        return self._gradients.mean(grads)

    def weight_shares(self, xp, weights, batch):
        """This rank's rows' shares of the global batch's weight, as ``xpnet.weights.batch_shares``
        gives them (every rank sums the global batch's weights itself); None for unweighted training."""
        if weights is None:
            return None
        return batch_shares(xp, weights, batch, self.local_rows(batch), self.communicator.size)

    def local_rows(self, idx):
        """This rank's contiguous part of a global batch's row indices."""
        return idx[self.rows] if self.active else idx

    def validation_part(self, validation: tuple | None) -> tuple | None:
        """This rank's contiguous part of ``(X_val, y_val)`` (the sums are added up after)."""
        if not self.active or validation is None:
            return validation
        rows = rank_part(validation[0].shape[0], self.communicator)
        return tuple(array[rows, ...] for array in validation)

    def sum_host(self, values: list[float], root_only: Sequence[int] = ()) -> list[float]:
        """``values`` summed over the ranks, identical on every rank; the positions in ``root_only``
        carry rank 0's value instead (a figure every rank holds alike, such as max |w|)."""
        if not self.active:
            return values
        if not self.communicator.is_root:
            values = [0.0 if i in root_only or i - len(values) in root_only else v for i, v in enumerate(values)]
        return self.communicator.sum_host(values)

    def stop_requested(self, flag: bool) -> bool:
        """A stop asked for on any rank is a stop for all, at the same step."""
        return self.communicator.any(flag) if self.active else flag

    @contextlib.contextmanager
    def rank_dropout(self, net):
        """While training, dropout masks are this rank's rows of the global batch's (``RankRows``)."""
        generator = net.dropout_rng
        if not self.active or generator is None:
            yield
            return
        net.dropout_rng = RankRows(generator, self.communicator.rank, self.communicator.size)
        try:
            yield
        finally:
            net.dropout_rng = generator


def _flat_items(arrays: dict):
    """``(name, array)`` pairs, tuples of arrays numbered, ``None`` left out."""
    for name, value in arrays.items():
        if isinstance(value, (tuple, list)):
            yield from ((f"{name} {i}", array) for i, array in enumerate(value))
        elif value is not None:
            yield name, value


def fit_fingerprint(net, optimizer, arrays: dict, options: dict) -> dict:
    """What the ranks of one job must agree on: data sizes, every training setting, the data's contents.

    ``arrays`` names the training (and validation) arrays; ``options`` are ``fit``'s own.
    """
    sizes = {name: list(np.shape(array)) for name, array in arrays.items()}
    settings = dict(net.config())
    settings["scaling"] = settings_digest(net.scaling.to_dict()) if net.scaling is not None else None
    settings["optimizer"] = type(optimizer).__name__
    settings["schedule"] = repr(optimizer.schedule)
    for key, value in vars(optimizer).items():
        if isinstance(value, (bool, int, float, str)) and key != "lr":
            settings[f"optimizer {key}"] = value
    settings["optimizer buffers"] = len(optimizer.state_arrays())
    settings["backend"] = net.backend.name  # arrays of one library, on one kind of device, on every rank
    settings["device kind"] = "cuda" if net.backend.cuda_index is not None else "cpu"
    settings.update(options)
    return {"sizes": sizes, "settings": settings, "data": data_digest(net.backend, list(arrays.values()))}
