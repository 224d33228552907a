"""Run every named recipe and write the measured results into docs/RECIPES.md.

    python scripts/recipes.py                       # all recipes, default device
    python scripts/recipes.py --recipes default,relu-momentum --device cpu

Each recipe goes through the CLI's own training function (``xpnet.run.run_training``),
so the table shows what ``python -m xpnet train --recipe NAME`` gives. The table lands
between the marker comments in docs/RECIPES.md; the prose around it is kept. With
``--recipes`` only those rows are replaced, the others stay as they were.
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "RECIPES.md"
BEGIN = "<!-- recipes-table:begin (written by scripts/recipes.py; do not edit by hand) -->"
END = "<!-- recipes-table:end -->"
HEADER = "| recipe | dataset | test result | epochs run | wall time | device |\n|---|---|---|---:|---:|---|"


def run_recipe(name: str, device: str | None = None, backend: str | None = None) -> dict:
    """Train recipe ``name`` as the CLI would, quietly; return ``run_training``'s result."""
    from xpnet.run import resolve_settings, run_training

    overrides = {"device": device, "backend": backend}
    settings = resolve_settings(name, overrides)
    return run_training(settings, quiet=True)


def table_row(name: str, dataset: str, result: dict) -> str:
    test = result["test"]
    if "accuracy" in test:
        score = f"{100 * test['accuracy']:.2f}% accuracy"
    else:
        score = f"R² {test['r2']:.3f}, MSE {test['mse']:.0f}"
    return f"| `{name}` | {dataset} | {score} | {result['epochs']} | {result['seconds']:.0f} s | {result['device']} |"


def write_table(rows: dict[str, str], doc: Path = DOC) -> None:
    """Put ``rows`` (recipe name -> table row) between the markers, keeping rows not re-run."""
    from xpnet.backend.threads import usable_cores
    from xpnet.bench.environment import cpu_label
    from xpnet.fileio import atomic_write_text
    from xpnet.recipes import RECIPES

    text = doc.read_text(encoding="utf-8") if doc.exists() else f"# Recipes\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    old, tail = rest.split(END, 1)
    for line in old.splitlines():
        found = re.match(r"\| `([^`]+)` \|", line)
        if found and found.group(1) not in rows:
            rows[found.group(1)] = line
    ordered = [rows[name] for name in RECIPES if name in rows]
    machine = f"{cpu_label()} ({platform.machine()}), {usable_cores()} CPU cores, Python {platform.python_version()}"
    table = "\n".join([HEADER, *ordered])
    atomic_write_text(doc, f"{head}{BEGIN}\n{table}\n\nMeasured on: {machine}.\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    from xpnet.errors import XpnetError
    from xpnet.recipes import RECIPES, get_recipe
    from xpnet.run import resolve_settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated recipe names (default: all)")
    parser.add_argument("--device", default=None, help="device to train on, e.g. cpu or cuda:0")
    parser.add_argument("--backend", default=None, help="array library: numpy, cupy, torch")
    parser.add_argument("--doc", type=Path, default=DOC, help="the Markdown file to update")
    args = parser.parse_args(argv)
    try:
        names = [get_recipe(name).name for name in args.recipes.split(",") if name.strip()]
    except XpnetError as exc:
        parser.error(str(exc))
    rows = {}
    for name in names:
        print(f"== {name}", flush=True)
        result = run_recipe(name, device=args.device, backend=args.backend)
        rows[name] = table_row(name, resolve_settings(name, {})["dataset"], result)
        print(rows[name], flush=True)
        write_table(dict(rows), args.doc)  # after every recipe, so a long run keeps what it measured
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
