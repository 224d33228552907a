"""The benchmark harness's own logic: FLOP count, tables, ratios, a tiny sweep. No timings asserted."""

import argparse
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import HAVE_JAX

import xpnet
from xpnet import bench
from xpnet.bench import history, runners, sweep, table, workload
from xpnet.bench.options import add_bench_arguments
from xpnet.bench.results import Row
from xpnet.errors import ConfigError
from xpnet.network import MLP


def test_flop_count_of_the_benchmark_network():
    # forward and BP4 for all three layers, BP2 (δ W) for the last two only
    assert workload.flops_per_sample() == 454_400
    assert workload.flops_per_sample([3, 2]) == 2 * 6 + 2 * 6  # one layer: no BP2


def test_step_macs_are_the_figure_fit_sizes_its_step_policy_by():
    net = MLP(workload.SIZES, "relu", "cross_entropy")
    assert workload.step_macs(64) == 64 * net.macs_per_sample


def _row(impl, samples_per_s, backend="numpy", device="cpu", batch=64):
    return Row(impl, backend, device, batch, samples_per_s, 1.0, 1.0, 1.0, 1.0, 2048)


def test_ratios_compare_within_one_device_and_batch():
    rows = [
        _row("xpnet", 200.0),
        _row("direct", 100.0),
        _row("torch-eager", 50.0, "torch"),
        _row("xpnet", 25.0, "torch"),
    ]
    sweep.add_ratios(rows)
    assert rows[0].vs_torch_eager == pytest.approx(4.0)
    assert rows[0].vs_direct == pytest.approx(2.0)
    assert rows[3].vs_torch_eager == pytest.approx(0.5)
    assert rows[2].vs_torch_eager is None and rows[1].vs_direct is None


def test_fit_is_held_to_its_own_step_in_a_bare_loop_where_it_runs_eagerly():
    rows = [_row("xpnet", 90.0), _row("xpnet-step", 100.0), _row("xpnet", 50.0, "torch")]
    sweep.add_ratios(rows)
    assert rows[0].vs_step == pytest.approx(0.9)
    assert rows[2].vs_step is None and rows[1].vs_step is None  # no bare step on torch; the peer has no ratio
    assert sweep.with_step_peer(["direct", "xpnet", "torch-eager"]) == ["direct", "xpnet", "xpnet-step", "torch-eager"]
    assert sweep.with_step_peer(["direct"]) == ["direct"]
    assert sweep.runs_on("xpnet-step", bench.Target("numpy", "cpu"))
    assert not sweep.runs_on("xpnet-step", bench.Target("jax", "cpu"))  # JAX's fit is compiled: jax-scan is its peer


def test_xpnet_on_jax_is_held_to_the_hand_written_jax_loop():
    rows = [_row("xpnet", 90.0, "jax"), _row("jax-scan", 100.0, "jax"), _row("direct", 30.0), _row("xpnet", 60.0)]
    sweep.add_ratios(rows)
    assert rows[0].vs_direct == pytest.approx(0.9) and rows[3].vs_direct == pytest.approx(2.0)


@pytest.mark.skipif(not HAVE_JAX, reason='needs JAX (pip install "xpnet[jax]")')
def test_xpnet_compiled_and_the_jax_scan_loop_train_the_same_batches_to_a_similar_loss():
    X, y, _ = bench.load_data(512, "random")
    target = bench.Target("jax", "cpu")
    made = {impl: runners.RUNNERS[impl](target, X, y, 64) for impl in ("xpnet", "jax-scan")}
    assert all(runner.compile_seconds() == 0.0 for runner in made.values())
    first = {impl: runner.epoch() for impl, runner in made.items()}
    for metrics in first.values():
        assert math.isfinite(metrics.loss) and 0.0 <= metrics.accuracy <= 1.0
    assert first["xpnet"].loss == pytest.approx(first["jax-scan"].loss, rel=0.05)
    # Each compiled in its first epoch, timed (the one-time cost the table shows apart), and never again.
    compiled = {impl: runner.compile_seconds() for impl, runner in made.items()}
    assert all(seconds > 0 for seconds in compiled.values()), compiled
    for runner in made.values():
        runner.epoch()
    assert {impl: runner.compile_seconds() for impl, runner in made.items()} == compiled
    assert runners.RUNNERS["xpnet"](bench.Target("numpy", "cpu"), X, y, 64).compile_seconds() is None


def test_tables_have_one_line_per_row_and_every_column():
    rows = [_row("xpnet", 123456.7), _row("direct", 1000.0)]
    text = table.format_rows(rows).splitlines()
    assert len(text) == 3 and "samples/s" in text[0] and "123,457" in text[1]
    md = table.markdown_table(rows).splitlines()
    assert len(md) == 4 and md[0].count("|") == len(table.COLUMNS) + 1
    assert "2.0 KiB" in md[2]
    rows[0].compile_s = 1.234
    md = table.markdown_table(rows).splitlines()
    assert "| compile s |" in md[0] and "| 2.0 KiB | 1.23 |" in md[2] and "| 2.0 KiB | – |" in md[3]


def test_bytes_are_formatted_in_binary_units():
    assert table.format_bytes(512) == "512 B"
    assert table.format_bytes(3 * 1024**2) == "3.0 MiB"
    assert table.format_bytes(5 * 1024**4) == "5120.0 GiB"


def test_the_xpnet_and_direct_runners_train_the_same_weights_on_a_learnable_problem():
    # Images whose class is a bright band: two epochs take the network from chance to > 90%. The
    # direct runner writes the same network, initialisation, batches and SGD with momentum by hand:
    # its weights must equal fit's (observed: bit for bit; atol 1e-6 is the margin), while training
    # moved every weight array by more than 0.01, so a runner that does not train fails here.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 512).astype(np.int32)
    X = rng.integers(0, 40, (512, 784), dtype=np.uint8)
    for i, label in enumerate(y):
        X[i, 70 * label : 70 * label + 60] = 250
    target = bench.Target("numpy", "cpu")
    mine, direct = (runners.RUNNERS[impl](target, X, y, 64) for impl in ("xpnet", "direct"))
    start = [np.array(p) for p in mine.net.params]
    for _ in range(2):
        metrics = {"xpnet": mine.epoch(), "direct": direct.epoch()}
    assert all(m.accuracy > 0.9 and math.isfinite(m.loss) for m in metrics.values()), metrics
    theirs = [p for pair in zip(direct.W, direct.b) for p in pair]
    for name, p, q, p0 in zip(("W1", "b1", "W2", "b2", "W3", "b3"), mine.net.params, theirs, start):
        assert np.max(np.abs(p - p0)) > 0.01, name
        np.testing.assert_allclose(p, q, rtol=0, atol=1e-6, err_msg=name)
    assert metrics["xpnet"].loss == pytest.approx(metrics["direct"].loss, rel=1e-6)


def test_tiny_sweep_writes_json_markdown_png_and_history(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    out = {k: tmp_path / f"r.{k}" for k in ("json", "md", "png", "jsonl")}
    stored = {"impl": "xpnet", "backend": "numpy", "device": "cpu", "batch_size": 8, "repeats": 5}
    stored["vs_direct"] = {"median": 1.0, "spread": 0.01}
    out["jsonl"].write_text(json.dumps({"schema": 1, "commit": "e" * 40, "rows": [stored]}) + "\n")
    options = "--batch-sizes 8,32 --backends numpy --samples 64 --repeats 1 --warmup 0 --pause 0 --data random"
    files = ["--json", str(out["json"]), "--markdown", str(out["md"]), "--png", str(out["png"])]
    args = parser.parse_args([*options.split(), *files, "--history", str(out["jsonl"]), "--compare"])
    assert bench.bench_main(args) == 0
    result = json.loads(out["json"].read_text())
    assert {(r["impl"], r["batch_size"]) for r in result["rows"]} == {
        (impl, b) for impl in ("xpnet", "xpnet-step", "direct") for b in (8, 32)
    }
    xpnet_rows = [r for r in result["rows"] if r["impl"] == "xpnet"]
    assert all(r["samples_per_s"] > 0 and r["vs_direct"] is not None and r["vs_step"] > 0 for r in xpnet_rows)
    assert all(r["compile_s"] is None for r in result["rows"])  # NumPy compiles nothing
    assert set(result["ceilings"]["numpy/cpu"]["own"]) == {"8", "32"}
    report = out["md"].read_text()
    assert "| xpnet | numpy | cpu | 8 |" in report and "NumPy" in report
    isa = result["environment"]["isa"]  # the CPU line names the vector instructions the BLAS ran on
    assert isa is None or f"- CPU: {result['environment']['cpu']}, {isa} (" in report
    assert out["png"].read_bytes().startswith(b"\x89PNG")
    captured = capsys.readouterr()
    printed = captured.out
    progress = captured.err.splitlines()  # on stderr, so the table on stdout stays clean
    assert progress[0].startswith(
        "bench: batch size 8 (1 of 2) on numpy/cpu (xpnet, xpnet-step, direct); 2 batch sizes x 5"
    )
    assert progress[1].startswith("bench: batch size 32 (2 of 2) on numpy/cpu (xpnet, xpnet-step, direct); ")
    assert "s left" in progress[1] and progress[2].startswith("bench: done in ")
    assert "bench: " not in printed
    assert "before: eeeeeeeeee" in printed and "vs direct NumPy" in printed and "too few repeats" in printed
    assert "vs bare step" in printed
    runs = [json.loads(line) for line in out["jsonl"].read_text().splitlines()]
    assert len(runs) == 2 and len(runs[1]["rows"]) == 6 and runs[1]["options"]["batch_sizes"] == [8, 32]
    assert all(row["vs_step"]["median"] > 0 for row in runs[1]["rows"] if row["impl"] == "xpnet")


def test_phase_profile_covers_every_phase_of_the_step():
    phases = bench.profile_step(32, samples=128)
    assert set(phases) == {"batch", "targets", "forward+loss+backward", "optimizer", "metrics", "of which matmuls"}
    assert all(seconds > 0 for seconds in phases.values())


def test_bad_options_are_refused_by_name():
    with pytest.raises(ConfigError, match="batch sizes"):
        bench.run_bench(batch_sizes=[0], backends=["numpy"], log=None)
    with pytest.raises(ConfigError, match="pause"):
        bench.run_bench(batch_sizes=[8], backends=["numpy"], pause=-1, log=None)
    with pytest.raises(ConfigError, match="implementations"):
        bench.run_bench(batch_sizes=[8], backends=["numpy"], impls=["jax"], log=None)
    with pytest.raises(ConfigError, match="backends"):
        bench.available_targets(["tpu"])
    with pytest.raises(ConfigError, match="bench backend numpy runs on cpu, not 'cuda'"):
        bench.available_targets(["numpy/cuda"])


def test_a_backend_can_be_benched_on_one_of_its_devices():
    """``jax/cuda``: the GPU kit benches JAX on the GPU alone (its CPU rows would only cost time there)."""
    found, skipped = bench.available_targets(["torch/cpu", "jax/cuda"])
    assert [t.label for t in found if t.backend != "torch"] == [] and skipped[-1].startswith("jax/cuda: ")
    assert all(t.device == "cpu" for t in found) and not any(line.startswith("torch/cuda") for line in skipped)


def test_package_names_resolve_to_their_modules():
    assert bench.run_bench is sweep.run_bench and bench.RUNNERS is runners.RUNNERS
    with pytest.raises(AttributeError, match="no_such_thing"):
        bench.no_such_thing  # noqa: B018


_HEAVY = ("xpnet.bench.runners", "xpnet.bench.sweep", "xpnet.bench.report", "xpnet.bench.profile", "xpnet.bench.cli")


def test_the_product_cli_does_not_load_the_harness(tmp_path):
    """``python -m xpnet train`` builds the bench options, not the runners, sweep, report or profile."""
    rng = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    np.savez(data, X=rng.normal(size=(40, 3)).astype(np.float32), y=(np.arange(40) % 2).astype(np.int64))
    script = textwrap.dedent(
        f"""
        import sys
        from xpnet.cli import build_parser, main
        build_parser()
        code = main(["train", "--dataset", {str(data)!r}, "--layers", "4", "--epochs", "1",
                     "--out", {str(tmp_path / "m.safetensors")!r}, "--quiet"])
        print(code, sorted(m for m in sys.modules if m.startswith("xpnet.bench")))
        """
    )
    root = str(Path(xpnet.__file__).parents[1])  # this checkout's xpnet, not another one installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    code, loaded = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert code == "0", done.stdout + done.stderr
    assert "xpnet.bench.options" in loaded  # the check can see the harness's modules
    assert not [m for m in _HEAVY if f"'{m}'" in loaded], loaded


@pytest.mark.skipif(not HAVE_JAX, reason='needs JAX (pip install "xpnet[jax]")')
def test_a_sweep_on_jax_reports_the_one_time_compilation_in_its_table_json_and_history(tmp_path):
    """The compiling runners' rows carry ``compile_s`` (timed in the warm-up epoch) to every output."""
    result = bench.run_bench(
        batch_sizes=[32], backends=["jax"], impls=["xpnet", "jax-scan"], samples=64, repeats=1, warmup=1,
        data="random", memory=False, pause=0, log=None,
    )  # fmt: skip
    assert [(r.impl, r.backend) for r in result.rows] == [("xpnet", "jax"), ("jax-scan", "jax")]
    assert all(r.compile_s > 0 for r in result.rows)
    assert "compile s" in table.format_rows(result.rows).splitlines()[0]
    assert all(row["compile_s"] > 0 for row in json.loads(result.to_json())["rows"])
    path = tmp_path / "history.jsonl"
    history.append(path, history.entry_from_result(result, "box"))
    read_back = history.read(path)[0]["rows"]  # checked against the history schema on the way in
    assert [row["compile_s"] for row in read_back] == [r.compile_s for r in result.rows]
