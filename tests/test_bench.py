"""The benchmark harness's own logic: FLOP count, tables, ratios, a tiny sweep. No timings asserted."""

import argparse
import json

import pytest

from xpnet import bench
from xpnet.errors import ConfigError


def test_flop_count_of_the_benchmark_network():
    # forward and BP4 for all three layers, BP2 (δ W) for the last two only
    assert bench.flops_per_sample() == 454_400
    assert bench.flops_per_sample([3, 2]) == 2 * 6 + 2 * 6  # one layer: no BP2


def _row(impl, samples_per_s, backend="numpy", device="cpu", batch=64):
    return bench.Row(impl, backend, device, batch, samples_per_s, 1.0, 1.0, 1.0, 1.0, 2048)


def test_ratios_compare_within_one_device_and_batch():
    rows = [
        _row("xpnet", 200.0),
        _row("direct", 100.0),
        _row("torch-eager", 50.0, "torch"),
        _row("xpnet", 25.0, "torch"),
    ]
    bench._add_ratios(rows)
    assert rows[0].vs_torch_eager == pytest.approx(4.0)
    assert rows[0].vs_direct == pytest.approx(2.0)
    assert rows[3].vs_torch_eager == pytest.approx(0.5)
    assert rows[2].vs_torch_eager is None and rows[1].vs_direct is None


def test_tables_have_one_line_per_row_and_every_column():
    rows = [_row("xpnet", 123456.7), _row("direct", 1000.0)]
    text = bench.format_rows(rows).splitlines()
    assert len(text) == 3 and "samples/s" in text[0] and "123,457" in text[1]
    md = bench.markdown_table(rows).splitlines()
    assert len(md) == 4 and md[0].count("|") == len(bench.COLUMNS) + 1
    assert "2.0 KiB" in md[2]


def test_bytes_are_formatted_in_binary_units():
    assert bench.format_bytes(512) == "512 B"
    assert bench.format_bytes(3 * 1024**2) == "3.0 MiB"


def test_tiny_sweep_writes_json_markdown_and_png(tmp_path):
    parser = argparse.ArgumentParser()
    bench.add_bench_arguments(parser)
    out = {k: tmp_path / f"r.{k}" for k in ("json", "md", "png")}
    args = parser.parse_args(
        [
            "--batch-sizes",
            "8,32",
            "--backends",
            "numpy",
            "--samples",
            "64",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--pause",
            "0",
            "--data",
            "random",
            "--json",
            str(out["json"]),
            "--markdown",
            str(out["md"]),
            "--png",
            str(out["png"]),
        ]
    )
    assert bench.bench_main(args) == 0
    result = json.loads(out["json"].read_text())
    assert {(r["impl"], r["batch_size"]) for r in result["rows"]} == {
        (impl, b) for impl in ("xpnet", "direct") for b in (8, 32)
    }
    assert all(r["samples_per_s"] > 0 and r["vs_direct"] is not None for r in result["rows"] if r["impl"] == "xpnet")
    assert "numpy/cpu" in result["ceilings"]
    report = out["md"].read_text()
    assert "| xpnet | numpy | cpu | 8 |" in report and "NumPy" in report
    assert out["png"].read_bytes().startswith(b"\x89PNG")


def test_bad_options_are_refused_by_name():
    with pytest.raises(ConfigError, match="batch sizes"):
        bench.run_bench(batch_sizes=[0], backends=["numpy"], log=None)
    with pytest.raises(ConfigError, match="pause"):
        bench.run_bench(batch_sizes=[8], backends=["numpy"], pause=-1, log=None)
    with pytest.raises(ConfigError, match="implementations"):
        bench.run_bench(batch_sizes=[8], backends=["numpy"], impls=["jax"], log=None)
    with pytest.raises(ConfigError, match="backends"):
        bench.available_targets(["tpu"])
