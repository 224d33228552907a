"""The speed sweep: samples/s, step time and GFLOP/s per backend, device and batch size.

``python -m xpnet bench`` (and ``scripts/bench.py``) trains the benchmark network
(784-128-64-10, ReLU, softmax cross-entropy, SGD momentum 0.9, float32) one epoch at
a time and reports, for every backend/device available here and every batch size:

- samples/s and the time of one training step (the epoch's median over repeats),
- achieved GFLOP/s, from ``flops_per_sample`` below (matmuls only, documented there),
- the percentage of two matmul ceilings measured in the same run on the same device:
  ``peak`` (one large square float32 GEMM) and ``own`` (the step's own six GEMMs at
  that batch size, timed back to back with nothing else: what the step would reach
  if everything but the matmuls were free),
- peak memory of one epoch (NumPy: tracemalloc; CUDA: the library's allocator).

Peers run in the same loop, alternating with xpnet repeat by repeat (with a garbage
collection and a short pause before each timed epoch, so the last runner's idle
BLAS/OpenMP threads, which spin for a while after their work, have stopped competing
for the cores), on the same
batches (one seeded permutation per epoch, the same uint8 data resident on the
device, scaled per batch): ``direct`` is the same math written straight in NumPy
(the array-API indirection costs the difference), ``torch-eager`` is a plain
``nn.Sequential`` + ``torch.optim.SGD``. Ratios are taken within one run only.

GPU timing: warm-up epochs first, ``synchronize()`` before each clock read, and no
synchronisation inside a timed epoch other than its end (the fit loop's one host read).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import itertools
import json
import math
import os
import platform
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from xpnet.errors import ConfigError, XpnetError

SIZES = (784, 128, 64, 10)
BATCH_SIZES = (16, 64, 256, 1024, 4096, 8192)
LR, MOMENTUM = 0.01, 0.9
IMPLS = ("xpnet", "direct", "torch-eager")
#: Seconds of idle before each timed epoch. OpenBLAS's idle threads spin for about 2^28
#: cycles (~0.1 s) after a call; without the pause they slowed whichever runner came next
#: (PyTorch after NumPy: 180k instead of 310k samples/s at batch 1024 on 2 cores).
PAUSE = 0.25


def step_macs(batch_size: int, sizes: Sequence[int] = SIZES) -> int:
    """Forward multiply-adds of one step, what ``Backend.compute_threads`` sizes threads by."""
    return batch_size * sum(n_in * n_out for n_in, n_out in itertools.pairwise(sizes))


@contextlib.contextmanager
def _fit_step_policy(backend, batch_size: int):
    """The BLAS threads and the denormal flushing that ``fit`` runs a step of this size with."""
    with backend.step_policy(step_macs(batch_size)):
        yield


def flops_per_sample(sizes: Sequence[int] = SIZES) -> int:
    """FLOPs of one training sample through a dense network, counting multiply-adds as 2.

    Per layer l with fan-in n_{l-1} and width n_l, a multiply-add per weight in:
    the forward matmul a W^T, BP4's δ^T a, and BP2's δ W -- which the first layer skips,
    as nothing needs the error at the inputs. Bias adds, activations, the loss and the
    optimizer are O(n_l) per sample and left out. For 784-128-64-10:
    2·(100352 + 8192 + 640)·2 + 2·(8192 + 640) = 454,400.
    """
    weights = [n_in * n_out for n_in, n_out in itertools.pairwise(sizes)]
    return 2 * sum(weights) + 2 * sum(weights) + 2 * sum(weights[1:])


# -- data -------------------------------------------------------------------------------


def load_data(samples: int, source: str = "auto", seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """``samples`` Fashion-MNIST-shaped rows (uint8, 784 features; int32 labels, 10 classes).

    ``source``: ``"auto"`` (real Fashion-MNIST if it is on disk, else random),
    ``"fashion-mnist"``, or ``"random"``. Rows are repeated when asked for more than exist.
    """
    if source not in ("auto", "fashion-mnist", "random"):
        raise ConfigError(f"bench data must be auto, fashion-mnist or random, not {source!r}")
    if source != "random":
        try:
            from xpnet.data import load_dataset

            data = load_dataset("fashion-mnist", download=False, progress=False)
            reps = math.ceil(samples / data.X_train.shape[0])
            X = np.tile(data.X_train, (reps, 1))[:samples]
            y = np.tile(data.y_train, reps)[:samples].astype(np.int32)
            return np.ascontiguousarray(X), y, "fashion-mnist"
        except XpnetError:
            if source == "fashion-mnist":
                raise
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (samples, SIZES[0]), dtype=np.uint8)
    y = rng.integers(0, SIZES[-1], samples).astype(np.int32)
    return X, y, "random"


# -- the runners: each trains one epoch of the same batches --------------------------------


@dataclass
class Target:
    """One backend on one device, as the sweep names it."""

    backend: str
    device: str

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.device}"


def available_targets(backends: Sequence[str] | None = None) -> tuple[list[Target], list[str]]:
    """Backends/devices usable here, and a reason for each one that is not."""
    from xpnet.backend import get_backend

    wanted = list(backends) if backends else ["numpy", "torch", "cupy"]
    candidates = []
    for name in wanted:
        if name in ("numpy", "array-api-strict"):
            candidates.append(Target(name, "cpu"))
        elif name == "torch":
            candidates += [Target("torch", "cpu"), Target("torch", "cuda")]
        elif name == "cupy":
            candidates.append(Target("cupy", "cuda"))
        else:
            raise ConfigError(f"bench backends must be among numpy, torch, cupy, array-api-strict, not {name!r}")
    found, skipped = [], []
    for target in candidates:
        try:
            get_backend(target.backend, target.device)
            found.append(target)
        except XpnetError as exc:
            skipped.append(f"{target.label}: {exc}")
    return found, skipped


class Runner:
    """Trains the benchmark network on resident data; ``epoch()`` ends synchronised."""

    impl = "?"
    backend_name = "?"

    def epoch(self) -> None:
        raise NotImplementedError

    def step(self) -> None:
        """One training step on one fixed batch (for the pytest benchmarks)."""
        raise NotImplementedError

    def peak_memory(self) -> int | None:
        return None


def _permutations(n: int, seed: int):
    rng = np.random.default_rng(seed)
    while True:
        yield rng.permutation(n).astype(np.int32)


class XpnetRunner(Runner):
    """xpnet's own ``fit`` loop, one epoch per call."""

    impl = "xpnet"

    def __init__(self, target: Target, X, y, batch_size: int, seed: int = 0):
        from xpnet.data import Scaling
        from xpnet.network import MLP
        from xpnet.optim import SGD

        self.net = MLP(SIZES, "relu", "cross_entropy", backend=target.backend, device=target.device, seed=seed)
        self.net.set_scaling(Scaling.fit("unit", X[:1]))
        self.backend = self.net.backend
        self.backend_name = target.backend
        self.X, self.y = self.net.to_device(X), self.net.to_device(y, labels=True)
        self.batch_size = batch_size
        self.optimizer = SGD(lr=LR, momentum=MOMENTUM)
        self.seed = seed
        self.epochs = 0
        xb = self.net.prepare(self.X[:batch_size, ...])
        self._batch = (xb, self.net.targets(self.y[:batch_size, ...]))

    def epoch(self) -> None:
        from xpnet.train import fit

        self.epochs += 1
        fit(self.net, self.X, self.y, epochs=1, batch_size=self.batch_size, optimizer=self.optimizer, seed=self.epochs)
        self.backend.synchronize()

    def step(self) -> None:
        with _fit_step_policy(self.backend, self.batch_size):
            _, grads, _ = self.net.backprop(*self._batch, train=True)
            self.optimizer.step(self.net.params, grads)
        self.backend.synchronize()

    def peak_memory(self) -> int | None:
        return _peak_memory(self.backend.name, self.backend.device, self.epoch)


class DirectRunner(Runner):
    """The same math and loop written straight in NumPy: the array-API indirection's yardstick.

    Same batches as ``fit`` (its permutation, the ``n % batch_size`` remainder left out),
    same loss and accuracy sums, same BLAS thread policy, denormals flushed as in ``fit``.
    """

    impl = "direct"
    backend_name = "numpy"

    def __init__(self, target: Target, X, y, batch_size: int, seed: int = 0):
        from xpnet.backend import get_backend
        from xpnet.init import initial_parameters

        self.backend = get_backend("numpy")
        init = initial_parameters(SIZES, ["he_normal"] * (len(SIZES) - 1), seed)
        self.W = [w.astype(np.float32) for w, _ in init]
        self.b = [b.astype(np.float32) for _, b in init]
        self.v = [np.zeros_like(p) for p in self.W + self.b]
        self.X, self.y = X, y
        self.batch_size = batch_size
        self.eye = np.eye(SIZES[-1], dtype=np.float32)
        self.epochs = 0

    def _train_step(self, x, t):
        W, b = self.W, self.b
        scale = np.float32(1.0 / x.shape[0])
        zs, acts = [], [x]
        a = x
        for l in range(len(W)):
            z = a @ W[l].T
            z += b[l]
            zs.append(z)
            a = np.maximum(z, 0.0) if l + 1 < len(W) else z
            acts.append(a)
        z = zs[-1]
        shifted = z - z.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        total = e.sum(axis=1, keepdims=True)
        loss = -np.sum(t * (shifted - np.log(total))) * scale
        p = e / total
        correct = np.sum(np.sum(t * p, axis=1) >= p.max(axis=1), dtype=np.float32)
        delta = (p - t) * scale
        grads = [None] * (2 * len(W))
        for l in reversed(range(len(W))):
            grads[l] = delta.T @ acts[l]
            grads[len(W) + l] = delta.sum(axis=0)
            if l:
                delta = delta @ W[l]
                delta *= zs[l - 1] > 0
        for p_, g, v in zip(self.W + self.b, grads, self.v):
            v *= MOMENTUM
            v += g
            p_ -= LR * v
        return loss, correct

    def epoch(self) -> None:
        self.epochs += 1
        order = np.random.default_rng(self.epochs).permutation(self.X.shape[0]).astype(np.int32)
        bs = self.batch_size
        sums = np.zeros(3, dtype=np.float32)
        with _fit_step_policy(self.backend, bs):
            for i in range(self.X.shape[0] // bs):
                idx = order[i * bs : (i + 1) * bs]
                x = self.X.take(idx, axis=0).astype(np.float32)
                x *= np.float32(1.0 / 255.0)
                loss, correct = self._train_step(x, self.eye[self.y.take(idx)])
                sums += (loss * bs, correct, bs)
        sums.tolist()

    def step(self) -> None:
        x = self.X[: self.batch_size].astype(np.float32) / np.float32(255.0)
        with _fit_step_policy(self.backend, self.batch_size):
            self._train_step(x, self.eye[self.y[: self.batch_size]])

    def peak_memory(self) -> int | None:
        return _peak_memory("numpy", "cpu", self.epoch)


class TorchEagerRunner(Runner):
    """PyTorch's own way: ``nn.Sequential`` of Linear/ReLU, CrossEntropyLoss, ``optim.SGD``.

    The same batches (the same seeded permutations), the uint8 data resident on the
    device and scaled per batch, and loss/accuracy summed on the device, as ``fit`` does.
    """

    impl = "torch-eager"
    backend_name = "torch"

    def __init__(self, target: Target, X, y, batch_size: int, seed: int = 0):
        import torch

        from xpnet.backend import get_backend

        self.torch = torch
        self.backend = get_backend("torch", target.device)
        self.device = self.backend.device
        torch.manual_seed(seed)
        layers = []
        for i, (n_in, n_out) in enumerate(itertools.pairwise(SIZES)):
            layers.append(torch.nn.Linear(n_in, n_out))
            if i + 2 < len(SIZES):
                layers.append(torch.nn.ReLU())
        self.model = torch.nn.Sequential(*layers).to(self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        self.loss = torch.nn.CrossEntropyLoss()
        self.X = torch.from_numpy(X).to(self.device)
        self.y = torch.from_numpy(y.astype(np.int64)).to(self.device)
        self.batch_size = batch_size
        self.epochs = 0

    def _train_step(self, xb, yb):
        self.optimizer.zero_grad(set_to_none=True)
        out = self.model(xb)
        loss = self.loss(out, yb)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), out.detach()

    def epoch(self) -> None:
        torch = self.torch
        self.epochs += 1
        order = np.random.default_rng(self.epochs).permutation(self.X.shape[0]).astype(np.int32)
        order = torch.from_numpy(order).to(self.device)
        bs = self.batch_size
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        for i in range(self.X.shape[0] // bs):
            idx = order[i * bs : (i + 1) * bs]
            xb = self.X[idx].float() * (1.0 / 255.0)
            yb = self.y[idx]
            loss, out = self._train_step(xb, yb)
            loss_sum += loss * bs
            correct += (out.argmax(dim=1) == yb).sum()
        torch.stack([loss_sum, correct]).cpu()
        self.backend.synchronize()

    def step(self) -> None:
        xb = self.X[: self.batch_size].float() * (1.0 / 255.0)
        self._train_step(xb, self.y[: self.batch_size])
        self.backend.synchronize()

    def peak_memory(self) -> int | None:
        if self.device.type != "cuda":
            return None
        return _peak_memory("torch", self.device, self.epoch)


RUNNERS = {"xpnet": XpnetRunner, "direct": DirectRunner, "torch-eager": TorchEagerRunner}


def _peak_memory(backend: str, device, run: Callable[[], None]) -> int | None:
    """Bytes allocated at the high-water mark of one untimed ``run()``, beyond what was live before."""
    if backend in ("numpy", "array-api-strict"):
        tracemalloc.start()
        try:
            run()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    if backend == "torch" and getattr(device, "type", "cpu") == "cuda":
        import torch

        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        return torch.cuda.max_memory_allocated(device) - base
    if backend == "cupy":
        import cupy

        pool = cupy.get_default_memory_pool()
        pool.free_all_blocks()
        base = pool.used_bytes()
        run()
        return pool.total_bytes() - base  # the pool keeps what the epoch needed at once
    return None


# -- ceilings ---------------------------------------------------------------------------


def _median_seconds(fn: Callable[[], None], sync: Callable[[], None], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_gemm_gflops(target: Target, repeats: int = 5, n: int | None = None) -> float:
    """GFLOP/s of one square float32 GEMM (n = 2048 on a CPU, 8192 on a GPU), median of repeats."""
    from xpnet.backend import get_backend

    backend = get_backend(target.backend, target.device)
    n = n or (2048 if target.device == "cpu" else 8192)
    rng = np.random.default_rng(0)
    a = backend.upload(rng.standard_normal((n, n), dtype=np.float32))
    b = backend.upload(rng.standard_normal((n, n), dtype=np.float32))
    with backend.compute_threads(None):
        seconds = _median_seconds(lambda: a @ b, backend.synchronize, repeats)
    return 2 * n**3 / seconds / 1e9


def own_matmul_gflops(target: Target, batch_size: int, repeats: int = 5, samples: int = 200_000) -> float:
    """GFLOP/s of the training step's own GEMMs at ``batch_size``, alone and back to back."""
    from xpnet.backend import get_backend

    backend = get_backend(target.backend, target.device)
    rng = np.random.default_rng(0)
    acts = [backend.upload(rng.random((batch_size, n), dtype=np.float32)) for n in SIZES]
    Ws = [backend.upload(rng.random((o, i), dtype=np.float32)) for i, o in itertools.pairwise(SIZES)]

    def step():
        for l, W in enumerate(Ws):
            acts[l] @ W.T
            acts[l + 1].T @ acts[l]
            if l:
                acts[l + 1] @ W

    reps = max(1, samples // batch_size)  # as many steps as an epoch
    with backend.compute_threads(step_macs(batch_size)):
        seconds = _median_seconds(lambda: [step() for _ in range(reps)], backend.synchronize, 3) / reps
    return flops_per_sample() * batch_size / seconds / 1e9


# -- the sweep ----------------------------------------------------------------------------


@dataclass
class Row:
    impl: str
    backend: str
    device: str
    batch_size: int
    samples_per_s: float
    step_ms: float
    gflops: float
    pct_peak: float
    pct_own: float
    peak_memory: int | None
    epoch_times: list[float] = field(default_factory=list)
    vs_torch_eager: float | None = None
    vs_direct: float | None = None


@dataclass
class BenchResult:
    rows: list[Row]
    ceilings: dict  # target label -> {"peak": GFLOP/s, "own": {batch: GFLOP/s}}
    skipped: list[str]
    environment: dict
    options: dict

    def to_json(self) -> str:
        return json.dumps({**asdict(self)}, indent=2, default=str)


def run_bench(
    batch_sizes: Sequence[int] = BATCH_SIZES,
    backends: Sequence[str] | None = None,
    impls: Sequence[str] = IMPLS,
    samples: int = 32768,
    repeats: int = 5,
    warmup: int = 1,
    data: str = "auto",
    memory: bool = True,
    gemm_size: int | None = None,
    pause: float = PAUSE,
    log: Callable[[str], None] | None = print,
) -> BenchResult:
    """Run the sweep; every implementation alternates with the others, repeat by repeat,
    ``pause`` seconds of idle before each epoch."""
    batch_sizes = [int(b) for b in batch_sizes]
    if not batch_sizes or min(batch_sizes) < 1:
        raise ConfigError(f"batch sizes must be whole numbers >= 1, not {batch_sizes}")
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be >= 1 and warmup >= 0, not {repeats} and {warmup}")
    if not 0 <= pause <= 60:
        raise ConfigError(f"pause must be between 0 and 60 seconds, not {pause}")
    for impl in impls:
        if impl not in IMPLS:
            raise ConfigError(f"bench implementations must be among {', '.join(IMPLS)}, not {impl!r}")
    targets, skipped = available_targets(backends)
    X, y, source = load_data(max(samples, max(batch_sizes)), data)
    flops = flops_per_sample()
    ceilings: dict = {}
    rows: list[Row] = []
    for target in targets:
        peak = peak_gemm_gflops(target, repeats, gemm_size)
        ceilings[target.label] = {"peak": peak, "own": {}}
        if log:
            log(f"{target.label}: peak square GEMM {peak:.1f} GFLOP/s")
    for batch_size in batch_sizes:
        runners: list[tuple[Target, Runner]] = []
        for target in targets:
            for impl in impls:
                if impl == "direct" and target.backend != "numpy":
                    continue
                if impl == "torch-eager" and target.backend != "torch":
                    continue
                runners.append((target, RUNNERS[impl](target, X, y, batch_size)))
            ceilings[target.label]["own"][batch_size] = own_matmul_gflops(target, batch_size, repeats, X.shape[0])
        for _ in range(warmup):
            for _, runner in runners:
                runner.epoch()
        times: list[list[float]] = [[] for _ in runners]
        for _ in range(repeats):
            for i, (_, runner) in enumerate(runners):
                gc.collect()  # a full collection (~40 ms with PyTorch loaded) lands in no timed epoch
                time.sleep(pause)
                runner.backend.synchronize()
                start = time.perf_counter()
                runner.epoch()  # ends synchronised
                times[i].append(time.perf_counter() - start)
        steps = X.shape[0] // batch_size
        batch_rows = []
        for (target, runner), seconds in zip(runners, times):
            median = statistics.median(seconds)
            rate = steps * batch_size / median
            gflops = rate * flops / 1e9
            ceiling = ceilings[target.label]
            batch_rows.append(
                Row(
                    impl=runner.impl,
                    backend=target.backend,
                    device=target.device,
                    batch_size=batch_size,
                    samples_per_s=rate,
                    step_ms=median / steps * 1e3,
                    gflops=gflops,
                    pct_peak=100 * gflops / ceiling["peak"],
                    pct_own=100 * gflops / ceiling["own"][batch_size],
                    peak_memory=runner.peak_memory() if memory else None,
                    epoch_times=seconds,
                )
            )
        _add_ratios(batch_rows)
        rows += batch_rows
        if log:
            for row in batch_rows:
                log(format_rows([row], header=False))
    options = {
        "batch_sizes": batch_sizes,
        "backends": list(backends or []),
        "impls": list(impls),
        "samples": int(X.shape[0]),
        "repeats": repeats,
        "warmup": warmup,
        "pause": pause,
        "data": source,
    }
    return BenchResult(rows, ceilings, skipped, environment(), options)


def _add_ratios(rows: list[Row]) -> None:
    """Speed ratios within one batch size: every row against torch eager on its device,
    and xpnet on NumPy against the direct NumPy loop (>1 means faster than the peer)."""
    eager = {r.device: r for r in rows if r.impl == "torch-eager"}
    direct = next((r for r in rows if r.impl == "direct"), None)
    for row in rows:
        peer = eager.get(row.device)
        if peer is not None and row is not peer:
            row.vs_torch_eager = row.samples_per_s / peer.samples_per_s
        if direct is not None and row.impl == "xpnet" and row.backend == "numpy":
            row.vs_direct = row.samples_per_s / direct.samples_per_s


# -- reporting ------------------------------------------------------------------------------

COLUMNS = (
    ("impl", "impl"),
    ("backend", "backend"),
    ("device", "device"),
    ("batch", "batch_size"),
    ("samples/s", "samples_per_s"),
    ("step ms", "step_ms"),
    ("GFLOP/s", "gflops"),
    ("% peak GEMM", "pct_peak"),
    ("% own GEMMs", "pct_own"),
    ("peak mem", "peak_memory"),
    ("vs torch eager", "vs_torch_eager"),
    ("vs direct NumPy", "vs_direct"),
)


def _cell(key: str, value) -> str:
    if value is None:
        return "–"
    if key == "samples_per_s":
        return f"{value:,.0f}"
    if key == "step_ms":
        return f"{value:.3f}"
    if key in ("gflops", "pct_peak", "pct_own"):
        return f"{value:.1f}"
    if key == "peak_memory":
        return format_bytes(value)
    if key.startswith("vs_"):
        return f"{value:.2f}x"
    return str(value)


def format_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def format_rows(rows: Sequence[Row], header: bool = True) -> str:
    """A plain-text table, one line per row, columns aligned."""
    cells = [[_cell(key, getattr(row, key)) for _, key in COLUMNS] for row in rows]
    widths = [max([len(title)] + [len(line[i]) for line in cells]) for i, (title, _) in enumerate(COLUMNS)]
    lines = []
    if header:
        lines.append("  ".join(title.rjust(w) for (title, _), w in zip(COLUMNS, widths)))
    lines += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table, grouped by batch size."""
    lines = ["| " + " | ".join(title for title, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(key, getattr(row, key)) for _, key in COLUMNS) + " |")
    return "\n".join(lines)


def environment() -> dict:
    """Date, CPU, BLAS and library versions, for the header of the results."""
    import array_api_compat

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "array_api_compat": array_api_compat.__version__,
        "blas": _blas(),
        "load_average": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    for name in ("torch", "cupy"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = "not installed"
    try:
        import torch

        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _blas() -> str:
    try:
        from threadpoolctl import threadpool_info

        return "; ".join(
            f"{i.get('internal_api')} {i.get('version')} ({i.get('threading_layer')}, {i.get('num_threads')} threads,"
            f" {i.get('architecture')})"
            for i in threadpool_info()
            if i.get("user_api") == "blas"
        )
    except ImportError:
        config = np.show_config(mode="dicts")
        blas = config.get("Build Dependencies", {}).get("blas", {})
        return f"{blas.get('name')} {blas.get('version')}"


def markdown_report(result: BenchResult, profile_text: str | None = None, notes: str | None = None) -> str:
    env = result.environment
    opts = result.options
    lines = [
        "# xpnet benchmark results",
        "",
        f"Produced by `python -m xpnet bench` on {env['date']}. Network 784-128-64-10, ReLU, softmax",
        f"cross-entropy, SGD momentum {MOMENTUM}, float32; {flops_per_sample():,} FLOPs per training sample.",
        f"Data: {opts['data']} ({opts['samples']:,} samples, uint8 resident on the device);",
        f"one epoch per timing, median of {opts['repeats']} alternating repeats after {opts['warmup']} warm-up,",
        f"a garbage collection and {opts.get('pause', 0):g} s idle before each timed epoch.",
        "",
        f"- CPU: {env['cpu']} ({env['cores']} logical cores)",
        f"- BLAS: {env['blas']}",
        f"- Load average (1/5/15 min) when the run ended: {env['load_average']} on {env['cores']} cores",
        f"- Python {env['python']}, NumPy {env['numpy']}, array-api-compat {env['array_api_compat']}, "
        f"PyTorch {env['torch']}, CuPy {env['cupy']}",
    ]
    if "gpu" in env:
        lines.append(f"- GPU: {env['gpu']}")
    lines += ["", "## Ceilings (GFLOP/s, measured in this run)", ""]
    for label, ceiling in result.ceilings.items():
        own = ", ".join(f"{b}: {g:.1f}" for b, g in ceiling["own"].items())
        lines.append(f"- {label}: peak square GEMM {ceiling['peak']:.1f}; the step's own GEMMs by batch size: {own}")
    if result.skipped:
        lines += ["", "Skipped here:", ""] + [f"- {s}" for s in result.skipped]
    lines += [
        "",
        "## Throughput",
        "",
        "`vs torch eager`: samples/s over PyTorch eager's on the same device in the same run;",
        "`vs direct NumPy`: xpnet over the same math written straight in NumPy (the array-API indirection).",
        "",
        markdown_table(result.rows),
        "",
        "![throughput](results.png)",
    ]
    if profile_text:
        lines += ["", "## Where the time goes (xpnet on NumPy, one training step, by phase)", "", profile_text]
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def plot(result: BenchResult, path: str | os.PathLike) -> None:
    """Throughput vs batch size, one line per implementation and backend/device, ceilings dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    series: dict[str, list[Row]] = {}
    for row in result.rows:
        series.setdefault(f"{row.impl} {row.backend}/{row.device}", []).append(row)
    for label, rows in series.items():
        ax.plot([r.batch_size for r in rows], [r.samples_per_s for r in rows], marker="o", label=label)
    flops = flops_per_sample()
    for label, ceiling in result.ceilings.items():
        ax.axhline(ceiling["peak"] * 1e9 / flops, linestyle="--", color="grey", linewidth=1)
        ax.annotate(f"{label} peak GEMM", (min(r.batch_size for r in result.rows), ceiling["peak"] * 1e9 / flops))
        own = sorted(ceiling["own"].items())
        ax.plot([b for b, _ in own], [g * 1e9 / flops for _, g in own], linestyle=":", label=f"{label} own GEMMs")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("training samples/s")
    ax.set_title("xpnet 784-128-64-10 training throughput")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the per-phase profile ---------------------------------------------------------------------


def profile_step(batch_size: int, samples: int = 16384, backend: str = "numpy", device: str = "cpu") -> dict:
    """Seconds per step spent in each phase of xpnet's fit step, timed phase by phase.

    Phases are synchronised one by one (this is a profile, not a throughput figure).
    ``matmuls`` is the part of forward+backward spent in the six GEMMs, timed alone.
    """
    from xpnet.evaluate import count_correct

    X, y, _ = load_data(samples)
    runner = XpnetRunner(Target(backend, device), X, y, batch_size)
    net, xp, opt, sync = runner.net, runner.net.xp, runner.optimizer, runner.backend.synchronize
    phases = dict.fromkeys(("batch", "forward+loss+backward", "optimizer", "metrics"), 0.0)
    steps = max(1, min(samples // batch_size, 400))
    order = runner.backend.upload(np.random.default_rng(0).permutation(X.shape[0]).astype(np.int32))
    with _fit_step_policy(runner.backend, batch_size):
        for rep in range(2):  # the first pass warms up
            for b in range(steps):
                t0 = time.perf_counter()
                idx = order[b * batch_size : (b + 1) * batch_size]
                xb = net.prepare(xp.take(runner.X, idx, axis=0))
                targets = net.targets(xp.take(runner.y, idx, axis=0))
                sync()
                t1 = time.perf_counter()
                cost, grads, out = net.backprop(xb, targets, train=True)
                sync()
                t2 = time.perf_counter()
                opt.step(net.params, grads)
                sync()
                t3 = time.perf_counter()
                (cost * batch_size, count_correct(net, out, targets))
                sync()
                t4 = time.perf_counter()
                if rep:
                    for key, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                        phases[key] += dt / steps
    own = own_matmul_gflops(Target(backend, device), batch_size)
    phases["of which matmuls"] = flops_per_sample() * batch_size / (own * 1e9)
    return phases


def profile_markdown(batch_sizes: Sequence[int]) -> str:
    lines = ["| batch | phase | µs per step | share |", "|---|---|---|---|"]
    for batch_size in batch_sizes:
        phases = profile_step(batch_size)
        total = sum(v for k, v in phases.items() if not k.startswith("of which"))
        for key, seconds in phases.items():
            lines.append(f"| {batch_size} | {key} | {seconds * 1e6:,.1f} | {100 * seconds / total:.0f}% |")
    return "\n".join(lines)


# -- the command --------------------------------------------------------------------------------


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m xpnet bench`` (the CLI registers them on its subparser)."""
    parser.add_argument(
        "--batch-sizes", default=",".join(map(str, BATCH_SIZES)), help="comma-separated (default: %(default)s)"
    )
    parser.add_argument(
        "--backends", default=None, help="comma-separated among numpy, torch, cupy, array-api-strict (default: all)"
    )
    parser.add_argument(
        "--impls", default=",".join(IMPLS), help="comma-separated among xpnet, direct, torch-eager (default: all)"
    )
    parser.add_argument("--samples", type=int, default=32768, help="samples per timed epoch (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per row; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs first (default: %(default)s)")
    parser.add_argument("--data", default="auto", choices=("auto", "fashion-mnist", "random"))
    parser.add_argument(
        "--gemm-size", type=int, default=None, help="side of the peak GEMM (default 2048 CPU, 8192 GPU)"
    )
    parser.add_argument(
        "--pause", type=float, default=PAUSE, help="idle seconds before each timed epoch (default: %(default)s)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the (untimed) peak-memory epoch")
    parser.add_argument("--profile", default=None, help="also profile xpnet's step phase by phase at these batch sizes")
    parser.add_argument("--json", default=None, help="write the results as JSON here")
    parser.add_argument("--markdown", default=None, help="write a Markdown report here")
    parser.add_argument("--notes", default=None, help="a Markdown file appended to the report")
    parser.add_argument("--png", default=None, help="write the throughput plot here")


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated whole numbers, not {text!r}") from None


def bench_main(args: argparse.Namespace) -> int:
    """Run ``python -m xpnet bench`` with parsed ``args``; print the table, write the files."""
    result = run_bench(
        batch_sizes=_ints(args.batch_sizes, "--batch-sizes"),
        backends=[b.strip() for b in args.backends.split(",")] if args.backends else None,
        impls=[i.strip() for i in args.impls.split(",") if i.strip()],
        samples=args.samples,
        repeats=args.repeats,
        warmup=args.warmup,
        data=args.data,
        memory=not args.no_memory,
        gemm_size=args.gemm_size,
        pause=args.pause,
        log=None,
    )
    print(format_rows(result.rows))
    for skip in result.skipped:
        print(f"skipped: {skip}")
    profile_text = profile_markdown(_ints(args.profile, "--profile")) if args.profile else None
    if profile_text:
        print(profile_text)
    if args.json:
        Path(args.json).write_text(result.to_json())
    if args.png:
        plot(result, args.png)
    if args.markdown:
        notes = Path(args.notes).read_text() if args.notes else None
        Path(args.markdown).write_text(markdown_report(result, profile_text, notes))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xpnet bench", description=__doc__.split("\n\n")[0])
    add_bench_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return bench_main(args)
    except XpnetError as exc:
        parser.exit(2, f"xpnet: error: {exc}\n")
