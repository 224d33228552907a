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
    streams differ between backends (dropout masks are not expected to agree).

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
        backend = self.backend
        if backend.name == "torch":
            import torch

            self._torch = torch
            self._generator = None  # meta tensors hold no values, and meta has no generator
            if backend.device.type != "meta":
                self._generator = torch.Generator(device=backend.device)
                if seed is None:
                    self._generator.seed()
                else:
                    self._generator.manual_seed(int(seed))
        elif backend.name == "cupy":
            with backend.device:
                self._generator = backend.xp.random.default_rng(seed)
        else:
            self._generator = np.random.default_rng(seed)

    def get_state(self) -> dict | None:
        """The generator's state as JSON-able data (None where there is none: meta tensors)."""
        name = self.backend.name
        if name == "torch":
            if self._generator is None:
                return None
            return {"torch": self._generator.get_state().tolist(), "device": self.backend.device.type}
        if name == "cupy":
            return {"cupy": {"seed": self.seed, "draws": self.draws}}
        return self._generator.bit_generator.state

    def set_state(self, state: dict) -> None:
        """Continue a stream saved by ``get_state``, or reseed from it (see the class docstring)."""
        name = self.backend.name
        try:
            if name == "torch" and "torch" in state and self._generator is not None:
                if state.get("device", "cpu") == self.backend.device.type:
                    self._generator.set_state(self._torch.tensor(state["torch"], dtype=self._torch.uint8))
                    return
            elif name not in ("torch", "cupy") and "bit_generator" in state:
                self._generator.bit_generator.state = state
                return
        except (RuntimeError, TypeError, ValueError, KeyError) as exc:
            raise ConfigError(f"the saved dropout generator state does not fit this backend ({exc})") from None
        self._reseed(_digest_seed(state))

    def uniform(self, shape: tuple, dtype: Any):
        """An array of ``shape`` with U[0, 1) entries of ``dtype``, on the device."""
        name = self.backend.name
        self.draws += 1
        if name == "torch":
            return self._torch.rand(shape, generator=self._generator, dtype=dtype, device=self.backend.device)
        if name == "cupy":
            with self.backend.device:
                return self._generator.random(shape, dtype=dtype)
        host = self._generator.random(shape, dtype=np.float32)
        return host if name == "numpy" else self.backend.upload(host, dtype)


def _digest_seed(state: dict) -> int:
    """A seed drawn from a saved generator state: the same state always gives the same seed."""
    text = json.dumps(state, sort_keys=True, separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
