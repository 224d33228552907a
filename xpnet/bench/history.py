"""The benchmark history: one JSON line per run, per machine, in ``bench/history/<machine>.jsonl``.

A line records which code ran (commit, and whether ``xpnet/`` had uncommitted edits),
where (machine, CPU, GPU, library versions, the load average at the start and the end:
the machine is shared), how (the sweep's options) and, per implementation, backend,
device and batch size, each tracked figure as ``{"median": m, "spread": s}``:

- ``samples_per_s``: absolute, so it drifts with the machine; kept for the plots,
- ``vs_torch_eager`` / ``vs_direct``: the medians of *paired* ratios, repeat i of the
  row against repeat i of the peer timed next to it (``noise.paired_ratios``),
- ``pct_own`` / ``pct_peak``: % of the GEMM ceilings, paired the same way (the sweep
  times the ceilings' GEMMs in turn with the runners).

Beside them, as single numbers: ``step_ms``, and ``compile_s`` (the one-time compilation of
the runners that compile, JAX's; null for the others).

``spread`` is the relative half-range of the repeats (``noise.relative_spread``), so the
noise of every figure is measured in the run that produced it.
"""

from __future__ import annotations

import datetime
import json
import re
import statistics
import subprocess
from pathlib import Path

import xpnet
from xpnet.bench.history_schema import FIGURES, LINE, ROW_KEY, SCHEMA
from xpnet.bench.noise import paired_ratios, relative_spread
from xpnet.bench.results import BenchResult, Row
from xpnet.bench.workload import DIRECT_PEERS, STEP_PEER
from xpnet.errors import DataError
from xpnet.fileio import atomic_write_bytes, open_input, read_failure
from xpnet.schema import Invalid, check, deepest_key

__all__ = ["FIGURES", "RATIO_FIGURES", "ROW_KEY", "SCHEMA", "append", "find", "read"]
RATIO_FIGURES = FIGURES[:-1]
#: The largest history file read (a run's line is tens of kB; this is thousands of runs).
MAX_HISTORY_BYTES = 256 * 2**20
CHECKOUT = Path(xpnet.__file__).resolve().parent.parent


def machine_name(env: dict) -> str:
    """A file-name-safe name for the machine: its CPU, its widest vector instructions (a cloud's
    "AMD EPYC" or "Intel Xeon" names several generations), core count and GPU, if any."""
    words = [re.sub(r"\((r|tm)\)|\bcpu\b|@.*", "", str(env.get("cpu", "unknown")).lower())]
    words += [env["isa"]] if env.get("isa") else []
    words.append(f"{env.get('cores')}c")
    if env.get("gpu"):
        words.append(str(env["gpu"]).lower())
    return re.sub(r"[^a-z0-9]+", "-", " ".join(words)).strip("-")


def project_root() -> Path:
    """This checkout of xpnet (the folder holding ``bench/``), or the current folder when installed."""
    return CHECKOUT if (CHECKOUT / "bench").is_dir() else Path.cwd()


def default_path(machine: str) -> Path:
    """``bench/history/<machine>.jsonl`` under ``project_root()``."""
    return project_root() / "bench" / "history" / f"{machine}.jsonl"


def code_version() -> tuple[str | None, bool | None]:
    """The commit checked out and whether ``xpnet/`` differs from it; ``(None, None)`` outside git."""
    try:
        commit = subprocess.run(["git", "-C", str(CHECKOUT), "rev-parse", "HEAD"], capture_output=True, text=True)
        status = subprocess.run(
            ["git", "-C", str(CHECKOUT), "status", "--porcelain", "--untracked-files=no", "--", "xpnet"],
            capture_output=True,
            text=True,
        )
    except OSError:
        return None, None
    if commit.returncode or status.returncode:
        return None, None
    return commit.stdout.strip(), bool(status.stdout.strip())


def figure(values: list[float]) -> dict:
    """``{"median", "spread"}`` of one figure's per-repeat values."""
    return {"median": statistics.median(values), "spread": relative_spread(values)}


def _history_row(row: Row, peers: dict[str, Row], ceiling: dict) -> dict:
    times = row.epoch_times
    work = row.samples_per_s * statistics.median(times)  # samples per timed epoch
    rates = [work / t for t in times]
    out = {key: getattr(row, key) for key in ROW_KEY}
    out.update(repeats=len(times), step_ms=row.step_ms, compile_s=row.compile_s, epoch_times=times)
    out["samples_per_s"] = figure(rates)
    for name, peer in peers.items():
        out[name] = figure(paired_ratios(peer.epoch_times, times))
    gflops = [r * row.gflops / row.samples_per_s for r in rates]
    for name, kind in (("pct_own", "own"), ("pct_peak", "peak")):
        out[name] = figure([100 * r for r in paired_ratios(gflops, ceiling["repeats"][kind][row.batch_size])])
    return out


def _peers(row: Row, rows: list[Row]) -> dict[str, Row]:
    """The rows ``row`` is measured against: torch eager on its device; for xpnet the hand-written loop
    and its own bare step on its backend."""
    same = [r for r in rows if r.batch_size == row.batch_size]
    peers = {"vs_torch_eager": next((r for r in same if r.impl == "torch-eager" and r.device == row.device), None)}
    if row.impl == "xpnet":  # against the hand-written loop on the same backend (NumPy's direct, JAX's jit + scan)
        here = [r for r in same if (r.backend, r.device) == (row.backend, row.device)]
        peers["vs_direct"] = next((r for r in here if r.impl in DIRECT_PEERS), None)
        peers["vs_step"] = next((r for r in here if r.impl == STEP_PEER), None)  # fit's own step, bare
    return {name: peer for name, peer in peers.items() if peer is not None and peer is not row}


def entry_from_result(result: BenchResult, machine: str | None = None) -> dict:
    """The history line of one sweep."""
    env = result.environment
    commit, dirty = code_version()
    rows = [
        _history_row(row, _peers(row, result.rows), result.ceilings[f"{row.backend}/{row.device}"])
        for row in result.rows
    ]
    return {
        "schema": SCHEMA,
        "source": "xpnet bench",
        "commit": commit,
        "dirty": dirty,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine or machine_name(env),
        "cpu": env.get("cpu"),
        "isa": env.get("isa"),
        "cores": env.get("cores"),
        "gpu": env.get("gpu"),
        "loadavg": {"start": env.get("loadavg_start"), "end": env.get("loadavg")},
        "versions": {k: env.get(k) for k in ("python", "numpy", "array_api_compat", "torch", "cupy", "blas")},
        "options": result.options,
        "ceilings": result.ceilings,
        "rows": rows,
    }


def append(path: str | Path, entry: dict) -> None:
    """Add ``entry`` as the last line of the history at ``path`` (the file rewritten atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = _read_bytes(path) if path.exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    atomic_write_bytes(path, old + (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8"))


def _read_bytes(path: Path) -> bytes:
    """The history file's bytes: a regular file only (a FIFO or /dev/zero would block or never end),
    of at most ``MAX_HISTORY_BYTES``, by ``xpnet.fileio``'s rule for every input."""
    try:
        with open_input(path, "a benchmark history (.jsonl)") as stream:
            data = stream.read(MAX_HISTORY_BYTES + 1)
    except FileNotFoundError:
        raise DataError(f"{path}: no benchmark history here yet; record one with --history") from None
    except OSError as exc:
        raise read_failure(path, exc, "a benchmark history (.jsonl)", "--history") from None
    if len(data) > MAX_HISTORY_BYTES:
        raise DataError(f"{path}: over {MAX_HISTORY_BYTES // 2**20} MiB, too large for a benchmark history")
    return data


def _parse_line(line: str, where: str) -> dict:
    """One line, parsed and checked against ``history_schema.LINE``: a DataError naming the key if not."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not JSON ({exc.msg})") from None
    except RecursionError:
        raise DataError(f"{where}: {deepest_key(line) or 'the line'} nests too deeply") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise DataError(f"{where}: not a benchmark history line ({exc})") from None
    if not isinstance(entry, dict):
        raise DataError(f"{where}: not a benchmark history line (schema {SCHEMA} with a list of rows)")
    try:
        return check(LINE, entry)
    except Invalid as exc:
        raise DataError(f"{where}: {exc.where}: {exc.problem}; not a benchmark history line xpnet wrote") from None


def read(path: str | Path) -> list[dict]:
    """Every run in the history at ``path``, oldest first; a clear error for a file that is not one."""
    path = Path(path)
    try:
        lines = _read_bytes(path).decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: cannot read the benchmark history (not UTF-8: {exc.reason})") from None
    return [_parse_line(line, f"{path}:{number}") for number, line in enumerate(lines, 1) if line.strip()]


def find(entries: list[dict], ref: str | None = None) -> dict:
    """The run ``ref`` names: ``None``/``"last"`` the newest, else the newest whose commit starts with ``ref``."""
    if not entries:
        raise DataError("the benchmark history is empty; record a run with --history first")
    if ref in (None, "last"):
        return entries[-1]
    found = [e for e in entries if ref and (e.get("commit") or "").startswith(ref.lower())]
    if not found:
        commits = ", ".join(sorted({(e.get("commit") or "?")[:10] for e in entries}))
        raise DataError(f"no run of commit {ref!r} in the benchmark history (it has: {commits})")
    return found[-1]
