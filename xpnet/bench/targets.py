"""Which backend/device pairs the benchmark can run here, and why the others cannot."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from xpnet.backend import BACKENDS, backend_class, get_backend
from xpnet.errors import ConfigError, XpnetError

BENCH_BACKENDS = BACKENDS


@dataclass
class Target:
    """One backend on one device, as the sweep names it."""

    backend: str
    device: str

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.device}"


def _candidates(name: str) -> list[Target]:
    """The backend ``name`` on each device kind its class runs on; ``backend/device`` (jax/cuda) on that one."""
    name, _, device = name.partition("/")
    if name not in BENCH_BACKENDS:
        raise ConfigError(f"bench backends must be among {', '.join(BENCH_BACKENDS)}, not {name!r}")
    kinds = backend_class(name).device_kinds
    if device and device not in kinds:
        raise ConfigError(f"bench backend {name} runs on {' or '.join(kinds)}, not {device!r}")
    return [Target(name, kind) for kind in kinds if kind == device or not device]


def available_targets(backends: Sequence[str] | None = None) -> tuple[list[Target], list[str]]:
    """Backends/devices usable here, and a reason for each one that is not."""
    wanted = list(backends) if backends else ["numpy", "torch", "cupy"]
    candidates = [target for name in wanted for target in _candidates(name)]
    found, skipped = [], []
    for target in candidates:
        try:
            get_backend(target.backend, target.device)
            found.append(target)
        except XpnetError as exc:
            skipped.append(f"{target.label}: {exc}")
    return found, skipped
