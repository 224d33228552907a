"""array-api-strict: the standard and nothing more, on named devices (``device1`` stands in for a GPU)."""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import numpy as np

from xpnet.backend.base import Backend
from xpnet.errors import BackendError, ConfigError


class StrictBackend(Backend):
    """array-api-strict's namespace; only its CPU device is host memory, and reads go through it."""

    name: ClassVar[str] = "array-api-strict"
    module: ClassVar[str] = "array_api_strict"

    @classmethod
    def for_device(cls, device: str | None) -> Backend:
        try:
            strict = importlib.import_module(cls.module)
        except ImportError as exc:
            raise BackendError(
                "backend 'array-api-strict' needs the array-api-strict package; "
                'install it with: pip install "xpnet[test]"'
            ) from exc
        names = [d._device for d in strict.__array_namespace_info__().devices()]
        name = "CPU_DEVICE" if device in (None, "cpu") else device
        if name not in names:
            raise ConfigError(f"array-api-strict device must be one of {', '.join(names)}, not {device!r}")
        return cls(strict, strict.Device(name))

    def _copy_to_host(self, array: Any) -> np.ndarray:
        return np.asarray(array.to_device(self.xp.Device("CPU_DEVICE")))

    def quiet_float_errors(self):
        return np.errstate(over="ignore", invalid="ignore", divide="ignore")

    def host_alias(self, array: Any) -> np.ndarray | None:
        """Its other devices stand in for a GPU in the tests, so only the CPU device is host memory."""
        return np.from_dlpack(array) if self.device == self.xp.Device("CPU_DEVICE") else None
