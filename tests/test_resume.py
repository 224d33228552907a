"""Resuming through a real checkpoint keeps early stopping's state: the best epoch and the patience count.

The run: a noisy two-class problem that Adam at lr 0.03 overfits, with ``--patience 3``. Its
validation loss is best at epoch 4, and early stopping ends it after epoch 7 (three epochs
without a better one); the kept weights are epoch 4's. The run is stopped through the same
``should_stop`` hook the CLI's signal handler sets (in the CLI tests, by a real SIGINT the
process sends itself at a chosen poll), at epoch ends after the best epoch and in the middle
of the epochs that count towards the patience, and resumed from the checkpoint it wrote:
each resumed run must end exactly as the uninterrupted one (bit-identical weights, the same
history, the same number of epochs), on every CPU backend, from the library and the CLI.
A resume that forgot ``best_epoch`` or ``bad_epochs`` trains other epochs and fails here.
JAX runs its steps eagerly here (``compile_steps=False``, ``--no-compile``): compiled, it polls for a
stop once per chunk of steps, so a stop at a chosen poll would land elsewhere; tests/test_compiled.py
resumes compiled runs from stops between chunks.
"""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
from conftest import CPU_BACKENDS

import xpnet.cli
from xpnet.checkpoint import ModelFile
from xpnet.run import BASE_SETTINGS, checkpoint_path, resumed_settings, run_training
from xpnet.safetensors import load_tensors

TIMING = ("seconds", "samples_per_s")
#: 300 samples: 60 test, 60 validation (val-split 0.25 of 240), 180 trained in batches of 16.
STEPS = 180 // 16
EPOCHS, BEST, STOPPED = 15, 4, 7
#: Where to stop: at the end of epoch e, the poll e * (STEPS + 1); mid-epoch, a few steps later.
STOPS = {
    "end-of-best-epoch": BEST * (STEPS + 1),
    "end-of-epoch-5": 5 * (STEPS + 1),
    "end-of-epoch-6": 6 * (STEPS + 1),
    "mid-epoch-6": 5 * (STEPS + 1) + 3,
    "mid-epoch-7": 6 * (STEPS + 1) + 7,
}


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 10)).astype(np.float32)
    y = (X[:, 0] + rng.standard_normal(300) > 0).astype(int)
    np.savez(folder / "noisy.npz", X=X, y=y)
    return folder / "noisy.npz"


def _settings(dataset, spec) -> dict:
    backend, device = spec
    return {
        **BASE_SETTINGS, "dataset": str(dataset), "layers": [64], "optimizer": "adam", "lr": 0.03, "batch_size": 16,
        "val_split": 0.25, "scaling": "standard", "epochs": EPOCHS, "patience": 3, "seed": 1,
        "backend": backend, "device": device,
    }  # fmt: skip


def _after_polls(n: int, action=None):
    """A ``should_stop`` hook that asks to stop from its ``n``-th poll on (calling ``action`` there)."""
    polls = 0

    def should_stop() -> bool:
        nonlocal polls
        polls += 1
        if polls == n and action is not None:
            action()
        return polls >= n

    return should_stop


def _history(path) -> list[dict]:
    records = json.loads(load_tensors(path)[1]["history"])
    return [{k: v for k, v in record.items() if k not in TIMING} for record in records]


def _assert_same_model(path, reference) -> None:
    mine, theirs = load_tensors(path)[0], load_tensors(reference)[0]
    assert sorted(mine) == sorted(theirs)
    for name in theirs:
        np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)
    assert _history(path) == _history(reference)


@pytest.fixture(scope="module", params=CPU_BACKENDS)
def reference(request, noisy, tmp_path_factory):
    """The uninterrupted run on one backend: best at epoch 4, stopped early after epoch 7."""
    settings = _settings(noisy, request.param)
    out = tmp_path_factory.mktemp("reference") / "ref.safetensors"
    result = run_training(settings, out=out, compile_steps=False)
    assert result["epochs"] == STOPPED
    val = [record["val_loss"] for record in result["history"]]
    assert int(np.argmin(val)) + 1 == BEST  # the best epoch is not the last: there is something to remember
    return settings, out


@pytest.mark.parametrize("stop", STOPS)
def test_the_library_resumes_a_run_with_patience_to_the_uninterrupted_end(reference, tmp_path, stop):
    settings, ref = reference
    out = tmp_path / "m.safetensors"
    interrupted = run_training(settings, out=out, should_stop=_after_polls(STOPS[stop]), compile_steps=False)
    assert interrupted["interrupted"]
    state = ModelFile(checkpoint_path(out)).checkpoint["state"]
    assert state["best_epoch"] == BEST and state["bad_epochs"] == state["epoch"] - BEST, state
    again = resumed_settings(str(checkpoint_path(out)), {})
    resumed = run_training(again, out=out, resume=checkpoint_path(out), compile_steps=False)
    assert resumed["epochs"] == STOPPED
    _assert_same_model(out, ref)


def _cli_flags(settings: dict) -> list[str]:
    flags = ["--dataset", settings["dataset"], "--layers", "64", "--optimizer", "adam", "--lr", "0.03"]
    flags += ["--batch-size", "16", "--val-split", "0.25", "--scaling", "standard", "--epochs", str(EPOCHS)]
    flags += ["--patience", "3", "--seed", "1", "--backend", settings["backend"], "--no-compile"]
    return flags + (["--device", settings["device"]] if settings["device"] else [])


@pytest.mark.parametrize("stop", ["end-of-epoch-5", "mid-epoch-7"])
def test_the_cli_resumes_a_sigint_checkpoint_with_patience_to_the_uninterrupted_end(
    reference, tmp_path, monkeypatch, capsys, stop
):
    settings, _ = reference
    full, out = tmp_path / "full.safetensors", tmp_path / "m.safetensors"
    assert xpnet.cli.main(["train", *_cli_flags(settings), "--out", str(full), "--quiet"]) == 0
    # The CLI's own flag, set by its own handler: the process sends itself SIGINT at the chosen poll.
    sigint = _after_polls(STOPS[stop], lambda: signal.raise_signal(signal.SIGINT))
    monkeypatch.setattr(xpnet.cli._StopFlag, "__call__", lambda flag: sigint() and flag.signum is not None)
    assert xpnet.cli.main(["train", *_cli_flags(settings), "--out", str(out), "--quiet"]) == 130
    assert f"--resume {checkpoint_path(out)} --out {out}" in capsys.readouterr().err
    monkeypatch.undo()
    resume = ["train", "--resume", str(checkpoint_path(out)), "--out", str(out), "--quiet", "--no-compile"]
    assert xpnet.cli.main(resume) == 0
    assert len(_history(out)) == STOPPED
    _assert_same_model(out, full)
