"""``python -m xpnet selfcheck`` on the CPU, as CI runs it: every check passes, and it can fail."""

from __future__ import annotations

import json

import pytest

import xpnet.selfcheck.checks
from xpnet.cli import main
from xpnet.selfcheck import CHECKS
from xpnet.selfcheck.checks import Outcome


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
    assert "FAIL  environment" in out and "CuPy" in out


def test_the_checks_report_what_they_measured():
    """The kernel check compares real call sites: a wrong reference would show as an error."""
    backend = xpnet.backend.get_backend("numpy")
    outcome = xpnet.selfcheck.checks.kernels(xpnet.selfcheck.checks.Context(backend, None))
    assert outcome.status == "PASS" and outcome.data["worst"]["float64"] < 1e-12


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
