"""scripts/bench_targets.py: issue 21's targets as medians of paired ratios, read from a bench JSON. No timings."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from xpnet.bench.results import BenchResult

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_targets.py"


@pytest.fixture(scope="module")
def targets():
    spec = importlib.util.spec_from_file_location("bench_targets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(impl, backend, batch, times, device="cpu"):
    figures = dict(samples_per_s=1.0, step_ms=1.0, gflops=1.0, pct_peak=1.0, pct_own=1.0, peak_memory=None)
    return dict(impl=impl, backend=backend, device=device, batch_size=batch, epoch_times=times, **figures)


def _result(*rows):
    """A --json file's content as the bench writes it: batch sizes as string keys of the ceilings."""
    labels = {f"{row['backend']}/{row['device']}" for row in rows}
    per_batch = {str(row["batch_size"]): [1.0] * len(row["epoch_times"]) for row in rows}
    ceiling = {"peak": 1.0, "own": {b: 1.0 for b in per_batch}, "repeats": {"peak": per_batch, "own": per_batch}}
    data = {"rows": list(rows), "ceilings": dict.fromkeys(labels, ceiling)}
    return BenchResult.from_dict(json.loads(json.dumps(data | {"skipped": [], "environment": {}, "options": {}})))


def test_a_target_is_the_median_of_the_paired_ratios_with_their_spread(targets):
    # Paired ratios 2, 3, 4 (eager's epoch time over xpnet's): median 3, half range 1 over 3.
    result = _result(
        _row("xpnet", "numpy", 64, [1.0, 1.0, 1.0]),
        _row("torch-eager", "torch", 64, [2.0, 3.0, 4.0]),
        _row("xpnet", "numpy", 64, [1.0, 1.0, 1.0], device="cuda"),  # not a CPU row: ignored
    )
    numpy_line = targets.target_lines(result)[0]
    assert numpy_line.endswith("): 64: 3.000x ±33%, 1024: not in this run")


def test_the_ratio_pairs_repeats_not_medians(targets):
    # Both medians are 2 s (a ratio of medians: 1.0x); the repeats' own ratios are 2, 2 and 0.25.
    result = _result(
        _row("xpnet", "jax", 16, [1.0, 2.0, 4.0]),
        _row("jax-scan", "jax", 16, [2.0, 4.0, 1.0]),
    )
    line = next(line for line in targets.target_lines(result) if line.startswith("JAX compiled"))
    assert line == "JAX compiled vs jax-scan (0.9-1.1x): 16: 2.000x ±44%"


def test_a_file_that_is_not_a_bench_result_is_named_in_the_error(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"not": "a bench run"}))
    run = subprocess.run([sys.executable, str(SCRIPT), str(path)], capture_output=True, text=True)
    assert run.returncode == 2
    assert "other.json: no 'rows' in it" in run.stderr
    assert "Traceback" not in run.stderr
