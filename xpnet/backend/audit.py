"""Audits of what a run asks of its device: host reads, syncs, device mixing (PyTorch's dispatch, CuPy's switches)."""

from __future__ import annotations

import contextlib
import gc
import weakref
from dataclasses import dataclass, field
from typing import Any

# -- audits: what a run asks of its device ---------------------------------------------------

#: aten operations that read device data on the host: each one is a synchronisation on a GPU.
_HOST_READ_OPS = frozenset(
    {"_local_scalar_dense", "item", "nonzero", "is_nonzero", "masked_select", "equal", "allclose"}
    | {"_unique", "_unique2", "unique_dim", "unique_consecutive", "repeat_interleave"}
)


@dataclass
class Audit:
    """What a block run under ``Backend.audit`` asked of the device.

    ``reads`` and ``uploads`` count the budgeted crossings (``to_host``, ``upload``);
    ``violations`` lists, once each, what a GPU would pay for unseen: host reads,
    tensors on another device, tensors made from host data behind ``upload``'s back.
    ``operations`` counts the operations the monitor saw (0 where the backend has none).
    """

    device: str
    reads: int = 0
    uploads: int = 0
    operations: int = 0
    violations: list[str] = field(default_factory=list)
    paused: int = field(default=0, repr=False)
    _known: dict = field(default_factory=dict, repr=False)

    @property
    def clean(self) -> bool:
        return not self.violations

    def count(self, kind: str) -> None:
        if kind == "read":
            self.reads += 1
        else:
            self.uploads += 1

    def flag(self, problem: str) -> None:
        if problem not in self.violations:
            self.violations.append(problem)

    def remember(self, array: Any) -> None:
        """Count ``array`` as the run's own: made on the device or uploaded through ``upload``."""
        key = id(array)
        with contextlib.suppress(TypeError):  # objects without weak references are nothing to watch
            self._known[key] = weakref.ref(array, lambda _, known=self._known, key=key: known.pop(key, None))

    def knows(self, array: Any) -> bool:
        ref = self._known.get(id(array))
        return ref is not None and ref() is array


def torch_dispatch_monitor(backend, audit: Audit):
    """PyTorch's dispatch-mode monitor for ``audit``, watching ``backend``'s device."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    for obj in gc.get_objects():  # tensors alive before the block are the run's own
        if issubclass(type(obj), torch.Tensor):
            audit.remember(obj)

    class Monitor(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if not audit.paused:
                fake = _check_operation(audit, backend.device, func, tree_leaves((args, kwargs)), torch.Tensor)
                if fake is not None:
                    return fake
            out = func(*args, **kwargs)
            for leaf in tree_leaves(out):
                if isinstance(leaf, torch.Tensor):
                    audit.remember(leaf)
                    if not audit.paused and leaf.device != backend.device:
                        audit.flag(f"{_op_name(func)} made a tensor on {leaf.device}, off the run's device")
            return out

    return Monitor()


def _op_name(func) -> str:
    return getattr(getattr(func, "_overloadpacket", func), "__name__", str(func))


def _check_operation(audit: Audit, device, func, leaves: list, tensor_type) -> Any:
    """Flag what ``func`` would cost a GPU; a stand-in result where running it on meta would fail."""
    audit.operations += 1
    name = _op_name(func)
    tensors = [leaf for leaf in leaves if isinstance(leaf, tensor_type)]
    for tensor in tensors:
        if tensor.device != device:
            audit.flag(f"{name} mixes devices: a tensor on {tensor.device} with the run's {device}")
        elif not audit.knows(tensor):
            audit.flag(
                f"{name} uses a {tuple(tensor.shape)} tensor made from host data outside Backend.upload "
                "(a blocking host-to-device copy on a GPU)"
            )
            audit.remember(tensor)
    if name in _HOST_READ_OPS:
        audit.flag(f"{name} reads device data on the host (a synchronisation on a GPU)")
    elif name.startswith("index") and any(str(t.dtype) in ("torch.bool", "torch.uint8") for t in tensors[1:]):
        audit.flag(f"{name} with a boolean mask (its size is read on the host: a synchronisation)")
    if name == "_local_scalar_dense" and tensors and tensors[0].device.type == "meta":
        return False if str(tensors[0].dtype) == "torch.bool" else 0  # meta has no value to read
    return None
