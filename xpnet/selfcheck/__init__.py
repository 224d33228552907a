"""``python -m xpnet selfcheck``: one command that says whether xpnet works on this machine.

Versions and libraries found, each fused kernel against its array-API reference, a
finite-difference gradient check, every optimizer against NumPy, the sync audit, dropout
with the real generator, save and resume, a short training run with its host-read count
and a small benchmark against the device's measured GEMM rate: one PASS/FAIL/SKIP line
each, then a summary. Exit status 0 only if nothing failed. Runs on the CPU too.
"""

from __future__ import annotations

import json
import sys

from xpnet.backend import get_backend
from xpnet.errors import ConfigError, XpnetError, for_command_line
from xpnet.memory import Estimate
from xpnet.selfcheck.checks import CHECKS, Outcome, run_checks

__all__ = ["CHECKS", "add_arguments", "main", "run_checks"]

#: What the checks are taken to hold at once (issue 24 reported a 31 MiB tracemalloc peak on a CPU run).
CHECKS_BYTES = 32 * 2**20


def add_arguments(parser) -> None:
    """selfcheck's own options (the CLI adds --device and --backend from the settings table)."""
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def main(args) -> int:
    """Run every check on the backend ``args`` name; print the report; 0 if none failed.

    A usage error (a device string no backend takes, a memory limit too small for the checks)
    is raised before any check, for the CLI to print as ``xpnet: error:``; a backend or device
    this machine lacks is the environment check's FAIL.
    """
    Estimate().add("the checks' networks, data and copies", CHECKS_BYTES).check("selfcheck")
    try:
        backend = get_backend(args.backend, args.device)
    except ConfigError:
        raise
    except XpnetError as exc:  # the device is refused: every other check is said not to have run
        results = {name: Outcome("SKIP", "not run: the device was refused (see environment)") for name in CHECKS}
        results["environment"] = Outcome("FAIL", for_command_line(str(exc)))
        backend = None
    else:
        results = run_checks(backend)
    counts = {status: sum(r.status == status for r in results.values()) for status in ("PASS", "FAIL", "SKIP")}
    where = str(backend) if backend is not None else f"{args.backend or 'default backend'} on {args.device or 'cpu'}"
    if args.json:
        report = {
            "target": where,
            "checks": {name: {"status": r.status, "detail": r.detail, "data": r.data} for name, r in results.items()},
            "summary": counts,
        }
        json.dump(report, sys.stdout, indent=2, default=str)
        print()
    else:
        print(f"xpnet selfcheck on {where}")
        for name, result in results.items():
            print(f"{result.status:4s}  {name:15s} {result.detail}")
        skipped = f", {counts['SKIP']} skipped" if counts["SKIP"] else ""
        print(f"summary: {counts['PASS']} passed, {counts['FAIL']} failed{skipped} of {len(CHECKS)} checks")
    return 1 if counts["FAIL"] or backend is None else 0
