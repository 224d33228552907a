"""Every code block of README.md and docs/*.md runs as written, on the CPU.

Each fenced block says what it is: ``shell`` (commands, run line by line in one folder, in
order, so a later line finds the files an earlier one wrote), ``python`` (run in one namespace
per file, in order, by tests/readme_blocks.py) or ``text`` (output, not run). What is not run,
and why, is decided here and nowhere else:

- installs (``pip``, ``apt-get``): they would change this environment; CI's .ci/run does them.
- ``python -m pytest``: the suite itself.
- the full benchmark (``python -m xpnet bench`` without options, ``--compare``): minutes; its
  quick form, which README gives beside it, runs.
- the GPU kit (``scripts/gpu_kit.py``, ``scripts/gpu_kit.sh``): packing downloads wheels, running
  needs the GPU node; tests/test_gpu_kit.py runs its dry run.

Shortened, and said here: training commands run at most ``EPOCHS`` epochs
(``XPNET_README_EPOCHS``, read by tests/readme_shim/sitecustomize.py); their text is what a user
types. Python blocks run in full. A line that asks for a CUDA device must, without a GPU, be
refused cleanly (``xpnet: error:`` or selfcheck's FAIL line, no traceback).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EPOCHS = 1
DATA = Path("/usr/share/datasets/fashion-mnist")
LANGUAGES = ("shell", "python", "text")
NOT_RUN = (
    (re.compile(r"^(pip|apt-get|env MPICC=\S+ pip) "), "an install"),
    (re.compile(r"^python -m pytest\b"), "the test suite itself"),
    (re.compile(r"^python -m xpnet bench( --compare)?$"), "the full benchmark (minutes); its quick form runs"),
    (
        re.compile(r"^(python scripts/gpu_kit\.py|bash scripts/gpu_kit\.sh) "),
        "the GPU kit (pack downloads wheels, run needs the GPU node; tests/test_gpu_kit.py runs its dry run)",
    ),
)
GPU = re.compile(r"--device cuda")
_FENCE = re.compile(r"^```(\S*)\n(.*?)^```", re.M | re.S)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"needs {DATA} (apt-get install dataset-fashion-mnist)"),
]


def blocks(path: Path) -> list[tuple[str, str, str]]:
    """``(language, code, where)`` of each fenced block of ``path``."""
    text = path.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        found.append((match.group(1), match.group(2), f"{path.relative_to(ROOT)}:{line}"))
    return found


def commands(code: str) -> list[str]:
    """The shell block's commands: continuation lines joined, comments dropped, ``&&`` split."""
    joined = re.sub(r"\\\n\s*", " ", code)
    found = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        found += [part.strip() for part in line.split(" && ") if part.strip()]
    return found


def not_run_because(command: str) -> str | None:
    return next((why for pattern, why in NOT_RUN if pattern.search(command)), None)


def has_gpu() -> bool:
    done = subprocess.run(
        [sys.executable, "-c", "from xpnet.backend import get_backend; get_backend(device='cuda')"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, timeout=120,
    )  # fmt: skip
    return done.returncode == 0


def environment() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'tests' / 'readme_shim'}{os.pathsep}{ROOT}",
        "XPNET_README_EPOCHS": str(EPOCHS),
        "CI": "1",  # no progress bars
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def test_every_block_says_what_it_is():
    unmarked = [where for path in DOCUMENTS for language, _, where in blocks(path) if language not in LANGUAGES]
    assert not unmarked, f"fenced blocks without one of {LANGUAGES}: {unmarked}"


def _selfcheck_sample() -> str:
    """README's sample of ``python -m xpnet selfcheck``'s output."""
    return next(code for language, code, _ in blocks(ROOT / "README.md") if "xpnet selfcheck on" in code)


def test_selfchecks_sample_output_has_every_check_in_order():
    from xpnet.selfcheck import CHECKS

    sample = _selfcheck_sample()
    names = [line.split()[1] for line in sample.splitlines() if line[:4] in ("PASS", "FAIL", "SKIP")]
    assert names == list(CHECKS)
    assert f"of {len(CHECKS)} checks" in sample


#: Checks whose line the code alone decides (no timing, no versions, no CUDA libraries): README's
#: sample must say what they print now (its sync-audit line had said 1241 operations after the code made 937).
FIXED_CHECKS = ("gradients", "sync-audit", "dropout", "save-resume", "training")
#: Runs them in a fresh process, as selfcheck does: a process's first audited fit makes one device
#: constant that later ones reuse, so a second run in one process watches one operation fewer.
_RUN_FIXED = """
import sys, tempfile
from pathlib import Path
from xpnet.backend import get_backend
from xpnet.selfcheck.checks import CHECKS, Context
context = Context(get_backend("numpy"), Path(tempfile.mkdtemp()))
for name in sys.argv[1:]:
    outcome = CHECKS[name](context)
    print(f"{outcome.status:4s}  {name:15s} {outcome.detail}")  # as selfcheck prints it
"""


def test_selfchecks_sample_lines_are_what_the_checks_print():
    pytest.importorskip("torch", reason="the sample's sync-audit line includes PyTorch's meta device")
    sample = _selfcheck_sample()
    written = [line for line in sample.splitlines() if line[:4] in ("PASS", "FAIL") and line.split()[1] in FIXED_CHECKS]
    ran = subprocess.run(
        [sys.executable, "-c", _RUN_FIXED, *FIXED_CHECKS], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert ran.returncode == 0, ran.stderr
    assert written == ran.stdout.splitlines()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """One working folder for all documents: README's later commands use the files earlier ones wrote."""
    return tmp_path_factory.mktemp("readme")


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_the_shell_blocks_run_as_written(path, folder):
    if shutil.which("mpiexec", path=environment()["PATH"]) is None and "mpiexec" in path.read_text():
        pytest.skip('needs mpiexec (pip install "xpnet[mpi]")')
    gpu, env = has_gpu(), environment()
    for language, code, where in blocks(path):
        if language != "shell":
            continue
        for command in commands(code):
            if not_run_because(command):
                continue
            done = subprocess.run(command, shell=True, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
            said = f"{where}: {command}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
            assert "Traceback" not in done.stderr, said
            if GPU.search(command) and not gpu:
                assert done.returncode != 0, said
                assert "xpnet: error:" in done.stderr or "FAIL  environment" in done.stdout, said
                assert "--device cpu" in done.stderr + done.stdout, said  # the command line's words
            elif GPU.search(command):  # a GPU here: it runs, or is refused cleanly (mpiexec -n 4 on fewer GPUs)
                assert done.returncode == 0 or "xpnet: error:" in done.stderr, said
            else:
                assert done.returncode == 0, said


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_the_python_blocks_run_as_written(path, folder):
    python = [{"code": code, "where": where} for language, code, where in blocks(path) if language == "python"]
    if not python:
        pytest.skip(f"{path.name} has no Python block")
    (folder / "blocks.json").write_text(json.dumps(python))
    runner = ROOT / "tests" / "readme_blocks.py"
    env = {**environment(), "XPNET_README_EPOCHS": ""}  # Python blocks run in full
    done = subprocess.run(
        [sys.executable, str(runner), "blocks.json"], cwd=folder, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    assert "Traceback" not in done.stderr, done.stderr


def test_the_commands_that_are_not_run_are_only_those_named():
    skipped = {
        command: not_run_because(command)
        for path in DOCUMENTS
        for language, code, _ in blocks(path)
        if language == "shell"
        for command in commands(code)
        if not_run_because(command)
    }
    assert all(why for why in skipped.values())
    quick = [c for c in skipped if c.startswith("python -m xpnet bench")]
    assert quick, "README's full benchmark lines are expected among the not-run ones"
    assert any(
        command.startswith("python -m xpnet bench --")
        for path in DOCUMENTS
        for language, code, _ in blocks(path)
        if language == "shell"
        for command in commands(code)
        if not not_run_because(command)
    ), "README should give a quick form of the benchmark, which runs here"
