"""xpnet's scikit-learn estimators against MLPClassifier/MLPRegressor: same data, same settings.

    python scripts/sklearn_compare.py                   # print the Markdown table
    python scripts/sklearn_compare.py --write           # ... and put it in docs/SKLEARN.md
    python scripts/sklearn_compare.py --datasets digits,diabetes --repeats 1
    python scripts/sklearn_compare.py --datasets digits --write   # re-measure one row, keep the others

For each dataset both estimators get the same hidden layers, activation (ReLU), solver
(Adam), learning rate, L2 penalty, batch_size="auto" (the same number of steps per epoch),
number of epochs, random_state and initialisation (xpnet's glorot_uniform is the bound
scikit-learn draws ReLU weights from; it also draws the biases, xpnet starts them at 0), inside
the same pipeline (a StandardScaler for the tabular sets, x/255 for images; regression
targets standardised through TransformedTargetRegressor). ``tol=0`` and
``n_iter_no_change=max_iter`` make both run exactly ``max_iter`` epochs, so the times
compare the same work. Data is fed as a user would: float64 arrays; scikit-learn trains in
float64, xpnet in float32 (its default) and, in a third column, float64. Two rows train
otherwise: ``breast-cancer-balanced`` passes ``sample_weight=compute_sample_weight("balanced", y)``
to both ``fit``s, ``diabetes-poisson`` fits ``loss="poisson"`` on the targets / 100 (they must stay >= 0).

Runs alternate side by side (scikit-learn, xpnet float32, xpnet float64, then again) with
a pause before each, so a busy moment of a shared machine hits all of them alike; the
table gives the median fit time of ``--repeats`` runs, the test score of the first (scores
do not change between repeats: every run is seeded) and the load average.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.compose import TransformedTargetRegressor
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.utils.class_weight import compute_sample_weight

import xpnet
from xpnet.data import load_dataset
from xpnet.estimators import XpnetClassifier, XpnetRegressor

DOC = Path(__file__).resolve().parent.parent / "docs" / "SKLEARN.md"
BEGIN = "<!-- sklearn-compare:begin (written by scripts/sklearn_compare.py; do not edit by hand) -->"
END = "<!-- sklearn-compare:end -->"
PAUSE_S = 1.0  # lets the BLAS threads of the previous run stop spinning

#: name -> (loader, task, hidden layers, epochs)
DATASETS = {
    "fashion-mnist": ("fashion", "classification", (256, 128), 10),
    "digits": (load_digits, "classification", (64,), 50),
    "breast-cancer": (load_breast_cancer, "classification", (64,), 50),
    "diabetes": (load_diabetes, "regression", (64,), 100),
    "breast-cancer-balanced": (load_breast_cancer, "classification", (64,), 50),
    "diabetes-poisson": (load_diabetes, "regression", (64,), 100),
}
#: Rows that train otherwise than the defaults: ``sample_weight`` "balanced" (both fits get
#: scikit-learn's ``compute_sample_weight("balanced", y)``), or a regression ``loss``.
VARIANTS = {
    "breast-cancer-balanced": {"sample_weight": "balanced"},
    "diabetes-poisson": {"loss": "poisson"},  # the targets (disease progression, 25-346) / 100, not standardised
}


def load(name: str):
    """``(X_train, X_test, y_train, y_test, input transform)`` for dataset ``name``."""
    source, task = DATASETS[name][:2]
    if source == "fashion":
        data = load_dataset("fashion-mnist", progress=False)
        X_train, X_test = data.X_train.astype(np.float64), data.X_test.astype(np.float64)
        return X_train, X_test, data.y_train, data.y_test, FunctionTransformer(lambda X: X / 255.0)
    X, y = source(return_X_y=True)
    stratify = y if task == "classification" else None
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=stratify)
    return X_train, X_test, y_train, y_test, StandardScaler()


def settings(hidden, epochs) -> dict:
    """The settings both estimators share: MLPClassifier's defaults, epochs fixed."""
    return {
        "hidden_layer_sizes": hidden,
        "activation": "relu",
        "solver": "adam",
        "alpha": 1e-4,
        "batch_size": "auto",
        "learning_rate_init": 1e-3,
        "max_iter": epochs,
        "tol": 0.0,
        "n_iter_no_change": epochs,
        "random_state": 0,
    }


def contenders(task: str, common: dict, loss: str | None = None) -> dict:
    """The estimators compared, by column name (regressors with ``loss``, scikit-learn's name, where given)."""
    if task == "classification":
        return {
            "scikit-learn": MLPClassifier(**common),
            "xpnet float32": XpnetClassifier(init="glorot_uniform", **common),
            "xpnet float64": XpnetClassifier(init="glorot_uniform", dtype="float64", **common),
        }
    if loss is not None:
        common = {**common, "loss": loss}
    return {
        "scikit-learn": MLPRegressor(**common),
        "xpnet float32": XpnetRegressor(init="glorot_uniform", **common),
        "xpnet float64": XpnetRegressor(init="glorot_uniform", dtype="float64", **common),
    }


def fit_and_score(estimator, transform, task, X_train, X_test, y_train, y_test, variant=None) -> tuple:
    """``(seconds to fit, test score, epochs run)`` for one estimator in its pipeline."""
    variant = variant or {}
    pipeline = make_pipeline(transform, estimator)
    fit_params = {}
    if variant.get("sample_weight") == "balanced":
        fit_params[f"{pipeline.steps[-1][0]}__sample_weight"] = compute_sample_weight("balanced", y_train)
    if task == "regression" and "loss" in variant:  # Poisson targets must stay >= 0: scaled, not centred
        pipeline = TransformedTargetRegressor(pipeline, func=_per_hundred, inverse_func=_times_hundred)
    elif task == "regression":
        pipeline = TransformedTargetRegressor(pipeline, transformer=StandardScaler())
    time.sleep(PAUSE_S)
    started = time.perf_counter()
    pipeline.fit(X_train, y_train, **fit_params)
    seconds = time.perf_counter() - started
    fitted = pipeline.regressor_ if task == "regression" else pipeline
    return seconds, pipeline.score(X_test, y_test), fitted[-1].n_iter_


def _per_hundred(y):
    return y / 100.0


def _times_hundred(y):
    return y * 100.0


def compare(name: str, repeats: int) -> dict:
    """Side-by-side runs on one dataset; the median time and the score of each contender."""
    _, task, hidden, epochs = DATASETS[name]
    variant = VARIANTS.get(name, {})
    X_train, X_test, y_train, y_test, transform = load(name)
    times: dict[str, list[float]] = {}
    scores, iterations, loads = {}, {}, [os.getloadavg()[0]]
    for _ in range(repeats):
        for column, estimator in contenders(task, settings(hidden, epochs), variant.get("loss")).items():
            data = (X_train, X_test, y_train, y_test)
            seconds, score, n_iter = fit_and_score(estimator, transform, task, *data, variant)
            times.setdefault(column, []).append(seconds)
            scores.setdefault(column, score)
            iterations[column] = n_iter
        loads.append(os.getloadavg()[0])
    return {
        "name": name,
        "task": task,
        "shape": f"{len(X_train)}+{len(X_test)} x {X_train.shape[1]}",
        "hidden": hidden,
        "epochs": sorted(set(iterations.values())),
        "times": {column: statistics.median(values) for column, values in times.items()},
        "scores": scores,
        "loads": loads,
    }


def table(results: list[dict]) -> str:
    metric = {"classification": "accuracy", "regression": "R²"}
    lines = [
        "| dataset | train+test x features | hidden | epochs | metric | scikit-learn | xpnet float32 | "
        "xpnet float64 | fit time scikit-learn | xpnet float32 | xpnet float64 | load avg (1 min) |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        s, t = r["scores"], r["times"]
        sk = t["scikit-learn"]
        lines.append(
            f"| {r['name']} | {r['shape']} | {r['hidden']} | {'/'.join(map(str, r['epochs']))} "
            f"| {metric[r['task']]} | {s['scikit-learn']:.4f} | {s['xpnet float32']:.4f} | {s['xpnet float64']:.4f} "
            f"| {sk:.2f} s | {t['xpnet float32']:.2f} s ({sk / t['xpnet float32']:.1f}x) "
            f"| {t['xpnet float64']:.2f} s ({sk / t['xpnet float64']:.1f}x) "
            f"| {min(r['loads']):.1f}-{max(r['loads']):.1f} |"
        )
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as stream:
            cpu = next(line.split(":", 1)[1].strip() for line in stream if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import sklearn

    return (
        f"{cpu}, {os.cpu_count()} CPU cores; Python {platform.python_version()}, NumPy {np.__version__}, "
        f"scikit-learn {sklearn.__version__}, xpnet {xpnet.__version__}"
    )


def written_block(doc: Path = DOC) -> list[str]:
    """The lines between the markers in ``doc`` now (none if it has no table yet)."""
    current = doc.read_text(encoding="utf-8") if doc.exists() else ""
    if BEGIN not in current:
        return []
    return current.split(BEGIN, 1)[1].split(END, 1)[0].strip().splitlines()


def merged_block(results: list[dict], provenance: str, old: list[str]) -> str:
    """The table with this run's rows, and the rows of datasets this run left out kept as they
    were, each run's provenance line (``Rows `a, b`: command; date; machine.``) naming its rows."""
    rows = {r["name"]: row for r, row in zip(results, table(results).splitlines()[2:])}
    kept = {}
    for line in old:
        name = line.split("|")[1].strip() if line.startswith("| ") else None
        if name in DATASETS and name not in rows:
            kept[name] = line
    sources = []
    for line in old:
        if line.startswith("Rows `"):
            names = [n for n in line[len("Rows `") :].split("`", 1)[0].split(", ") if n in kept]
            if names:
                sources.append(f"Rows `{', '.join(names)}`:{line.split('`:', 1)[1]}")
    sources.append(f"Rows `{', '.join(rows)}`: {provenance}")
    every = {**kept, **rows}
    body = [every[name] for name in DATASETS if name in every]
    return "\n".join([*table([]).splitlines(), *body, "", *sources])


def write_doc(text: str, doc: Path = DOC) -> None:
    from xpnet.fileio import atomic_write_text

    current = doc.read_text(encoding="utf-8") if doc.exists() else f"# scikit-learn\n\n{BEGIN}\n{END}\n"
    head, rest = current.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    atomic_write_text(doc, f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="side-by-side runs per dataset (median time)")
    parser.add_argument("--write", action="store_true", help=f"put the table in {DOC.name}")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.datasets.split(",") if name.strip()]
    unknown = [name for name in names if name not in DATASETS]
    if unknown:
        parser.error(f"unknown datasets {unknown}; choose from {', '.join(DATASETS)}")
    warnings.simplefilter("ignore", ConvergenceWarning)  # epochs are fixed on purpose
    command = "python scripts/sklearn_compare.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = []
    for name in names:
        results.append(compare(name, args.repeats))
        print(f"{name}: done", file=sys.stderr, flush=True)
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    text = merged_block(results, f"`{command.strip()}`; {when}; {machine()}.", written_block() if args.write else [])
    print(text)
    if args.write:
        write_doc(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
