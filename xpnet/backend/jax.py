"""JAX (``jax.numpy``, the array API namespace JAX itself provides): immutable arrays, keyed random numbers.

JAX arrays cannot be written into, so ``writable`` is False here: the core's updates
return new arrays (``Backend.assign``) and Python's ``x -= y`` rebinds instead of writing.
float64 needs JAX's x64 mode, switched on (process-wide) when a network asks for float64.
Training steps on JAX are compiled by default (``xpnet.compiled``).
"""

from __future__ import annotations

import contextlib
import importlib
import os
from typing import Any, ClassVar

import numpy as np

from xpnet.backend.base import HALF_DTYPES, ON_THE_CPU, Backend
from xpnet.backend.cuda import cuda_index
from xpnet.backend.rng import RandomGenerator
from xpnet.errors import BackendError, ConfigError

JAX_HINT = 'install JAX with: pip install "xpnet[jax]"'
#: JAX's NVIDIA GPU support is a separate build (docs.jax.dev, Installation); the plain wheel is CPU-only.
JAX_CUDA_HINT = (
    'JAX\'s CUDA build is a separate install: pip install -U "jax[cuda13]" (or "jax[cuda12]" on a CUDA 12 driver)'
)


class JaxBackend(Backend):
    """JAX on its CPU or on a CUDA GPU (where jaxlib was built with CUDA)."""

    name: ClassVar[str] = "jax"
    module: ClassVar[str] = "jax"
    device_kinds: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    writable: ClassVar[bool] = False
    compiles_steps: ClassVar[bool] = True

    @classmethod
    def for_device(cls, device: str | None) -> Backend:
        jax = cls._library("JAX", JAX_HINT)
        xp = importlib.import_module("jax.numpy")
        if device in (None, "cpu"):
            return cls(xp, jax.devices("cpu")[0])
        index = cuda_index(device, cls.name)
        try:
            gpus = jax.devices("gpu")
        except RuntimeError as exc:  # a CPU-only jaxlib: "no platforms that are instances of gpu are present"
            raise BackendError(
                f"device {device!r}: JAX has no CUDA here (jax.devices('gpu'): {exc}); {JAX_CUDA_HINT}; or {ON_THE_CPU}"
            ) from None
        if index >= len(gpus):
            raise BackendError(f"device cuda:{index} does not exist; JAX sees {len(gpus)} GPU(s)")
        return cls(xp, gpus[index])

    @property
    def device_name(self) -> str:
        return "cpu" if self.device.platform == "cpu" else f"cuda:{self.device.id}"

    def dtype(self, name: str):
        found = super().dtype(name)
        if name == "float64":
            import jax

            jax.config.update("jax_enable_x64", True)  # else JAX silently computes in float32
        return found

    def half_dtype(self, name: str):
        if name not in HALF_DTYPES:
            raise ConfigError(f"{self.name} has no {name} for mixed precision; train in float32 there")
        return getattr(self.xp, name)

    def _put(self, host: Any, dtype: Any):
        import jax

        return jax.device_put(np.asarray(host, dtype=dtype), self.device)

    def owns(self, array: Any) -> bool:
        return self.same_library(array) and self.device in array.devices()

    def same_library(self, array: Any) -> bool:
        import jax

        return isinstance(array, jax.Array)

    def _copy_to_host(self, array: Any) -> np.ndarray:
        host = np.array(array, copy=True)
        return host.astype(np.float32) if host.dtype.name == "bfloat16" else host

    def copy(self, array: Any):
        import jax

        return jax.device_put(self.xp.array(array, copy=True), self.device)

    def device_of(self, array: Any):
        return self.device

    def random_generator(self, seed: int | None) -> RandomGenerator:
        return JaxRandomGenerator(self, seed)

    def synchronize(self) -> None:
        (self.xp.zeros(()) + 0).block_until_ready()

    def peak_memory(self, run) -> int | None:
        """None: JAX's buffers live outside Python's allocator, where tracemalloc cannot see them."""
        run()
        return None

    @property
    def cuda_index(self) -> int | None:
        return None if self.device.platform == "cpu" else self.device.id

    def host_alias(self, array: Any) -> np.ndarray | None:
        return None  # read-only even on the CPU: collectives cannot write into it

    def quiet_float_errors(self):
        return contextlib.nullcontext()


class JaxRandomGenerator(RandomGenerator):
    """JAX's counter-based keyed generator: each draw splits the key, so the key is the whole state.

    The key is a plain uint32[2] array, which a compiled step carries as one more input and
    output and a checkpoint saves as two numbers: resume continues the stream exactly.
    """

    def _reseed(self, seed: int | None) -> None:
        import jax

        self._jax = jax
        seed = int.from_bytes(os.urandom(4), "little") if seed is None else int(seed)
        with jax.default_device(self.backend.device):
            self.key = jax.random.PRNGKey(seed % 2**32)

    def get_state(self) -> dict | None:
        return {"jax_key": [int(k) for k in np.asarray(self.key)]}

    def _restore(self, state: dict) -> bool:
        if "jax_key" not in state:
            return False
        self.key = self._jax.device_put(np.asarray(state["jax_key"], dtype=np.uint32), self.backend.device)
        return True

    def uniform(self, shape: tuple, dtype: Any):
        self.draws += 1
        self.key, drawn = self._jax.random.split(self.key)
        return self._jax.random.uniform(drawn, shape, dtype=dtype)
