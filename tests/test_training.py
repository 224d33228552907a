"""fit / evaluate / predict: small problems are learnt on every backend, and a whole
run keeps to its device and to one host read per epoch."""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest
from conftest import blobs, build_mlp

from xpnet.errors import ConfigError
from xpnet.network import MLP
from xpnet.optim import SGD, Adam
from xpnet.train import fit

STRICT_DEVICES = ["device1", "no_x64"]


# -- device discipline -------------------------------------------------------------------


@pytest.mark.parametrize("device", STRICT_DEVICES)
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_a_whole_fit_stays_on_the_device_and_reads_once_per_epoch(device, dropout):
    """On device1 a bulk copy to NumPy raises; on no_x64 a float64 or int64 array does."""
    import array_api_strict

    X, y = blobs(n=96, classes=3, seed=1)
    Xv, yv = blobs(n=30, classes=3, seed=2)
    net = build_mlp(("array-api-strict", device), [2, 8, 3], dropout=dropout, seed=0)
    epochs = 4
    reads = net.backend.host_reads
    history = net.fit(
        X, y, epochs=epochs, batch_size=16, optimizer=SGD(lr=0.1, momentum=0.9), validation_data=(Xv, yv), patience=3
    )
    assert net.backend.host_reads - reads == epochs  # fit does one read per epoch, for the metrics
    assert len(history.records) == epochs
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["val_loss"]) for r in history.records)

    strict_device = array_api_strict.Device(device)
    assert all(array_api_compat.device(p) == strict_device for p in net.params)
    assert all(p.dtype == array_api_strict.float32 for p in net.params)
    result = net.evaluate(Xv, yv)
    assert set(result) == {"loss", "accuracy"} and np.isfinite(result["loss"])


@pytest.mark.parametrize("device", STRICT_DEVICES)
def test_regression_fit_and_evaluate_on_strict_devices(device):
    X, y = regression_data(n=64)
    net = build_mlp(("array-api-strict", device), [3, 8, 1], activation="tanh", loss="mse", seed=0)
    reads = net.backend.host_reads
    net.fit(X, y, epochs=3, batch_size=16, validation_data=(X, y))
    assert net.backend.host_reads - reads <= 3
    assert np.isfinite(net.evaluate(X, y)["r2"])


@pytest.mark.parametrize("device", STRICT_DEVICES)
def test_predict_works_on_strict_devices(device):
    """device1 refuses stray host copies; no_x64 refuses int64, which xp.argmax returns."""
    X, _ = blobs(n=32, classes=3, seed=1)
    net = build_mlp(("array-api-strict", device), [2, 8, 3], seed=0)
    labels = net.predict(X)
    probabilities = net.predict_proba(X)
    assert isinstance(labels, np.ndarray) and isinstance(probabilities, np.ndarray)
    np.testing.assert_array_equal(labels, np.argmax(probabilities, axis=1))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)


# -- small problems are learnt ---------------------------------------------------------------


def test_blobs_are_learnt_to_full_accuracy(spec):
    X, y = blobs(n=120, classes=3, seed=0)
    net = build_mlp(spec, [2, 16, 3], activation="relu", seed=0)
    history = net.fit(X, y, epochs=15, batch_size=16, optimizer=SGD(lr=0.1, momentum=0.9), seed=1)
    losses = history.column("loss")
    assert losses[-1] < 0.25 * losses[0]
    assert history.records[-1]["accuracy"] == 1.0
    assert net.evaluate(X, y)["accuracy"] == 1.0
    np.testing.assert_array_equal(net.predict(X), y)


def test_xor_is_learnt(spec):
    rng = np.random.default_rng(0)
    corners = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    labels = np.array([0, 1, 1, 0])
    X = np.repeat(corners, 16, axis=0) + 0.05 * rng.standard_normal((64, 2))
    y = np.repeat(labels, 16)
    net = build_mlp(spec, [2, 8, 2], activation="tanh", seed=0)
    history = net.fit(X, y, epochs=60, batch_size=16, optimizer=Adam(lr=0.05))
    assert history.column("loss")[-1] < 0.2 * history.column("loss")[0]
    np.testing.assert_array_equal(net.predict(corners), labels)


def test_one_sigmoid_output_scores_class_one(spec):
    """Binary labels with one sigmoid output: evaluate's accuracy and predict agree."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 2))
    y = (X[:, 0] - X[:, 1] > 0).astype(np.int64)
    net = build_mlp(spec, [2, 8, 1], activation="tanh", loss="binary_cross_entropy", seed=0)
    np.testing.assert_array_equal(net.backend.to_host(net.targets(net.to_device(y, labels=True)))[:, 0], y)
    net.fit(X, y, epochs=40, batch_size=16, optimizer=Adam(lr=0.05))
    assert net.evaluate(X, y)["accuracy"] == 1.0
    np.testing.assert_array_equal(net.predict(X), y)
    assert np.all((net.predict_proba(X)[:, 0] > 0.5) == (y == 1))


def regression_data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (n, 3))
    y = np.sin(2 * X[:, 0]) + X[:, 1] * X[:, 2] + 0.5 * X[:, 2]
    return X, y


def test_regression_is_learnt_with_mse(spec):
    X, y = regression_data()
    net = build_mlp(spec, [3, 32, 1], activation="tanh", loss="mse", seed=0)
    assert not net.is_classifier
    before = net.evaluate(X, y)
    history = net.fit(X, y, epochs=150, batch_size=20, optimizer=Adam(lr=0.01))
    after = net.evaluate(X, y)
    assert set(after) == {"loss", "mse", "r2"}
    assert after["loss"] < 0.1 * before["loss"]
    assert after["r2"] > 0.95
    assert "accuracy" not in history.records[-1]
    predictions = net.predict(X)
    r2 = 1 - np.sum((predictions[:, 0] - y) ** 2) / np.sum((y - y.mean()) ** 2)
    assert r2 == pytest.approx(after["r2"], abs=1e-4)


def test_the_seeds_style_sigmoid_sigmoid_softmax_with_mse(spec):
    X, y = blobs(n=60, features=4, classes=3, seed=0)
    net = build_mlp(spec, [4, 8, 8, 3], activation=["sigmoid", "sigmoid", "softmax"], loss="mse", seed=0)
    assert [a.name for a in net.activations] == ["sigmoid", "sigmoid", "softmax"]
    assert net.is_classifier
    history = net.fit(X, y, epochs=40, batch_size=10, optimizer=SGD(lr=3.0))
    assert history.column("loss")[-1] < 0.5 * history.column("loss")[0]
    assert net.evaluate(X, y)["accuracy"] == 1.0


def test_activation_list_must_have_one_entry_per_layer():
    with pytest.raises(ConfigError, match=r"activation lists 3 entries but the network has 2 layers"):
        build_mlp(("numpy", None), [4, 8, 3], activation=["sigmoid", "sigmoid", "softmax"], loss="mse")


# -- what fit reports and refuses -------------------------------------------------------------


def test_fit_is_reproducible_from_its_seeds():
    X, y = blobs(n=64, classes=2, seed=3)
    runs = []
    for _ in range(2):
        net = build_mlp(("numpy", None), [2, 8, 2], dropout=0.3, seed=4)
        history = net.fit(X, y, epochs=3, batch_size=8, seed=9)
        runs.append((history.column("loss"), net.state_dict()["layers.0.weight"]))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_early_stopping_restores_the_best_weights():
    X, y = blobs(n=64, classes=2, seed=3, spread=2.5)  # overlapping classes: the validation loss stalls
    Xv, yv = blobs(n=64, classes=2, seed=4, spread=2.5)
    net = build_mlp(("numpy", None), [2, 16, 2], seed=0)
    history = net.fit(X, y, epochs=30, batch_size=8, optimizer=SGD(lr=1.0), validation_data=(Xv, yv), patience=2)
    assert history.stopped_early and history.restored_best
    assert len(history.records) == history.best_epoch + 2
    best = min(history.column("val_loss"))
    assert history.best_val_loss == pytest.approx(best)
    assert history.column("val_loss")[-1] > best
    assert net.evaluate(Xv, yv)["loss"] == pytest.approx(best, rel=1e-5)


def _overlapping_three_classes():
    return blobs(n=64, classes=3, seed=3, spread=2.5), blobs(n=64, classes=3, seed=4, spread=2.5)


def test_monitor_val_accuracy_keeps_the_most_accurate_epoch():
    (X, y), (Xv, yv) = _overlapping_three_classes()
    net = build_mlp(("numpy", None), [2, 16, 3], seed=1)
    history = net.fit(
        X, y, epochs=20, batch_size=8, optimizer=SGD(lr=0.5), validation_data=(Xv, yv), monitor="val_accuracy"
    )
    accuracy, loss = history.column("val_accuracy"), history.column("val_loss")
    assert np.argmin(loss) != np.argmax(accuracy)  # the two figures pick different epochs here
    assert history.best_epoch == np.argmax(accuracy) + 1  # the first epoch at the highest accuracy
    assert history.best_val_loss == loss[history.best_epoch - 1]  # the kept epoch's loss, not the lowest
    assert history.restored_best
    assert net.evaluate(Xv, yv)["accuracy"] == max(accuracy)


def test_patience_counts_epochs_without_a_better_monitored_figure():
    (X, y), (Xv, yv) = _overlapping_three_classes()
    net = build_mlp(("numpy", None), [2, 16, 3], seed=1)
    history = net.fit(
        X, y, epochs=20, batch_size=8, optimizer=SGD(lr=0.5), validation_data=(Xv, yv),
        monitor="val_accuracy", patience=3,
    )  # fmt: skip
    accuracy = history.column("val_accuracy")
    assert history.stopped_early and len(accuracy) == history.best_epoch + 3
    assert max(accuracy[history.best_epoch :]) <= accuracy[history.best_epoch - 1]


def test_monitor_val_accuracy_needs_a_classifier():
    X, y = blobs(n=16, features=2, classes=2)
    net = MLP([2, 4, 1], output="identity", loss="mse", seed=0)
    with pytest.raises(ConfigError, match="monitor val_accuracy needs a classifier"):
        net.fit(X, y.astype(float), epochs=1, validation_data=(X, y.astype(float)), monitor="val_accuracy")


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"epochs": -1}, "epochs"),
        ({"epochs": 2.5}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"patience": 0, "validation_data": "given"}, "patience"),
        ({"patience": 2}, "validation"),
        ({"monitor": "accuracy"}, "monitor"),
    ],
)
def test_fit_refuses_bad_options_by_name(options, argument):
    X, y = blobs(n=8)
    if options.get("validation_data") == "given":
        options["validation_data"] = (X, y)
    net = build_mlp(("numpy", None), [2, 2], seed=0)
    with pytest.raises(ConfigError, match=argument):
        net.fit(X, y, **options)


def test_fit_refuses_mismatched_lengths():
    X, y = blobs(n=8)
    with pytest.raises(ConfigError, match=r"y has shape \(7,\) but X has 8 samples"):
        build_mlp(("numpy", None), [2, 2], seed=0).fit(X, y[:7])


def test_label_smoothing_keeps_the_accuracy_honest():
    """Training accuracy is measured against the true labels, not the smoothed targets."""
    X, y = blobs(n=200, features=4, classes=3)
    plain, smoothed = (MLP([4, 16, 3], seed=0) for _ in range(2))
    fit(plain, X, y, epochs=20, batch_size=20, optimizer=SGD(lr=0.1))
    history = fit(smoothed, X, y, epochs=20, batch_size=20, optimizer=SGD(lr=0.1), label_smoothing=0.3)
    assert history.records[-1]["accuracy"] == pytest.approx(smoothed.evaluate(X, y)["accuracy"], abs=0.05)
    assert history.records[-1]["accuracy"] > 0.9


def test_integer_regression_targets_are_values_not_classes():
    X = np.linspace(-1, 1, 64, dtype=np.float32).reshape(-1, 1)
    y = np.round(10 * X[:, 0] + 20).astype(np.int64)  # whole numbers, but regression targets
    net = MLP([1, 16, 1], loss="mse", seed=0)
    fit(net, X, y, epochs=300, batch_size=64, optimizer=Adam(lr=0.05))
    assert not net.is_classifier
    assert net.evaluate(X, y)["r2"] > 0.95


def test_dropout_on_the_output_layer_is_refused():
    with pytest.raises(ConfigError, match="output layer"):
        MLP([4, 8, 3], dropout=[0.2, 0.5])


def test_uint8_inputs_are_scaled_to_unit_range_unless_a_scaling_is_set():
    from xpnet.data import Scaling

    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(64, 4)).astype(np.uint8)
    y = (X[:, 0] > 127).astype(np.int32)
    net = MLP([4, 8, 2], seed=0)
    fit(net, X, y, epochs=1, batch_size=16)
    assert net.scaling.kind == "unit" and net.scaling.scale == pytest.approx(1 / 255)
    np.testing.assert_allclose(net.backend.to_host(net.prepare(X)), X / np.float32(255), rtol=1e-6)
    chosen = Scaling("standard", 100.0, 0.01)
    other = MLP([4, 8, 2], seed=0)
    other.set_scaling(chosen)
    fit(other, X, y, epochs=1, batch_size=16)
    assert other.scaling is chosen


@pytest.mark.parametrize("stop_after", [1, 5, 12])
def test_an_interrupted_fit_resumed_from_its_history_equals_an_uninterrupted_one(stop_after):
    """``should_stop`` mid-epoch, then ``fit(..., history=that)``: the same weights and the
    same per-epoch figures, bit for bit, dropout and momentum included."""
    X, y = blobs(n=150, features=4, classes=3, seed=4, spread=1.5)
    Xv, yv = blobs(n=40, features=4, classes=3, seed=5, spread=1.5)
    options = dict(epochs=3, batch_size=16, validation_data=(Xv, yv), seed=2)

    def run(stop_after=None):
        net = build_mlp(("numpy", None), [4, 12, 3], dropout=0.2, seed=1)
        optimizer = SGD(lr=0.05, momentum=0.9)
        steps = iter(range(10**6))
        should_stop = None if stop_after is None else (lambda: next(steps) + 1 == stop_after)
        history = fit(net, X, y, optimizer=optimizer, should_stop=should_stop, **options)
        if stop_after is not None:
            assert history.interrupted and history.partial
            history = fit(net, X, y, optimizer=optimizer, history=history, **options)
        assert not history.interrupted and history.epoch == 3
        return net, [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in history.records]

    (net, records), (reference, reference_records) = run(stop_after), run()
    assert records == reference_records
    for name, value in net.state_dict().items():
        np.testing.assert_array_equal(value, reference.state_dict()[name], err_msg=name)


def test_predicted_classes_are_the_first_row_maximum_as_numpy_argmax_says():
    from xpnet.evaluate import _argmax_int32

    net = build_mlp(("numpy", None), [2, 4])
    out = np.array([[0.1, 0.7, 0.7, 0.1], [3.0, -1.0, 2.0, 3.0], [0.0, np.nan, 5.0, np.nan], [-2.0, -1.0, -3.0, -1.5]])
    got = _argmax_int32(net.xp, net, out)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, np.argmax(out, axis=1))
