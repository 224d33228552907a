"""Uploads a background thread starts and another thread uses: how streamed data reaches the device.

``Backend.background_uploads()``, called in the thread that will use the arrays (the training
thread), gives a ``BackgroundUploads``. The reader thread calls its ``start(hosts, dtypes)``
and hands the ``Arrival`` over; the training thread calls ``Arrival.take()`` before the arrays'
first use. Off CUDA the upload is ``Backend.upload`` and the arrays are ready at once.

On CUDA (``PinnedUploads``, completed by the CuPy and PyTorch classes) the host rows are
copied into one of two page-locked blocks used in turn, and from there onto the device on a
copy stream of the uploads' own; an event is recorded after the copies, and ``take`` makes the
training stream wait for it on the GPU. The copy runs beside the kernels and no host
synchronisation enters a training step. A block is filled again only after its last copy is
done: the reader thread waits for that, never the training thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Page-locked blocks, used in turn: one being copied from while the next is filled.
SLOTS = 2
#: Where each array starts inside a block (bytes): any dtype's view is aligned there.
ALIGN = 256


class Arrival:
    """Device arrays on their way: ``take()`` them in the thread that uses them, before their first use."""

    def __init__(self, arrays: list):
        self._arrays = arrays

    def take(self) -> list:
        return self._arrays


class BackgroundUploads:
    """``Backend.upload`` of each host array, ready at once: the way off CUDA."""

    def __init__(self, backend):
        self.backend = backend

    def start(self, hosts: Sequence[np.ndarray], dtypes: Sequence[Any]) -> Arrival:
        """Upload each host array as ``dtypes``' entry (None: its own dtype), as ``Backend.upload`` does."""
        return Arrival([self.backend.upload(host, dtype) for host, dtype in zip(hosts, dtypes, strict=True)])

    def close(self) -> None:
        """Wait for the copies still running (nothing here: each upload was done when it returned)."""


@dataclass
class _Slot:
    """One page-locked block: the library's allocation, a NumPy view of its bytes, its last copies' event."""

    block: Any = None
    host: np.ndarray | None = None
    copied: Any = None


class PinnedUploads(BackgroundUploads):
    """Two page-locked staging blocks used in turn, a copy stream, an event after each upload's copies.

    The order of operations lives here; a library's class says how: ``_streams`` (the stream of
    the thread making this, and a new non-blocking copy stream), ``_event``, ``_pin`` (a
    page-locked block), ``_copy`` (device arrays of the staged views, queued on the copy stream),
    ``_claim`` (what its allocator must be told when the training stream takes the arrays).
    """

    def __init__(self, backend):
        super().__init__(backend)
        self.consumer, self.copy_stream = self._streams()
        self._slots = [_Slot() for _ in range(SLOTS)]
        self._turn = 0
        self.pinned_blocks = 0  #: page-locked blocks allocated (two, unless a later buffer is larger)

    def start(self, hosts: Sequence[np.ndarray], dtypes: Sequence[Any]) -> Arrival:
        """Fill the next block with ``hosts`` (cast to ``dtypes``) and queue their copies on the copy stream."""
        kinds = [self._host_dtype(host, dtype) for host, dtype in zip(hosts, dtypes, strict=True)]
        if any(kind is None for kind in kinds):  # a dtype NumPy cannot hold (bfloat16): the ordinary upload
            return super().start(hosts, dtypes)
        slot = self._slots[self._turn % SLOTS]
        self._turn += 1
        if slot.copied is not None:
            slot.copied.synchronize()  # its last copy has read the block: it may be filled again
        views = self._fill(slot, hosts, kinds)
        arrays = self._copy(slot.block, views)
        copied = self._event()
        copied.record(self.copy_stream)
        slot.copied = copied
        self.backend._uploaded(arrays)
        return _PinnedArrival(arrays, copied, self)

    def _fill(self, slot: _Slot, hosts: Sequence[np.ndarray], kinds: list[np.dtype]) -> list[tuple[int, np.ndarray]]:
        """``(offset, view)`` for each host array, copied (and cast) into ``slot``'s block, grown if too small."""
        offsets, total = [], 0
        for host, kind in zip(hosts, kinds):
            offsets.append(total)
            total += -(-host.size * kind.itemsize // ALIGN) * ALIGN
        if slot.host is None or slot.host.nbytes < total:
            slot.block = slot.host = None  # the smaller block goes back to the library's pool first
            # A power of two, as CuPy's and PyTorch's pinned pools round it anyway: buffers that grow
            # by the rows carried over (fewer than a batch) fit without a new block.
            slot.block, slot.host = self._pin(1 << (total - 1).bit_length())
            self.pinned_blocks += 1
        views = []
        for host, kind, offset in zip(hosts, kinds, offsets):
            view = slot.host[offset : offset + host.size * kind.itemsize].view(kind).reshape(host.shape)
            np.copyto(view, host, casting="same_kind")
            views.append((offset, view))
        return views

    def close(self) -> None:
        """Wait for the copies still running, so their blocks and arrays may be reused (at the end of an
        epoch, outside any step): a buffer read ahead and never taken is dropped here."""
        for slot in self._slots:
            if slot.copied is not None:
                slot.copied.synchronize()

    # -- what each library says for itself ------------------------------------------------------

    def _host_dtype(self, host: np.ndarray, dtype: Any) -> np.dtype | None:
        """The NumPy dtype ``host`` is staged as: ``dtype``'s (None: ``host``'s own); None if NumPy has none."""
        return host.dtype if dtype is None else np.dtype(dtype)

    def _streams(self) -> tuple[Any, Any]:
        raise NotImplementedError

    def _event(self):
        raise NotImplementedError

    def _pin(self, nbytes: int) -> tuple[Any, np.ndarray]:
        raise NotImplementedError

    def _copy(self, block: Any, views: list[tuple[int, np.ndarray]]) -> list:
        raise NotImplementedError

    def _claim(self, arrays: list) -> None:
        """Tell the library's allocator the training stream uses ``arrays`` (nothing to say by default)."""


class _PinnedArrival(Arrival):
    """Arrays whose copies may still be running on the copy stream until ``copied``."""

    def __init__(self, arrays: list, copied: Any, uploads: PinnedUploads):
        super().__init__(arrays)
        self._copied, self._uploads = copied, uploads

    def take(self) -> list:
        """The training stream waits for the copies, on the GPU; the host goes on at once."""
        if self._copied is not None:
            self._uploads.consumer.wait_event(self._copied)
            self._uploads._claim(self._arrays)
            self._copied = None
        return self._arrays
