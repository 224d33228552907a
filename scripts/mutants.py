"""Mutation testing as a habit: break the code on purpose, one named way at a time, and see a test fail.

Each entry of ``MUTATIONS`` is a small deliberate break of one promise (README's "Safety and
reliability", data-parallel and resume sections, and the breaks an audit of the test suite
made): a file, the exact text to find in it (the *anchor*), the text to put there instead, and
the test files that guard it (pytest arguments, ``-k`` selections included). For each, this
copies the project to a temporary folder, applies the break there, and runs the guarding tests
on the copy (``PYTHONPATH`` and the working folder point at the copy, so subprocesses the tests
start import the broken code too). A mutant is *killed* when a test fails; one that passes every
guarding test *survives*, and this exits 1 naming it.

When code moves, the mutation list moves with it: before anything runs, every anchor must be
found exactly once in its file, or this exits 2 naming the mutation, the file and the anchor's
first line (the code moved or changed: find the new spot and update the entry). The unmutated
code is assumed to pass the guarding tests (CI runs the whole suite first).

    python scripts/mutants.py                 # every mutation, 2 at a time
    python scripts/mutants.py --list          # the names, files and guarding tests
    python scripts/mutants.py -k resume -j 1  # the mutations whose name holds "resume"
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache", "runs")
TIMEOUT_S = 600


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  #: relative to the project root
    old: str  #: the anchor: must occur exactly once in ``file``
    new: str
    tests: tuple[str, ...]  #: pytest arguments: test files, node ids, ``-k`` selections


M = Mutation
MUTATIONS = [
    # -- resume (README: Model files, Interrupting is safe) -------------------------------------
    M("resume forgets the best epoch", "xpnet/train.py",
      'state = {k: v for k, v in self.__dict__.items() if k != "best_params"}',
      'state = {k: v for k, v in self.__dict__.items() if k not in ("best_params", "best_epoch")}',
      ("tests/test_resume.py", "-k", "numpy and library")),
    M("resume forgets the patience counter", "xpnet/train.py",
      'state = {k: v for k, v in self.__dict__.items() if k != "best_params"}',
      'state = {k: v for k, v in self.__dict__.items() if k not in ("best_params", "bad_epochs")}',
      ("tests/test_resume.py", "-k", "numpy and library")),
    M("resume forgets the dropout stream", "xpnet/train.py",
      "if history.dropout_state is not None and net.dropout_rng is not None:",
      "if False:",
      ("tests/test_checkpoint.py", "-k", "dropout_resumes and numpy")),
    M("resume forgets the interrupted epoch's sums", "xpnet/train.py",
      "carried = partial is not None and loop.parallel.communicator.is_root",
      "carried = False",
      ("tests/test_safety.py", "-k", "signal_checkpoints and SIGINT and mid")),
    M("resume forgets the shuffling order", "xpnet/train.py",
      "        rng.bit_generator.state = history.rng_state\n",
      "        pass\n",
      ("tests/test_safety.py", "-k", "signal_checkpoints and SIGINT")),
    M("resume forgets the best weights", "xpnet/modelfile.py",
      "        if history.best_params is not None:\n",
      "        if False:\n",
      ("tests/test_resume.py", "-k", "numpy and library")),
    # -- interrupting ---------------------------------------------------------------------------
    M("a signal stops at once, without a checkpoint", "xpnet/cli.py",
      "        if self.signum is not None:  # a second signal: stop now\n",
      "        if True:  # mutant: the first signal stops now\n",
      ("tests/test_safety.py", "-k", "signal_checkpoints and SIGINT and mid")),
    M("an interrupted run writes no checkpoint", "xpnet/run.py",
      "    if history.interrupted:\n        checkpoints(history)\n",
      "    if history.interrupted:\n        pass\n",
      ("tests/test_safety.py", "-k", "signal_checkpoints and SIGTERM and mid")),
    M("no checkpoint after each epoch", "xpnet/run.py",
      "on_epoch_end=_each_epoch(checkpoints, board),",
      "on_epoch_end=_each_epoch(board),",
      ("tests/test_safety.py", "-k", "killed_training or divergence_after")),
    # -- saves and files ------------------------------------------------------------------------
    M("saves write the file in place", "xpnet/fileio.py",
      'fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)',
      "fd, temp_name = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666), str(target)",
      ("tests/test_safety.py", "-k", "atomic")),
    M("a model file may hold NaN", "xpnet/modelfile.py",
      "        if not np.all(np.isfinite(tensor)):\n            raise DivergenceError(",
      "        if False:\n            raise DivergenceError(",
      ("tests/test_checkpoint.py", "-k", "refuses_non_finite")),
    M("a loaded model may hold NaN", "xpnet/checkpoint.py",
      "            if not np.all(np.isfinite(tensor)):",
      "            if False:",
      ("tests/test_checkpoint.py", "-k", "tampered_tensors")),
    M("a symbolic link is replaced, not written through", "xpnet/fileio.py",
      "return Path(os.path.realpath(path)) if path.is_symlink() else path",
      "return path",
      ("tests/test_fileio.py", "-k", "every_writer and symlink")),
    M("an input is opened before its kind is checked, and may block", "xpnet/fileio.py",
      "    _check_input_mode(path, os.stat(path).st_mode, what, error)\n"
      "    fd = os.open(path, os.O_RDONLY | _NONBLOCK | _CLOEXEC)\n",
      "    fd = os.open(path, os.O_RDONLY | _CLOEXEC)\n",
      ("tests/test_fileio.py", "-k", "fifo_at_once")),
    M("early stopping keeps the last epoch's weights", "xpnet/train.py",
      "    if history.best_params is None or history.best_epoch == history.epoch:\n        return\n",
      "    return\n",
      ("tests/test_cli.py", "-k", "restores_best")),
    # -- divergence -----------------------------------------------------------------------------
    M("divergence ignores max |w|", "xpnet/divergence.py",
      "    elif not math.isfinite(largest):",
      "    elif False:",
      ("tests/test_divergence.py",)),
    M("divergence ignores the validation loss", "xpnet/divergence.py",
      '    elif not math.isfinite(record.get("val_loss", 0.0)):',
      "    elif False:",
      ("tests/test_divergence.py",)),
    # -- memory ---------------------------------------------------------------------------------
    M("the memory estimate omits the per-step temporaries", "xpnet/memory.py",
      'estimate.add("one training step", batch_bytes(sizes, min(batch, samples), itemsize, input_itemsize))',
      "pass",
      ("tests/test_memory.py", "-k", "near_the_limit")),
    M("the memory estimate omits the optimizer buffers", "xpnet/memory.py",
      '    estimate.add("optimizer buffers", buffers * count * itemsize)\n    estimate.add("best weights',
      '    estimate.add("best weights',
      ("tests/test_memory.py", "-k", "near_the_limit")),
    M("a prediction's CSV text is not counted", "xpnet/predictions.py",
      'return estimate.add("the CSV text", 112 * len(X) * (net.num_outputs + 3))',
      "return estimate",
      ("tests/test_memory.py", "-k", "predict")),
    M("a network checks no memory before drawing its weights", "xpnet/network.py",
      "network_estimate(self.sizes, np.dtype(dtype).itemsize, count).check(",
      "(lambda *a: None)(",
      ("tests/test_memory.py", "-k", "by_the_network_itself")),
    # -- bad data and wrong calls ---------------------------------------------------------------
    M("labels out of range are accepted", "xpnet/data/datasets.py",
      "    bad = labels >= num_classes\n",
      "    bad = labels > num_classes\n",
      ("tests/test_safety.py", "-k", "bad_data")),
    M("NaN inputs reach fit", "xpnet/inputs.py",
      "        if not (math.isfinite(low) and math.isfinite(high)):\n            raise ConfigError(f\"{name} holds NaN",
      "        if False:\n            raise ConfigError(f\"{name} holds NaN",
      ("tests/test_inputs.py", "-k", "nan_or_infinite")),
    # -- reproducibility and the device ---------------------------------------------------------
    M("a hidden host read in every step", "xpnet/step.py",
      "            sums.add(net, cost, out, truth, xb.shape[0], one_hot=self.labels)\n",
      "            sums.add(net, cost, out, truth, xb.shape[0], one_hot=self.labels)\n"
      "            net.backend.to_host(cost)\n",
      ("tests/test_device_audit.py", "-k", "keep_to_the_device and sgd_decay")),
    M("fit gathers and one-hot encodes every batch again", "xpnet/compiled.py",
      "            rows, batch = batches(b)\n",
      "            rows, batch = order[b * loop.batch_size : (b + 1) * loop.batch_size], None\n",
      ("tests/test_fit_overhead.py", "-k", "little_beyond")),
    M("the shuffle ignores the seed", "xpnet/train.py",
      "    rng = np.random.default_rng(seed)\n    if history.rng_state is not None:",
      "    rng = np.random.default_rng()\n    if history.rng_state is not None:",
      ("tests/test_safety.py", "-k", "same_seed")),
    # -- float16 loss scaling (README: mixed precision; the skip is inside the update) -------------
    M("the fused optimizer kernels ignore float16's finite flag", "xpnet/optim.py",
      'return f"if (finite) {{ {body} }}"',
      "return body",
      ("tests/test_fused.py", "-k", "finite_flag_equal")),
    M("the fused optimizer updates are handed True instead of the finite flag", "xpnet/optim.py",
      "            flag = True if finite is None else finite\n",
      "            flag = True\n",
      ("tests/test_precision.py", "-k", "overflowing and fused")),
    M("the array-API optimizer update ignores float16's finite flag", "xpnet/optim.py",
      "        skip = None if finite is None else _Skip(self.xp, finite, params[0])",
      "        skip = None",
      ("tests/test_precision.py", "-k", "overflowing and array")),
    # -- streaming from disk (README: Data bigger than memory) ---------------------------------
    M("a stream held in one buffer reorders its chunks (not fit's permutation)", "xpnet/data/stream.py",
      "    if shuffle and reorder and not whole:",
      "    if shuffle and reorder:",
      ("tests/test_stream.py", "-k", "own_permutation or equals_in_memory")),
    M("a resumed stream retrains its buffer's first batches", "xpnet/streaming.py",
      "range(max(first - buffer.first_step, 0), buffer.steps(size))",
      "range(0, buffer.steps(size))",
      ("tests/test_stream.py", "-k", "resume_mid_epoch")),
    M("a buffer's left-over rows are dropped, not carried on", "xpnet/data/stream.py",
      "        carried, step = ids[positions[used:]], step + used // batch_size",
      "        carried, step = ids[:0], step + used // batch_size",
      ("tests/test_stream.py", "-k", "at_most_once or four_times_the")),
    M("a buffer's host block is handed back to the reader before its steps are done", "xpnet/streaming.py",
      "            batches = Batches(loop.step, order, buffer.steps(size), size, local)\n",
      "            batches = Batches(loop.step, order, buffer.steps(size), size, local)\n"
      "            reader.recycle(host, X)\n",
      ("tests/test_stream.py", "-k", "reused_blocks")),
    # -- ONNX export ----------------------------------------------------------------------------
    M("ONNX LeakyRelu loses its alpha", "xpnet/activations.py",
      'return "LeakyRelu", {"alpha": float(self.alpha)}',
      'return "LeakyRelu", {}',
      ("tests/test_export.py", "-k", "every_activation")),
    M("ONNX forgets the input shift", "xpnet/export.py",
      '("input_shift", "Sub", net.scaling.shift)',
      '("input_shift", "Sub", 0.0 * net.scaling.shift)',
      ("tests/test_export.py", "-k", "every_activation")),
    # -- data-parallel (README: Training on several GPUs or machines) ---------------------------
    M("MPI sums the gradients instead of averaging them", "xpnet/distributed.py",
      "        buffer /= self.size\n",
      "        pass\n",
      ("tests/test_mpi.py", "-k", "ranks_train_as_one_process and 2")),
    M("ranks start from their own weights", "xpnet/data_parallel.py",
      "        FlatBuffer(self.communicator, net.backend, net.params).broadcast_into(net.params)\n",
      "        pass\n",
      ("tests/test_mpi.py", "-k", "ranks_train_as_one_process and 2")),
    M("each rank draws its own dropout masks", "xpnet/data_parallel.py",
      "        return drawn[self.rank * rows : (self.rank + 1) * rows, ...]",
      "        return drawn[:rows, ...]",
      ("tests/test_distributed.py", "-k", "rank_rows")),
    M("a stop on one rank is not a stop for all", "xpnet/data_parallel.py",
      "        return self.communicator.any(flag) if self.active else flag",
      "        return flag",
      ("tests/test_mpi.py", "-k", "sigint")),
    M("ranks with other settings are not refused", "xpnet/data_parallel.py",
      "                if mine != theirs:\n",
      "                if False:\n",
      ("tests/test_distributed.py", "-k", "other_data_or_settings")),
    M("rank parts overlap", "xpnet/data_parallel.py",
      "    start = communicator.rank * base + min(communicator.rank, extra)",
      "    start = communicator.rank * base",
      ("tests/test_distributed.py", "-k", "rank_parts")),
]  # fmt: skip


def missing_anchors(mutations: list[Mutation]) -> list[str]:
    """Why each mutation whose anchor is not in its file exactly once cannot be applied (empty: all can)."""
    problems = []
    for mutation in mutations:
        path = ROOT / mutation.file
        text = path.read_text(encoding="utf-8") if path.is_file() else None
        found = 0 if text is None else text.count(mutation.old)
        if found != 1:
            where = "no such file" if text is None else f"anchor found {found} times, expected once"
            first = mutation.old.strip().splitlines()[0] if mutation.old.strip() else "(empty)"
            problems.append(f"{mutation.name!r}: {mutation.file}: {where}; the anchor begins {first!r}")
    return problems


def run_one(mutation: Mutation, verbose: bool) -> tuple[str, float, str]:
    """Apply ``mutation`` to a fresh copy of the project and run its tests: ("killed" | "survived" |
    "broken" | "timed out", seconds, pytest's last lines)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="xpnet-mutant-") as folder:
        copy = Path(folder) / "project"
        shutil.copytree(ROOT, copy, ignore=SKIP)
        target = copy / mutation.file
        target.write_text(target.read_text(encoding="utf-8").replace(mutation.old, mutation.new), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
        command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *mutation.tests]
        try:
            done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return "timed out", time.monotonic() - started, ""
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-(30 if verbose else 3) :])
    # pytest: 0 all passed, 1 some failed; anything else (no tests collected, usage, internal) is no verdict.
    outcome = {0: "survived", 1: "killed"}.get(done.returncode, "broken")
    return outcome, time.monotonic() - started, tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", dest="only", help="only the mutations whose name holds this text")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the end of every pytest run")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.only is None or args.only in m.name]
    if args.list:
        for m in chosen:
            print(f"{m.name}\n    {m.file}; guarded by: {' '.join(m.tests)}")
        return 0
    problems = missing_anchors(chosen)
    if problems:
        print("mutants: the code these mutations break has moved or changed; update their anchors:", file=sys.stderr)
        print("\n".join(f"  {problem}" for problem in problems), file=sys.stderr)
        return 2
    return report(chosen, args.jobs, args.verbose)


def report(chosen: list[Mutation], jobs: int, verbose: bool) -> int:
    """Test every mutant (``jobs`` at a time), print one line each, and the survivors; 1 if any survived."""
    bad = []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [(m, pool.submit(run_one, m, verbose)) for m in chosen]
        for mutation, future in futures:
            outcome, seconds, tail = future.result()
            print(f"{outcome:>9}  {mutation.name}  ({seconds:.0f} s)", flush=True)
            if outcome != "killed" or verbose:
                print("\n".join(f"           {line}" for line in tail.splitlines()), flush=True)
            if outcome != "killed":
                bad.append(f"{mutation.name} ({outcome}; {mutation.file}; tests: {' '.join(mutation.tests)})")
    print(f"mutants: {len(chosen) - len(bad)} of {len(chosen)} killed")
    if bad:
        print("not killed:\n" + "\n".join(f"  {line}" for line in bad), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
