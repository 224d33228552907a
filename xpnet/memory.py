"""Memory a run will take, estimated before it is allocated, against a limit the user can raise.

A small file can ask for a huge run: an ``.npz`` of zeros with 10^7 features, layers of
100,000 units, 100,000 classes in a confusion matrix. Before xpnet allocates the data,
the network, the optimizer's buffers, the per-batch temporaries or a plot, it adds up
their bytes (``Estimate``) and refuses, with ``MemoryLimitError`` naming the largest
parts, a run that would pass the limit. On a GPU the device's part (``device_training_estimate``)
is checked against the GPU's own free memory, not the host's.

The limit is ``--memory-limit`` or ``XPNET_MEMORY_LIMIT`` (``512M``, ``8G``, ``1.5GiB``,
a number of bytes, or ``80%`` of the memory available), by default 80% of the memory
available at the time of the check, so a run is refused rather than sent into swap or
the kernel's out-of-memory killer.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from xpnet.batches import ahead_bytes
from xpnet.errors import ConfigError, MemoryLimitError

ENV = "XPNET_MEMORY_LIMIT"
DEFAULT_FRACTION = 0.8
#: What the interpreter, NumPy and the libraries hold besides the arrays counted here.
OVERHEAD = 4 * 2**20
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(%|[kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_override: int | None = None


def parse_size(text: str, what: str = ENV) -> int:
    """Bytes from ``512M``, ``8G``, ``1.5GiB``, ``1000000`` or ``80%`` (of the memory available)."""
    match = _SIZE.match(str(text))
    if match is None:
        raise ConfigError(f"{what} {text!r}: expected a size such as 512M, 8G or 80% (of the memory available)")
    number, unit = float(match.group(1)), match.group(2).lower()
    if unit == "%":
        if not 0 < number <= 100:
            raise ConfigError(f"{what} {text!r}: a percentage must be above 0 and at most 100")
        return int(available_memory() * number / 100)
    size = number * _UNITS[unit]
    if not 1 <= size < 2**63:
        raise ConfigError(f"{what} {text!r}: expected at least one byte and less than 8 EiB")
    return int(size)


def available_memory() -> int:
    """Memory the system can give without swapping: ``MemAvailable``, else the physical memory."""
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return 2**63 - 1  # nothing to go on: no limit but the user's


def memory_limit() -> int:
    """The limit in force: ``limited``'s, else ``XPNET_MEMORY_LIMIT``'s, else 80% of what is available."""
    if _override is not None:
        return _override
    configured = os.environ.get(ENV)
    if configured:
        return parse_size(configured, ENV)
    return int(available_memory() * DEFAULT_FRACTION)


@contextlib.contextmanager
def limited(limit: int | None) -> Iterator[None]:
    """Run with ``limit`` bytes (``--memory-limit``); None leaves the limit as it is."""
    global _override
    previous = _override
    if limit is not None:
        _override = limit
    try:
        yield
    finally:
        _override = previous


def describe(nbytes: float) -> str:
    """Bytes for people: ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(nbytes) < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes} B"


@dataclass
class Estimate:
    """Bytes a piece of work will hold at its peak, part by part."""

    parts: dict[str, int] = field(default_factory=dict)

    def add(self, part: str, nbytes: float) -> Estimate:
        self.parts[part] = self.parts.get(part, 0) + math.ceil(nbytes)
        return self

    @property
    def total(self) -> int:
        return OVERHEAD + sum(self.parts.values())

    def check(self, what: str, limit: int | None = None) -> None:
        """Refuse ``what`` with a ``MemoryLimitError`` if it would pass ``limit`` (default: the limit in force)."""
        limit = memory_limit() if limit is None else limit
        if self.total <= limit:
            return
        raise MemoryLimitError(
            f"{what} would need about {describe(self.total)} ({self._largest()}), more than the memory limit of "
            f"{describe(limit)}; make it smaller, or raise the limit with --memory-limit or {ENV}"
        )

    def check_device(self, what: str, free: int, device: str) -> None:
        """Refuse ``what`` if its device part would pass the ``free`` bytes of the GPU ``device``."""
        if self.total <= free:
            return
        raise MemoryLimitError(
            f"{what} would need about {describe(self.total)} on {device} ({self._largest()}), more than the "
            f"{describe(free)} free there; use a smaller batch size, model or data set, or a GPU with more memory"
        )

    def _largest(self) -> str:
        largest = sorted(self.parts.items(), key=lambda item: -item[1])[:3]
        return ", ".join(f"{name} {describe(size)}" for name, size in largest)


def require(nbytes: float, what: str) -> None:
    """Refuse one allocation of ``nbytes`` (a file's declared data, say) that alone passes the limit."""
    Estimate({what: math.ceil(nbytes)}).check(what)


def parameter_count(sizes: list[int]) -> int:
    """Weights and biases of a dense network with these layer widths."""
    return sum(n_in * n_out + n_out for n_in, n_out in itertools.pairwise(sizes))


def network_estimate(sizes: list[int], itemsize: int, count: int | None = None) -> Estimate:
    """Building a network: its parameters, drawn as float64 on the host, then uploaded; ``count``:
    the parameters its layers hold (``MLP`` says; default: a dense network's weights and biases)."""
    count = parameter_count(sizes) if count is None else count
    return Estimate().add("parameters", count * itemsize).add("initial weights (float64, on the host)", count * 8)


def batch_bytes(sizes: list[int], batch: int, itemsize: int, input_itemsize: int) -> int:
    """One training step's temporaries: the batch, z, a, δ and dropout masks per layer, the gradients."""
    widths = sum(sizes[1:])
    inputs = batch * sizes[0] * (input_itemsize + 2 * itemsize)  # gathered, cast, scaled
    return inputs + 5 * batch * widths * itemsize + parameter_count(sizes) * itemsize


def training_estimate(
    sizes: list[int], itemsize: int, buffers: int, data_bytes: int, samples: int, batch: int, input_itemsize: int
) -> Estimate:
    """A training run: parameters, gradients, optimizer buffers, best weights, checkpoints, data, batches."""
    count = parameter_count(sizes)
    estimate = network_estimate(sizes, itemsize)
    estimate.add("optimizer buffers", buffers * count * itemsize)
    estimate.add("best weights and a checkpoint's host copies", (3 + buffers) * count * itemsize)
    estimate.add("data (loaded, split and on the device)", data_bytes)
    estimate.add("shuffling order", samples * 12)
    estimate.add("one training step", batch_bytes(sizes, min(batch, samples), itemsize, input_itemsize))
    estimate.add("batches made ahead", ahead_bytes(sizes[0], sizes[-1], itemsize, batch, samples))
    evaluation = min(4096, samples) * sum(sizes) * 3 * itemsize + samples * sizes[-1] * itemsize
    return estimate.add("evaluation", evaluation)


def plot_bytes(classes: int) -> int:
    """A confusion matrix of ``classes`` squared cells: counts, then the colours matplotlib draws."""
    return classes * classes * 48


#: What a GPU holds besides the arrays counted here: cuBLAS's workspace, the loaded kernels.
DEVICE_OVERHEAD = 64 * 2**20


@dataclass(frozen=True)
class DeviceRun:
    """What sets a training run's GPU memory besides the network: its data and how it computes."""

    data_bytes: int  #: the training and validation arrays as uploaded
    samples: int
    batch: int
    input_itemsize: int
    half_itemsize: int = 0  #: mixed precision's half type (its weight copies), 0 without
    loss_scaling: bool = False  #: float16's scaler keeps copies of the weights and buffers
    ranks: int = 1  #: data-parallel ranks (a flat gradient buffer when more than one)


def device_training_estimate(sizes: list[int], itemsize: int, buffers: int, run: DeviceRun) -> Estimate:
    """What a training run holds on its GPU at its peak (the host's part is ``training_estimate``)."""
    count = parameter_count(sizes)
    estimate = Estimate().add("cuBLAS workspace and kernels", DEVICE_OVERHEAD)
    estimate.add("parameters and the best weights", 2 * count * itemsize)
    estimate.add("optimizer buffers", buffers * count * itemsize)
    estimate.add("data on the device", run.data_bytes)
    estimate.add("shuffling order", run.samples * 4)
    step_itemsize = run.half_itemsize or itemsize
    estimate.add(
        "one training step", batch_bytes(sizes, min(run.batch, run.samples), step_itemsize, run.input_itemsize)
    )
    estimate.add("batches made ahead", ahead_bytes(sizes[0], sizes[-1], itemsize, run.batch, run.samples))
    if run.half_itemsize:
        estimate.add("half copies of the weights", count * run.half_itemsize)
    if run.loss_scaling:
        estimate.add("the loss scaler's copies", (1 + buffers) * count * itemsize)
    if run.ranks > 1:
        estimate.add("the data-parallel flat buffer", count * itemsize)
    evaluation = min(4096, run.samples) * sum(sizes) * 3 * itemsize + run.samples * sizes[-1] * itemsize
    return estimate.add("evaluation", evaluation)
