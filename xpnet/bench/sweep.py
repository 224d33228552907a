"""The sweep: every runner at every batch size, alternating repeat by repeat, into rows.

Peers run in the same loop, alternating with xpnet repeat by repeat (with a garbage
collection and a short pause before each timed epoch, so the last runner's idle
BLAS/OpenMP threads, which spin for a while after their work, have stopped competing
for the cores). Ratios are taken within one run only: slow drifts of a shared machine
cancel, absolute samples/s do not.

GPU timing: warm-up epochs first, ``synchronize()`` before each clock read, and no
synchronisation inside a timed epoch other than its end (the fit loop's one host read).
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Sequence

from xpnet.backend import backend_class
from xpnet.bench.ceilings import Gemms, own_gemms, peak_gemms
from xpnet.bench.data import load_data
from xpnet.bench.environment import environment
from xpnet.bench.results import BenchResult, Row
from xpnet.bench.runners import RUNNERS, Runner
from xpnet.bench.table import format_rows
from xpnet.bench.targets import Target, available_targets
from xpnet.bench.workload import BATCH_SIZES, DIRECT_PEERS, IMPLS, PAUSE, STEP_PEER, flops_per_sample
from xpnet.errors import ConfigError


def _check_options(batch_sizes: list[int], repeats: int, warmup: int, pause: float, impls: Sequence[str]) -> None:
    if not batch_sizes or min(batch_sizes) < 1:
        raise ConfigError(f"batch sizes must be whole numbers >= 1, not {batch_sizes}")
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be >= 1 and warmup >= 0, not {repeats} and {warmup}")
    if not 0 <= pause <= 60:
        raise ConfigError(f"pause must be between 0 and 60 seconds, not {pause}")
    for impl in impls:
        if impl not in IMPLS:
            raise ConfigError(f"bench implementations must be among {', '.join(IMPLS)}, not {impl!r}")


def with_step_peer(impls: Sequence[str]) -> list[str]:
    """``impls``, with fit's own step in a bare loop (``STEP_PEER``) beside ``xpnet`` wherever xpnet
    runs: a ``fit`` epoch is always timed next to its bare steps, so fit's own overhead always shows."""
    impls = list(impls)
    if "xpnet" in impls and STEP_PEER not in impls:
        impls.insert(impls.index("xpnet") + 1, STEP_PEER)
    return impls


def runs_on(impl: str, target: Target) -> bool:
    """Whether ``impl`` has a runner for ``target``: each runner says its library (``Runner.library``)
    and whether it runs only where steps are not compiled (``Runner.eager_only``)."""
    runner = RUNNERS[impl]
    if runner.eager_only and backend_class(target.backend).compiles_steps:
        return False
    return runner.library in (None, target.backend)


def time_alternating(runners: Sequence[Runner | Gemms], repeats: int, warmup: int, pause: float) -> list[list[float]]:
    """Seconds of each runner's timed epochs; the runners take turns, repeat by repeat."""
    for _ in range(warmup):
        for runner in runners:
            runner.epoch()
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(repeats):
        for i, runner in enumerate(runners):
            gc.collect()  # a full collection (~40 ms with PyTorch loaded) lands in no timed epoch
            time.sleep(pause)
            runner.backend.synchronize()
            start = time.perf_counter()
            runner.epoch()  # ends synchronised
            times[i].append(time.perf_counter() - start)
    return times


def _row(target: Target, runner: Runner, seconds: list[float], samples: int, ceiling: dict, memory: bool) -> Row:
    """The table line of one runner from its epoch times (the median) and the ceilings timed beside it."""
    batch_size = runner.batch_size
    steps = samples // batch_size
    median = statistics.median(seconds)
    compiled = runner.compile_seconds()  # before peak_memory's extra epoch
    rate = steps * batch_size / median
    gflops = rate * flops_per_sample() / 1e9
    return Row(
        impl=runner.impl,
        backend=target.backend,
        device=target.device,
        batch_size=batch_size,
        samples_per_s=rate,
        step_ms=median / steps * 1e3,
        gflops=gflops,
        pct_peak=100 * gflops / ceiling["peak"],
        pct_own=100 * gflops / ceiling["own"],
        peak_memory=runner.peak_memory() if memory else None,
        epoch_times=seconds,
        compile_s=compiled,
    )


def _batch(targets, impls, X, y, batch_size, gemm_size, options) -> tuple[list[Row], dict]:
    """The rows of one batch size, and each device's ceilings: runners and GEMMs timed in turn."""
    pairs = [(t, RUNNERS[impl](t, X, y, batch_size)) for t in targets for impl in impls if runs_on(impl, t)]
    gemms = {t.label: (peak_gemms(t, gemm_size), own_gemms(t, batch_size, X.shape[0])) for t in targets}
    timed = [runner for _, runner in pairs] + [g for pair in gemms.values() for g in pair]
    times = time_alternating(timed, options["repeats"], options["warmup"], options["pause"])
    ceiling_times = iter(times[len(pairs) :])
    ceilings = {}
    for label, (peak, own) in gemms.items():
        repeats = {"peak": peak.gflops(next(ceiling_times)), "own": own.gflops(next(ceiling_times))}
        ceilings[label] = {"peak": statistics.median(repeats["peak"]), "own": statistics.median(repeats["own"])}
        ceilings[label]["repeats"] = repeats
    rows = [
        _row(target, runner, seconds, X.shape[0], ceilings[target.label], options["memory"])
        for (target, runner), seconds in zip(pairs, times)
    ]
    add_ratios(rows)
    return rows, ceilings


def _merge(ceilings: dict, label: str, batch_size: int, measured: dict) -> None:
    """Add one batch size's ceilings of a device: ``own`` and the GEMMs' repeats by batch size, and
    ``peak`` the median of all the square GEMM's repeats so far (one figure per device)."""
    entry = ceilings.setdefault(label, {"peak": 0.0, "own": {}, "repeats": {"peak": {}, "own": {}}})
    entry["own"][batch_size] = measured["own"]
    for kind in ("peak", "own"):
        entry["repeats"][kind][batch_size] = measured["repeats"][kind]
    entry["peak"] = statistics.median([g for rates in entry["repeats"]["peak"].values() for g in rates])


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
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Run the sweep; at each batch size every implementation and ceiling takes its turn,
    repeat by repeat, after ``pause`` seconds of idle. ``progress`` is told what runs next
    and about how long is left (``python -m xpnet bench`` prints it on stderr)."""
    loadavg_start = list(os.getloadavg())
    batch_sizes = [int(b) for b in batch_sizes]
    _check_options(batch_sizes, repeats, warmup, pause, impls)
    impls = with_step_peer(impls)
    targets, skipped = available_targets(backends)
    X, y, source = load_data(max(samples, max(batch_sizes)), data)
    options = {"batch_sizes": batch_sizes, "backends": list(backends or []), "impls": list(impls)}
    options.update(samples=int(X.shape[0]), repeats=repeats, warmup=warmup, pause=pause, data=source)
    ceilings: dict = {}
    rows: list[Row] = []
    started = time.perf_counter()
    for index, batch_size in enumerate(batch_sizes):
        if progress:
            progress(progress_line(index, batch_sizes, targets, impls, time.perf_counter() - started, options))
        batch_rows, measured = _batch(targets, impls, X, y, batch_size, gemm_size, {**options, "memory": memory})
        for label, ceiling in measured.items():
            _merge(ceilings, label, batch_size, ceiling)
        rows += batch_rows
        if log:
            log(format_rows(batch_rows, header=False))
    if progress:
        progress(f"bench: done in {time.perf_counter() - started:.0f} s")
    return BenchResult(rows, ceilings, skipped, environment(loadavg_start), options)


def progress_line(index: int, batch_sizes: list[int], targets, impls, elapsed: float, options: dict) -> str:
    """What the sweep runs next (batch size, backends and implementations) and about how long is
    left: before the first batch size the pauses alone (a lower bound), then the time so far per
    batch size done, times those left."""
    running = "; ".join(f"{t.label} ({', '.join(i for i in impls if runs_on(i, t))})" for t in targets)
    line = f"bench: batch size {batch_sizes[index]} ({index + 1} of {len(batch_sizes)}) on {running}"
    if index:
        left = elapsed / index * (len(batch_sizes) - index)
        return f"{line}; {elapsed:.0f} s so far, about {left:.0f} s left"
    runners = sum(runs_on(i, t) for t in targets for i in impls) + 2 * len(targets)  # 2: the GEMM ceilings
    epochs = options["warmup"] + options["repeats"]
    pauses = options["pause"] * options["repeats"] * runners * len(batch_sizes)
    return (
        f"{line}; {len(batch_sizes)} batch sizes x {runners} timed runs x {epochs} epochs of "
        f"{options['samples']} samples: at least {pauses:.0f} s of pauses alone, an estimate after this batch size"
    )


def add_ratios(rows: list[Row]) -> None:
    """Speed ratios within one batch size: every row against torch eager on its device,
    and xpnet against the hand-written loop on its backend (NumPy's direct loop, JAX's jit + scan)
    and against its own step in a bare loop (``vs_step``: fit's overhead; >1 means faster than the peer)."""
    eager = {r.device: r for r in rows if r.impl == "torch-eager"}
    direct = {(r.backend, r.device): r for r in rows if r.impl in DIRECT_PEERS}
    bare = {(r.backend, r.device): r for r in rows if r.impl == STEP_PEER}
    for row in rows:
        peer = eager.get(row.device)
        if peer is not None and row is not peer:
            row.vs_torch_eager = row.samples_per_s / peer.samples_per_s
        if row.impl != "xpnet":
            continue
        loop, step = direct.get((row.backend, row.device)), bare.get((row.backend, row.device))
        if loop is not None:
            row.vs_direct = row.samples_per_s / loop.samples_per_s
        if step is not None:
            row.vs_step = row.samples_per_s / step.samples_per_s
