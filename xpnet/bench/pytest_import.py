"""pytest-benchmark's JSON (``--benchmark-json``, ``--benchmark-autosave``) as a history line.

The epoch benchmarks of ``bench/`` carry their row in ``extra_info`` (impl, backend,
device, batch size, samples). pytest-benchmark runs one test after another, not in
turns, so a ratio to a peer cannot be paired repeat by repeat: its median is the ratio of
the two medians and its spread the sum of the two rows' spreads. It measures no GEMM
ceilings and no load average; those stay out of the line (``None``), not guessed.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from pathlib import Path

from xpnet.bench.environment import vector_isa
from xpnet.bench.history import ROW_KEY, SCHEMA, machine_name
from xpnet.errors import DataError


def _timing(bench: dict) -> dict | None:
    """The row of one epoch benchmark: its key, repeats, and median/spread of the epoch time."""
    info, stats = bench.get("extra_info") or {}, bench.get("stats") or {}
    if not str(bench.get("group", "")).startswith("epoch") or any(k not in info for k in ROW_KEY):
        return None
    median = stats["median"]
    samples = info.get("samples") or info["samples_per_s"] * median
    spread = (stats["max"] - stats["min"]) / (2 * median)
    row = {key: info[key] for key in ROW_KEY}
    row.update(repeats=stats["rounds"], step_ms=median / (samples / info["batch_size"]) * 1e3)
    row.update(epoch_times=stats.get("data"), samples_per_s={"median": samples / median, "spread": spread})
    return row


def _add_peer_ratios(rows: list[dict]) -> None:
    def time_of(row):  # an epoch's median seconds, per sample
        return 1 / row["samples_per_s"]["median"]

    for row in rows:
        same = [r for r in rows if r["batch_size"] == row["batch_size"] and r is not row]
        peers = {"vs_torch_eager": [r for r in same if r["impl"] == "torch-eager" and r["device"] == row["device"]]}
        if row["impl"] == "xpnet":  # against the direct loop on the same backend (NumPy: DirectRunner.library)
            peers["vs_direct"] = [r for r in same if r["impl"] == "direct" and r["backend"] == row["backend"]]
        for name, found in peers.items():
            if found and row["impl"] != "torch-eager":
                peer = found[0]
                spread = row["samples_per_s"]["spread"] + peer["samples_per_s"]["spread"]
                row[name] = {"median": time_of(peer) / time_of(row), "spread": spread}


def entry_from_pytest_benchmark(data: dict, machine: str | None = None, where: str = "the JSON") -> dict:
    """The history line of one pytest-benchmark run of ``bench/`` (its parsed JSON)."""
    try:
        rows = [row for row in map(_timing, data["benchmarks"]) if row is not None]
        info, commit = data.get("machine_info", {}), data.get("commit_info", {})
        cpu = info.get("cpu", {})
        isa = vector_isa(cpu["flags"]) if isinstance(cpu.get("flags"), list) else None  # py-cpuinfo's, if installed
        env = {"cpu": cpu.get("brand_raw") or info.get("processor"), "isa": isa, "cores": cpu.get("count")}
    except (KeyError, TypeError, AttributeError, ZeroDivisionError) as exc:
        raise DataError(f"{where}: not a pytest-benchmark JSON of bench/ ({exc!r} missing or wrong)") from None
    if not rows:
        raise DataError(f"{where}: holds no epoch benchmarks of bench/ (run: pytest bench/ --benchmark-json=FILE)")
    _add_peer_ratios(rows)
    date = data.get("datetime") or ""
    with contextlib.suppress(ValueError):  # a date pytest-benchmark did not write stays as it is
        date = datetime.datetime.fromisoformat(date).astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "schema": SCHEMA,
        "source": "pytest-benchmark",
        "commit": commit.get("id"),
        "dirty": commit.get("dirty"),
        "date": date,
        "machine": machine or machine_name(env),
        **env,
        "gpu": None,
        "loadavg": None,
        "versions": {"python": info.get("python_version"), "pytest_benchmark": data.get("version")},
        "options": {"rounds": sorted({row["repeats"] for row in rows})},
        "ceilings": None,
        "rows": rows,
    }


def read_pytest_benchmark(path: str | Path, machine: str | None = None) -> dict:
    """The history line of the pytest-benchmark JSON file at ``path``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read a pytest-benchmark JSON ({exc})") from None
    return entry_from_pytest_benchmark(data, machine, str(path))
