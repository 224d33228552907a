"""A background reader: the next item is read (and uploaded) while the caller works on the current one.

``Prefetcher(items, produce, depth=2)`` runs ``produce(item)`` for each item in a thread of its
own and hands the results over in order. At most ``depth`` results are alive at once, the one
the caller holds included: with the default 2 the buffers are double-buffered (one trained on,
one being filled), which is what the memory check counts. A result is given up when the caller
asks for the next one. An exception in the thread is raised in the caller, at the item it
belongs to; ``close`` (also on leaving a ``with`` block) stops the thread early, after a stop
request, say, without reading what is left.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_END = object()


class Prefetcher:
    """``produce(item)`` for each of ``items``, one step ahead of the caller, in a background thread."""

    def __init__(self, items: Iterable, produce: Callable[[Any], Any], depth: int = 2, context=None):
        self._items, self._produce = items, produce
        self._context = context or contextlib.nullcontext
        self._slots = threading.Semaphore(depth)
        self._results: queue.Queue = queue.Queue()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xpnet-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._context():
                for item in self._items:
                    self._slots.acquire()  # a free slot: the caller gave up a result
                    if self._stopped.is_set():
                        return
                    self._results.put((True, self._produce(item)))
            self._results.put((True, _END))
        except BaseException as exc:  # handed to the caller, raised where it takes the result
            self._results.put((False, exc))

    def __iter__(self) -> Iterator[Any]:
        while True:
            ok, value = self._results.get()
            if not ok:
                raise value
            if value is _END:
                return
            yield value
            self._slots.release()  # the caller is done with ``value``: the reader may fill its slot

    def close(self) -> None:
        """Stop the reader (it finishes the item under way) and wait for it."""
        self._stopped.set()
        self._slots.release()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._results.get(timeout=0.05)  # a reader blocked on nothing; drain what it made
        self._thread.join()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def in_order(items: Iterable, produce: Callable[[Any], Any]) -> Iterator[Any]:
    """The same results without a thread (``prefetch=False``): read, then train, one after the other."""
    for item in items:
        yield produce(item)
