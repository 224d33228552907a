"""NumPy on the CPU: host arrays already, so no copies to make, and the CPU step policy (BLAS threads)."""

from __future__ import annotations

import contextlib
import importlib
from typing import Any, ClassVar

import numpy as np

from xpnet.backend.base import Backend
from xpnet.backend.cpu import SMALL_STEP_MACS, _blas_controller
from xpnet.backend.rng import RandomGenerator
from xpnet.errors import ConfigError


class NumpyBackend(Backend):
    """NumPy through array-api-compat: the host itself is the device."""

    name: ClassVar[str] = "numpy"
    module: ClassVar[str] = "numpy"

    @classmethod
    def for_device(cls, device: str | None) -> Backend:
        if device not in (None, "cpu"):
            raise ConfigError(
                f"backend 'numpy' runs on the CPU only, not on device {device!r}; "
                'use device="cuda" (CuPy) or backend="torch" for a GPU'
            )
        return cls(importlib.import_module("array_api_compat.numpy"), "cpu")

    @property
    def device_name(self) -> str:
        return "cpu"

    def _put(self, host: Any, dtype: Any):
        return np.asarray(host, dtype=dtype)

    def owns(self, array: Any) -> bool:
        return isinstance(array, np.ndarray)

    def same_library(self, array: Any) -> bool:
        return isinstance(array, np.ndarray)

    def _copy_to_host(self, array: Any) -> np.ndarray:
        return np.array(array, copy=True)

    def copy(self, array: Any):
        return np.array(array, copy=True)

    def random_generator(self, seed: int | None) -> RandomGenerator:
        return HostRandomGenerator(self, seed)

    def compute_threads(self, step_macs: int | None = None):
        """Below ``SMALL_STEP_MACS`` the matmuls are too small to split: waking a second
        OpenBLAS thread costs more than it saves, so they run on one. Needs threadpoolctl
        (else nothing changes)."""
        if step_macs is None or step_macs >= SMALL_STEP_MACS:
            return contextlib.nullcontext()
        controller = _blas_controller()
        if controller is None:
            return contextlib.nullcontext()
        return controller.limit(limits=1, user_api="blas")

    def quiet_float_errors(self):
        return np.errstate(over="ignore", invalid="ignore", divide="ignore")

    def host_alias(self, array: Any) -> np.ndarray | None:
        return array


class HostRandomGenerator(RandomGenerator):
    """NumPy's PCG64 whose draws are already where NumPy computes: returned as drawn (float32)."""

    def uniform(self, shape: tuple, dtype: Any):
        self.draws += 1
        return self._host_draw(shape)
