"""The GPU kit (scripts/gpu_kit.py, scripts/gpu_kit.sh) on the CPU, offline: packing from a filled
wheel folder, the kit check, the step plan and its budget, the dry run, the report."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xpnet.bench import history
from xpnet.bench.results import BenchResult, Row

ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("gpu_kit", ROOT / "scripts" / "gpu_kit.py")
gpu_kit = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(gpu_kit)


def _kit_py(*args, check=True) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "scripts" / "gpu_kit.py"), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, check=check, cwd=ROOT)


@pytest.fixture
def kit(tmp_path) -> Path:
    """A packed kit with stand-in wheels and data files (pip download needs the network)."""
    data = tmp_path / "fashion"
    data.mkdir()
    for name in gpu_kit.DATA_FILES:
        (data / name).write_bytes(b"idx stand-in " + name.encode())
    kit = tmp_path / "kit"
    (kit / "wheels").mkdir(parents=True)
    for wheel in ("array_api_compat-1.16.0-py3-none-any.whl", "array_api_strict-2.6.1-py3-none-any.whl"):
        (kit / "wheels" / wheel).write_bytes(b"zip stand-in")
    done = _kit_py("pack", kit, "--no-download", "--data-dir", data)
    assert f"kit {kit}: 0.0 MiB" in done.stdout
    return kit


def test_pack_fills_the_kit_and_check_accepts_it(kit):
    manifest = json.loads((kit / "MANIFEST.json").read_text())["files"]
    assert sorted(manifest) == sorted(
        [f"data/fashion-mnist/{name}" for name in gpu_kit.DATA_FILES]
        + ["wheels/array_api_compat-1.16.0-py3-none-any.whl", "wheels/array_api_strict-2.6.1-py3-none-any.whl"]
    )
    assert gpu_kit.check_kit(kit) == []


def test_check_names_a_missing_wheel_a_changed_file_and_an_oversized_kit(kit, monkeypatch):
    (kit / "wheels" / "array_api_strict-2.6.1-py3-none-any.whl").unlink()
    (kit / "data" / "fashion-mnist" / gpu_kit.DATA_FILES[0]).write_bytes(b"other bytes")
    problems = gpu_kit.check_kit(kit)
    assert any("no wheel of array-api-strict" in p for p in problems)
    assert any(gpu_kit.DATA_FILES[0] in p and "changed" in p for p in problems)
    monkeypatch.setattr(gpu_kit, "LIMIT_MIB", 0)
    assert any("over the 0 MiB" in p for p in gpu_kit.check_kit(kit))


def test_pack_without_the_data_is_an_error_naming_the_folder(tmp_path):
    done = _kit_py("pack", tmp_path / "kit", "--no-download", "--data-dir", tmp_path / "none", check=False)
    assert done.returncode == 1 and "xpnet: error: --data-dir" in done.stderr and "Traceback" not in done.stderr


def test_the_default_plan_fits_its_budget_and_a_short_budget_skips_saying_so():
    chosen, skipped = gpu_kit.plan_steps(gpu_kit.BUDGET)
    assert gpu_kit.BUDGET <= 490 and sum(step[1] for step in chosen) <= gpu_kit.BUDGET
    assert [step[0] for step in chosen] == [step[0] for step in gpu_kit.STEPS] and skipped == []
    chosen, skipped = gpu_kit.plan_steps(100)
    assert sum(step[1] for step in chosen) <= 100 and len(chosen) + len(skipped) == len(gpu_kit.STEPS)
    assert skipped and all("skipped" in line and "budget" in line for line in skipped)
    doubled, _ = gpu_kit.plan_steps(2 * sum(step[1] for step in gpu_kit.STEPS))
    assert [step[1] for step in doubled] == [2 * step[1] for step in gpu_kit.STEPS]


def test_the_steps_leave_at_most_eight_files_in_outdir():
    outputs = {"report.json", "report.md", "log.txt"}
    for *_, command in gpu_kit.STEPS:
        outputs |= {word.split("/", 1)[1] for word in command.split() if word.startswith("{out}/")}
    assert len(outputs) <= 8


def test_the_dry_run_checks_the_kit_prints_every_command_and_writes_the_report(kit, tmp_path):
    """JAX's steps (``jax/cuda``) are asked about in the dry run too: without JAX's CUDA, as here, their
    lines say skipped and why; where it is, they are not run, as every other step."""
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", "scripts/gpu_kit.sh", "--dry-run", kit, out],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},  # the needs are asked with xpnet's own interpreter
    )
    assert done.returncode == 0, done.stderr
    for name, limit, _, command in gpu_kit.STEPS:
        assert (
            f"== {name} (limit {limit} s): python3" in done.stdout
            or f"== {name} (limit {limit} s): nvidia" in done.stdout
        )
        assert command.split("{")[0] in done.stdout
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["steps"]] == [step[0] for step in gpu_kit.STEPS]
    jax_steps = {"selfcheck-jax", "train-jax", "bench-jax", "test-gpu-jax"}
    assert {step[0] for step in gpu_kit.STEPS if step[2] == "jax/cuda"} == jax_steps
    why = gpu_kit.unmet("jax/cuda")
    for step in report["steps"]:
        expected = f"skipped: {why}" if why and step["name"] in jax_steps else "not run (dry run)"
        assert step["result"] == expected, step
    text = (out / "report.md").read_text()
    assert "| bench | not run (dry run) |" in text
    if why:
        assert "| bench-jax | skipped: jax/cuda is not usable here: device 'cuda': " in text
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]


def test_a_step_whose_need_is_unmet_is_recorded_as_skipped_saying_why(tmp_path):
    assert "JAX" in gpu_kit.unmet("jax/cuda") or "NVIDIA driver" in gpu_kit.unmet("jax/cuda")  # no GPU here
    assert gpu_kit.unmet("numpy/cpu") is None
    assert _kit_py("needs", "numpy/cpu").stdout == ""
    _kit_py("record", tmp_path, "--name", "bench-jax", "--limit", 35, "--command", "bench", "--skip", "no | CUDA\nhere")
    (line,) = json.loads((tmp_path / "report.json").read_text())["steps"]
    assert line["result"] == "skipped: no \\| CUDA here"
    assert "| bench-jax | skipped: no \\| CUDA here | 0 | 35 |" in (tmp_path / "report.md").read_text()


def test_the_dry_run_refuses_an_incomplete_kit(kit, tmp_path):
    (kit / "MANIFEST.json").unlink()
    done = subprocess.run(
        ["bash", "scripts/gpu_kit.sh", "--dry-run", kit, tmp_path / "out"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 2 and "no MANIFEST.json" in done.stderr


def _bench_entry() -> dict:
    rows = [
        Row("xpnet", "cupy", "cuda:0", 1024, 2e6, 0.5, 900.0, 2.0, 20.0, None, [0.5, 0.5, 0.6]),
        Row("torch-eager", "torch", "cuda:0", 1024, 1e6, 1.0, 450.0, 1.0, 10.0, None, [1.0, 1.0, 1.1]),
        Row("xpnet", "jax", "cuda:0", 1024, 3e6, 0.3, 1350.0, 3.0, 30.0, None, [1 / 3] * 3, compile_s=3.25),
    ]
    ceiling = {
        "peak": 45000.0,
        "own": {1024: 4500.0},
        "repeats": {"peak": {1024: [45000.0] * 3}, "own": {1024: [4500.0] * 3}},
    }
    env = {"cpu": "Test CPU", "cores": 16, "gpu": "NVIDIA H200", "loadavg": [0, 0, 0], "loadavg_start": [0, 0, 0]}
    ceilings = {label: ceiling for label in ("cupy/cuda:0", "torch/cuda:0", "jax/cuda:0")}
    result = BenchResult(rows, ceilings, [], env, {"repeats": 3})
    return history.entry_from_result(result)


def test_report_writes_the_on_a_gpu_section_once_and_appends_the_bench_rows(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _kit_py("record", out, "--commit", "abc123", "--skipped", "")
    _kit_py(
        "record",
        out,
        "--name",
        "bench",
        "--rc",
        0,
        "--seconds",
        40,
        "--limit",
        60,
        "--command",
        "python3 -m xpnet bench",
    )
    _kit_py("record", out, "--name", "test-gpu", "--rc", 124, "--seconds", 90, "--limit", 90, "--command", "pytest")
    entry = _bench_entry()
    history.append(out / "history.jsonl", entry)
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nkept\n")
    for _ in range(2):
        _kit_py("report", out, "--results", results, "--history-dir", tmp_path / "history")
    text = results.read_text()
    assert text.count("## On a GPU") == 1 and text.startswith("# Results\n\nkept\n")
    assert "NVIDIA H200" in text and "commit abc123" in text and "| test-gpu | TIMEOUT | 90 | 90 |" in text
    assert "| xpnet | cupy | cuda:0 | 1024 | 2,000,000 (" in text  # the device column: torch rows may be CPU or CUDA
    assert "| vs torch eager | vs jit + scan | compile s |" in text and "| 3.00 |  | 3.25 |" in text  # JAX's compile
    appended = history.read(tmp_path / "history" / f"{entry['machine']}.jsonl")
    assert len(appended) == 2 and appended[0]["rows"] == json.loads(json.dumps(entry["rows"]))


def test_report_without_a_run_is_an_error(tmp_path):
    done = _kit_py("report", tmp_path, "--results", tmp_path / "R.md", check=False)
    assert done.returncode == 1 and "xpnet: error:" in done.stderr and "no report.json" in done.stderr
