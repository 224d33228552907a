"""Resource exhaustion: a run, a file or a network past the memory limit is refused before it allocates.

Never by allocating gigabytes: the limits here are small (a few MiB) and the memory a
call really takes is read with ``tracemalloc`` (NumPy reports its arrays to it). The
generated test runs small trainings under random limits: each either finishes or is
refused with ``MemoryLimitError``, and in both cases never held more than the limit.
Those limits are mostly far above what the runs need, so runs are also made at the limit their
own estimate allows (a batch of 4,096 through 2,048 units, two layers of 1,024 under Adam, a
40,000-sample prediction to CSV): each must go through and peak within it, and a MiB less must
be refused; an estimate that forgot a part it allocates fails there. Then the reported
cases, scaled down: a small ``.npz`` asking for a huge first layer, a gzip IDX declaring
far more than it holds, ``--layers`` too wide, a confusion matrix of thousands of classes,
and a ``MemoryError`` the estimates did not foresee.
"""

from __future__ import annotations

import gzip
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpnet import run
from xpnet.backend import NumpyBackend
from xpnet.cli import main
from xpnet.data import read_idx
from xpnet.errors import ConfigError, MemoryLimitError
from xpnet.memory import ENV, limited, parse_size
from xpnet.network import MLP
from xpnet.plot import plot_training
from xpnet.settings import BASE_SETTINGS

MiB = 2**20
RUNS = settings(
    max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _peak(work) -> tuple[int, BaseException | None]:
    """The most memory ``work()`` held at once (as tracemalloc sees it), and what it raised."""
    tracemalloc.start()
    try:
        work()
        error = None
    except MemoryLimitError as exc:
        error = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, error


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """One small run first: the modules a run imports on first use are not the run's memory."""
    folder = tmp_path_factory.mktemp("warm")
    np.savez(folder / "d.npz", X=np.zeros((20, 2), np.float32), y=np.arange(20) % 2)
    run.run_training({**BASE_SETTINGS, "dataset": str(folder / "d.npz"), "layers": [4], "epochs": 1}, quiet=True)


@RUNS
@given(
    width=st.integers(8, 2048),
    depth=st.integers(1, 2),
    batch=st.integers(1, 512),
    n=st.integers(20, 2000),
    features=st.integers(2, 512),
    optimizer=st.sampled_from(["sgd", "adam"]),
    dtype=st.sampled_from(["float32", "float64"]),
    limit_mib=st.integers(4, 48),
)
def test_a_run_never_holds_more_than_the_limit(warm, tmp_path_factory, width, depth, batch, n, features, optimizer,
                                               dtype, limit_mib):  # fmt: skip
    folder = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, features)).astype(np.float32)
    np.savez(folder / "d.npz", X=X, y=np.arange(n) % 3)
    options = {"dataset": str(folder / "d.npz"), "layers": [width] * depth, "batch_size": batch, "epochs": 1}
    options |= {"optimizer": optimizer, "momentum": 0.9 if optimizer == "sgd" else 0.0, "dtype": dtype}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV, f"{limit_mib}M")
        peak, refused = _peak(lambda: run.run_training({**BASE_SETTINGS, **options}, quiet=True))
    assert peak <= limit_mib * MiB, f"held {peak / MiB:.1f} MiB under a {limit_mib} MiB limit (refused: {refused})"


def test_a_small_npz_asking_for_a_huge_first_layer_is_refused(tmp_path, capsys):
    """A few KiB of compressed zeros with 200,000 features: the default layers would hold ~300 MiB."""
    np.savez_compressed(tmp_path / "wide.npz", X=np.zeros((4, 200_000), np.float32), y=np.array([0, 1, 0, 1]))
    assert (tmp_path / "wide.npz").stat().st_size < 100_000
    args = ["train", "--dataset", str(tmp_path / "wide.npz"), "--epochs", "1", "--memory-limit", "24M"]
    assert main([*args, "--out", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xpnet: error: training on") and "more than the memory limit of 24.0 MiB" in err
    assert "--memory-limit" in err and not (tmp_path / "m.safetensors").exists()


def test_a_gzip_idx_declaring_more_than_the_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 1000, 1000, 100)  # 100 MB of uint8 declared
    (tmp_path / "big-idx3-ubyte.gz").write_bytes(gzip.compress(header + bytes(100_000_000), compresslevel=1))
    monkeypatch.setenv(ENV, "32M")  # the environment's limit, this time
    peak, refused = _peak(lambda: read_idx(tmp_path / "big-idx3-ubyte.gz"))
    assert isinstance(refused, MemoryLimitError) and "big-idx3-ubyte.gz" in str(refused)
    assert peak < 4 * MiB


def test_layers_too_wide_are_refused_by_the_network_itself():
    with limited(16 * MiB):
        peak, refused = _peak(lambda: MLP([784, 3000, 3000, 10]))
    assert isinstance(refused, MemoryLimitError) and "the network [784, 3000, 3000, 10]" in str(refused)
    assert peak < 1 * MiB


def test_layers_too_wide_on_the_command_line_exit_2(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", X=rng.standard_normal((40, 8)).astype(np.float32), y=np.arange(40) % 2)
    args = ["train", "--dataset", str(tmp_path / "d.npz"), "--layers", "3000,3000", "--memory-limit", "64M"]
    assert main([*args, "--out", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "weights" in err and "more than the memory limit of 64.0 MiB" in err and "Traceback" not in err


def test_a_plot_of_thousands_of_classes_draws_no_confusion_matrix(tmp_path):
    pytest.importorskip("matplotlib")
    truth = np.arange(4000) % 4000
    records = [{"epoch": 1, "loss": 1.0, "accuracy": 0.5}]
    peak, _ = _peak(lambda: plot_training(tmp_path / "p.png", records, truth, truth[::-1].copy(), None))
    assert (tmp_path / "p.png").exists()
    assert peak < 64 * MiB  # the 4000 x 4000 matrix alone would take 128 MiB


def test_an_unforeseen_memory_error_is_an_xpnet_error(tmp_path, capsys, monkeypatch):
    def exhausted(*args, **kwargs):
        raise MemoryError

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", X=rng.standard_normal((40, 8)).astype(np.float32), y=np.arange(40) % 2)
    monkeypatch.setattr(run, "fit", exhausted)
    assert main(["train", "--dataset", str(tmp_path / "d.npz"), "--out", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xpnet: error: out of memory") and "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "size"), [("512M", 512 * MiB), ("8G", 8 * 2**30), ("1.5GiB", 3 * 2**29), ("1000", 1000), ("64k", 65536)]
)
def test_limits_are_read_as_people_write_them(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-5M", "0", "150%", "1e9", "12 parsecs", "9" * 30])
def test_limits_that_mean_nothing_are_refused(text, capsys):
    with pytest.raises(ConfigError, match=ENV):
        parse_size(text)
    with pytest.raises(SystemExit):
        main(["train", "--memory-limit", text or "''"])
    assert "--memory-limit" in capsys.readouterr().err


def test_a_run_that_fits_the_host_but_not_the_gpu_is_refused_before_it_starts(tmp_path, capsys, monkeypatch):
    """Device bytes were added to host bytes and held to the host's MemAvailable: a run that fits a
    64 GiB host but not a 16 GiB GPU died mid-run with the library's out-of-memory error. The GPU's
    own free memory (stubbed: 1 MiB free) now refuses it up front, naming the device."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", X=rng.standard_normal((400, 64)).astype(np.float32), y=np.arange(400) % 2)
    asked = []
    monkeypatch.setattr(NumpyBackend, "gpu_free_memory", lambda backend: asked.append(backend) or 1 * MiB)
    args = ["train", "--dataset", str(tmp_path / "d.npz"), "--layers", "256", "--precision", "mixed-float16"]
    assert main([*args, "--out", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert asked and err.startswith("xpnet: error: ") and "Traceback" not in err
    assert "on cpu" in err and "more than the 1.0 MiB free there" in err, err
    assert not (tmp_path / "m.safetensors").exists()


def test_the_device_estimate_counts_what_a_gpu_run_holds():
    """Half copies and the loss scaler's under float16, the flat buffer under data parallel."""
    from xpnet.memory import DeviceRun, device_training_estimate

    plain = device_training_estimate([64, 256, 2], 4, 2, DeviceRun(10**6, 1000, 128, 4))
    mixed = device_training_estimate([64, 256, 2], 4, 2, DeviceRun(10**6, 1000, 128, 4, 2, True, ranks=2))
    assert {"half copies of the weights", "the loss scaler's copies", "the data-parallel flat buffer"} <= set(
        mixed.parts
    ) and not {"half copies of the weights", "the data-parallel flat buffer"} & set(plain.parts)
    assert plain.parts["data on the device"] == 10**6


# -- near the limit: the estimate's own total as the limit, the peak under tracemalloc --------------


def _training_settings(folder, name, n, features, layers, batch, optimizer) -> dict:
    rng = np.random.default_rng(0)
    np.savez(folder / f"{name}.npz", X=rng.standard_normal((n, features)).astype(np.float32), y=np.arange(n) % 3)
    options = {"dataset": str(folder / f"{name}.npz"), "layers": layers, "batch_size": batch, "epochs": 1}
    return run.checked({**BASE_SETTINGS, **options, "optimizer": optimizer})


#: Runs whose peak is mostly one part of the estimate: a batch of 4,096 through a layer of 2,048
#: (the per-step temporaries and the evaluation), and two layers of 1,024 under Adam (the parameters,
#: their optimizer buffers and the best weights' copies).
NEAR = {
    "step-temporaries": (5000, 32, [2048], 4096, "sgd"),
    "weights-and-buffers": (200, 16, [1024, 1024], 8, "adam"),
}


@pytest.mark.parametrize("case", NEAR)
def test_a_training_at_the_limit_its_estimate_allows_stays_within_it_near_the_limit(warm, tmp_path, case):
    # The limit is the estimate's own total: the run must go through and hold no more than that, and a
    # MiB less must be refused. An estimate that forgot a part the run really allocates (the step's
    # temporaries, say) lets the run through under a limit its peak then passes.
    settings = _training_settings(tmp_path, case, *NEAR[case])
    data, _ = run._load_data(settings, quiet=True)
    total = run.memory_estimate(settings, data, plotting=False).total
    with limited(total):
        peak, refused = _peak(lambda: run.run_training(settings, quiet=True))
    assert refused is None, refused
    assert peak <= total, f"held {peak / MiB:.1f} MiB under its own estimate of {total / MiB:.1f} MiB"
    with limited(total - MiB), pytest.raises(MemoryLimitError, match="training on"):
        run.run_training(settings, quiet=True)


@pytest.mark.parametrize(("optimizer", "momentum", "buffers"), [("sgd", 0.0, 0), ("sgd", 0.9, 1), ("adam", 0.0, 2)])
def test_the_training_estimate_counts_every_optimizer_buffer_near_the_limit(tmp_path, optimizer, momentum, buffers):
    # What the optimizer really holds after a step, byte for byte, is in the estimate's parts.
    from xpnet.optim import get_optimizer
    from xpnet.train import fit

    settings = _training_settings(tmp_path, "d", 64, 8, [32], 8, optimizer) | {"momentum": momentum}
    data, _ = run._load_data(settings, quiet=True)
    parts = run.memory_estimate(settings, data, plotting=False).parts
    net, rule = MLP([8, 32, 3], seed=0), get_optimizer(optimizer, lr=0.01, momentum=momentum)
    fit(net, data.X_train, data.y_train, epochs=1, batch_size=8, optimizer=rule)
    held = sum(array.nbytes for array in rule.state_arrays())
    assert held == buffers * sum(p.nbytes for p in net.params)
    assert parts.get("optimizer buffers", 0) >= held


@pytest.mark.parametrize("out", ["p.csv", "p.npz"])
def test_a_prediction_at_the_limit_its_estimate_allows_stays_within_it_near_the_limit(warm, tmp_path, capsys, out):
    # 40,000 samples with their 10 probabilities: as CSV, the rows of Python strings are most of the peak.
    from xpnet.checkpoint import ModelFile, save_model
    from xpnet.predictions import prediction_estimate

    save_model(tmp_path / "m.safetensors", MLP([64, 32, 10], seed=0))
    X = np.random.default_rng(0).standard_normal((40_000, 64)).astype(np.float32)
    np.savez(tmp_path / "x.npz", X=X)
    total = prediction_estimate(ModelFile(tmp_path / "m.safetensors").build(), X).total
    args = ["predict", str(tmp_path / "m.safetensors"), str(tmp_path / "x.npz"), "--out", str(tmp_path / out)]
    peak, _ = _peak(lambda: main([*args, "--proba", "--memory-limit", str(total)]) == 0 or pytest.fail("refused"))
    assert peak <= total, f"held {peak / MiB:.1f} MiB under its own estimate of {total / MiB:.1f} MiB"
    assert main([*args, "--proba", "--memory-limit", str(total - MiB)]) == 2
    assert "predicting the 40000 samples" in capsys.readouterr().err
