"""Sample and class weights (xpnet.weights): a weight is a count, on every backend and entry point.

The defining property: weight 2 on a row trains exactly as the row given twice. Checked
full-batch in float64 (the order of rows then only changes rounding), to 1e-10, for every
loss; the weighted BP1 against finite differences of the weighted loss; "balanced" against
scikit-learn's ``compute_class_weight``; the data-parallel shares against one process.
"""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
from conftest import GPU_BACKENDS, build_mlp, host, host_float
from test_gradients import assert_gradients_close, finite_differences, smooth_inputs

from xpnet.data_parallel import DataParallel
from xpnet.distributed import Communicator
from xpnet.errors import ConfigError
from xpnet.optim import SGD, Adam
from xpnet.weights import batch_shares, class_weights, parse_class_weight

N = 30
#: loss -> (outputs, targets for N rows)
LOSSES = {
    "cross_entropy": 3,
    "binary_cross_entropy": 1,
    "mse": 2,
    "poisson": 2,
    "huber": 2,
}


def _data(loss: str, n: int = N, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4))
    outputs = LOSSES[loss]
    if loss == "cross_entropy":
        y = rng.integers(0, 3, n)
    elif loss == "binary_cross_entropy":
        y = rng.integers(0, 2, n)
    elif loss == "poisson":
        y = rng.poisson(2.0, (n, outputs)).astype(np.float64)
    else:
        y = 3 * rng.standard_normal((n, outputs))  # Huber: residuals on both sides of δ
    return X, y, outputs


def _max_difference(a, b) -> float:
    return max(float(np.max(np.abs(host(a, p) - host(b, q)))) for p, q in zip(a.params, b.params))


@pytest.mark.parametrize("loss", list(LOSSES))
def test_weight_two_trains_as_the_row_given_twice(spec, loss):
    X, y, outputs = _data(loss)
    weights = np.ones(N)
    weights[[0, 7]] = 2.0
    weights[3] = 0.0  # weight 0: the row is left out
    keep = np.concatenate([np.delete(np.arange(N), 3), [0, 7]])
    options = {"loss": loss, "dtype": "float64", "seed": 1}
    weighted, repeated = build_mlp(spec, [4, 6, outputs], **options), build_mlp(spec, [4, 6, outputs], **options)
    fit = {"epochs": 4, "batch_size": 1000}  # full batch
    weighted.fit(X, y, sample_weight=weights, optimizer=Adam(0.01), **fit)
    repeated.fit(X[keep], y[keep], optimizer=Adam(0.01), **fit)
    assert _max_difference(weighted, repeated) < 1e-10
    mine, theirs = weighted.evaluate(X, y, sample_weight=weights), repeated.evaluate(X[keep], y[keep])
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert mine[key] == pytest.approx(theirs[key], rel=1e-10, abs=1e-12), key
    unweighted = build_mlp(spec, [4, 6, outputs], **options)
    unweighted.fit(X, y, optimizer=Adam(0.01), **fit)
    assert _max_difference(weighted, unweighted) > 1e-6  # the weights were used


@pytest.mark.parametrize("loss", ["cross_entropy", "poisson", "huber"])
@pytest.mark.parametrize("gpu", GPU_BACKENDS)
def test_weight_two_trains_as_the_row_given_twice_on_a_gpu(gpu, loss):
    test_weight_two_trains_as_the_row_given_twice(gpu, loss)


def test_validation_weights_and_weighted_accuracy_count_rows(spec):
    X, y, _ = _data("cross_entropy")
    net = build_mlp(spec, [4, 6, 3], dtype="float64")
    weights = np.where(np.arange(N) < 10, 3.0, 1.0)
    history = net.fit(X, y, epochs=2, batch_size=10, validation_data=(X, y, weights))
    repeated = np.concatenate([np.arange(N), np.arange(10), np.arange(10)])
    figures = net.evaluate(X[repeated], y[repeated])
    assert history.records[-1]["val_loss"] == pytest.approx(figures["loss"], rel=1e-10)
    assert history.records[-1]["val_accuracy"] == pytest.approx(figures["accuracy"], rel=1e-10)
    assert net.evaluate(X, y, sample_weight=weights)["accuracy"] == pytest.approx(figures["accuracy"], rel=1e-12)


@pytest.mark.parametrize("loss", ["cross_entropy", "poisson", "huber"])
def test_weighted_bp1_matches_finite_differences_of_the_weighted_loss(spec, loss):
    rng = np.random.default_rng(2)
    outputs = LOSSES[loss]
    net = build_mlp(spec, [3, 4, outputs], loss=loss, activation="tanh", dtype="float64", seed=2)
    x, _ = smooth_inputs(net, 6, rng)
    y = _data(loss, 6, seed=3)[1]
    y = np.eye(3)[y] if loss == "cross_entropy" else y
    if loss == "huber":  # residuals away from the kink at δ = 1
        y = np.asarray(net.predict_proba(x)) + rng.choice([-3.0, -0.4, 0.4, 3.0], y.shape)
    w = rng.uniform(0.0, 2.0, 6)
    xd, yd = net.to_device(x), net.to_device(y)
    shares = net.to_device((w / w.sum())[:, None])
    cost, grads, _ = net.backprop(xd, yd, weights=shares)

    def weighted_cost():
        z, a = net.forward(xd, logits=True)
        return net.loss.value(net.xp, z, a, yd, shares)

    each = [host_float(net, net.backprop(xd[i : i + 1, ...], yd[i : i + 1, ...])[0]) for i in range(6)]
    expected = float(np.dot(w, each))
    assert host_float(net, cost) == pytest.approx(expected / w.sum(), rel=1e-12)
    assert_gradients_close(net, [host(net, g) for g in grads], finite_differences(net, weighted_cost))


class _Rank(Communicator):
    def __init__(self, rank, size):
        self.rank, self.size = rank, size


@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_shares_average_to_the_one_process_gradient(spec, ranks):
    """Each rank scales its rows by R w / Σ_batch w; the mean of the ranks' gradients is one process's."""
    X, y, _ = _data("cross_entropy", 12)
    net = build_mlp(spec, [4, 5, 3], dtype="float64")
    weights = net.to_device(np.random.default_rng(4).uniform(0.0, 3.0, 12))
    batch = net.to_device(np.array([11, 2, 5, 0, 7, 3], dtype=np.int32), labels=True)
    xp = net.xp
    X_d, targets = net.to_device(X), net.targets(net.to_device(y, labels=True))

    def gradients(parallel):
        shares = parallel.weight_shares(xp, weights, batch)
        rows = parallel.local_rows(batch)
        _, grads, _ = net.backprop(xp.take(X_d, rows, axis=0), xp.take(targets, rows, axis=0), weights=shares)
        return [host(net, g) for g in grads]

    whole = gradients(DataParallel(Communicator(), 6))
    parts = [gradients(DataParallel(_Rank(r, ranks), 6)) for r in range(ranks)]
    for i, expected in enumerate(whole):
        np.testing.assert_allclose(sum(p[i] for p in parts) / ranks, expected, rtol=1e-12, atol=1e-15)


def test_a_batch_of_weight_zero_takes_no_step():
    import numpy as xp

    shares = batch_shares(xp, np.array([0.0, 0.0, 1.0]), np.array([0, 1]), np.array([0, 1]))
    assert shares.shape == (2, 1) and np.all(shares == 0)


def test_balanced_is_scikit_learns_compute_class_weight():
    utils = pytest.importorskip("sklearn.utils.class_weight")
    y = np.array([0] * 10 + [1] * 3 + [2] * 7)
    expected = utils.compute_class_weight("balanced", classes=np.arange(3), y=y)
    np.testing.assert_allclose(class_weights("balanced", y, 3), expected, rtol=1e-15)
    assert list(class_weights({1: 5, 2: 0.5}, y, 3)) == [1.0, 5.0, 0.5]


@pytest.mark.parametrize("class_weight", ["balanced", {0: 1.0, 1: 4.0}])
def test_class_weight_is_the_sample_weight_of_each_rows_class(spec, class_weight):
    X, y, _ = _data("binary_cross_entropy")
    per_class = class_weights(class_weight, y, 2)
    by_class = build_mlp(spec, [4, 6, 1], loss="bce", dtype="float64")
    by_row = build_mlp(spec, [4, 6, 1], loss="bce", dtype="float64")
    by_class.fit(X, y, epochs=3, batch_size=8, class_weight=class_weight, optimizer=SGD(0.1))
    by_row.fit(X, y, epochs=3, batch_size=8, sample_weight=per_class[y], optimizer=SGD(0.1))
    assert _max_difference(by_class, by_row) == 0.0
    plain = build_mlp(spec, [4, 6, 1], loss="bce", dtype="float64")
    plain.fit(X, y, epochs=3, batch_size=8, optimizer=SGD(0.1))
    assert _max_difference(by_class, plain) > 1e-6


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (np.ones(N - 1), r"sample_weight has shape \(29,\); give one weight per sample \(30,\)"),
        (-np.ones(N), "sample_weight holds negative values"),
        (np.full(N, np.nan), "sample_weight holds NaN or infinite values"),
        (np.zeros(N), "sample_weight is zero for every sample"),
        (np.array(["a"] * N), "sample_weight must hold numbers"),
    ],
)
def test_bad_sample_weights_are_refused_naming_the_argument(weights, message):
    X, y, _ = _data("cross_entropy")
    net = build_mlp(("numpy", None), [4, 3])
    with pytest.raises(ConfigError, match=message):
        net.fit(X, y, sample_weight=weights)
    with pytest.raises(ConfigError, match=message):
        net.evaluate(X, y, sample_weight=weights)
    with pytest.raises(ConfigError, match="validation_data " + message):
        net.fit(X, y, validation_data=(X, y, weights))


@pytest.mark.parametrize(
    ("class_weight", "message"),
    [
        ("even", "class_weight must be 'balanced' or a mapping"),
        ({5: 1.0}, "names the label 5, but the classes are numbered 0 to 2"),
        ({0: -1.0}, r"class_weight\[0\] must be a number >= 0"),
        ({0: 0, 1: 0, 2: 0}, "is zero for every sample"),
    ],
)
def test_bad_class_weights_are_refused(class_weight, message):
    X, y, _ = _data("cross_entropy")
    with pytest.raises(ConfigError, match=message):
        build_mlp(("numpy", None), [4, 3]).fit(X, y, class_weight=class_weight)


def test_class_weight_needs_class_labels():
    X, y, _ = _data("mse")
    with pytest.raises(ConfigError, match="class_weight needs class labels"):
        build_mlp(("numpy", None), [4, 2], loss="mse").fit(X, y, class_weight="balanced")


def test_the_command_line_spelling_parses():
    assert parse_class_weight("Balanced") == "balanced"
    assert parse_class_weight("0=1, 1=5") == {"0": 1.0, "1": 5.0}
    for bad in ("0:1", "0=x", ""):
        with pytest.raises(ConfigError, match="LABEL=WEIGHT"):
            parse_class_weight(bad)


# -- the command line: --sample-weight, --class-weight, and the model file ------------------------


def _imbalanced_npz(path, n=200, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4)).astype(np.float32)
    y = (X[:, 0] > 1.0).astype(np.int64)  # about 1 in 6 rows is class 1
    np.savez(path, X=X, y=y, w=rng.uniform(0.5, 2.0, n))
    return path


TRAIN = ["train", "--layers", "8", "--epochs", "2", "--batch-size", "16", "--quiet", "--dtype", "float64"]


def test_cli_weights_train_as_fit_with_the_same_weights_and_are_kept_in_the_model_file(tmp_path, capsys):
    from xpnet.checkpoint import ModelFile
    from xpnet.cli import main
    from xpnet.data import load_dataset, train_val_split
    from xpnet.run import resolve_settings, run_training

    data_file = _imbalanced_npz(tmp_path / "imb.npz")
    out = tmp_path / "m.safetensors"
    args = ["--dataset", str(data_file), "--sample-weight", "w", "--class-weight", "BALANCED"]
    assert main([*TRAIN, *args, "--out", str(out)]) == 0
    saved = ModelFile(out)
    assert saved.training["class_weight"] == "balanced" and saved.training["sample_weight"] == "w"
    # The same run without weights ends elsewhere: the weights reached fit.
    plain = run_training(resolve_settings("default", _settings(data_file, layers=[8], epochs=2)))
    weighted = run_training(
        resolve_settings("default", _settings(data_file, sample_weight="w", class_weight="balanced"))
    )
    assert weighted["history"][-1]["loss"] != pytest.approx(plain["history"][-1]["loss"], rel=1e-6)
    data = load_dataset(str(data_file), sample_weight="w")
    assert data.w_train is not None and len(data.w_train) == len(data.X_train)
    X_tr, _, _, _ = train_val_split(data.X_train, data.y_train, 0.1, seed=0)
    assert len(X_tr) < len(data.X_train)


def _settings(data_file, **extra):
    base = {"dataset": str(data_file), "layers": [8], "epochs": 2, "batch_size": 16, "dtype": "float64"}
    return {**base, **extra}


def test_cli_class_weight_by_number_or_name_and_csv_weight_column(tmp_path, capsys, monkeypatch):
    from xpnet.cli import main

    monkeypatch.chdir(tmp_path)  # the model file goes to the working folder

    rng = np.random.default_rng(1)
    rows = ["a,b,weight,label"] + [
        f"{rng.normal():.3f},{rng.normal():.3f},{rng.uniform(0, 2):.3f},{i % 2}" for i in range(60)
    ]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    assert (
        main([*TRAIN, "--dataset", str(tmp_path / "t.csv"), "--sample-weight", "weight", "--class-weight", "0=1,1=3"])
        == 0
    )
    assert main([*TRAIN, "--dataset", str(tmp_path / "t.csv"), "--sample-weight", "2"]) == 0  # by index


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sample-weight", "nope"], r"sample_weight 'nope': .*imb.npz holds no such array"),
        (["--class-weight", "7=2"], "--class-weight 7=2: '7' is not a class of dataset"),
        (["--class-weight", "0=x"], "expected 'balanced' or LABEL=WEIGHT pairs"),
        (["--class-weight", "0=-1"], "must be a number >= 0"),
        (["--sample-weight", "X"], r"sample_weight 'X' of .* has shape \(200, 4\); give one weight per sample"),
    ],
)
def test_cli_refuses_bad_weights_naming_the_option(tmp_path, capsys, monkeypatch, args, message):
    from xpnet.cli import main

    monkeypatch.chdir(tmp_path)

    data_file = _imbalanced_npz(tmp_path / "imb.npz")
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(main([*TRAIN, "--dataset", str(data_file), *args]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(message, err), err


def test_a_model_file_written_before_weights_and_huber_still_loads(tmp_path):
    """Files from before this change carry no class_weight, sample_weight, huber_delta: they load as ever."""
    from xpnet.checkpoint import ModelFile, save_model
    from xpnet.safetensors import load_tensors, save_tensors

    net = build_mlp(("numpy", None), [4, 3, 2])
    path = tmp_path / "old.safetensors"
    save_model(path, net, training={"dataset": "x.npz", "lr": 0.1}, class_names=["a", "b"])
    tensors, metadata = load_tensors(path)
    assert "class_weight" not in metadata["training"] and "huber_delta" not in metadata["architecture"]
    save_tensors(tmp_path / "again.safetensors", tensors, metadata)
    loaded = ModelFile(tmp_path / "again.safetensors").build()
    np.testing.assert_array_equal(host(loaded, loaded.params[0]), host(net, net.params[0]))
