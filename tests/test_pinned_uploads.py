"""Uploads a background thread starts for the training thread (``xpnet.backend.staging``), without a GPU.

Off CUDA they are ``Backend.upload``, ready at once. On CUDA they go through two page-locked
blocks used in turn and a copy stream; here the CUDA pieces are fakes that record every call
and run a stream's work only when an event recorded on it is waited on or synchronised: a
device array read before the training stream waited for its copy, or a block filled again
before its last copy ran, then shows as wrong numbers. The CuPy and PyTorch classes run against
fakes of their own library's calls (checked to exist in the real libraries where installed);
a streamed ``fit`` runs through the same order of operations with NumPy arrays standing in for
device arrays and equals in-memory training; on PyTorch's ``meta`` device the dispatch monitor
(tests/test_device_audit.py) audits the training thread. tests/test_gpu.py runs the real thing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import itertools
import threading
import types

import numpy as np
import pytest
from conftest import HAVE_TORCH, NEEDS_TORCH

from xpnet.backend import CupyBackend, TorchBackend, get_backend
from xpnet.backend.staging import BackgroundUploads, PinnedUploads
from xpnet.network import MLP
from xpnet.optim import Adam
from xpnet.streaming import stream, stream_estimate
from xpnet.train import fit

TRAINING = "MainThread"
READER = "reader"


class FakeGPU:
    """Streams, events and device memory that record what was asked of them, and by which thread."""

    def __init__(self):
        self.log: list[tuple] = []
        self.training = FakeStream(self, "training")
        self._local = threading.local()
        self.closing = False
        self.pinned: list[int] = []

    def note(self, what: str, *detail) -> None:
        self.log.append((what, threading.current_thread().name, *detail))

    @property
    def current(self) -> FakeStream:
        return getattr(self._local, "stream", self.training)

    @contextlib.contextmanager
    def using(self, stream: FakeStream):
        previous, self._local.stream = self.current, stream
        try:
            yield
        finally:
            self._local.stream = previous

    def pin(self, nbytes: int) -> bytearray:
        self.note("pin", nbytes)
        self.pinned.append(nbytes)
        return bytearray(nbytes)

    def entries(self, what: str) -> list[tuple]:
        return [entry for entry in self.log if entry[0] == what]

    def position(self, *entry) -> int:
        return next(i for i, found in enumerate(self.log) if found[: len(entry)] == entry)


class FakeStream:
    """Work queued in order; it runs when an event recorded after it is waited on or synchronised."""

    def __init__(self, gpu: FakeGPU, name: str, non_blocking: bool = False):
        self.gpu, self.name, self.non_blocking = gpu, name, non_blocking
        self.queue: list = []
        self.ran = 0

    def run_to(self, mark: int) -> None:
        while self.ran < mark:
            self.queue[self.ran]()
            self.ran += 1

    def wait_event(self, event: FakeEvent) -> None:
        """Later work on this stream sees what came before ``event``: run it now (a GPU would, first)."""
        self.gpu.note("wait_event", self.name, event.id)
        event.stream.run_to(event.mark)

    def __enter__(self):  # CuPy's ``with stream:``
        self._use = self.gpu.using(self)
        self._use.__enter__()
        return self

    def __exit__(self, *exc):
        self._use.__exit__(*exc)


class FakeEvent:
    ids = itertools.count()

    def __init__(self, gpu: FakeGPU, **options):
        self.gpu, self.id, self.options = gpu, next(self.ids), options
        self.stream, self.mark = None, 0

    def record(self, stream: FakeStream | None = None) -> None:
        self.stream = stream or self.gpu.training
        self.mark = len(self.stream.queue)
        self.gpu.note("record", self.stream.name, self.id)

    def synchronize(self) -> None:
        self.gpu.note("synchronize", self.stream.name, self.id, self.gpu.closing)
        self.stream.run_to(self.mark)


class FakeDeviceArray:
    """Device memory: its values exist once its copy has run; reading earlier fails."""

    def __init__(self, gpu: FakeGPU, shape, dtype):
        self.gpu, self.shape, self.dtype = gpu, tuple(shape), dtype
        self.arena = gpu.current.name  # the stream current at allocation (CuPy's pool keeps one list per stream)
        self.data, self.copied = None, False
        gpu.note("allocate", self.arena)

    def _queue_copy(self, stream: FakeStream, source) -> None:
        def copy():  # reads the page-locked memory when it runs, as a DMA engine would
            self.data, self.copied = np.array(source(), copy=True), True

        stream.queue.append(copy)

    def set(self, view: np.ndarray, stream: FakeStream | None = None) -> None:  # CuPy's
        stream = stream or self.gpu.current
        self.gpu.note("copy", stream.name, view.dtype.str)
        self._queue_copy(stream, lambda: view)

    def copy_(self, source, non_blocking: bool = False):  # PyTorch's
        self.gpu.note("copy", self.gpu.current.name, str(source.dtype), non_blocking)
        self._queue_copy(self.gpu.current, source.numpy)
        return self

    def record_stream(self, stream: FakeStream) -> None:  # PyTorch's
        self.gpu.note("record_stream", stream.name)

    def value(self) -> np.ndarray:
        self.gpu.note("use")
        assert self.copied, "a device array was used before its copy ran"
        return self.data


# -- each library's calls, faked -------------------------------------------------------------


def fake_cupy(gpu: FakeGPU) -> types.SimpleNamespace:
    """The calls ``CupyPinnedUploads`` makes, as ``cupy`` spells them."""
    cuda = types.SimpleNamespace(
        get_current_stream=lambda device_id=-1: gpu.current,
        Stream=lambda non_blocking=False: FakeStream(gpu, "copy", non_blocking),
        Event=lambda **options: FakeEvent(gpu, **options),
        alloc_pinned_memory=gpu.pin,
    )
    return types.SimpleNamespace(cuda=cuda, empty=lambda shape, dtype: FakeDeviceArray(gpu, shape, dtype))


class FakeDevice:
    """``cupy.cuda.Device(0)``: a context that makes it current."""

    id = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def cupy_flavour(gpu: FakeGPU, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "cupy", fake_cupy(gpu))
    return CupyBackend(None, FakeDevice())


def torch_flavour(gpu: FakeGPU, monkeypatch):
    torch = pytest.importorskip("torch")
    real_empty = torch.empty

    def empty(*shape, pin_memory=False, device=None, **options):
        if pin_memory:
            gpu.pin(shape[0])
            return real_empty(*shape, **options)  # page-locked memory is host memory
        if device is not None and torch.device(device).type == "cuda":
            return FakeDeviceArray(gpu, shape[0], options["dtype"])
        return real_empty(*shape, device=device, **options)

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: gpu.current)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: FakeStream(gpu, "copy", non_blocking=True))
    monkeypatch.setattr(torch.cuda, "Event", lambda **options: FakeEvent(gpu, **options))
    monkeypatch.setattr(torch.cuda, "stream", gpu.using)
    return TorchBackend(importlib.import_module("array_api_compat.torch"), torch.device("cuda", 0))


FLAVOURS = {
    "cupy": cupy_flavour,
    "torch": pytest.param(torch_flavour, marks=pytest.mark.skipif(not HAVE_TORCH, reason=NEEDS_TORCH)),
}


@pytest.fixture(params=list(FLAVOURS.values()), ids=list(FLAVOURS))
def cuda(request, monkeypatch):
    """``(backend, gpu)``: a CUDA backend whose library calls reach ``gpu``."""
    gpu = FakeGPU()
    return request.param(gpu, monkeypatch), gpu


def buffers(count: int = 5, rows: int = 40, features: int = 4) -> list[tuple[list, list]]:
    """Shuffle buffers as the reader uploads them: float32 rows (staged as float64), labels, order."""
    rng = np.random.default_rng(0)
    made = []
    for k in range(count):
        n = rows if k < count - 1 else rows // 2  # the last buffer of an epoch is smaller
        X = rng.standard_normal((n, features)).astype(np.float32)
        made.append(([X, rng.integers(0, 3, n).astype(np.int32), rng.permutation(n).astype(np.int32)], [None] * 3))
    return made


def float64(backend) -> object:
    return backend.dtype("float64") if isinstance(backend, TorchBackend) else np.float64


def start_all_in_a_reader(uploads, made, backend) -> list:
    """Every upload started by another thread before the training thread takes any: the copies of
    the first buffers have not run when their blocks come round again."""
    arrivals = []

    def read():
        for hosts, dtypes in made:
            arrivals.append(uploads.start(hosts, [float64(backend), *dtypes[1:]]))

    reader = threading.Thread(target=read, name=READER)
    reader.start()
    reader.join()
    return arrivals


# -- off CUDA: plain uploads -------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        ("numpy", None),
        ("array-api-strict", "device1"),
        pytest.param(("torch", "cpu"), marks=pytest.mark.skipif(not HAVE_TORCH, reason=NEEDS_TORCH)),
        pytest.param(("torch", "meta"), marks=pytest.mark.skipif(not HAVE_TORCH, reason=NEEDS_TORCH)),
    ],
)
def test_off_cuda_a_background_upload_is_an_upload_ready_at_once(spec):
    backend = get_backend(*spec)
    uploads = backend.background_uploads()
    assert type(uploads) is BackgroundUploads
    (hosts, _), *_ = buffers(1)
    with backend.audit() as audit:
        arrays = uploads.start(hosts, [backend.dtype("float64"), None, None]).take()
    assert audit.uploads == 3
    if spec[1] != "meta":
        expected = [hosts[0].astype(np.float64), hosts[1], hosts[2]]
        for array, host in zip(arrays, expected):
            assert np.array_equal(np.asarray(backend.to_host(array)), host) and backend.owns(array)


# -- on CUDA: the order of operations ----------------------------------------------------------


def test_cuda_uploads_stage_copy_record_and_wait_without_a_host_wait_in_training(cuda):
    backend, gpu = cuda
    uploads = backend.background_uploads()  # in the training thread: its stream is the one to wait
    assert isinstance(uploads, PinnedUploads) and uploads.consumer is gpu.training
    assert uploads.copy_stream.non_blocking  # no implicit wait on the legacy default stream
    made = buffers(5)
    arrivals = start_all_in_a_reader(uploads, made, backend)
    for (hosts, _), arrival in zip(made, arrivals):
        X, y, order = arrival.take()
        np.testing.assert_array_equal(X.value(), hosts[0].astype(np.float64))
        assert X.value().dtype == np.float64
        np.testing.assert_array_equal(y.value(), hosts[1])
        np.testing.assert_array_equal(order.value(), hosts[2])
    # Two page-locked blocks, allocated once each and reused for all five buffers.
    assert len(gpu.pinned) == 2 and uploads.pinned_blocks == 2
    # The reader waited for a block's last copy before filling it again; the training thread never waited.
    waits = gpu.entries("synchronize")
    assert len(waits) == 3 and all(thread == READER for _, thread, *_ in waits)
    for k, record in enumerate(e for e in gpu.entries("record") if e[2] == "copy"):
        event = record[3]
        copies = [i for i, e in enumerate(gpu.log) if e[0] == "copy" and e[2] == "copy"][3 * k : 3 * k + 3]
        recorded = gpu.position("record", READER, "copy", event)
        waited = gpu.position("wait_event", TRAINING, "training", event)
        first_use = next(i for i, e in enumerate(gpu.log) if e[0] == "use" and i > waited)
        assert max(copies) < recorded < waited < first_use
    uploads.close()  # at the end of an epoch: waits for what is still copying
    assert [thread for _, thread, *_ in gpu.entries("synchronize")[3:]] == [TRAINING] * 2


def test_cupy_allocates_in_the_training_streams_pool_after_its_queued_work(monkeypatch):
    gpu = FakeGPU()
    backend = cupy_flavour(gpu, monkeypatch)
    uploads = backend.background_uploads()
    start_all_in_a_reader(uploads, buffers(2), backend)
    assert {arena for _, _, arena in gpu.entries("allocate")} == {"training"}
    for k in range(2):
        allocated = [i for i, e in enumerate(gpu.log) if e[0] == "allocate"][3 * k + 2]
        mark = next(i for i, e in enumerate(gpu.log) if e[:3] == ("record", READER, "training") and i > allocated)
        waited = next(i for i, e in enumerate(gpu.log) if e[:3] == ("wait_event", READER, "copy") and i > mark)
        copies = [i for i, e in enumerate(gpu.log) if e[0] == "copy"][3 * k : 3 * k + 3]
        assert allocated < mark < waited < min(copies)


@pytest.mark.skipif(not HAVE_TORCH, reason=NEEDS_TORCH)
def test_torch_allocates_on_the_copy_stream_and_records_the_training_stream(monkeypatch):
    gpu = FakeGPU()
    backend = torch_flavour(gpu, monkeypatch)
    uploads = backend.background_uploads()
    arrivals = start_all_in_a_reader(uploads, buffers(2), backend)
    assert {arena for _, _, arena in gpu.entries("allocate")} == {"copy"}
    assert all(entry[2] == "copy" and entry[4] is True for entry in gpu.entries("copy"))  # non_blocking
    assert gpu.entries("record_stream") == []
    arrivals[0].take()
    assert gpu.entries("record_stream") == [("record_stream", TRAINING, "training")] * 3


@pytest.mark.parametrize("broken", ["no wait before the refill", "no wait before the use"])
def test_the_fakes_catch_a_block_refilled_or_an_array_used_too_early(cuda, broken, monkeypatch):
    backend, _ = cuda
    if broken == "no wait before the refill":
        monkeypatch.setattr(FakeEvent, "synchronize", lambda self: None)
    else:
        monkeypatch.setattr(FakeStream, "wait_event", lambda self, event: None)
    uploads = backend.background_uploads()
    made = buffers(3)
    arrivals = start_all_in_a_reader(uploads, made, backend)
    with pytest.raises(AssertionError):
        for (hosts, _), arrival in zip(made, arrivals):
            for array, host in zip(arrival.take(), hosts):
                np.testing.assert_array_equal(array.value(), host)


def test_the_faked_calls_exist_in_the_real_libraries():
    """The fakes stand in for names and keywords the libraries really have."""
    if importlib.util.find_spec("cupy") is not None:
        cupy = importlib.import_module("cupy")
        for name in ("get_current_stream", "Stream", "Event", "alloc_pinned_memory"):
            assert hasattr(cupy.cuda, name), name
        assert "non_blocking" in cupy.cuda.Stream.__doc__ and "disable_timing" in cupy.cuda.Event.__init__.__doc__
        assert "stream" in cupy.ndarray.set.__doc__ and hasattr(cupy.cuda.Stream, "wait_event")
    if HAVE_TORCH:
        torch = importlib.import_module("torch")
        for name in ("current_stream", "Stream", "Event", "stream"):
            assert hasattr(torch.cuda, name), name
        assert "pin_memory" in torch.empty.__doc__ and hasattr(torch.Tensor, "record_stream")
        assert {"device"} <= set(inspect.signature(torch.cuda.Stream).parameters)
        assert hasattr(torch.cuda.Stream, "wait_event") and hasattr(torch.cuda.Event, "synchronize")


# -- a streamed fit through the same order of operations --------------------------------------


class NumpyStandInUploads(PinnedUploads):
    """``PinnedUploads`` on NumPy with ``FakeGPU``'s streams: a "device array" holds garbage until its
    copy runs, so training on one the training stream did not wait for gives other numbers."""

    gpu: FakeGPU

    def _streams(self):
        return self.gpu.training, FakeStream(self.gpu, "copy", non_blocking=True)

    def _event(self):
        return FakeEvent(self.gpu)

    def _pin(self, nbytes):
        block = self.gpu.pin(nbytes)
        return block, np.frombuffer(block, np.uint8)

    def _copy(self, block, views):
        arrays = []
        for _, view in views:
            array = np.full(view.shape, np.nan if view.dtype.kind == "f" else 10**6, view.dtype)
            self.copy_stream.queue.append(lambda array=array, view=view: np.copyto(array, view))
            self.gpu.note("copy", "copy")
            arrays.append(array)
        return arrays

    def close(self):
        self.gpu.closing = True
        try:
            super().close()
        finally:
            self.gpu.closing = False


def _data(n=1000, features=5):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, features)).astype(np.float32)
    return X, (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int32) + (X[:, 2] > 1)


def _streamed_fit(data, monkeypatch, gpu):
    net = MLP([5, 8, 3], dtype="float64", seed=0)
    stand_in = type("Uploads", (NumpyStandInUploads,), {"gpu": gpu})
    monkeypatch.setattr(net.backend, "background_uploads", lambda: stand_in(net.backend))
    fit(net, data, None, epochs=2, batch_size=32, optimizer=Adam(lr=0.01), seed=3)
    return net


def _same(a, b):
    return all(np.array_equal(np.asarray(p), np.asarray(q)) for p, q in zip(a.params, b.params))


def test_a_streamed_fit_through_staged_copies_equals_training_in_memory(monkeypatch):
    X, y = _data()
    reference = MLP([5, 8, 3], dtype="float64", seed=0)
    fit(reference, X, y, epochs=2, batch_size=32, optimizer=Adam(lr=0.01), seed=3)
    gpu = FakeGPU()
    net = _streamed_fit(stream([(X, y)], chunk_rows=100, buffer_chunks=10), monkeypatch, gpu)
    assert _same(net, reference)  # one buffer holding the set: fit's own batches, bit for bit
    assert len(gpu.entries("wait_event")) == 2  # one buffer an epoch, taken by the training thread
    assert {thread for _, thread, *_ in gpu.entries("wait_event")} == {TRAINING}
    assert {thread for _, thread, *_ in gpu.entries("copy")} == {"xpnet-prefetch"}


def test_streamed_buffers_through_staged_copies_train_as_without_prefetch(monkeypatch):
    X, y = _data()
    chunks = [(X[i : i + 100], y[i : i + 100]) for i in range(0, 1000, 100)]
    gpu = FakeGPU()
    prefetched = _streamed_fit(stream(chunks, chunk_rows=100, buffer_chunks=2), monkeypatch, gpu)
    in_turn = _streamed_fit(stream(chunks, chunk_rows=100, buffer_chunks=2, prefetch=False), monkeypatch, FakeGPU())
    assert _same(prefetched, in_turn) and np.all(np.isfinite(prefetched.params[0]))
    # Two blocks an epoch (the library's pinned pool keeps them between epochs), each a power of two
    # that holds every buffer, though buffers grow by the rows carried over.
    assert len(gpu.pinned) == 2 * 2 and len(set(gpu.pinned)) == 1
    waits = [(thread, closing) for _, thread, _, _, closing in gpu.entries("synchronize")]
    assert waits and all(thread == "xpnet-prefetch" or closing for thread, closing in waits)
    # Each epoch ends waiting for its blocks' last copies (a buffer read ahead and never taken among them).
    assert [thread for thread, closing in waits if closing] == [TRAINING] * 2 * 2


# -- the meta device: the training thread under the dispatch monitor ---------------------------


@pytest.mark.skipif(not HAVE_TORCH, reason=NEEDS_TORCH)
def test_a_streamed_fit_through_torchs_staging_keeps_to_the_device_on_meta(monkeypatch):
    """PyTorch's class with its CUDA calls faked, its tensors on ``meta``: the training thread takes
    the staged tensors and trains on them with no host read, no stray device, nothing made from
    host data behind the audit's back; three counted uploads a buffer, one read an epoch."""
    import torch

    from xpnet.backend.torch import TorchPinnedUploads

    gpu = FakeGPU()
    torch_flavour(gpu, monkeypatch)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: gpu.note("record_stream", stream.name))
    X, y = _data(n=320)
    net = MLP([5, 8, 3], backend=get_backend("torch", "meta"))
    monkeypatch.setattr(net.backend, "background_uploads", lambda: TorchPinnedUploads(net.backend))
    with net.backend.audit() as audit:
        fit(net, stream([(X, y)], chunk_rows=64, buffer_chunks=2), None, epochs=2, batch_size=32)
    assert audit.violations == [] and audit.operations > 100
    assert audit.reads == 2 and audit.uploads == 2 * 3 * 3  # 2 epochs, 3 buffers (5 chunks, 2 a buffer), 3 arrays
    assert {thread for _, thread, *_ in gpu.entries("record_stream")} == {TRAINING}


# -- the memory check counts the page-locked blocks -------------------------------------------


def test_the_stream_estimate_counts_the_page_locked_blocks_on_cuda(monkeypatch):
    X, y = _data()
    data = stream([(X, y)], chunk_rows=100, buffer_chunks=3)
    assert "page-locked staging blocks (2)" not in stream_estimate(data, 8).parts
    counted = stream_estimate(data, 0, pinned_itemsize=8, batch_size=32).parts["page-locked staging blocks (2)"]
    gpu = FakeGPU()
    _streamed_fit(data, monkeypatch, gpu)  # batches of 32
    assert max(gpu.pinned) <= counted // 2 <= 2 * max(gpu.pinned)  # a bound, within a power of two


def test_a_gpu_runs_memory_check_counts_the_page_locked_blocks_and_a_cpu_runs_does_not(monkeypatch):
    from xpnet import stream_run

    X, y = _data()
    asked = []

    def recording(*args):
        asked.append(args[3:])
        return stream_estimate(*args)

    monkeypatch.setattr(stream_run, "stream_estimate", recording)
    dataset = stream_run.StreamDataset("set", stream([(X, y)], chunk_rows=100), X[:10], y[:10], ["a", "b", "c"])
    settings = {"dtype": "float64", "batch_size": 64, "layers": [8], "optimizer": "sgd"}
    dataset.memory_estimate(settings, on_host=False)
    dataset.memory_estimate(settings, on_host=True)
    assert asked == [(8, 64), (0, 64)]
