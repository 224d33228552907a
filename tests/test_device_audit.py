"""Device discipline and hidden synchronisations, audited without a GPU.

The network runs on PyTorch's ``meta`` device (shapes, dtypes and devices, no data)
under ``Backend.audit``'s dispatch monitor, which flags every operation a GPU would pay
for unseen: a host read (``item``, ``nonzero``, a boolean mask), a tensor on another
device, a tensor made from host data behind ``Backend.upload``'s back (as array-api-compat
does for ``xp.maximum(z, 0.0)``: a blocking copy per call on CUDA). The matrix below is
lean but touches every activation, loss (fused and not), optimizer, dropout, input
scaling and mixed precision (float16 with its loss scaling, bfloat16), through fit,
evaluate, predict and gradients; crossings that are budgeted
(one read per epoch, one upload of the permutation per epoch) are counted and held to it.
"""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import HAVE_TORCH, NEEDS_TORCH

from xpnet.activations import ReLU
from xpnet.backend import get_backend
from xpnet.data import Scaling
from xpnet.losses import BinaryCrossEntropy
from xpnet.network import MLP
from xpnet.optim import SGD, Adam, AdamW

pytestmark = pytest.mark.skipif(not HAVE_TORCH, reason=NEEDS_TORCH)
_SPEC = importlib.util.spec_from_file_location(
    "step_operations", Path(__file__).resolve().parent.parent / "scripts" / "step_operations.py"
)
step_operations = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(step_operations)

#: (hidden, output, loss, optimizer, dropout, scaling, fit options): every class at least once.
CASES = {
    "relu-softmax_ce-momentum-dropout-unit": (
        "relu",
        None,
        "cross_entropy",
        lambda: SGD(lr=0.1, momentum=0.9),
        0.2,
        "unit",
        {"patience": 1},
    ),
    "sigmoid-sigmoid_bce-adam-standard": ("sigmoid", None, "bce", lambda: Adam(lr=0.01), 0.0, "standard", {}),
    "tanh-identity_mse-nesterov": (
        "tanh",
        None,
        "mse",
        lambda: SGD(lr=0.05, momentum=0.9, nesterov=True),
        0.1,
        None,
        {},
    ),
    "leaky-sigmoid_ce-adamw-smoothing": (
        "leaky_relu(0.1)",
        "sigmoid",
        "cross_entropy",
        lambda: AdamW(lr=0.01),
        0.0,
        None,
        {"label_smoothing": 0.1},
    ),
    "identity-softmax_bce-sgd_decay": (
        "identity",
        "softmax",
        "bce",
        lambda: SGD(lr=0.1, weight_decay=1e-3),
        0.0,
        "unit",
        {},
    ),
}
#: Mixed precision on top: the casts, the loss scaling and its undo of a bad step stay on the device too.
PRECISION = {
    "relu-softmax_ce-momentum-dropout-unit": "mixed-float16",
    "sigmoid-sigmoid_bce-adam-standard": "mixed-bfloat16",
}
SIZES = [6, 8, 5, 3]


def meta_backend():
    return get_backend("torch", "meta")


def case_data(loss: str, scaling: str | None, n: int = 32):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (n, SIZES[0]), dtype=np.uint8) if scaling == "unit" else rng.standard_normal((n, 6))
    y = rng.standard_normal((n, SIZES[-1])) if loss == "mse" else rng.integers(0, SIZES[-1], n)
    return X, y


def build(case: str, backend=None) -> tuple[MLP, dict]:
    hidden, output, loss, _, dropout, scaling, _ = CASES[case]
    precision = PRECISION.get(case, "float32")
    backend = backend or meta_backend()
    net = MLP(SIZES, activation=hidden, output=output, loss=loss, dropout=dropout, precision=precision, backend=backend)
    if scaling == "standard":
        net.set_scaling(Scaling("standard", np.arange(6.0), np.linspace(0.5, 2.0, 6)))
    return net, CASES[case][6]


def audited_fit(case: str, epochs: int, batch_size: int = 8):
    net, options = build(case)
    X, y = case_data(CASES[case][2], CASES[case][5])
    with net.backend.audit() as audit:
        net.fit(
            X, y, epochs=epochs, batch_size=batch_size, optimizer=CASES[case][3](), validation_data=(X, y), **options
        )
    return net, audit


@pytest.mark.parametrize("case", list(CASES))
def test_fit_evaluate_predict_and_gradients_keep_to_the_device(case):
    net, audit = audited_fit(case, epochs=2)
    assert audit.operations > 100, "the monitor saw the run's operations"
    assert audit.violations == []
    assert audit.reads == 2  # the epoch's metrics, validation included: one read each
    # Uploads grow with the epochs (the permutation), not with the steps (4 per epoch, then 1).
    _, shorter = audited_fit(case, epochs=1, batch_size=32)
    assert audit.uploads - shorter.uploads == 1

    X, y = case_data(CASES[case][2], CASES[case][5])
    Xd, yd = net.to_device(X), net.to_device(y, labels=True)
    with net.backend.audit() as audit:
        net.evaluate(Xd, yd)
        net.predict(Xd)
        net.predict_proba(Xd)
        net.gradients(Xd, yd)
    assert audit.operations > 20
    assert audit.violations == []
    assert audit.reads == 1 and audit.uploads == 0  # evaluate's one read; device arrays in and out


def _operations_per_step(precision: str, optimizer, fused: bool = False) -> float:
    """The operations one training step asks of the device (scripts/step_operations.py counts them)."""
    return step_operations.operations_per_step(precision, optimizer, fused)


def test_float16_loss_scaling_keeps_to_an_operation_budget():
    """Small MLPs are launch-bound on a GPU: each operation is a kernel launch. float16's loss
    scaling copied every parameter and Adam buffer, where-ed each and copied it back: 110 more
    operations a step than bfloat16 for this 3-layer network. With the skip folded into the update
    it is the overflow check, the scale's update and one where per gradient: 72 at most."""
    bfloat16 = _operations_per_step("mixed-bfloat16", lambda: Adam(lr=0.01))
    float16 = _operations_per_step("mixed-float16", lambda: Adam(lr=0.01))
    assert float16 - bfloat16 <= 72, (float16, bfloat16)
    assert bfloat16 - _operations_per_step("float32", lambda: Adam(lr=0.01)) <= 16  # the casts


def test_float16_loss_scaling_with_the_fused_kernels_keeps_to_an_operation_budget():
    """CuPy's path: the fused Adam update takes the 0-d finite flag as one more input, so float16 adds
    only the overflow check, the unscaling and the scale's update to bfloat16's step (56 operations
    on the meta device, where an isfinite is four); copies put back cost 110 more (200 against 90)."""
    bfloat16 = _operations_per_step("mixed-bfloat16", lambda: Adam(lr=0.01), fused=True)
    float16 = _operations_per_step("mixed-float16", lambda: Adam(lr=0.01), fused=True)
    assert float16 - bfloat16 <= 60, (float16, bfloat16)
    assert bfloat16 < _operations_per_step("mixed-bfloat16", lambda: Adam(lr=0.01)) - 50  # the kernels ran


def test_the_fused_update_gets_float16s_flag_on_the_device_and_true_otherwise():
    """No host read decides a skip: the kernel is handed the 0-d device flag itself."""
    for precision, want in (("mixed-float16", "tensor"), ("mixed-bfloat16", True)):
        launches = step_operations.MetaLaunches()
        audit = step_operations.audited_fit(precision, lambda: Adam(lr=0.01), 2, launches)
        assert audit.violations == [] and len(launches.flags) == 2 * 6
        for flag in launches.flags:
            if want is True:
                assert flag is True
            else:
                assert flag.device.type == "meta" and flag.shape == () and str(flag.dtype) == "torch.bool"


# -- the monitor catches what it is for ----------------------------------------------------


def flagged(work) -> list[str]:
    backend = meta_backend()
    torch = pytest.importorskip("torch")
    z = backend.upload(np.zeros((4, 3), np.float32))
    try:
        with backend.audit() as audit:
            work(torch, backend.xp, z)
    except (NotImplementedError, RuntimeError):  # meta cannot run a data-dependent op; it was flagged first
        pass
    return audit.violations


def test_the_monitor_flags_host_reads_masks_mixed_devices_and_host_made_tensors():
    assert any("_local_scalar_dense" in v for v in flagged(lambda torch, xp, z: float(xp.sum(z))))
    assert any("boolean mask" in v for v in flagged(lambda torch, xp, z: z[z > 0]))
    assert any("mixes devices" in v for v in flagged(lambda torch, xp, z: z + torch.ones(3)))
    assert any("host data" in v for v in flagged(lambda torch, xp, z: z * torch.asarray(2.0, device=z.device)))
    assert flagged(lambda torch, xp, z: xp.exp(z) * 2.0 + xp.zeros((), device=z.device)) == []


class ScalarReLU(ReLU):
    """ReLU as it was before issue 12: ``xp.maximum(z, 0.0)``."""

    def forward(self, xp, z):
        return xp.maximum(z, 0.0)


def test_a_python_scalar_in_maximum_fails_the_audit():
    """Bug 1: array-api-compat turns the 0.0 into a tensor copied from the host on every call."""
    net = MLP(SIZES, activation=ScalarReLU(), backend=meta_backend())
    X, y = case_data("cross_entropy", None)
    with net.backend.audit() as audit:
        net.fit(X, y, epochs=1, batch_size=8)
    assert any("maximum uses a" in v and "host data" in v for v in audit.violations), audit.violations


def cupy_flavoured(xp):
    """``xp`` with the functions array-api-compat gives CuPy from its generic code (``clip`` among
    them), bound to PyTorch: CuPy's code paths, audited on the meta device."""
    compat_cupy = pytest.importorskip("array_api_compat.cupy", reason="needs CuPy importable (no GPU needed)")
    from array_api_compat._internal import get_xp

    torch = pytest.importorskip("torch")
    namespace = types.SimpleNamespace(**{k: getattr(xp, k) for k in dir(xp) if not k.startswith("__")})
    for name in ("clip",):
        generic = getattr(compat_cupy, name).__wrapped__
        setattr(namespace, name, get_xp(torch)(generic))
    return namespace


def test_cupy_flavoured_clip_fails_the_audit_and_the_losses_do_not_use_it():
    """Bug 2: CuPy's clip indexes with boolean masks; the unfused losses clip without it."""
    backend = meta_backend()
    xp = cupy_flavoured(backend.xp)
    a = backend.upload(np.full((4, 3), 0.5, np.float32))
    with pytest.raises(NotImplementedError), backend.audit() as audit:  # meta cannot apply the mask
        xp.clip(a, 1e-7, 1.0)
    assert any("boolean mask" in v for v in audit.violations)
    loss = BinaryCrossEntropy()
    with backend.audit() as audit:
        loss.value(xp, a, a, a)
        loss.grad_a(xp, a, a)
    assert audit.operations > 5 and audit.violations == []
