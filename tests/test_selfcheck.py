"""``python -m xpnet selfcheck`` on the CPU, as CI runs it: every check passes, and it can fail."""

from __future__ import annotations

import contextlib
import json
import types
import warnings

import numpy as np
import pytest

import xpnet.selfcheck.checks
from xpnet.activations import Tanh
from xpnet.backend import Backend, kernel_spec
from xpnet.backend.kernels import KERNELS, KernelSpec
from xpnet.cli import main
from xpnet.network import MLP
from xpnet.selfcheck import CHECKS, gradcheck
from xpnet.selfcheck.checks import Outcome
from xpnet.selfcheck.interpret import CKernel


def run(capsys, *args) -> tuple[int, str]:
    status = main(["selfcheck", *args])
    return status, capsys.readouterr().out


def test_selfcheck_passes_on_the_cpu(capsys):
    status, out = run(capsys, "--json")
    report = json.loads(out)
    assert list(report["checks"]) == list(CHECKS)
    failed = {name: check["detail"] for name, check in report["checks"].items() if check["status"] == "FAIL"}
    assert failed == {}
    assert status == 0
    assert report["checks"]["training"]["data"]["reads"] == 3  # one host read per epoch
    assert report["checks"]["benchmark"]["data"]["gemm"] > 0


def test_one_failing_check_fails_the_command_and_a_crashing_one_is_reported(capsys, monkeypatch):
    monkeypatch.setitem(CHECKS, "dropout", lambda ctx: Outcome("FAIL", "masks were all ones"))
    monkeypatch.setitem(CHECKS, "benchmark", lambda ctx: 1 / 0)
    for name in set(CHECKS) - {"dropout", "benchmark", "environment"}:
        monkeypatch.setitem(CHECKS, name, lambda ctx: Outcome("PASS", "stubbed"))
    status, out = run(capsys)
    assert status == 1
    assert "FAIL  dropout         masks were all ones" in out
    assert "FAIL  benchmark       ZeroDivisionError" in out
    assert "summary: 8 passed, 2 failed of 10 checks" in out


def test_selfcheck_on_a_gpu_that_is_not_there_says_why(capsys):
    try:
        xpnet.backend.get_backend("cupy", "cuda")
        pytest.skip("this machine has a usable CUDA GPU")
    except xpnet.XpnetError:
        pass
    status, out = run(capsys, "--device", "cuda")
    assert status == 1
    assert "FAIL  environment" in out and ("CuPy" in out or "no NVIDIA driver" in out)
    assert "--device cpu" in out and 'device="cpu"' not in out  # the command line's words
    assert out.count("SKIP  ") == len(CHECKS) - 1  # one line per check, as README says


def test_the_checks_report_what_they_measured():
    """The kernel check compares real call sites: a wrong reference would show as an error."""
    backend = xpnet.backend.get_backend("numpy")
    outcome = xpnet.selfcheck.checks.kernels(xpnet.selfcheck.checks.Context(backend, None))
    assert outcome.status == "PASS" and outcome.data["worst"]["float64"] < 1e-12
    # The interpreter casts scalars as CuPy does: Adam's 1 - β2 from the host, not 1 - 0.999f (1.3e-5 off).
    assert outcome.data["ulps"]["float32"] < 2, outcome.detail


def test_the_dropout_check_draws_and_scales_its_masks_on_the_backends_device(monkeypatch):
    """With ``--device cuda:1`` the mask's comparison, cast and division must run on cuda:1:
    ``_dropout_mask`` is called only inside ``Backend.activated``."""
    active, seen = [], []
    activated = Backend.activated

    @contextlib.contextmanager
    def spy(self):
        with activated(self):
            active.append(True)
            try:
                yield
            finally:
                active.pop()

    mask = MLP._dropout_mask
    monkeypatch.setattr(Backend, "activated", spy)
    monkeypatch.setattr(MLP, "_dropout_mask", lambda self, *a: seen.append(bool(active)) or mask(self, *a))
    context = xpnet.selfcheck.checks.Context(xpnet.backend.get_backend("numpy"), None)
    assert xpnet.selfcheck.checks.dropout(context).status == "PASS"
    assert seen and all(seen), seen


def test_library_warnings_stay_out_of_the_report_and_go_to_the_json(monkeypatch):
    """On the H200, cupyx.allow_synchronize's deprecation warning was printed above the report."""

    def noisy(ctx):
        warnings.warn("cupyx.allow_synchronize will be removed in future releases", UserWarning, stacklevel=1)
        return Outcome("PASS", "quiet")

    monkeypatch.setattr(xpnet.selfcheck.checks, "CHECKS", {"sync-audit": noisy})
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        results = xpnet.selfcheck.checks.run_checks(xpnet.backend.get_backend("numpy"))
    assert shown == []
    assert results["sync-audit"].data["warnings"] == ["cupyx.allow_synchronize will be removed in future releases"]


def test_the_benchmark_share_of_the_ceiling_keeps_two_significant_digits(monkeypatch):
    """165.1 of 47,621.7 GFLOP/s printed as '0%' on the H200: it is 0.35%."""
    monkeypatch.setattr(xpnet.selfcheck.checks, "_gemm_gflops", lambda backend, n: 1e6)
    outcome = xpnet.selfcheck.checks.benchmark(xpnet.selfcheck.checks.Context(xpnet.backend.get_backend("numpy"), None))
    share = outcome.detail.rsplit("(", 1)[1]
    assert not share.startswith("0%") and float(share.split("%")[0]) > 0, outcome.detail


def _gradient_check(backend) -> Outcome:
    return xpnet.selfcheck.checks.gradients(xpnet.selfcheck.checks.Context(backend, None))


def test_the_gradient_check_is_not_failed_by_a_gpus_rounding_noise(monkeypatch):
    """A GPU's reductions round in another order: costs a few ulps off. The H200 run failed
    selfcheck's plain h=1e-6 difference on that noise (1.8e-6) while the tests passed; the check
    is now the tests' own (xpnet.selfcheck.gradcheck), which sees 18 ulps / 12h at most."""
    backend = xpnet.backend.get_backend("numpy")
    rng = np.random.default_rng(0)
    to_host = backend.to_host

    def noisy(array):  # each cost read back 4 ulps off, at random
        value = to_host(array)
        return value * (1 + 4 * np.finfo(np.float64).eps * rng.choice([-1, 1])) if value.ndim == 0 else value

    monkeypatch.setattr(backend, "to_host", noisy)
    outcome = _gradient_check(backend)
    assert outcome.status == "PASS", outcome.detail


def test_the_gradient_check_fails_a_wrong_backward(monkeypatch):
    """tanh's σ'(z) off by 1e-5: the gradient is wrong, and the check must say so."""
    backward = Tanh.backward
    monkeypatch.setattr(Tanh, "backward", lambda self, *args: backward(self, *args) * (1 + 1e-5))
    outcome = _gradient_check(xpnet.backend.get_backend("numpy"))
    assert outcome.status == "FAIL" and outcome.data["worst"] > gradcheck.TOLERANCE, outcome.detail


class _FewUlpsOff(CKernel):
    """A correct kernel in another evaluation order: each nonzero output 2 eps of its array's scale off."""

    rng = np.random.default_rng(0)

    def __call__(self, *args):
        result = super().__call__(*args)
        for out in args[len(self.inputs) :]:
            if out.dtype.kind == "f":
                scale = float(np.max(np.abs(out))) if out.size else 0.0
                nudge = 2 * np.finfo(out.dtype).eps * scale * self.rng.choice([-1, 1], out.shape) * (out != 0)
                out += nudge.astype(out.dtype)  # exact zeros (ReLU's) stay exact
        return result


def _kernel_check() -> Outcome:
    return xpnet.selfcheck.checks.kernels(xpnet.selfcheck.checks.Context(xpnet.backend.get_backend("numpy"), None))


def test_the_kernel_check_passes_a_kernel_a_few_ulps_off(monkeypatch):
    """FMA contraction and another evaluation order move results by ulps of their operands: on the
    H200 that read as 1.3e-5 element by element (an element near zero) and failed a correct kernel."""
    monkeypatch.setattr(xpnet.selfcheck.checks, "CKernel", _FewUlpsOff)
    outcome = _kernel_check()
    assert outcome.status == "PASS", outcome.detail
    assert 0 < outcome.data["ulps"]["float32"] <= xpnet.selfcheck.checks.KERNEL_ULPS  # 2 eps a step, 3 steps


def test_the_kernel_check_fails_a_kernel_with_a_wrong_coefficient(monkeypatch):
    """Adam's v update off by 1e-5 relative (84 float32 eps): the size of the 1 - 0.999f error."""
    inputs, outputs, body = kernel_spec("adam")
    wrong = body.replace("rest2 * d * d", "rest2 * 1.00001 * d * d")
    assert wrong != body
    monkeypatch.setitem(KERNELS, "adam", KernelSpec(inputs, outputs, wrong))
    outcome = _kernel_check()
    assert outcome.status == "FAIL" and outcome.data["ulps"]["float32"] > 50, outcome.detail


def test_the_cupy_sync_switch_keeps_its_deprecation_warning_to_itself():
    """cupyx.allow_synchronize warns on every use since CuPy 10; the warning is CuPy's, not the user's."""
    pytest.importorskip("cupyx", reason="needs CuPy importable (no GPU needed)")
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with Backend._sync_guard(types.SimpleNamespace(name="cupy"), True):
            warnings.warn("the block's own warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in shown] == ["the block's own warning"]


def test_the_optimizer_check_on_numpy_compares_other_namespaces_and_can_fail(tmp_path, monkeypatch):
    # On NumPy the reference is the backend itself: the check must run the updates elsewhere.
    from xpnet.backend import get_backend
    from xpnet.selfcheck.checks import Context, optimizers

    ctx = Context(get_backend("numpy"), tmp_path)
    outcome = optimizers(ctx)
    assert outcome.status == "PASS" and " on " in outcome.detail and "numpy" not in outcome.detail.split(" agree")[0]
    assert "array-api-strict" in outcome.detail
    real = xpnet.selfcheck.checks.run_call_sites

    def off_by_a_little(backend, dtype, steps):
        results = real(backend, dtype, steps)
        return results if backend.name == "numpy" else {k: v * (1 + 1e-3) for k, v in results.items()}

    monkeypatch.setattr(xpnet.selfcheck.checks, "run_call_sites", off_by_a_little)
    assert optimizers(ctx).status == "FAIL"
