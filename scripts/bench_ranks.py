#!/usr/bin/env python
"""Data-parallel scaling: step time, allreduce time and its share, and efficiency, by rank count.

For each rank count R it launches ``mpiexec -n R python -m mpi4py`` on this script; every
rank trains ``fit`` itself (data-parallel for R > 1, through a communicator that times its
collectives) on the global batch B, one warm-up epoch and one timed epoch per batch size.
Rank 0 reports. Efficiency at B is T_1(B) / (R x T_R(B)), the strong-scaling figure: 1.0
means R ranks take 1/R of one process's step. BLAS threads per rank: cores // R (at least 1),
so one process may use every core the R ranks share.

``--model`` adds the ring-allreduce model: R machines like this one joined by InfiniBand, each
step being the measured one-process step at the per-rank batch plus 2(R-1)/R x gradient bytes /
link bandwidth; and, for devices sustaining F FLOP/s (GPUs: not measured here) on the links in
``LINKS``, the per-rank batch below which the allreduce costs more than a tenth of the compute.
Bandwidth only: per-message latency, which dominates small buffers, is left out, so these
are best cases. ``--repeats`` alternates the rank counts and reports medians.

The tables in bench/RESULTS.md ("Data-parallel training") come from:

    python scripts/bench_ranks.py --ranks 1,2 --batch-sizes 16,32,64,128,256,512,1024,2048,4096 \
        --steps 40 --repeats 3 --model --json bench/ranks.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from xpnet.backend import get_backend
from xpnet.bench.workload import SETTINGS, SIZES
from xpnet.build import build
from xpnet.distributed import Communicator, connect

#: One direction of a link, bytes/s: NVIDIA's figures, 900 GB/s per H100/H200 GPU over its 18
#: fourth-generation NVLinks (both directions together), 400 Gb/s per InfiniBand NDR port (ConnectX-7).
LINKS = {"NVLink 4 (H100/H200 SXM)": 450e9, "InfiniBand NDR (400 Gb/s)": 50e9}


class TimedCommunicator(Communicator):
    """Another communicator's collectives, timed: the gradient allreduce and the stop flag.

    Before each allreduce a barrier is timed apart ("wait"): a blocking allreduce also
    waits for the slowest rank, and on a shared machine that wait is most of it. The
    barrier adds one small collective to the step it measures.
    """

    def __init__(self, inner: Communicator):
        self.inner = inner
        self.rank, self.size, self.local_rank = inner.rank, inner.size, inner.local_rank
        self.seconds = {"wait": 0.0, "allreduce": 0.0, "stop flag": 0.0}
        self.calls = dict.fromkeys(self.seconds, 0)

    def _timed(self, what, call, *args):
        start = time.perf_counter()
        result = call(*args)
        self.seconds[what] += time.perf_counter() - start
        self.calls[what] += 1
        return result

    def allreduce_mean(self, backend, buffer):
        self._timed("wait", self.inner.comm.Barrier)
        return self._timed("allreduce", self.inner.allreduce_mean, backend, buffer)

    def any(self, flag):
        return self._timed("stop flag", self.inner.any, flag)

    def broadcast(self, backend, buffer):
        return self.inner.broadcast(backend, buffer)

    def sum_host(self, values):
        return self.inner.sum_host(values)

    def allgather_json(self, value):
        return self.inner.allgather_json(value)

    def reset(self):
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        self.calls = dict.fromkeys(self.calls, 0)


def worker(batch_sizes: list[int], steps: int, dtype: str) -> None:
    """One rank's part: for each global batch size, a warm-up epoch, then a timed one."""
    inner = connect(get_backend("numpy"))
    comm = TimedCommunicator(inner)
    rng = np.random.default_rng(0)
    rows = []
    for batch in batch_sizes:
        X = rng.integers(0, 256, (batch * steps, SIZES[0]), dtype=np.uint8)
        y = rng.integers(0, SIZES[-1], batch * steps).astype(np.int32)
        net, optimizer = build({**SETTINGS, "dtype": dtype, "seed": 0}, SIZES[0], SIZES[-1])
        # Epoch 1 warms up (first-touch allocations, BLAS start-up); epoch 2 is timed, its collectives too.
        history = net.fit(
            X, y, epochs=2, batch_size=batch, optimizer=optimizer, communicator=comm,
            should_stop=lambda: False, on_epoch_end=lambda h: h.epoch == 1 and comm.reset(),
        )  # fmt: skip
        seconds = history.records[-1]["seconds"]
        rows.append(
            {
                "ranks": comm.size,
                "batch": batch,
                "step_ms": 1e3 * seconds / steps,
                "wait_ms": 1e3 * comm.seconds["wait"] / steps,
                "allreduce_ms": 1e3 * comm.seconds["allreduce"] / steps,
                "stop_flag_ms": 1e3 * comm.seconds["stop flag"] / steps,
                "allreduces": comm.calls["allreduce"],
                "gradient_bytes": sum(int(np.prod(p.shape)) * p.dtype.itemsize for p in net.params),
            }
        )
    report = {"rows": rows, "communicator": inner.describe(), "bare_allreduce_ms": _bare_allreduce_ms(inner)}
    if comm.is_root:
        print(json.dumps(report), flush=True)


def _bare_allreduce_ms(comm: Communicator, nbytes: int = 437_544, calls: int = 200) -> float:
    """One MPI allreduce of a buffer the size of the gradients, alone, after a barrier: median ms."""
    if comm.size == 1:
        return 0.0
    buffer = np.ones(nbytes // 4, dtype=np.float32)
    times = []
    for _ in range(calls):
        comm.comm.Barrier()
        start = time.perf_counter()
        comm.comm.Allreduce(comm.MPI.IN_PLACE, buffer, op=comm.MPI.SUM)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def launch(ranks: int, args) -> dict:
    cores = os.cpu_count() or 1
    threads = str(max(1, cores // ranks))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    mpiexec = Path(sys.executable).parent / "mpiexec"
    command = [str(mpiexec), "-n", str(ranks)]
    command += ["--bind-to", "core"] if ranks <= cores else []
    command += [sys.executable, "-m", "mpi4py", __file__, "--worker", "--batch-sizes", args.batch_sizes]
    command += ["--steps", str(args.steps), "--dtype", args.dtype]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        sys.exit(f"mpiexec -n {ranks} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median_run(launches: list[dict]) -> dict:
    """One launch's shape, each timing the median over ``launches``."""
    merged = json.loads(json.dumps(launches[0]))
    for i, row in enumerate(merged["rows"]):
        for key in ("step_ms", "wait_ms", "allreduce_ms", "stop_flag_ms"):
            row[key] = float(np.median([launch["rows"][i][key] for launch in launches]))
    merged["bare_allreduce_ms"] = float(np.median([launch["bare_allreduce_ms"] for launch in launches]))
    merged["launches"] = len(launches)
    return merged


def markdown(results: dict[int, dict]) -> str:
    lines = [
        "| ranks | global batch | per rank | step ms | wait ms | allreduce ms | stop flag ms | allreduce share |"
        " efficiency |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    single = {row["batch"]: row["step_ms"] for row in results[1]["rows"]} if 1 in results else {}
    for ranks, result in sorted(results.items()):
        for row in result["rows"]:
            share = row["allreduce_ms"] / row["step_ms"]
            efficiency = single[row["batch"]] / (ranks * row["step_ms"]) if row["batch"] in single else float("nan")
            lines.append(
                f"| {ranks} | {row['batch']} | {row['batch'] // ranks} | {row['step_ms']:.3f} | "
                f"{row['wait_ms']:.3f} | {row['allreduce_ms']:.3f} | {row['stop_flag_ms']:.3f} | {share:.0%} | "
                f"{efficiency:.2f} |"
            )
    return "\n".join(lines)


def ring_seconds(ranks: int, nbytes: float, bandwidth: float) -> float:
    """A ring allreduce's time by bandwidth alone: each rank sends and receives 2(R-1)/R of the buffer."""
    return 2 * (ranks - 1) / ranks * nbytes / bandwidth


def model_markdown(single: dict, ranks_list=(2, 4, 8, 16), share: float = 0.1) -> str:
    """The ring model on the measured one-process steps ``single`` (a launch's result for R = 1)."""
    step = {row["batch"]: row["step_ms"] / 1e3 for row in single["rows"]}
    nbytes = single["rows"][0]["gradient_bytes"]
    link = "InfiniBand NDR (400 Gb/s)"
    bandwidth = LINKS[link]
    lines = [
        f"R machines like this one over {link}; gradient buffer {nbytes:,} bytes; predicted step = measured "
        "one-process step at B/R + ring allreduce.",
        "",
        "| R | global batch | per rank | step at B/R, ms (measured) | allreduce, µs (model) |"
        " predicted speed-up | efficiency |",
        "|---|---|---|---|---|---|---|",
    ]
    for ranks in ranks_list:
        for batch in sorted(step):
            if batch // ranks not in step or batch % ranks:
                continue
            ring = ring_seconds(ranks, nbytes, bandwidth)
            predicted = step[batch // ranks] + ring
            lines.append(
                f"| {ranks} | {batch} | {batch // ranks} | {1e3 * step[batch // ranks]:.3f} | "
                f"{1e6 * ring:.1f} | {step[batch] / predicted:.2f}x | {step[batch] / (ranks * predicted):.2f} |"
            )
    lines += ["", _crossover_markdown(share)]
    return "\n".join(lines)


def _crossover_markdown(share: float) -> str:
    """Per-rank batch b below which the allreduce costs more than ``share`` of the compute, for a dense MLP.

    A step computes about 6 P b FLOPs (forward 2 P b, backward 4 P b) for P parameters; the ring
    moves 2 (R-1)/R x 4 P bytes (float32). P cancels: b* = 8 (R-1)/R x F / (6 x BW x share).
    """
    rates = (1e11, 1e13, 5e13)
    lines = [
        f"Per-rank batch below which the allreduce costs more than {share:.0%} of the step's compute "
        "(float32, any dense MLP), "
        "for a device sustaining F FLOP/s:",
        "",
        "| link | R | " + " | ".join(f"F = {rate:.0e}" for rate in rates) + " |",
        "|---|---|" + "---|" * len(rates),
    ]
    for link, bandwidth in LINKS.items():
        for ranks in (2, 8):
            cells = [8 * (ranks - 1) / ranks * rate / (6 * bandwidth * share) for rate in rates]
            lines.append(f"| {link} | {ranks} | " + " | ".join(f"{cell:,.0f}" for cell in cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", default="1,2", help="rank counts to compare (default: 1,2)")
    parser.add_argument("--batch-sizes", default="64,256,1024,4096", help="global batch sizes")
    parser.add_argument("--steps", type=int, default=40, help="steps in the timed epoch (default: 40)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--repeats", type=int, default=1, help="launches per rank count; medians reported")
    parser.add_argument("--model", action="store_true", help="also print the ring-allreduce model (needs rank 1)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.worker:
        worker(batch_sizes, args.steps, args.dtype)
        return 0
    runs: dict[int, list[dict]] = {}
    for _ in range(args.repeats):  # the rank counts alternate, so a slow spell on the machine hits all
        for ranks in (int(r) for r in args.ranks.split(",")):
            time.sleep(1.0)  # let the previous job's spinning threads settle
            runs.setdefault(ranks, []).append(launch(ranks, args))
    results = {ranks: _median_run(launches) for ranks, launches in runs.items()}
    load = os.getloadavg()
    text = markdown(results)
    print(text)
    for ranks, result in sorted(results.items()):
        if ranks > 1:
            bare = result["bare_allreduce_ms"]
            print(f"\n{ranks} ranks: one bare allreduce of the gradient buffer, median of 200: {bare:.3f} ms")
    print(f"\nload average when done: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} on {os.cpu_count()} cores")
    if args.model and 1 in results:
        print("\n" + model_markdown(results[1]))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "runs": runs, "load": load}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
