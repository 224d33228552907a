"""Every hostile JSON value in every key of every metadata section: refused by name, never a traceback.

One checkpoint written by ``python -m xpnet train`` carries every section
(architecture, training, class names, scaling, history, the loop's state). The
sweep replaces one value at a time, at every key and list position, with each
value of ``HOSTILE`` (wrong types, huge and tiny numbers, a 400-digit integer,
NaN and infinities, deep nesting, long and invalid strings, empty containers),
then runs ``evaluate``, ``predict`` and ``train --resume`` on the file. Each run
must end well: exit 0, or 1 for a divergence, or 2 with ``xpnet: error:``
naming the file and the key; and a value of the wrong kind must be refused.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from xpnet import cli
from xpnet.cli import main
from xpnet.safetensors import load_tensors, save_tensors

_DEEP = object()  #: stands for JSON nested 100,000 levels deep (beyond any recursion limit)
HOSTILE = [
    None, True, 0, -1, 1.5, 1e308, -1e308, 5e-324, 10**400, -(10**400), 2**64,
    math.nan, math.inf, -math.inf,
    "", "x", "x" * 100_000, "\ud800", "../../../etc/passwd",
    [], {}, [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]], {"a": {"b": {"c": None}}}, _DEEP,
]  # fmt: skip
SECTIONS = ("architecture", "training", "class_names", "scaling", "history", "checkpoint")


def _paths(value, prefix=()):
    """Every key and list position below ``value`` (the first item of a list of containers)."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        containers = any(isinstance(item, (dict, list)) for item in value)
        for i, item in enumerate(value[: 1 if containers else 2]):
            yield from _paths(item, (*prefix, i))


def _replaced(document, path, value):
    """``document`` as JSON text with the value at ``path`` replaced by ``value``."""
    marker = "\x00HOSTILE\x00"
    copy = json.loads(json.dumps(document))
    if path:
        parent = copy
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = marker
    else:
        copy = marker
    text = "[" * 100_000 + "]" * 100_000 if value is _DEEP else json.dumps(value)
    return json.dumps(copy).replace(json.dumps(marker), text)


#: Keys whose schema takes null besides the kind saved here, and keys that take two kinds.
NULLABLE = {"task", "output", "patience", "recipe", "backend", "device", "data_dir", "rng_state", "dropout_state"}
TWO_KINDS = {("architecture", "dropout"): "number", ("architecture", "init"): "str"}
INFINITE = {"samples_per_s", "best_val_loss"}  # an epoch too fast to time; no validation yet
TWO_KINDS |= {("scaling", "shift"): "number", ("scaling", "scale"): "number"}


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return "number" if isinstance(value, (int, float)) else type(value).__name__


def _wrong_kind(section, path, original, value) -> bool:
    """A value no schema could accept in place of ``original``: another JSON kind, or unusable."""
    names = [step for step in path if isinstance(step, str)]
    key = names[-1] if names else section
    if value is _DEEP:
        return True
    if isinstance(value, float) and not math.isfinite(value):
        return not (value == math.inf and key in INFINITE)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**128:
        return True
    if isinstance(value, str) and (len(value) > 10_000 or "\ud800" in value):
        return True
    if original is None or (value is None and (key in NULLABLE or (not path and section in ("scaling", "checkpoint")))):
        return False
    return _kind(value) not in (_kind(original), TWO_KINDS.get((section, key)) if len(path) == 1 else None)


def _key_path(section, path) -> str:
    """A key path as messages write it: ``checkpoint.state.rng_state``, ``architecture.sizes[1]``."""
    text = section
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else f".{step}"
    return text


def _names_key(message: str, section, path, command: str) -> bool:
    """The message names the replaced key, or (a rule between keys broke) a key beside it.

    A resumed run's settings that are sound alone but do not fit the data (a dataset
    that is not there) are named by the setting: ``--resume FILE: ... val_split``.
    """
    parent = _key_path(section, path[:-1])
    if _key_path(section, path) in message or (path and f"metadata {parent}." in message):
        return True
    while path and isinstance(path[-1], int):  # a list checked as a whole names the list
        path = path[:-1]
    if f"metadata {_key_path(section, path)}:" in message:
        return True
    names = [step for step in path if isinstance(step, str)]
    return command == "resume" and section == "training" and len(names) == 1 and names[0] in message


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A folder with a tiny dataset, inputs to predict, and a checkpoint holding every section."""
    folder = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 4)).astype(np.float32)
    np.savez(folder / "d.npz", X=X, y=X[:, :3].argmax(axis=1))
    np.savez(folder / "x.npz", X=X[:5])
    args = ["--dataset", "d.npz", "--layers", "6", "--epochs", "2", "--batch-size", "10", "--optimizer", "adam"]
    args += ["--dropout", "0.1", "--scaling", "standard", "--patience", "5", "--out", "m.safetensors", "--quiet"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        assert main(["train", *args]) == 0
    return folder


def _commands(model: str) -> dict[str, list[str]]:
    return {
        "evaluate": ["evaluate", model],
        "predict": ["predict", model, "x.npz", "--out", "p.csv"],
        "resume": ["train", "--resume", model, "--out", "r.safetensors", "--epochs", "3", "--quiet"],
    }


def _run(argv, capsys) -> tuple[int | str, str]:
    try:
        code = main(argv)
    except Exception as exc:  # a traceback: the bug this test looks for
        code = f"an uncaught {type(exc).__name__}: {str(exc)[:100]}"
    return code, capsys.readouterr().err


def _verdict(command, code, err, section, path, original, value) -> str | None:
    """What went wrong with one run, or None."""
    if code not in (0, 1, 2):
        return f"ended with {code}"
    if code == 1 and "training diverged" not in err:
        return f"exit 1 without a divergence: {err}"
    if code == 2 and not (err.startswith("xpnet: error: ") and "bad.ckpt.safetensors" in err):
        return f"a message without the file: {err}"
    if code == 2 and not _names_key(err, section, path, command):
        return f"a message without the key: {err}"
    if code != 2 and _wrong_kind(section, path, original, value):
        return f"accepted a value of the wrong kind (exit {code})"
    return None


def test_every_hostile_value_in_every_key_is_refused_by_name(trained, capsys, monkeypatch):
    monkeypatch.chdir(trained)
    # Speed only: ~7,000 runs need neither durable saves nor a fresh argument parser each.
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    monkeypatch.setattr(cli, "build_parser", functools.cache(cli.build_parser))
    tensors, metadata = load_tensors("m.ckpt.safetensors")
    runs, failures = 0, []
    for section in SECTIONS:
        document = json.loads(metadata[section])
        for path in list(_paths(document)):
            original = _at(document, path)
            for value in HOSTILE:
                save_tensors("bad.ckpt.safetensors", tensors, {**metadata, section: _replaced(document, path, value)})
                for command, argv in _commands("bad.ckpt.safetensors").items():
                    code, err = _run(argv, capsys)
                    problem = _verdict(command, code, err, section, path, original, value)
                    if problem:
                        failures.append(f"{command} with {_key_path(section, path)} = {str(value)[:30]!r}: {problem}")
                    runs += 1
    assert runs > 5000
    assert not failures, f"{len(failures)} of {runs} runs went wrong:\n" + "\n".join(failures[:30])


def _at(document, path):
    for step in path:
        document = document[step]
    return document
