"""The implementations the sweep times, each training one epoch of the same batches.

``xpnet`` is the library's own ``fit``; ``xpnet-step`` is fit's own step in a bare loop over
the same batches (fit's overhead is the difference); ``direct`` is the same math and loop written
straight in NumPy (the array-API indirection costs the difference); ``torch-eager`` is a
plain ``nn.Sequential`` + ``torch.optim.SGD``. All see the same batches (one seeded
permutation per epoch, the same uint8 data resident on the device, scaled per batch); all
but the bare step sum loss and accuracy on the device and read them back once per epoch, as ``fit`` does.
``jax-scan`` is the hand-written JAX loop compiled over the epoch, the peer of xpnet on JAX.
The runners that compile (xpnet on JAX, ``jax-scan``) say how long compiling took (``compile_seconds``):
timed where it happens (``xpnet.compiled.TimedJit``), in the untimed warm-up epoch, reported apart.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np

from xpnet.backend import get_backend
from xpnet.bench.targets import Target
from xpnet.bench.workload import LR, MOMENTUM, SETTINGS, SIZES, step_macs
from xpnet.build import build
from xpnet.compiled import TimedJit
from xpnet.init import init_name, initial_parameters
from xpnet.step import Step
from xpnet.train import fit


class EpochMetrics(NamedTuple):
    """Mean loss and accuracy of one epoch: the host read that ends every runner's epoch."""

    loss: float
    accuracy: float


class Runner:
    """Trains the benchmark network on resident data; ``epoch()`` ends synchronised."""

    impl = "?"
    library: str | None = None  #: the one backend this runner is written for (None: any)
    eager_only = False  #: runs only on backends that do not compile their steps

    def epoch(self) -> EpochMetrics:
        raise NotImplementedError

    def step(self) -> None:
        """One training step on one fixed batch (for the pytest benchmarks)."""
        raise NotImplementedError

    def peak_memory(self) -> int | None:
        return None

    def compile_seconds(self) -> float | None:
        """Seconds spent tracing and compiling over all epochs so far; None where nothing is compiled."""
        return None


class XpnetRunner(Runner):
    """xpnet's own ``fit`` loop, one epoch per call."""

    impl = "xpnet"

    def __init__(self, target: Target, X, y, batch_size: int, seed: int = 0):
        settings = {**SETTINGS, "seed": seed}
        where = {"backend": target.backend, "device": target.device}
        self.net, self.optimizer = build(settings, SIZES[0], SIZES[-1], X[:1], **where)
        self.backend = self.net.backend
        self.X, self.y = self.net.to_device(X), self.net.to_device(y, labels=True)
        self.batch_size = batch_size
        self.epochs, self.compiled = 0, 0.0
        self._step = Step(self.net, self.optimizer, self.X, self.y)  # fit's own step
        self._rows = self.backend.upload(np.arange(min(batch_size, len(X)), dtype=np.int32))

    def epoch(self) -> EpochMetrics:
        self.epochs += 1
        history = fit(
            self.net, self.X, self.y, epochs=1, batch_size=self.batch_size, optimizer=self.optimizer, seed=self.epochs
        )
        self.backend.synchronize()
        record = history.records[-1]
        self.compiled += record.get("compile_seconds", 0.0)  # fit's own measure, in the epoch that compiled
        return EpochMetrics(record["loss"], record["accuracy"])

    def compile_seconds(self) -> float | None:
        return self.compiled if self.backend.compiles_steps else None

    def step(self) -> None:
        """One of ``fit``'s steps (``xpnet.step.Step``, the very function ``fit`` calls), on the
        first ``batch_size`` rows, under fit's ``Backend.step_policy`` with the same multiply-add
        count: the batch's gather, cast and scaling, its targets, BP1-BP4 and the update."""
        with self.backend.step_policy(self.batch_size * self.net.macs_per_sample):
            self._step(self._rows, None)
        self.backend.synchronize()

    def peak_memory(self) -> int | None:
        return self.backend.peak_memory(self.epoch)


class XpnetStepRunner(XpnetRunner):
    """fit's own step (``xpnet.step.Step``) in a bare Python loop over fit's batches: the same seeded
    permutation, each batch gathered by the step, under the same ``Backend.step_policy``, and nothing
    of ``fit`` around it (no running sums, schedule, stop polls, metric read). ``fit``'s own cost is
    the gap between the two rows (``vs_step``). Eager backends only: on one that compiles its steps
    (JAX) the xpnet row is compiled and its yardstick is the hand-written ``jax-scan``."""

    impl = "xpnet-step"
    eager_only = True

    def epoch(self) -> EpochMetrics:
        self.epochs += 1
        n = self.X.shape[0]
        size = min(self.batch_size, n)  # as fit takes it
        order = self.backend.upload(np.random.default_rng(self.epochs).permutation(n).astype(np.int32))
        with self.backend.step_policy(size * self.net.macs_per_sample):
            for b in range(n // size):
                self._step(order[b * size : (b + 1) * size], None)
        self.backend.synchronize()
        return EpochMetrics(math.nan, math.nan)  # a bare loop sums nothing


class DirectRunner(Runner):
    """The same math and loop written straight in NumPy: the array-API indirection's yardstick.

    Same batches as ``fit`` (its permutation, the ``n % batch_size`` remainder left out),
    same loss and accuracy sums, and ``fit``'s step policy (BLAS threads, denormals flushed).
    """

    impl = "direct"
    library = "numpy"

    def __init__(self, target: Target, X, y, batch_size: int, seed: int = 0):
        self.backend = get_backend("numpy")
        # MLP's own choice per layer: He for the ReLU layers, Glorot for the softmax output layer.
        inits = [init_name("auto", "relu")] * (len(SIZES) - 2) + [init_name("auto", "identity")]
        init = initial_parameters(SIZES, inits, seed)
        self.W = [w.astype(np.float32) for w, _ in init]
        self.b = [b.astype(np.float32) for _, b in init]
        self.v = [np.zeros_like(p) for p in self.W + self.b]
        self.X, self.y = X, y
        self.batch_size = batch_size
        self.eye = np.eye(SIZES[-1], dtype=np.float32)
        self.epochs = 0

    def _forward(self, x):
        """Pre-activations z and activations a of every layer; the last layer's a is its z."""
        zs, acts = [], [x]
        for l in range(len(self.W)):
            z = acts[-1] @ self.W[l].T
            z += self.b[l]
            zs.append(z)
            acts.append(np.maximum(z, 0.0) if l + 1 < len(self.W) else z)
        return zs, acts

    def _train_step(self, x, t):
        W = self.W
        scale = np.float32(1.0 / x.shape[0])
        zs, acts = self._forward(x)
        shifted = zs[-1] - zs[-1].max(axis=1, keepdims=True)
        e = np.exp(shifted)
        total = e.sum(axis=1, keepdims=True)
        loss = -np.sum(t * (shifted - np.log(total))) * scale
        p = e / total
        correct = np.sum(np.sum(t * p, axis=1) >= p.max(axis=1), dtype=np.float32)
        delta = (p - t) * scale
        grads = [None] * (2 * len(W))
        for l in reversed(range(len(W))):
            grads[l] = delta.T @ acts[l]  # BP4
            grads[len(W) + l] = delta.sum(axis=0)  # BP3
            if l:
                delta = delta @ W[l]  # BP2
                delta *= zs[l - 1] > 0
        for p_, g, v in zip(self.W + self.b, grads, self.v):
            v *= MOMENTUM
            v += g
            p_ -= LR * v
        return loss, correct

    def epoch(self) -> EpochMetrics:
        self.epochs += 1
        order = np.random.default_rng(self.epochs).permutation(self.X.shape[0]).astype(np.int32)
        bs = self.batch_size
        sums = np.zeros(3, dtype=np.float32)
        with self.backend.step_policy(step_macs(bs)):
            for i in range(self.X.shape[0] // bs):
                idx = order[i * bs : (i + 1) * bs]
                x = self.X.take(idx, axis=0).astype(np.float32)
                x *= np.float32(1.0 / 255.0)
                loss, correct = self._train_step(x, self.eye[self.y.take(idx)])
                sums += (loss * bs, correct, bs)
        loss_sum, correct_sum, seen = sums.tolist()
        return EpochMetrics(loss_sum / seen, correct_sum / seen)

    def step(self) -> None:
        x = self.X[: self.batch_size].astype(np.float32) / np.float32(255.0)
        with self.backend.step_policy(step_macs(self.batch_size)):
            self._train_step(x, self.eye[self.y[: self.batch_size]])

    def peak_memory(self) -> int | None:
        return self.backend.peak_memory(self.epoch)


class TorchEagerRunner(Runner):
    """PyTorch's own way: ``nn.Sequential`` of Linear/ReLU, CrossEntropyLoss, ``optim.SGD``.

    The same batches (the same seeded permutations), the uint8 data resident on the
    device and scaled per batch, and loss/accuracy summed on the device, as ``fit`` does.
    PyTorch keeps its own thread and denormal defaults: it is the peer as users run it.
    """

    impl = "torch-eager"
    library = "torch"

    def __init__(self, target: Target, X, y, batch_size: int, seed: int = 0):
        import torch  # only here: the peer needs PyTorch, the harness does not

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

    def epoch(self) -> EpochMetrics:
        torch = self.torch
        self.epochs += 1
        order = np.random.default_rng(self.epochs).permutation(self.X.shape[0]).astype(np.int32)
        order = torch.from_numpy(order).to(self.device)
        bs = self.batch_size
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        steps = self.X.shape[0] // bs
        for i in range(steps):
            idx = order[i * bs : (i + 1) * bs]
            xb = self.X[idx].float() * (1.0 / 255.0)
            yb = self.y[idx]
            loss, out = self._train_step(xb, yb)
            loss_sum += loss * bs
            correct += (out.argmax(dim=1) == yb).sum()
        loss_total, correct_total = torch.stack([loss_sum, correct]).cpu().tolist()
        self.backend.synchronize()
        return EpochMetrics(loss_total / (steps * bs), correct_total / (steps * bs))

    def step(self) -> None:
        xb = self.X[: self.batch_size].float() * (1.0 / 255.0)
        self._train_step(xb, self.y[: self.batch_size])
        self.backend.synchronize()

    def peak_memory(self) -> int | None:
        return self.backend.peak_memory(self.epoch)


class JaxScanRunner(Runner):
    """The hand-written JAX loop: the step (``jax.grad`` of the loss, SGD momentum) compiled with
    ``jax.jit`` and run over the whole epoch with ``lax.scan``, data resident, buffers donated.

    The peer xpnet's compiled ``fit`` on JAX is held to: the same batches, uint8 data scaled per
    batch on the device, loss and accuracy summed in the scan and read once per epoch.
    """

    impl = "jax-scan"
    library = "jax"

    def __init__(self, target: Target, X, y, batch_size: int, seed: int = 0):
        import jax  # only here: the peer needs JAX, the harness does not

        self.jax = jax
        self.backend = get_backend("jax", target.device)
        put = lambda a: jax.device_put(a, self.backend.device)  # noqa: E731
        init = initial_parameters(SIZES, ["he_normal"] * (len(SIZES) - 1), seed)
        self.params = [put(a.astype(np.float32)) for pair in init for a in pair]
        self.velocity = [put(np.zeros(p.shape, np.float32)) for p in self.params]
        self.X, self.y = put(X), put(y.astype(np.int32))
        self.batch_size, self.epochs = batch_size, 0
        self._epoch = TimedJit(self._scan, donate_argnums=(0, 1))  # compiled on the first epoch, timed
        self._step = jax.jit(self._update, donate_argnums=(0, 1))
        self._put = put

    def _update(self, params, velocity, xb, yb):
        jax, jnp = self.jax, self.jax.numpy

        def loss(params):
            a = xb
            for i in range(0, len(params), 2):
                z = a @ params[i].T + params[i + 1]
                a = jax.nn.relu(z) if i + 2 < len(params) else z
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(a), yb[:, None], axis=1)), a

        (value, out), grads = jax.value_and_grad(loss, has_aux=True)(params)
        velocity = [MOMENTUM * v + g for v, g in zip(velocity, grads)]
        params = [p - LR * v for p, v in zip(params, velocity)]
        return params, velocity, value, jnp.sum(jnp.argmax(out, axis=1) == yb, dtype=jnp.int32)

    def _scan(self, params, velocity, X, y, order):
        jnp = self.jax.numpy

        def body(carry, rows):
            params, velocity, loss_sum, correct = carry
            xb = X[rows].astype(jnp.float32) * (1.0 / 255.0)
            params, velocity, value, hits = self._update(params, velocity, xb, y[rows])
            return (params, velocity, loss_sum + value * rows.shape[0], correct + hits), None

        zero = jnp.zeros((), jnp.float32)
        return self.jax.lax.scan(body, (params, velocity, zero, jnp.zeros((), jnp.int32)), order)[0]

    def epoch(self) -> EpochMetrics:
        self.epochs += 1
        bs, n = self.batch_size, self.X.shape[0]
        steps = n // bs
        order = np.random.default_rng(self.epochs).permutation(n)[: steps * bs].astype(np.int32)
        result = self._epoch(self.params, self.velocity, self.X, self.y, self._put(order.reshape(steps, bs)))
        self.params, self.velocity = result[0], result[1]
        loss_sum, correct = (float(v) for v in self.jax.device_get(result[2:]))
        return EpochMetrics(loss_sum / (steps * bs), correct / (steps * bs))

    def step(self) -> None:
        xb = self.X[: self.batch_size].astype(self.jax.numpy.float32) * (1.0 / 255.0)
        result = self._step(self.params, self.velocity, xb, self.y[: self.batch_size])
        self.params, self.velocity = result[0], result[1]
        self.jax.block_until_ready(self.params)

    def peak_memory(self) -> int | None:
        return self.backend.peak_memory(self.epoch)

    def compile_seconds(self) -> float | None:
        return self._epoch.seconds


RUNNERS = {
    "xpnet": XpnetRunner,
    "xpnet-step": XpnetStepRunner,
    "direct": DirectRunner,
    "torch-eager": TorchEagerRunner,
    "jax-scan": JaxScanRunner,
}
