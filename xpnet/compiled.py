"""Running an epoch's steps: one by one from Python (``EagerSteps``), or compiled (``CompiledSteps``, JAX).

``CompiledSteps``: the whole step traced once and replayed over chunks of batches.

The step compiled is ``fit``'s own step function, the eager code every backend runs:
gathering the batch on the device, the forward pass, BP1-BP4, the optimizer's update and
the running sums. It is traced with ``jax.jit`` and run over ``CHUNK_STEPS`` batches at a
time with ``lax.scan``; the training state (parameters, optimizer buffers, the running sums,
the dropout key, float16's loss scaling) goes in and comes out as arrays, its input buffers
donated, so nothing is copied between chunks and nothing is read back.

How a step written for mutable objects becomes a pure function: while tracing, the state's
arrays are put where the step looks for them (``net.params``, ``optimizer.state``, the
generator's key, ``sums``), the step runs on them, and what it left there is the new state.
The optimizer's rate and step count, host numbers in an eager run, are per-step inputs
here (the schedule is evaluated on the host for each step of a chunk), so one trace serves
every step. Between chunks ``fit`` polls for a stop (Ctrl-C), so an interrupted run ends on a
chunk boundary and resumes there exactly. Two chunk lengths are compiled (``CHUNK_STEPS`` and
the epoch's remainder; a resume mid-epoch may add a third), once per network and optimizer
settings, kept for later ``fit`` calls; batches all have one size, so no step ever recompiles.
Each compilation (tracing, lowering and XLA's compile) is timed where it happens (``TimedJit``):
``fit`` records it in the epoch that paid it (``compile_seconds``), the benchmark beside its epochs.
The buffers of ``net.params`` and the optimizer's state are donated: arrays taken from them
before a compiled ``fit`` are not to be used after it (copy them: ``backend.copy``).
"""

from __future__ import annotations

import contextlib
import time
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from xpnet.batches import Batches
from xpnet.evaluate import RunningSums

#: Steps per compiled call: ``fit`` polls for a stop, and updates its progress bar, between calls.
CHUNK_STEPS = 64


def step_runner(loop, step: Callable[[Any, Any, Any], None], compile: bool):
    """What runs ``loop``'s steps: ``CompiledSteps`` where asked and the backend compiles, else ``EagerSteps``.

    A network keeps its compiled steps between ``fit`` calls that would trace the same program
    (the same optimizer and settings: ``_trace_key``), so a second ``fit`` compiles nothing.
    """
    if not (compile and loop.net.backend.compiles_steps):
        return EagerSteps(loop, step)
    kept = _COMPILED.setdefault(loop.net, {})
    key = _trace_key(loop)
    if key not in kept:
        kept[key] = CompiledSteps(loop, step)
    kept[key].start(loop, step)
    return kept[key]


#: Each network's compiled steps, by ``_trace_key``; gone with the network.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _trace_key(loop) -> tuple:
    """What a trace of the step bakes in besides the shapes: a different value means another program."""
    optimizer, net = loop.optimizer, loop.net
    settings = sorted(
        (name, value)
        for name, value in vars(optimizer).items()
        if isinstance(value, (bool, int, float, str)) and name not in ("lr", "base_lr", "steps")
    )
    scaling = id(net._scaling_on_device) if net._scaling_on_device is not None else None
    return (type(optimizer), tuple(settings), loop.options.label_smoothing, loop.scaler is None, scaling)


class EagerSteps:
    """``step(loop, idx, sums)`` called batch by batch from Python, as every backend can."""

    compile_seconds = 0.0  #: nothing is compiled

    def __init__(self, loop, step: Callable[[Any, Any, Any], None]):
        self.loop, self.step = loop, step

    def run(self, history, order, sums, first: int, bar) -> int | None:
        """The epoch's steps from batch ``first`` on; the batches done if a stop came, else None.

        The batches are made a run of steps at a time (``xpnet.batches``), and the run's correct
        predictions counted at its end (``RunningSums.settle``); a step adds to its own work only
        its slices, the loss sum, the schedule's rate and the stop poll."""
        loop, net = self.loop, self.loop.net
        steps, epoch, epochs, set_progress = loop.steps, history.epoch, loop.epochs, loop.optimizer.set_progress
        local = loop.parallel.rows if loop.parallel.active else None
        batches = Batches(loop.step, order, steps, loop.batch_size, local)
        sums.pending = []
        for b in range(first, steps):
            set_progress(epoch + b / steps, epochs)
            rows, batch = batches(b)
            self.step(loop, rows, sums, batch)
            batch = None  # not held while the next run is made: its run's buffers may go first
            if batches.ends_run(b):
                sums.settle(net)
            if bar is not None:
                bar.update(1)
            if loop.stop_requested() and b + 1 < steps:
                sums.settle(net)
                return b + 1
        return None


class CompiledSteps:
    """``step(loop, idx, sums)`` compiled for ``loop`` (one ``fit`` call's state) with ``jax.jit`` + ``lax.scan``."""

    def __init__(self, loop, step: Callable[[Any, Any, Any], None]):
        import jax

        self.jax = jax
        self._compiled = TimedJit(self._chunk, donate_argnums=(0,))
        self._scaling = loop.net._scaling_on_device  # kept alive: its id is in the trace key
        self.start(loop, step)

    @property
    def compile_seconds(self) -> float:
        """Seconds spent compiling this step so far (every chunk length, every ``fit`` call)."""
        return self._compiled.seconds

    def start(self, loop, step: Callable[[Any, Any, Any], None]) -> None:
        """Run for ``loop`` (a ``fit`` call) from now on: what a trace reads is found there."""
        self.loop, self.step = loop, step
        net, optimizer = loop.net, loop.optimizer
        # What an eager first step would make and keep, made now: a trace must leave nothing behind.
        optimizer.init_state(net.params)
        if optimizer.xp is None:
            optimizer.xp = net.xp
        net.targets(loop.y[:1])  # the class ids of one-hot targets

    def run(self, history, order, sums, first: int, bar) -> int | None:
        """The epoch's steps from batch ``first`` on, a chunk per call; the batches done if a stop came, else None."""
        loop = self.loop
        steps, size = loop.steps, loop.batch_size
        sums.correct = loop.net.backend.copy(sums.correct)  # its own buffer: the two sums start as one zero
        for start in range(first, steps, CHUNK_STEPS):
            n = min(CHUNK_STEPS, steps - start)
            idx = loop.net.xp.reshape(order[start * size : (start + n) * size], (n, size))
            self._run_chunk(sums, idx, self._rates(history, start, n))
            if bar is not None:
                bar.update(n)
            if loop.stop_requested() and start + n < steps:
                return start + n
        return None

    def _rates(self, history, start: int, n: int):
        """Each step's learning rate (the schedule, on the host) and count before it, as device arrays."""
        loop, optimizer = self.loop, self.loop.optimizer
        rates = []
        for b in range(start, start + n):
            optimizer.set_progress(history.epoch + b / loop.steps, loop.epochs)
            rates.append(optimizer.lr)
        counts = np.arange(optimizer.steps, optimizer.steps + n)
        upload = loop.net.backend.upload
        return upload(np.asarray(rates), loop.net.dtype), upload(counts, loop.net.dtype)

    def _run_chunk(self, sums, idx, rates) -> None:
        loop = self.loop
        with warnings.catch_warnings():  # a CPU jaxlib may not reuse every donated buffer; it copies then
            warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
            state = self._compiled(self._state(sums), loop.X, loop.y, (idx, *rates))
        self._load(state, sums)
        loop.optimizer.steps += int(idx.shape[0])

    def _chunk(self, state, X, y, xs):
        """The traced function: ``lax.scan`` of the step over a chunk's (batch rows, rate, count)."""

        def body(state, x):
            idx, lr, count = x
            sums = RunningSums(*state["sums"])
            with self._bound(state, sums, X, y, lr, count):
                self.step(self.loop, idx, sums)
                return self._state(sums), None

        return self.jax.lax.scan(body, state, xs)[0]

    @contextlib.contextmanager
    def _bound(self, state, sums, X, y, lr, count):
        """The traced arrays put where the step reads them; the host's own put back after."""
        loop, optimizer = self.loop, self.loop.optimizer
        saved = (loop.X, loop.y, optimizer.lr, optimizer.steps, *self._state(sums).values())
        loop.X, loop.y, optimizer.lr, optimizer.steps = X, y, lr, count
        self._load(state, sums)
        try:
            yield
        finally:
            loop.X, loop.y, optimizer.lr, optimizer.steps = saved[:4]
            self._load(dict(zip(("params", "buffers", "sums", "key", "scaler"), saved[4:])), sums)

    def _state(self, sums) -> dict:
        """The arrays a step changes, as one pytree."""
        loop, net = self.loop, self.loop.net
        rng = net.dropout_rng
        return {
            "params": list(net.params),
            "buffers": loop.optimizer.state_arrays(),
            "sums": [sums.loss, sums.correct],
            "key": rng.key if rng is not None else None,
            "scaler": loop.scaler.state() if loop.scaler is not None else [],
        }

    def _load(self, state: dict, sums) -> None:
        """Put ``state``'s arrays where the step and ``fit`` find them."""
        loop, net = self.loop, self.loop.net
        net.params[:] = state["params"]
        loop.optimizer.load_state_arrays(list(state["buffers"]), loop.optimizer.steps, net.params)
        sums.loss, sums.correct = state["sums"]
        if net.dropout_rng is not None:
            net.dropout_rng.key = state["key"]
        if loop.scaler is not None:
            loop.scaler.scale, loop.scaler.good_steps, loop.scaler.skipped = state["scaler"]


class TimedJit:
    """``jax.jit(fn)``, compiled ahead of the first call with each new signature (``lower().compile()``)
    and the seconds that took summed in ``seconds``: the one-time cost of a compiled run, measured
    where it is paid rather than guessed from a slow first epoch (which also holds the run itself)."""

    def __init__(self, fn: Callable, donate_argnums: tuple[int, ...] = ()):
        import jax

        self.jax = jax
        self.jitted = jax.jit(fn, donate_argnums=donate_argnums)
        self.programs: dict = {}  #: the compiled program of each signature seen
        self.seconds = 0.0

    def __call__(self, *args):
        leaves, tree = self.jax.tree_util.tree_flatten(args)
        signature = (
            tree,
            self.jax.config.jax_enable_x64,
            *((getattr(a, "shape", ()), getattr(a, "dtype", type(a))) for a in leaves),
        )
        program = self.programs.get(signature)
        if program is None:
            started = time.perf_counter()
            program = self.programs[signature] = self.jitted.lower(*args).compile()
            self.seconds += time.perf_counter() - started
        return program(*args)
