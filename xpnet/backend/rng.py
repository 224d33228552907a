"""Random numbers drawn on the backend's own device (dropout masks), with states a checkpoint can carry."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from xpnet.errors import ConfigError


class RandomGenerator:
    """Uniform random arrays drawn on the backend's own device, from one seed.

    The array API has no random module, so this is backend-specific by nature;
    streams differ between backends (dropout masks are not expected to agree). This
    class draws with NumPy's PCG64 on the host and uploads (array-api-strict); each
    library's backend module subclasses it where the library has its own generator.

    A saved state continues its stream exactly where the library and the device kind
    match: NumPy and array-api-strict (NumPy's PCG64 state), PyTorch on the same device
    type (the generator's bytes; a CPU and a CUDA generator hold different states). CuPy's
    generator state lives on the GPU and is not saved. Where a stream cannot continue
    (CuPy, a checkpoint moved between CPU and CUDA or between libraries) the generator is
    reseeded from a digest of the saved state: resuming one checkpoint twice gives the same
    run, but not the masks the uninterrupted run would have drawn.
    """

    def __init__(self, backend, seed: int | None):
        self.backend = backend
        self.seed = seed
        self.draws = 0  #: arrays drawn so far (the state CuPy saves in place of its stream)
        self._reseed(seed)

    def _reseed(self, seed: int | None) -> None:
        self._generator = np.random.default_rng(seed)

    def get_state(self) -> dict | None:
        """The generator's state as JSON-able data (None where there is none: meta tensors)."""
        return self._generator.bit_generator.state

    def set_state(self, state: dict) -> None:
        """Continue a stream saved by ``get_state``, or reseed from it (see the class docstring)."""
        try:
            if self._restore(state):
                return
        except (RuntimeError, TypeError, ValueError, KeyError) as exc:
            raise ConfigError(f"the saved dropout generator state does not fit this backend ({exc})") from None
        self._reseed(_digest_seed(state))

    def _restore(self, state: dict) -> bool:
        """Continue the stream ``state`` saved, if this generator can; False where it cannot."""
        if "bit_generator" not in state:
            return False
        self._generator.bit_generator.state = state
        return True

    def uniform(self, shape: tuple, dtype: Any):
        """An array of ``shape`` with U[0, 1) entries of ``dtype``, on the device."""
        self.draws += 1
        return self.backend.upload(self._host_draw(shape), dtype)

    def _host_draw(self, shape: tuple) -> np.ndarray:
        return self._generator.random(shape, dtype=np.float32)


def _digest_seed(state: dict) -> int:
    """A seed drawn from a saved generator state: the same state always gives the same seed."""
    text = json.dumps(state, sort_keys=True, separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
