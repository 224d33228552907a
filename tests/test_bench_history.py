"""The benchmark history: its line format, the comparison's verdicts, the pytest-benchmark importer, the plot.

Synthetic runs with known noise: the verdicts must flag a 10% regression beyond the
measured spread and leave a noise-sized change alone. No timings are taken here.
"""

import json

import pytest

from xpnet.backend.cpu import cpu_flags
from xpnet.bench import history
from xpnet.bench.compare import compare, format_changes, overall
from xpnet.bench.environment import cpu_label, cpu_name, environment, vector_isa
from xpnet.bench.pytest_import import entry_from_pytest_benchmark, read_pytest_benchmark
from xpnet.bench.results import BenchResult, Row
from xpnet.bench.trend import plot_trend, series
from xpnet.errors import DataError

# -- the line of one sweep ------------------------------------------------------------------


def _result(xpnet_times=(1.0, 1.0, 1.0), eager_times=(2.0, 2.2, 1.8), direct_times=(1.1, 1.0, 0.9)):
    def row(impl, backend, times):
        rate = 1000 / sorted(times)[1]  # 1000 samples per epoch, median time
        return Row(impl, backend, "cpu", 100, rate, 1.0, rate * 1e-6, 0.0, 0.0, None, list(times))

    rows = [
        row("xpnet", "numpy", xpnet_times),
        row("direct", "numpy", direct_times),
        row("xpnet", "torch", xpnet_times),
        row("torch-eager", "torch", eager_times),
    ]
    ceiling = {
        "peak": 1.0,
        "own": {100: 0.01},
        "repeats": {"peak": {100: [1.0] * 3}, "own": {100: [0.004, 0.005, 0.006]}},
    }
    env = {
        "cpu": "Intel(R) Xeon(R) Processor",
        "cores": 2,
        "loadavg": [1.5, 1.0, 0.5],
        "loadavg_start": [0.5, 0.4, 0.3],
    }
    return BenchResult(rows, {"numpy/cpu": ceiling, "torch/cpu": ceiling}, [], env, {"repeats": 3})


def test_a_line_holds_paired_ratios_with_their_measured_spread():
    entry = history.entry_from_result(_result(), machine="test-box")
    assert entry["schema"] == history.SCHEMA and entry["machine"] == "test-box"
    assert entry["loadavg"] == {"start": [0.5, 0.4, 0.3], "end": [1.5, 1.0, 0.5]}
    xpnet_numpy = entry["rows"][0]
    assert (xpnet_numpy["impl"], xpnet_numpy["backend"], xpnet_numpy["batch_size"]) == ("xpnet", "numpy", 100)
    # repeat i of torch eager over repeat i of xpnet: 2.0, 2.2, 1.8 -> median 2.0, half-range 0.2 of 2.0
    assert xpnet_numpy["vs_torch_eager"] == pytest.approx({"median": 2.0, "spread": 0.1})
    assert xpnet_numpy["vs_direct"] == pytest.approx({"median": 1.0, "spread": 0.1})
    # xpnet's 1000 samples/s at 1e-6 GFLOP per sample, against own GEMMs of 0.004-0.006 GFLOP/s
    assert xpnet_numpy["pct_own"]["median"] == pytest.approx(20.0)
    assert xpnet_numpy["repeats"] == 3 and xpnet_numpy["samples_per_s"]["spread"] == 0.0
    assert "vs_direct" not in entry["rows"][2] and "vs_torch_eager" not in entry["rows"][3]


def test_machine_names_are_file_names():
    assert history.machine_name({"cpu": "Intel(R) Xeon(R) CPU @ 2.20GHz", "cores": 2}) == "intel-xeon-2c"
    assert history.machine_name({"cpu": "AMD EPYC", "cores": 16, "gpu": "NVIDIA H100"}) == "amd-epyc-16c-nvidia-h100"


def test_one_cpu_name_on_two_generations_keeps_two_histories():
    """A cloud's "AMD EPYC" was an AVX2 machine (68 GFLOP/s) one day and an AVX-512 one (200) the next:
    the widest vector instructions go into the name, so their runs are never compared as one machine's."""
    avx2 = {"flags": ["sse2", "avx", "avx2", "fma"]}
    avx512 = {"flags": ["avx", "avx2", "avx512f", "avx512bw"]}
    names = {
        history.machine_name({"cpu": "AMD EPYC", "cores": 2, "isa": vector_isa(cpu["flags"])}) for cpu in (avx2, avx512)
    }
    assert names == {"amd-epyc-avx2-2c", "amd-epyc-avx512-2c"}
    assert vector_isa(["fp", "asimd", "sve"]) == "sve" and vector_isa(["fp", "asimd"]) == "neon"
    assert vector_isa([]) is None and vector_isa(["sse2"]) is None
    assert history.machine_name({"cpu": "AMD EPYC", "cores": 2, "isa": None}) == "amd-epyc-2c"  # flags unknown
    assert environment()["isa"] == vector_isa(cpu_flags())  # this machine's, read from /proc/cpuinfo
    isa = vector_isa(cpu_flags())
    assert cpu_label() == (f"{cpu_name()}, {isa}" if isa else cpu_name())  # recipes' "Measured on"
    result = _result()
    result.environment["isa"] = "avx512"
    entry = history.entry_from_result(result)
    assert entry["isa"] == "avx512" and entry["machine"] == "intel-xeon-processor-avx512-2c"


def test_lines_append_and_read_back_in_order(tmp_path):
    path = tmp_path / "deep" / "box.jsonl"
    first, second = (history.entry_from_result(_result(), "box") for _ in range(2))
    first["commit"], second["commit"] = "a" * 40, "b" * 40
    history.append(path, first)
    history.append(path, second)
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["commit"] == "a" * 40
    entries = history.read(path)
    assert history.find(entries)["commit"] == "b" * 40
    assert history.find(entries, "AAAA")["commit"] == "a" * 40
    with pytest.raises(DataError, match=r"no run of commit 'cafe'.*aaaaaaaaaa"):
        history.find(entries, "cafe")


def test_a_damaged_history_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "h.jsonl"
    history.append(path, history.entry_from_result(_result(), "box"))
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(DataError, match=r"h\.jsonl:2: not JSON"):
        history.read(path)
    path.write_text(json.dumps({"schema": 1, "rows": [{"impl": "xpnet"}]}) + "\n")
    with pytest.raises(DataError, match=r"h\.jsonl:1: rows\[0\]\.backend: is missing"):
        history.read(path)
    with pytest.raises(DataError, match="no benchmark history"):
        history.read(tmp_path / "none.jsonl")


# -- the comparison ---------------------------------------------------------------------------


def _run(vs_eager: list[float], commit: str = "c" * 40) -> dict:
    """A history line whose xpnet row's ratio to torch eager has these per-repeat values."""
    return {
        "schema": 1,
        "commit": commit,
        "machine": "box",
        "cores": 2,
        "rows": [
            {
                "impl": "xpnet",
                "backend": "numpy",
                "device": "cpu",
                "batch_size": 64,
                "repeats": len(vs_eager),
                "vs_torch_eager": history.figure(vs_eager),
            }
        ],
    }


NOISY = [1.40, 1.43, 1.37, 1.41, 1.39]  # ±2%


def test_a_ten_percent_regression_beyond_the_noise_is_flagged():
    changes = compare(_run(NOISY), _run([0.9 * v for v in NOISY]))
    assert [(c.figure, c.verdict) for c in changes] == [("vs_torch_eager", "slower")]
    assert changes[0].change == pytest.approx(-0.10)
    assert overall(changes) == "slower"
    assert "slower" in format_changes(changes, _run(NOISY), _run(NOISY)).splitlines()[-2]


def test_a_change_the_size_of_the_noise_is_not():
    changes = compare(_run(NOISY), _run([1.385, 1.415, 1.355, 1.395, 1.375]))  # -1%, spreads ±2%
    assert [c.verdict for c in changes] == ["within noise"] and overall(changes) == "within noise"


def test_a_ten_percent_change_inside_wider_noise_is_not_flagged():
    wide = [1.40, 1.60, 1.20, 1.45, 1.35]  # ±14%: a busy machine
    assert compare(_run(wide), _run([0.9 * v for v in wide]))[0].verdict == "within noise"


def test_an_improvement_reads_faster_and_few_repeats_give_no_verdict():
    assert compare(_run(NOISY), _run([1.1 * v for v in NOISY]))[0].verdict == "faster"
    few = compare(_run(NOISY[:2]), _run([0.5, 0.5]))
    assert few[0].verdict == "too few repeats" and overall(few).startswith("no verdict")


def test_only_rows_in_both_runs_are_compared():
    other = _run(NOISY)
    other["rows"][0]["batch_size"] = 1024
    assert compare(_run(NOISY), other) == []


# -- pytest-benchmark's JSON ----------------------------------------------------------------------


def _pytest_benchmark_json():
    def bench(impl, backend, median, low, high):
        return {
            "group": "epoch, batch    64",
            "extra_info": {"impl": impl, "backend": backend, "device": "cpu", "batch_size": 64, "samples": 16384},
            "stats": {"median": median, "min": low, "max": high, "rounds": 3, "data": [low, median, high]},
        }

    step = {"group": "step, batch    64", "extra_info": {}, "stats": {"median": 1e-3, "min": 1e-3, "max": 1e-3}}
    return {
        "machine_info": {"cpu": {"brand_raw": "AMD EPYC", "count": 2}, "python_version": "3.11.7"},
        "commit_info": {"id": "d" * 40, "dirty": False},
        "datetime": "2026-11-22T05:39:36.123456+00:00",
        "version": "5.1.0",
        "benchmarks": [
            bench("xpnet", "numpy", 0.10, 0.09, 0.11),
            bench("direct", "numpy", 0.09, 0.09, 0.09),
            bench("torch-eager", "torch", 0.15, 0.15, 0.15),
            step,
        ],
    }


def test_pytest_benchmark_runs_import_as_history_lines(tmp_path):
    data = _pytest_benchmark_json()
    entry = entry_from_pytest_benchmark(data)
    assert entry["source"] == "pytest-benchmark" and entry["machine"] == "amd-epyc-2c"  # no flags: no ISA
    data["machine_info"]["cpu"]["flags"] = ["avx", "avx2", "avx512f"]  # py-cpuinfo's list, when installed
    assert entry_from_pytest_benchmark(data)["machine"] == "amd-epyc-avx512-2c"
    assert entry["commit"] == "d" * 40 and entry["date"] == "2026-11-22T05:39:36Z" and entry["loadavg"] is None
    xpnet_row = entry["rows"][0]
    assert len(entry["rows"]) == 3 and xpnet_row["samples_per_s"]["median"] == pytest.approx(163840)
    # unpaired: the ratio of the medians, the two spreads added
    assert xpnet_row["vs_torch_eager"] == pytest.approx({"median": 1.5, "spread": 0.1})
    assert xpnet_row["vs_direct"]["median"] == pytest.approx(0.9)
    path = tmp_path / "h.jsonl"
    history.append(path, entry)
    assert history.read(path)[0]["rows"] == entry["rows"]  # a valid history line


def test_pytest_benchmark_files_that_are_not_ours_are_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    with pytest.raises(DataError, match=r"bad\.json: cannot read"):
        read_pytest_benchmark(bad)
    bad.write_text(json.dumps({"benchmarks": [{"group": "epoch", "extra_info": {}, "stats": {}}]}))
    with pytest.raises(DataError, match="no epoch benchmarks"):
        read_pytest_benchmark(bad)


# -- the plot over commits ----------------------------------------------------------------------


def test_the_trend_plot_keeps_gpu_rows_apart(tmp_path):
    cpu_run = history.entry_from_result(_result(), "box")
    gpu_run = json.loads(json.dumps(cpu_run))
    for row in gpu_run["rows"]:
        row["device"] = "cuda"
    entries = [cpu_run, gpu_run]
    cpu_lines = series(entries, gpu=False)["vs_torch_eager"]
    assert set(cpu_lines) == {"numpy/cpu batch 100", "torch/cpu batch 100"}
    assert all(index == 0 for points in cpu_lines.values() for index, _, _ in points)
    assert set(series(entries, gpu=True)["vs_torch_eager"]) == {"numpy/cuda batch 100", "torch/cuda batch 100"}
    assert plot_trend(entries, tmp_path / "cpu.png") and (tmp_path / "cpu.png").read_bytes().startswith(b"\x89PNG")
    assert not plot_trend([cpu_run], tmp_path / "gpu.png", gpu=True) and not (tmp_path / "gpu.png").exists()


def test_the_one_time_compilation_is_kept_and_checked(tmp_path):
    result = _result()
    result.rows[0].compile_s = 2.5
    entry = history.entry_from_result(result, "box")
    assert entry["rows"][0]["compile_s"] == 2.5 and entry["rows"][1]["compile_s"] is None
    path = tmp_path / "h.jsonl"
    history.append(path, entry)
    assert history.read(path)[0]["rows"][0]["compile_s"] == 2.5
    entry["rows"][0]["compile_s"] = "slow"
    path.write_text(json.dumps(entry) + "\n")
    with pytest.raises(DataError, match=r"h\.jsonl:1: rows\[0\]\.compile_s"):
        history.read(path)
