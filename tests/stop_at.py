"""``python -m xpnet`` that holds still at a known step until a signal arrives: signals without races.

Usage: ``python tests/stop_at.py POLL MARKER XPNET_ARGS...`` (or under ``python -m mpi4py``).

The CLI's stop flag (``xpnet.cli._StopFlag``, the flag the SIGINT/SIGTERM handler sets) is
polled after every training step and once at each epoch's end: an epoch of ``S`` steps polls
``S + 1`` times. At poll number ``POLL`` this writes ``MARKER`` and waits inside the poll
until a signal has arrived (the real handler sets the flag), then answers as the CLI would.
A test that sends its signal once ``MARKER`` exists therefore lands it at that poll exactly,
however loaded the machine is; a SIGKILL sent then ends the process at that step.
Every other poll, and everything else, is the unchanged CLI.

Under mpiexec each rank writes ``MARKER.rank<r>`` holding its process id, so a test can signal
one rank alone; creating ``MARKER.go`` lets the ranks that got no signal go on (their flag unset).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import xpnet.cli


def _rank() -> str | None:
    """This process's rank under mpiexec (MPICH's Hydra or Open MPI), None outside a job."""
    return os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK")


def _hold_at(poll: int, marker: Path, limit_s: float = 120.0):
    """``_StopFlag.__call__`` that writes ``marker`` at poll number ``poll`` and waits there for a signal."""
    answer = xpnet.cli._StopFlag.__call__
    rank, go = _rank(), marker.with_name(f"{marker.name}.go")
    written = marker if rank is None else marker.with_name(f"{marker.name}.rank{rank}")
    polls = 0

    def polled(flag) -> bool:
        nonlocal polls
        polls += 1
        if polls == poll:
            temporary = written.with_name(f"{written.name}.tmp")
            temporary.write_text(f"{os.getpid()}\n")
            temporary.replace(written)  # whole when it appears
            deadline = time.monotonic() + limit_s  # a test that never signals fails, not hangs
            while flag.signum is None and not go.exists() and time.monotonic() < deadline:
                time.sleep(0.001)  # Python runs the signal handler here, in the main thread
        return answer(flag)

    return polled


def main(argv: list[str]) -> int:
    poll, marker, *args = argv
    xpnet.cli._StopFlag.__call__ = _hold_at(int(poll), Path(marker))
    return xpnet.cli.main(args)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
