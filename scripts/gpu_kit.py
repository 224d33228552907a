"""The GPU kit: every GPU check of xpnet in one offline command (see README, "On a GPU machine").

``pack DIR``       fills DIR with the pure-Python wheels xpnet needs beyond the node's own
                   NumPy/CuPy/PyTorch (pip download for a chosen Python and platform) and the
                   Fashion-MNIST files; prints the kit's size (it must stay under 64 MiB).
``check DIR``      checks a packed kit against its MANIFEST.json (sizes and SHA-256).
``plan OUTDIR``    prints the steps ``gpu_kit.sh`` runs: name, time limit, what it needs, command, one a line.
``needs WHAT``     says why a step's need (``jax/cuda``: JAX with CUDA) is not met here; nothing if it is.
``record OUTDIR``  adds one finished step to OUTDIR/report.json and report.md (the shell calls it).
``nccl``           trains one rank data-parallel through the NCCL communicator on CUDA.
``report OUTDIR``  writes bench/RESULTS.md's "On a GPU" section from a run's OUTDIR and appends
                   its bench rows to bench/history/.

xpnet itself is not packed: the kit runs from the checkout it is started in (PYTHONPATH), so the
code that is verified is exactly the commit the report names, with no build step on the node.
``pack``, ``check``, ``plan`` and ``record`` need only the standard library.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT_MIB = 64
#: Pure-Python packages the node lacks (its own NumPy, CuPy, PyTorch, mpi4py are used as they are).
PACKAGES = ("array-api-compat", "array-api-strict")
DATA_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
DATA_SOURCE = Path("/usr/share/datasets/fashion-mnist")
#: The default total of the steps' time limits, in seconds. The H200 run of 2c9f1b6 took 22 s (selfcheck),
#: 49 s (tests/test_gpu.py, 278 CuPy and PyTorch tests), 29 s (the bench), 6-7 s (the default recipe);
#: JAX's steps have not run on a GPU yet: their limits are estimates, to be set from their first run.
BUDGET = 490
SWEEP = "--batch-sizes 64,1024,16384 --samples 16384 --repeats 3 --warmup 1 --pause 0 --gemm-size 4096 --no-memory"
BENCH_OPTIONS = f"--backends cupy,torch --impls xpnet,torch-eager {SWEEP}"
#: xpnet's compiled fit on JAX's GPU against the hand-written jit + scan loop, with the compile time.
BENCH_JAX_OPTIONS = f"--backends jax/cuda --impls xpnet,jax-scan {SWEEP}"
#: What a step needs beyond the node's CUDA (``-``: nothing): ``jax/cuda`` is JAX with CUDA, which
#: a node whose jaxlib is the CPU wheel lacks; such a step is skipped, its line saying why (``needs``).
JAX_CUDA = "jax/cuda"
#: name, time limit (s), need, command: in order of value, so a short budget keeps the first ones.
#: {out} is OUTDIR, {tmp} a scratch folder the shell removes afterwards.
STEPS = (
    ("environment", 20, "-", "nvidia-smi; python3 scripts/gpu_kit.py versions"),
    ("selfcheck-cupy", 30, "-", "python3 -m xpnet selfcheck --device cuda --json > {out}/selfcheck-cupy.json"),
    (
        "selfcheck-torch",
        30,
        "-",
        "python3 -m xpnet selfcheck --backend torch --device cuda --json > {out}/selfcheck-torch.json",
    ),
    (
        "selfcheck-jax",
        35,
        JAX_CUDA,
        "python3 -m xpnet selfcheck --backend jax --device cuda --json > {out}/selfcheck-jax.json",
    ),
    ("train-cupy", 20, "-", "python3 -m xpnet train --device cuda --out {tmp}/cupy.safetensors"),
    (
        "train-torch-bf16",
        25,
        "-",
        "python3 -m xpnet train --backend torch --device cuda --precision mixed-bfloat16 --out {tmp}/torch.safetensors",
    ),
    ("train-jax", 30, JAX_CUDA, "python3 -m xpnet train --backend jax --device cuda --out {tmp}/jax.safetensors"),
    ("nccl-one-rank", 25, "-", "python3 scripts/gpu_kit.py nccl --out {tmp}/nccl.safetensors"),
    (
        "bench",
        65,
        "-",
        f"python3 -m xpnet bench {BENCH_OPTIONS} --json {{out}}/bench.json --history {{out}}/history.jsonl",
    ),
    ("bench-jax", 35, JAX_CUDA, f"python3 -m xpnet bench {BENCH_JAX_OPTIONS} --history {{out}}/history.jsonl"),
    (
        "test-gpu",
        100,
        "-",
        'python3 -m pytest -q -p no:cacheprovider --timeout 60 tests/test_gpu.py -k "not jax-cuda"',
    ),
    (  # every JAX test, the finite-difference sweep for ReLU alone (all 110 cases: ~90 s eager; the CPU runs them)
        "test-gpu-jax",
        75,
        JAX_CUDA,
        "python3 -m pytest -q -p no:cacheprovider --timeout 60 tests/test_gpu.py"
        ' -k "jax-cuda and (not finite_differences or cuda-relu-)"',
    ),
)


def fail(message: str) -> None:
    sys.exit(f"xpnet: error: {message}")


# -- pack and check ---------------------------------------------------------------------------


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheels(wheels: Path, python_version: str, platform: str) -> None:
    """``pip download`` the packages' wheels (no dependencies: the node has NumPy) into ``wheels``."""
    command = [sys.executable, "-m", "pip", "download", "--only-binary", ":all:", "--no-deps"]
    command += ["--python-version", python_version, "--platform", platform, "--dest", str(wheels), *PACKAGES]
    if subprocess.run(command).returncode:
        fail(f"pip download of {', '.join(PACKAGES)} failed (see above); or fill {wheels} and pass --no-download")


def write_manifest(kit: Path) -> int:
    """MANIFEST.json: every file under ``kit`` with its size and SHA-256; returns the total bytes."""
    files = sorted(p for p in kit.rglob("*") if p.is_file() and p.name != "MANIFEST.json")
    entries = {p.relative_to(kit).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in files}
    (kit / "MANIFEST.json").write_text(json.dumps({"files": entries}, indent=1) + "\n", encoding="utf-8")
    return sum(e["bytes"] for e in entries.values())


def pack(args: argparse.Namespace) -> int:
    kit = Path(args.dir)
    wheels, data = kit / "wheels", kit / "data" / "fashion-mnist"
    wheels.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    if not args.no_download:
        download_wheels(wheels, args.python_version, args.platform)
    source = Path(args.data_dir)
    for name in DATA_FILES:
        if not (source / name).is_file():
            fail(f"--data-dir {source}: no {name} (apt-get install dataset-fashion-mnist, or pass --data-dir)")
        shutil.copyfile(source / name, data / name)
    total = write_manifest(kit)
    print(f"kit {kit}: {total / 2**20:.1f} MiB ({total} bytes)")
    problems = check_kit(kit)
    for problem in problems:
        print(f"xpnet: error: {problem}", file=sys.stderr)
    return 1 if problems else 0


def check_kit(kit: Path) -> list[str]:
    """What is wrong with the kit in ``kit``: missing wheels or data, changed files, too big."""
    manifest_path = kit / "MANIFEST.json"
    if not manifest_path.is_file():
        return [f"{kit}: no MANIFEST.json (make the kit with: python scripts/gpu_kit.py pack {kit})"]
    files = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
    problems = []
    for package in PACKAGES:
        stem = package.replace("-", "_")
        if not list((kit / "wheels").glob(f"{stem}-*.whl")):
            problems.append(f"{kit}: no wheel of {package} in wheels/")
    for name in DATA_FILES:
        if not (kit / "data" / "fashion-mnist" / name).is_file():
            problems.append(f"{kit}: no data/fashion-mnist/{name}")
    for name, entry in files.items():
        path = kit / name
        if not path.is_file() or path.stat().st_size != entry["bytes"] or sha256(path) != entry["sha256"]:
            problems.append(f"{kit}/{name}: missing or changed since it was packed")
    total = sum(entry["bytes"] for entry in files.values())
    if total >= LIMIT_MIB * 2**20:
        problems.append(f"{kit}: {total / 2**20:.1f} MiB, over the {LIMIT_MIB} MiB a device run can carry")
    return problems


def check(args: argparse.Namespace) -> int:
    problems = check_kit(Path(args.dir))
    for problem in problems:
        print(f"xpnet: error: {problem}", file=sys.stderr)
    if not problems:
        print(f"kit {args.dir}: complete, matches its MANIFEST.json")
    return 1 if problems else 0


# -- the steps --------------------------------------------------------------------------------


def plan_steps(budget: float) -> tuple[list[tuple[str, int, str, str]], list[str]]:
    """The steps that fit ``budget`` seconds, and a line for each that does not.

    Under the default budget the steps keep their own limits and run in order while their sum
    fits; a larger budget stretches every limit in proportion."""
    nominal = sum(limit for _, limit, _, _ in STEPS)
    scale = max(1.0, budget / nominal)
    chosen, skipped, used = [], [], 0
    for name, limit, need, command in STEPS:
        limit = int(limit * scale)
        if used + limit > budget:
            skipped.append(f"{name}: skipped, its {limit} s would not fit the budget ({budget - used:.0f} s left)")
            continue
        chosen.append((name, limit, need, command))
        used += limit
    return chosen, skipped


def plan(args: argparse.Namespace) -> int:
    chosen, skipped = plan_steps(args.budget)
    for name, limit, need, command in chosen:
        print(f"{name}\t{limit}\t{need}\t{command.format(out=args.outdir, tmp=args.tmp)}")
    for line in skipped:
        print(f"#\t{line}")
    return 0


def unmet(need: str) -> str | None:
    """Why a step's need is not met on this node (its line then says so), or None when it is.
    ``backend/device`` (``jax/cuda``): xpnet's backend can be had on that device here."""
    sys.path.insert(0, str(ROOT))
    from xpnet.backend import get_backend
    from xpnet.errors import XpnetError

    backend, _, device = need.partition("/")
    try:
        get_backend(backend, device)
    except XpnetError as exc:  # not installed, or no CUDA in it: skipped; anything else is a bug, and the step fails
        return f"{need} is not usable here: {exc}"
    return None


def needs(args: argparse.Namespace) -> int:
    """Print why ``args.need`` is not met (nothing when it is): the shell skips the step with that line."""
    why = unmet(args.need)
    if why:
        print(why)
    return 0


def read_report(outdir: Path) -> dict:
    path = outdir / "report.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return {"started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "steps": []}


def _write(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".part")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def summary_markdown(report: dict) -> str:
    lines = [f"# GPU kit run, commit {report.get('commit') or 'unknown'}, started {report['started']}", ""]
    lines += ["| step | result | seconds | limit | command |", "|---|---|---|---|---|"]
    for step in report["steps"]:
        lines.append(
            f"| {step['name']} | {step['result']} | {step['seconds']} | {step['limit']} | `{step['command']}` |"
        )
    if report.get("skipped"):
        lines += ["", *(f"- {line}" for line in report["skipped"])]
    return "\n".join(lines) + "\n"


def step_result(rc: int) -> str:
    """A step's result from its exit status (-1: the dry run, which runs nothing)."""
    return {0: "PASS", 124: "TIMEOUT", 137: "TIMEOUT", -1: "not run (dry run)"}.get(rc, f"FAIL (exit {rc})")


def _cell(text: str) -> str:
    """``text`` on one line of a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def record(args: argparse.Namespace) -> int:
    """Add a finished step (or, with ``--skipped``, the plan's skip lines) to report.json and report.md;
    ``--skip WHY``: the step did not run, its need unmet (``needs``), and its line says why."""
    outdir = Path(args.outdir)
    report = read_report(outdir)
    report["commit"] = args.commit or report.get("commit")
    if args.skipped is not None:
        report["skipped"] = [line for line in args.skipped.split("\n") if line.strip()]
    if args.name:
        result = f"skipped: {_cell(args.skip)}" if args.skip else step_result(args.rc)
        step = {"name": args.name, "rc": args.rc, "result": result, "seconds": args.seconds}
        report["steps"].append({**step, "limit": args.limit, "command": args.command})
    _write(outdir / "report.json", json.dumps(report, indent=1) + "\n")
    _write(outdir / "report.md", summary_markdown(report))
    return 0


# -- on the node: versions and NCCL -----------------------------------------------------------


def versions(args: argparse.Namespace) -> int:
    """Python and the versions of NumPy, CuPy, PyTorch, JAX, NCCL and the CUDA driver, as found."""
    print(f"python {sys.version.split()[0]} at {sys.executable}")
    for name in ("numpy", "array_api_compat", "array_api_strict", "cupy", "torch", "jax", "mpi4py"):
        try:
            module = __import__(name)
            print(f"{name} {getattr(module, '__version__', '?')}")
        except Exception as exc:
            print(f"{name} not usable: {exc}")
    try:
        import cupy

        print(f"CUDA driver {cupy.cuda.runtime.driverGetVersion()}, runtime {cupy.cuda.runtime.runtimeGetVersion()}")
        from cupy.cuda import nccl

        print(f"NCCL {nccl.get_version()}")
    except Exception as exc:
        print(f"CUDA/NCCL through CuPy not usable: {exc}")
    try:
        import jax

        print(f"jax devices {jax.devices()}")
    except Exception as exc:
        print(f"jax devices not usable: {exc}")
    return 0


def nccl(args: argparse.Namespace) -> int:
    """The default recipe for 2 epochs on CUDA, one rank, every allreduce through NCCL.

    ``--distributed`` alone with one rank trains without collectives; this makes the NCCL
    communicator over MPI's one-rank world explicitly, so the NCCL calls run on the GPU."""
    from xpnet.distributed import NCCLCommunicator
    from xpnet.errors import XpnetError
    from xpnet.run import resolve_settings, run_training

    try:
        communicator = NCCLCommunicator()
        print(f"communicator: {communicator.describe()}, {communicator.size} rank")
        settings = resolve_settings("default", {"device": args.device, "epochs": args.epochs})
        result = run_training(settings, out=args.out, communicator=communicator)
    except XpnetError as exc:
        fail(str(exc))
    print(f"nccl one rank: test accuracy {result['test'].get('accuracy')}, {result['seconds']:.1f} s")
    return 0


# -- report -----------------------------------------------------------------------------------


def _bench_table(entry: dict) -> list[str]:
    lines = [
        "| impl | backend | device | batch | samples/s (spread) | step ms | % of peak GEMM | vs torch eager"
        " | vs jit + scan | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in entry["rows"]:
        rate = row["samples_per_s"]
        # vs jit + scan: xpnet on JAX against the hand-written loop (the GPU kit runs no other direct peer)
        ratios = [(row.get(key) or {}).get("median") for key in ("vs_torch_eager", "vs_direct")]
        cells = ["" if value is None else f"{value:.2f}" for value in (*ratios, row.get("compile_s"))]
        lines.append(
            f"| {row['impl']} | {row['backend']} | {row.get('device', '')} | {_number(row['batch_size'])}"
            f" | {rate['median']:,.0f} ({rate.get('spread', 0):.0%}) | {row['step_ms']:.3f}"
            f" | {row['pct_peak']['median']:.1f} | {' | '.join(cells)} |"
        )
    return lines


def _number(value):
    """A whole number as one (the history's JSON may hold 64 as 64.0), lists item by item."""
    if isinstance(value, list):
        return "[" + ", ".join(str(_number(v)) for v in value) + "]"
    return int(value) if isinstance(value, float) and value.is_integer() else value


def gpu_section(report: dict, entries: list[dict]) -> str:
    """The "On a GPU" section of bench/RESULTS.md: device, date, commit, each step, the bench rows."""
    device = next((e.get("gpu") for e in entries if e.get("gpu")), None) or report.get("device") or "unknown GPU"
    lines = ["## On a GPU", ""]
    lines += [f"{device}, run of {report['started']}, commit {report.get('commit') or 'unknown'}", ""]
    lines += summary_markdown(report).splitlines()[2:]
    for entry in entries:
        ceilings = ", ".join(f"{label} {c['peak']:,.0f}" for label, c in entry["ceilings"].items())
        options = ", ".join(f"{key} {_number(value)}" for key, value in entry.get("options", {}).items())
        lines += ["", f"Bench of {entry['date']} ({options}); peak GEMM GFLOP/s: {ceilings}", ""]
        lines += _bench_table(entry)
    return "\n".join(lines)


def report(args: argparse.Namespace) -> int:
    """Write bench/RESULTS.md's "On a GPU" section and append the run's bench rows to bench/history/."""
    sys.path.insert(0, str(ROOT))
    from xpnet.bench import history
    from xpnet.errors import XpnetError
    from xpnet.fileio import write_marked_section

    outdir = Path(args.outdir)
    if not (outdir / "report.json").is_file():
        fail(f"{outdir}: no report.json (the OUTDIR of a gpu_kit.sh run)")
    run = read_report(outdir)
    try:
        entries = history.read(outdir / "history.jsonl") if (outdir / "history.jsonl").is_file() else []
        for entry in entries:
            path = Path(args.history_dir) / f"{entry['machine']}.jsonl"
            history.append(path, entry)
            print(f"appended the bench run of {entry['date']} to {path}")
        write_marked_section(args.results, "on-a-gpu", "scripts/gpu_kit.py report", gpu_section(run, entries))
    except XpnetError as exc:
        fail(str(exc))
    print(f"wrote the 'On a GPU' section of {args.results}")
    return 0


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="gpu_kit.py", description=__doc__.split("\n\n")[0])
    sub = main.add_subparsers(dest="action", required=True)
    p = sub.add_parser("pack", help="fill DIR with the wheels and the data a GPU node without internet needs")
    p.add_argument("dir")
    p.add_argument("--python-version", default="3.12")
    p.add_argument("--platform", default="manylinux2014_x86_64")
    p.add_argument("--data-dir", default=str(DATA_SOURCE), help="folder of the 4 Fashion-MNIST .gz files")
    p.add_argument("--no-download", action="store_true", help="use the wheels already in DIR/wheels")
    sub.add_parser("check", help="check a packed kit against its MANIFEST.json").add_argument("dir")
    p = sub.add_parser("plan", help="print the steps: name, limit, command")
    p.add_argument("outdir")
    p.add_argument("--budget", type=float, default=BUDGET)
    p.add_argument("--tmp", default="/tmp/xpnet-gpu-kit")
    p = sub.add_parser("record", help="add a finished step to OUTDIR/report.json and report.md")
    p.add_argument("outdir")
    p.add_argument("--name")
    p.add_argument("--rc", type=int, default=0)
    p.add_argument("--seconds", type=int, default=0)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--command", default="")
    p.add_argument("--commit")
    p.add_argument("--skipped", help="the plan's skip lines, one a line")
    p.add_argument("--skip", help="the step did not run: why (its need unmet)")
    sub.add_parser("needs", help="print why a step's need (jax/cuda) is unmet here; nothing if met").add_argument(
        "need"
    )
    sub.add_parser("versions", help="print the versions of the GPU libraries found")
    p = sub.add_parser("nccl", help="train 2 epochs on one rank through NCCL")
    p.add_argument("--device", default="cuda")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", default="xpnet-nccl.safetensors")
    p = sub.add_parser("report", help="write bench/RESULTS.md's 'On a GPU' section from OUTDIR")
    p.add_argument("outdir")
    p.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    p.add_argument("--history-dir", default=str(ROOT / "bench" / "history"))
    return main


COMMANDS = {"pack": pack, "check": check, "plan": plan, "record": record}
COMMANDS.update(versions=versions, nccl=nccl, report=report, needs=needs)

if __name__ == "__main__":
    arguments = parser().parse_args()
    sys.exit(COMMANDS[arguments.action](arguments))
