"""The checks ``python -m xpnet selfcheck`` runs, each a function of one ``Context``.

Each returns an ``Outcome``: PASS, FAIL or SKIP, one line of detail a user can act on,
and the figures behind it (for ``--json``). They run on whatever backend and device the
user names, CPU included, and finish in seconds.
"""

from __future__ import annotations

import importlib.util
import platform
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import array_api_compat
import numpy as np

from xpnet._version import __version__
from xpnet.backend import Backend, cuda_libraries, get_backend, nvrtc_compile, substituted_kernels
from xpnet.checkpoint import ModelFile
from xpnet.errors import XpnetError
from xpnet.modelfile import save_model
from xpnet.network import MLP
from xpnet.optim import SGD
from xpnet.selfcheck import gradcheck
from xpnet.selfcheck.interpret import CKernel
from xpnet.selfcheck.kernels import DTYPES, OPTIMIZERS, kernel_sources, run_call_sites
from xpnet.train import History

#: How far a fused kernel's results may be from its array-API reference, in units of the dtype's
#: machine epsilon times the compared array's largest magnitude (its scale). A correct kernel may
#: evaluate in another order than the reference: CUDA contracts a * b + c into one FMA, and each
#: rounding it skips or adds is at most half an ulp of an operand no larger than the array's scale
#: (weights, moments and scaled inputs here are O(1), Adam's v O(1e-3), each compared on its own).
#: A body has at most 10 operations: a few eps of the scale at most; interpreted with each statement
#: rounded once (what FMA approaches), the call sites stay within 1.2 eps over 10 steps. 16 eps
#: leaves room for that, and not for a wrong coefficient: 1 - 0.999f in float32 put every Adam v
#: 1.3e-5 off (109 float32 eps). Element by element the error is no measure: a weight that cancels
#: to near zero keeps its operands' rounding, many times its own size (the H200 run failed on that).
KERNEL_ULPS = 16


@dataclass
class Context:
    backend: Backend
    workdir: Path


@dataclass
class Outcome:
    status: str  #: "PASS", "FAIL" or "SKIP"
    detail: str
    data: dict = field(default_factory=dict)


def _verdict(ok: bool, detail: str, **data) -> Outcome:
    return Outcome("PASS" if ok else "FAIL", detail, data)


def _has_cupy() -> bool:
    return importlib.util.find_spec("cupy") is not None


def environment(ctx: Context) -> Outcome:
    """Versions, the device, and the CUDA libraries CuPy would load (NVRTC, cuBLAS, NCCL)."""
    backend = ctx.backend
    found = {
        "xpnet": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "array-api-compat": array_api_compat.__version__,
        backend.name: backend.library_version,
        "device": backend.device_name,
        "TF32 matmuls": backend.tf32_state(),
    }
    if _has_cupy():
        found.update(cuda_libraries())
    detail = ", ".join(f"{name} {value}" for name, value in found.items())
    return Outcome("PASS", detail, found)


def kernels(ctx: Context) -> Outcome:
    """Each fused kernel against the array-API code it replaces, in float32, float64 and float16."""
    backend, numpy = ctx.backend, get_backend("numpy")
    if backend.compiles_kernels:
        how = f"compiled by CuPy on {backend.device_name}"
        fused = {dtype: run_call_sites(backend, dtype) for dtype in DTYPES}
    else:
        how = "C bodies interpreted with NumPy: no CuPy device here"
        with substituted_kernels(CKernel):
            fused = {dtype: run_call_sites(numpy, dtype) for dtype in DTYPES}
    worst = {}
    for dtype in DTYPES:
        reference = run_call_sites(numpy, dtype)
        worst[dtype] = max(scaled_error(fused[dtype][site], reference[site]) for site in reference)
    sites = {key.split("/")[0] if key.split("/")[0] in OPTIMIZERS else key for key in fused["float32"]}
    return _within_ulps(worst, f"{len(sites)} call sites match the array-API reference ({how})")


def scaled_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want|: the error relative to the array's scale (see ``KERNEL_ULPS``)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if not want.size:
        return 0.0
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), np.finfo(np.float64).tiny))


def _within_ulps(worst: dict, what: str) -> Outcome:
    """PASS if each dtype's worst scaled error is within ``KERNEL_ULPS`` of its epsilon."""
    ulps = {dtype: error / float(np.finfo(dtype).eps) for dtype, error in worst.items()}
    errors = ", ".join(f"{d} {e:.1e} ({ulps[d]:.1f} eps)" for d, e in worst.items())
    detail = f"{what}; worst error of each array's scale {errors}, tolerance {KERNEL_ULPS} eps"
    return _verdict(all(u <= KERNEL_ULPS for u in ulps.values()), detail, worst=worst, ulps=ulps)


def kernel_compile(ctx: Context) -> Outcome:
    """Every fused kernel's CUDA source (CuPy's) compiled by NVRTC for this GPU (or sm_80, sm_90)."""
    if not _has_cupy():
        return Outcome("SKIP", 'CuPy is not installed (pip install "xpnet[cuda12]")')
    nvrtc = cuda_libraries().get("NVRTC", "missing")
    if nvrtc.startswith("missing"):
        return Outcome("FAIL" if ctx.backend.compiles_kernels else "SKIP", f"NVRTC {nvrtc}")
    archs = [ctx.backend.compute_capability] if ctx.backend.compute_capability else ["80", "90"]
    sources = kernel_sources(DTYPES)
    count = 0
    try:
        for arch in archs:
            for name_sources in sources.values():
                for source in name_sources:
                    nvrtc_compile(source, arch)
                    count += 1
    except XpnetError as exc:
        return Outcome("FAIL", str(exc).splitlines()[0])
    targets = ", ".join(f"sm_{a}" for a in archs)
    return Outcome("PASS", f"{len(sources)} kernels, {count} sources compiled by NVRTC {nvrtc} for {targets}")


#: Networks whose gradients are checked: every activation, every loss, fused and not.
GRADIENT_NETS = [
    ("sigmoid", "softmax", "cross_entropy"),
    ("tanh", "identity", "mse"),
    ("relu", "sigmoid", "binary_cross_entropy"),
    ("leaky_relu(0.1)", "sigmoid", "cross_entropy"),
    ("identity", "softmax", "binary_cross_entropy"),
]


def gradients(ctx: Context) -> Outcome:
    """BP1-BP4 against five-point finite differences, in float64 on the backend: the test suite's
    criterion (``selfcheck.gradcheck``), so the two cannot disagree about one device."""
    worst = 0.0
    for hidden, output, loss in GRADIENT_NETS:
        worst = max(worst, _gradient_error(ctx.backend, hidden, output, loss))
    return _verdict(
        worst < gradcheck.TOLERANCE,
        f"{len(GRADIENT_NETS)} networks, worst relative error {worst:.1e} (tolerance {gradcheck.TOLERANCE:.0e})",
        worst=worst,
    )


def _gradient_error(backend: Backend, hidden: str, output: str, loss: str) -> float:
    rng = np.random.default_rng(0)
    net = MLP([4, 5, 3], activation=hidden, output=output, loss=loss, backend=backend, dtype="float64", seed=1)
    x, _ = gradcheck.smooth_inputs(net, 6, rng)
    y = rng.standard_normal((6, 3)) if loss == "mse" else rng.integers(0, 3, 6)
    _, layers = net.gradients(x, y)
    analytic = [backend.to_host(g) for pair in layers for g in pair]
    numeric = gradcheck.finite_differences(net, lambda: net.gradients(x, y)[0])
    return max(gradcheck.relative_error(g, fd) for g, fd in zip(analytic, numeric))


def optimizers(ctx: Context) -> Outcome:
    """Every optimizer's updates on the backend against NumPy's, ten steps, held as the kernels are.
    NumPy against itself would prove nothing: on NumPy, the CPU's other array namespaces (PyTorch
    where installed, array-api-strict) run the same array-API updates against it instead."""
    numpy, worst = get_backend("numpy"), {}
    compared = [ctx.backend]
    if type(ctx.backend) is type(numpy):
        compared = [get_backend("torch", "cpu")] if importlib.util.find_spec("torch") is not None else []
        compared.append(get_backend("array-api-strict"))
    for dtype in ("float32", "float64"):
        want = run_call_sites(numpy, dtype, steps=10)
        got = [run_call_sites(backend, dtype, steps=10) for backend in compared]
        worst[dtype] = max(
            scaled_error(run[key], want[key]) for run in got for key in want if key.split("/")[0] in OPTIMIZERS
        )
    on = str(ctx.backend) if compared == [ctx.backend] else " and ".join(backend.name for backend in compared)
    return _within_ulps(worst, f"{', '.join(OPTIMIZERS)} on {on} agree with NumPy over 10 steps")


def sync_audit(ctx: Context) -> Outcome:
    """fit, evaluate and predict under ``Backend.audit``: no hidden host reads or device mixes,
    one read per epoch. With PyTorch installed, also on its meta device (a GPU's stand-in, whose
    monitor sees every operation): the guard wherever the backend has no such monitor (CuPy, the CPU)."""
    backends = [ctx.backend]
    if not ctx.backend.watches_operations and importlib.util.find_spec("torch") is not None:
        backends.append(get_backend("torch", "meta"))
    lines, ok, data = [], True, {}
    for backend in backends:
        audit, epochs, budget = _audited_run(backend)
        ok &= audit.clean and audit.reads == budget
        watched = (
            f"{audit.operations} operations watched"
            if audit.operations
            else _UNWATCHED.get(backend.name, "reads counted (no device)")
        )
        problems = "; ".join(audit.violations[:3]) or "no violations"
        lines.append(
            f"{backend}: {watched}, {audit.reads} host reads for {epochs} epochs + evaluate + predict, {problems}"
        )
        data[str(backend)] = {"operations": audit.operations, "reads": audit.reads, "violations": audit.violations}
    return _verdict(ok, " | ".join(lines), **data)


#: What the audit sees where no monitor watches each operation.
_UNWATCHED = {
    "cupy": "reads counted through xpnet's transfers, cupyx.allow_synchronize sees only ndarray.get and "
    "Device.synchronize",
}


def _audited_run(backend: Backend):
    X, y = _blobs()
    net = MLP([2, 16, 3], activation="relu", dropout=0.1, backend=backend, seed=0)
    epochs = 2
    with backend.audit() as audit:
        net.fit(X, y, epochs=epochs, batch_size=16, optimizer=SGD(lr=0.1, momentum=0.9), validation_data=(X, y))
        net.evaluate(X, y)
        net.predict(X)
    # One read per epoch, evaluate's one, and predict's (host NumPy in, so host NumPy out) off the CPU.
    budget = epochs + 1 + (0 if backend.owns(X) else 1)
    return audit, epochs, budget


def _blobs(n: int = 96, classes: int = 3, seed: int = 0):
    """Well separated Gaussian blobs in the plane: any network here learns them fully."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    angles = 2 * np.pi * y / classes
    X = np.stack([3 * np.cos(angles), 3 * np.sin(angles)], axis=1) + 0.3 * rng.standard_normal((n, 2))
    return X.astype(np.float32), y


def dropout(ctx: Context) -> Outcome:
    """Masks from the backend's own generator: the right share kept, scaled by 1/(1-p), fresh per
    draw, the same for the same seed."""
    rate, shape = 0.3, (200, 500)
    masks = []
    for seed in (0, 0):
        net = MLP([4, 4, 2], dropout=rate, backend=ctx.backend, seed=seed)
        with ctx.backend.activated():  # the draw, comparison, cast and division on the backend's GPU
            drawn = [net._dropout_mask(shape, rate) for _ in range(2)]
        masks.append([ctx.backend.to_host(mask) for mask in drawn])
    first, second = masks[0]
    kept = float(np.mean(first != 0))
    scale_ok = np.allclose(first[first != 0], 1 / (1 - rate), rtol=1e-6)
    ok = abs(kept - (1 - rate)) < 0.01 and scale_ok and not np.array_equal(first, second)
    ok &= np.array_equal(first, masks[1][0])
    detail = f"kept {kept:.4f} of units at p={rate} (expected {1 - rate}), scale {'1/(1-p)' if scale_ok else 'WRONG'}"
    return _verdict(ok, detail + ", draws differ, one seed reproduces its masks", kept=kept)


def save_resume(ctx: Context) -> Outcome:
    """A run interrupted mid-epoch, saved as a checkpoint, loaded and resumed, ends with the
    weights of the uninterrupted run (bit for bit on the CPU). Steps run eagerly here, so the stop
    lands mid-epoch on every backend (compiled steps stop between chunks: tests/test_compiled.py)."""
    X, y = _blobs()
    reference = MLP([2, 16, 3], backend=ctx.backend, seed=0)
    reference.fit(X, y, epochs=3, batch_size=16, optimizer=SGD(lr=0.1, momentum=0.9), compile=False)
    net, optimizer = MLP([2, 16, 3], backend=ctx.backend, seed=0), SGD(lr=0.1, momentum=0.9)
    polls = iter(range(8))  # stop after 8 steps: in the middle of the second epoch (6 steps each)
    stop = lambda: next(polls, 8) >= 7  # noqa: E731
    history = net.fit(X, y, epochs=3, batch_size=16, optimizer=optimizer, should_stop=stop, compile=False)
    path = ctx.workdir / "selfcheck.ckpt.safetensors"
    save_model(path, net, history=history, optimizer=optimizer)
    saved = ModelFile(path)
    resumed, optimizer = saved.build(ctx.backend), SGD(lr=0.1, momentum=0.9)
    optimizer.load_state_arrays(
        saved.optimizer_buffers(resumed, optimizer), saved.checkpoint["optimizer_steps"], resumed.params
    )
    state = History.from_resume_state(saved.resume_state(), best_params=saved.best_params(resumed))
    resumed.fit(X, y, epochs=3, batch_size=16, optimizer=optimizer, history=state, compile=False)
    want, got = reference.state_dict(), resumed.state_dict()
    exact = all(np.array_equal(want[k], got[k]) for k in want)
    close = all(np.allclose(want[k], got[k], rtol=1e-5, atol=1e-7) for k in want)
    on_gpu = ctx.backend.compute_capability is not None  # cuBLAS may pick other kernels after a reload
    ok = history.interrupted and (exact or (close and on_gpu))
    how = "bit for bit" if exact else "to 1e-5" if close else "NOT"
    return _verdict(ok, f"interrupted at epoch {history.epoch + 1}, step {history.batch}; resumed weights match {how}")


def training(ctx: Context) -> Outcome:
    """A short training run: it learns, and reads the device once per epoch."""
    X, y = _blobs(n=384)
    net = MLP([2, 32, 3], backend=ctx.backend, seed=0)
    reads, epochs = ctx.backend.host_reads, 3
    history = net.fit(X, y, epochs=epochs, batch_size=32, optimizer=SGD(lr=0.1, momentum=0.9))
    reads = ctx.backend.host_reads - reads
    accuracy = history.records[-1]["accuracy"]
    ok = accuracy >= 0.95 and reads == epochs
    return _verdict(ok, f"{epochs} epochs, accuracy {accuracy:.3f}, {reads} host reads", accuracy=accuracy, reads=reads)


def benchmark(ctx: Context) -> Outcome:
    """The device's measured float32 GEMM rate, and a training epoch's rate as a share of it."""
    backend = ctx.backend
    gemm = _gemm_gflops(backend, 1024 if backend.compute_capability is None else 4096)
    rng = np.random.default_rng(0)
    X, y = rng.random((8192, 784), dtype=np.float32), rng.integers(0, 10, 8192)
    net = MLP([784, 256, 10], backend=backend, seed=0)
    X, y = net.to_device(X), net.to_device(y, labels=True)
    net.fit(X, y, epochs=1, batch_size=256)  # warm-up: kernels compiled, memory pools grown
    backend.synchronize()
    start = time.perf_counter()
    net.fit(X, y, epochs=1, batch_size=256)
    backend.synchronize()
    seconds = time.perf_counter() - start
    train = 6 * net.macs_per_sample * X.shape[0] / seconds / 1e9  # forward 2, backward 4 FLOPs per MAC
    ok = np.isfinite(gemm) and np.isfinite(train) and gemm > 0
    detail = f"GEMM ceiling {gemm:,.1f} GFLOP/s; 784-256-10 at batch 256: {X.shape[0] / seconds:,.0f} samples/s"
    share = _percent(100 * train / gemm)
    return _verdict(ok, f"{detail}, {train:,.1f} GFLOP/s ({share} of the ceiling)", gemm=gemm, train=train)


def _percent(value: float) -> str:
    """At least two significant digits (a small MLP on a big GPU is well under 1%), never in e-notation."""
    return f"{value:.0f}%" if value >= 10 else f"{value:.2g}%"


def _gemm_gflops(backend: Backend, n: int, repeats: int = 3) -> float:
    """The best of ``repeats`` square float32 products, each timed to a read of one of its entries (a
    wait for that very product on every library: JAX's, run asynchronously, included)."""
    rng = np.random.default_rng(0)
    a, b = (backend.upload(rng.standard_normal((n, n), dtype=np.float32)) for _ in range(2))
    with backend.activated():
        backend.to_host((a @ b)[:1, :1])  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            backend.to_host((a @ b)[:1, :1])
            times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e9


CHECKS = {
    "environment": environment,
    "kernels": kernels,
    "kernel-compile": kernel_compile,
    "gradients": gradients,
    "optimizers": optimizers,
    "sync-audit": sync_audit,
    "dropout": dropout,
    "save-resume": save_resume,
    "training": training,
    "benchmark": benchmark,
}


def run_checks(backend: Backend) -> dict[str, Outcome]:
    """Every check on ``backend``; a check that raises is a FAIL naming the error."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="xpnet-selfcheck-") as workdir:
        context = Context(backend, Path(workdir))
        for name, check in CHECKS.items():
            # Libraries warn about their own switches (cupyx.allow_synchronize is deprecated, PyTorch's
            # sync debug mode is a prototype): kept in the check's data for --json, not printed in the report.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    results[name] = check(context)
                except Exception as exc:  # a check must report, never crash the report
                    first = str(exc).splitlines()[0] if str(exc) else ""
                    results[name] = Outcome("FAIL", f"{type(exc).__name__}: {first}")
            if caught:
                results[name].data["warnings"] = sorted({str(w.message).splitlines()[0] for w in caught})
    return results
