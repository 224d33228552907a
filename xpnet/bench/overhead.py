"""What a ``fit`` epoch adds to its steps, counted rather than timed: the same figures on a busy machine.

Three loops over the same batches of the benchmark's network (``xpnet.bench.workload``):

    fit    ``fit`` itself, one epoch, eager (``compile=False``)
    step   fit's own step (``xpnet.step.Step``) in a bare loop, each step gathering its batch
    core   ``net.backprop`` + ``optimizer.step`` on batches made beforehand: the math alone

and per step of each: the Python function calls (cProfile's count: all of them, and those in
xpnet's own code), and on PyTorch the operations dispatched to the device (``Backend.audit``'s
count of aten operations; each a kernel launch on a GPU). A loop's figure per step is the
difference between runs of ``SHORT`` and ``LONG`` runs of ``fit``'s batches made ahead
(``xpnet.batches``), so a ``fit`` call's fixed cost (checks, the permutation, the epoch's one
read) cancels and the batches' making counts at its rate per step; each loop is counted the second
time it runs, so imports, caches and a compiling library's first calls of each shape are not.
``python -m xpnet.bench.overhead`` prints them.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
from collections.abc import Callable, Sequence

import numpy as np

import xpnet
from xpnet.batches import steps_ahead
from xpnet.bench.workload import SETTINGS, SIZES
from xpnet.build import build
from xpnet.step import Step
from xpnet.train import fit

LOOPS = ("fit", "step", "core")
SHORT, LONG = 1, 3  #: runs of steps made ahead (``xpnet.batches.steps_ahead``)
_OWN_CODE = os.path.dirname(os.path.abspath(xpnet.__file__))


def _loop(kind: str, backend: str, device: str, steps: int, batch_size: int, sizes: Sequence[int]):
    """``(net, run)``: a fresh network and a call that runs ``kind``'s loop over ``steps`` batches."""
    rng = np.random.default_rng(0)
    n = steps * batch_size
    X, y = rng.integers(0, 256, (n, sizes[0]), dtype=np.uint8), rng.integers(0, sizes[-1], n)
    settings = {**SETTINGS, "layers": list(sizes[1:-1]), "seed": 0}
    net, optimizer = build(settings, sizes[0], sizes[-1], X[:1], backend=backend, device=device)
    X, y = net.to_device(X), net.to_device(y, labels=True)
    if kind == "fit":
        return net, lambda: fit(net, X, y, epochs=1, batch_size=batch_size, optimizer=optimizer, seed=1, compile=False)
    order = net.backend.upload(np.random.default_rng(1).permutation(n).astype(np.int32))
    batches = [order[b * batch_size : (b + 1) * batch_size] for b in range(steps)]
    step = Step(net, optimizer, X, y)
    if kind == "step":
        return net, lambda: [step(idx, None) for idx in batches]
    made = [step.gather(idx)[::2] for idx in batches]  # (inputs, targets)

    def core() -> None:
        for xb, targets in made:
            _, grads, _ = net.backprop(xb, targets, train=True)
            optimizer.step(net.params, grads)

    return net, core


def _python_calls(run: Callable[[], object]) -> tuple[int, int]:
    """Function calls ``run`` makes: all, and those into xpnet's own code."""
    profile = cProfile.Profile()
    profile.enable()
    try:
        run()
    finally:
        profile.disable()
    stats = pstats.Stats(profile).stats
    own = sum(calls for (path, _, _), (_, calls, *_) in stats.items() if path.startswith(_OWN_CODE))
    return sum(calls for _, calls, *_ in stats.values()), own


def _operations(net, run: Callable[[], object]) -> int | None:
    """Device operations ``run`` dispatches, where the backend can count them (PyTorch), else None."""
    with net.backend.audit() as audit:
        run()
    return audit.operations if audit.operations else None


def counts(kind: str, backend: str = "numpy", device: str = "cpu", batch_size: int = 64, sizes=SIZES) -> dict:
    """Per step of ``kind`` (one of ``LOOPS``): ``calls`` (Python), ``own_calls`` (xpnet's), ``operations``."""
    net, _ = _loop("core", backend, device, 1, batch_size, sizes)
    ahead = steps_ahead(net, sizes[0], batch_size, 0.0)
    figures = {}
    for runs in (SHORT, LONG):
        net, run = _loop(kind, backend, device, runs * ahead, batch_size, sizes)
        run()  # uncounted: the first run's imports, caches and compilations
        calls = _python_calls(run)
        figures[runs] = (*calls, _operations(net, run))
    steps = (LONG - SHORT) * ahead
    per_step = [
        None if short is None or long is None else (long - short) / steps
        for short, long in zip(figures[SHORT], figures[LONG])
    ]
    return dict(zip(("calls", "own_calls", "operations"), per_step))


def table(backends: Sequence[str], batch_size: int) -> str:
    """The three loops' figures per step on each backend, and fit's excess over the bare step and the core."""
    lines = [f"per step at batch {batch_size} ({', '.join(f'{k}: {v}' for k, v in zip(LOOPS, _WORDS))})"]
    lines.append(f"{'backend':>18} {'loop':>5} {'calls':>8} {'xpnet calls':>12} {'device ops':>11}")
    for name in backends:
        backend, _, device = name.partition("/")
        rows = {kind: counts(kind, backend, device or "cpu", batch_size) for kind in LOOPS}
        for kind, figures in rows.items():
            cells = [_cell(figures[key]) for key in ("calls", "own_calls", "operations")]
            lines.append(f"{name:>18} {kind:>5} {cells[0]:>8} {cells[1]:>12} {cells[2]:>11}")
        for peer in ("step", "core"):
            excess = [_difference(rows["fit"][key], rows[peer][key]) for key in ("calls", "own_calls", "operations")]
            lines.append(f"{name:>18} {'-' + peer:>5} {excess[0]:>8} {excess[1]:>12} {excess[2]:>11}")
    return "\n".join(lines)


_WORDS = ("a fit epoch", "fit's step in a bare loop", "backprop + optimizer alone")


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _difference(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a - b:+.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xpnet.bench.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="numpy,torch,array-api-strict,jax", help="comma-separated")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    print(table([b.strip() for b in args.backends.split(",") if b.strip()], args.batch_size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
