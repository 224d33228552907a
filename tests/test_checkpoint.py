"""Model files: round trips across backends, and every tampered file refused, cheaply and by name.

A model file comes from anywhere, so loading one may only ever read JSON and raw
bytes: nothing is unpickled or evaluated, every metadata value is checked before a
network is built from it, and a file declaring a gigantic network is refused
before anything that large is allocated.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest
from conftest import CPU_BACKENDS, blobs

from xpnet.checkpoint import ModelFile, load_model, save_model
from xpnet.data import Scaling
from xpnet.errors import ModelFileError
from xpnet.network import MLP
from xpnet.safetensors import load_tensors, save_tensors


def _trained_model(path, backend="numpy", device=None, **options) -> MLP:
    X, y = blobs(n=60, features=4, classes=3)
    net = MLP([4, 6, 3], backend=backend, device=device, dropout=0.1, **options)
    net.set_scaling(Scaling.fit("standard", X))
    net.fit(X, y, epochs=2, batch_size=10, seed=1)
    save_model(path, net, training={"lr": 0.01}, class_names=["a", "b", "c"])
    return net


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "model.safetensors"
    _trained_model(path)
    return path


def _inputs() -> np.ndarray:
    return blobs(n=30, features=4, classes=3, seed=5)[0].astype(np.float32)


@pytest.mark.parametrize("spec", CPU_BACKENDS)
def test_round_trip_same_backend(tmp_path, spec):
    path = tmp_path / "m.safetensors"
    net = _trained_model(path, *spec)
    loaded = load_model(path, *spec)
    mine, theirs = loaded.config(), net.config()
    assert {k: v for k, v in mine.items() if k != "init"} == {k: v for k, v in theirs.items() if k != "init"}
    np.testing.assert_array_equal(np.asarray(loaded.predict(_inputs())), np.asarray(net.predict(_inputs())))
    np.testing.assert_array_equal(loaded.predict_proba(_inputs()), net.predict_proba(_inputs()))
    for name, value in net.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name], value)
    saved = ModelFile(path)
    assert saved.class_names == ["a", "b", "c"] and saved.training == {"lr": 0.01}


@pytest.mark.parametrize("target", CPU_BACKENDS)
@pytest.mark.parametrize("source", CPU_BACKENDS)
def test_file_from_one_backend_loads_on_another(tmp_path, source, target):
    path = tmp_path / "m.safetensors"
    net = _trained_model(path, *source)
    loaded = load_model(path, *target)
    assert loaded.backend.name == target[0]
    for name, value in net.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name], value)  # bit-identical weights
    np.testing.assert_array_equal(np.asarray(loaded.predict(_inputs())), np.asarray(net.predict(_inputs())))
    np.testing.assert_allclose(loaded.predict_proba(_inputs()), net.predict_proba(_inputs()), rtol=1e-5, atol=1e-6)


def _tamper(src, dst, *, metadata=None, drop=(), tensors=None):
    """Copy the model file ``src`` to ``dst`` with some metadata values or tensors replaced."""
    stored, meta = load_tensors(src)
    meta.update(metadata or {})
    for key in drop:
        meta.pop(key, None)
    stored.update(tensors or {})
    save_tensors(dst, stored, meta)
    return dst


def _arch(**changes) -> str:
    arch = {
        "sizes": [4, 6, 3],
        "activations": ["relu", "softmax"],
        "loss": "cross_entropy",
        "init": ["he_normal", "glorot_uniform"],
        "dropout": [0.1, 0.0],
        "dtype": "float32",
    }
    arch.update(changes)
    return json.dumps(arch)


def _scaling(shift, scale, kind="standard") -> str:
    return json.dumps({"kind": kind, "shift": shift, "scale": scale})


TAMPERED = {
    "wrong format tag": ({"format": "pytorch"}, "not an xpnet model"),
    "pickle format tag": ({"format": "pickle"}, "not an xpnet model"),
    "future version": ({"format_version": "99"}, "format version '99'"),
    "invalid JSON": ({"architecture": '{"sizes": [4, 6, 3'}, "metadata architecture: is not valid JSON"),
    "JSON of the wrong type": ({"architecture": "[4, 6, 3]"}, "metadata architecture: expected an object"),
    "huge sizes": ({"architecture": _arch(sizes=[4, 10**9, 3])}, "'layers.0.weight' has shape"),
    "wrong shapes": ({"architecture": _arch(sizes=[4, 7, 3])}, "'layers.0.weight' has shape"),
    "too few layers": ({"architecture": _arch(sizes=[4])}, r"architecture\.sizes: expected a list of 2 to"),
    "non-numeric sizes": ({"architecture": _arch(sizes=["4", "6", "3"])}, r"sizes\[0\]: expected a whole"),
    "float sizes": ({"architecture": _arch(sizes=[4.0, 6, 3])}, r"sizes\[0\]: expected a whole"),
    "negative sizes": ({"architecture": _arch(sizes=[4, -6, 3])}, r"sizes\[1\]: expected a whole"),
    "boolean sizes": ({"architecture": _arch(sizes=[True, 6, 3])}, r"sizes\[0\]: expected a whole"),
    "unknown activation": ({"architecture": _arch(activations=["relu", "os.system"])}, r"activations\[1\]: unknown"),
    "activation count": ({"architecture": _arch(activations=["relu"])}, "activations: lists 1 entries but"),
    "activation not text": ({"architecture": _arch(activations=[1, 2])}, r"activations\[0\]: expected an"),
    "dropout not numbers": ({"architecture": _arch(dropout=[None, "0.1"])}, r"dropout\[0\]: expected a finite"),
    "loss not text": ({"architecture": _arch(loss=["mse"])}, "architecture.loss: expected a loss name"),
    "unknown loss": ({"architecture": _arch(loss="eval('1')")}, "architecture.loss: unknown loss"),
    "dropout out of range": ({"architecture": _arch(dropout=[7.0, 0.0])}, r"dropout\[0\]: .* got 7.0"),
    "unknown dtype": ({"architecture": _arch(dtype="object")}, "dtype: expected one of 'float32'"),
    "scaling with wrong length": ({"scaling": _scaling([0.0] * 5, [1.0] * 5)}, "scaling"),
    "scaling lengths differ": ({"scaling": _scaling([0.0] * 4, [1.0] * 3)}, "scaling"),
    "non-numeric scaling": ({"scaling": _scaling(["0"] * 4, [1.0] * 4)}, "scaling"),
    "infinite scaling": ({"scaling": _scaling(0.0, 1e300)}, "scaling"),
    "unknown scaling kind": ({"scaling": _scaling(0.0, 1.0, kind="__import__")}, "scaling"),
    "class names not text": ({"class_names": "[1, 2, 3]"}, r"class_names\[0\]: expected a class name"),
    "NaN literal in JSON": ({"scaling": '{"kind": "none", "shift": NaN, "scale": 1.0}'}, "scaling"),
}


@pytest.mark.parametrize("metadata, message", list(TAMPERED.values()), ids=list(TAMPERED))
def test_tampered_metadata_is_refused_by_name(model_path, tmp_path, metadata, message):
    bad = _tamper(model_path, tmp_path / "bad.safetensors", metadata=metadata)
    with pytest.raises(ModelFileError, match=message) as info:
        load_model(bad)
    assert str(bad) in str(info.value)
    with pytest.raises(ModelFileError):
        ModelFile(bad).build("array-api-strict", "device1")


@pytest.mark.parametrize("key", ["format", "architecture", "training", "class_names", "scaling"])
def test_missing_metadata_is_refused(model_path, tmp_path, key):
    bad = _tamper(model_path, tmp_path / "bad.safetensors", drop=[key])
    with pytest.raises(ModelFileError, match=re.escape(str(bad))):
        load_model(bad)


@pytest.mark.parametrize(
    "tensors, message",
    [
        ({"layers.1.bias": np.array([0.0, np.nan, 0.0], np.float32)}, "NaN or infinite"),
        ({"layers.0.bias": np.full(6, np.inf, np.float32)}, "NaN or infinite"),
        ({"layers.1.weight": np.zeros((3, 6), np.int32)}, "not floats"),
        ({"layers.1.weight": np.zeros((6, 3), np.float32)}, "has shape"),
    ],
)
def test_tampered_tensors_are_refused(model_path, tmp_path, tensors, message):
    bad = _tamper(model_path, tmp_path / "bad.safetensors", tensors=tensors)
    with pytest.raises(ModelFileError, match=message):
        load_model(bad)


def test_missing_tensor_is_refused(model_path, tmp_path):
    stored, meta = load_tensors(model_path)
    del stored["layers.1.weight"]
    save_tensors(tmp_path / "bad.safetensors", stored, meta)
    with pytest.raises(ModelFileError, match=r"'layers\.1\.weight' is missing"):
        load_model(tmp_path / "bad.safetensors")


def _refused_peak(path) -> int:
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match=re.escape(str(path))):
            load_model(path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_huge_declared_network_allocates_nothing_large(model_path, tmp_path):
    # 10**9 x 10**9 float32 weights would be 4 EB; the refusal must cost about the file's size.
    bad = _tamper(model_path, tmp_path / "bad.safetensors", metadata={"architecture": _arch(sizes=[10**9, 10**9])})
    assert _refused_peak(bad) < 1_000_000


def test_huge_declared_tensor_allocates_nothing_large(tmp_path):
    # A header claiming a 4 GB tensor over a 100-byte buffer: refused from the header alone.
    header = {"layers.0.weight": {"dtype": "F32", "shape": [10**9, 1], "data_offsets": [0, 4 * 10**9]}}
    blob = json.dumps(header).encode()
    path = tmp_path / "huge.safetensors"
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + bytes(100))
    assert _refused_peak(path) < 1_000_000


def test_loading_never_unpickles_or_evaluates(model_path, tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a model file must never be unpickled or evaluated")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    for name in ("eval", "exec"):
        monkeypatch.setattr(builtins, name, forbidden)
    monkeypatch.setattr(np, "load", forbidden)
    net = load_model(model_path)
    assert net.sizes == [4, 6, 3]
    # A pickle smuggled into the metadata is just a refused string.
    payload = pickle.dumps(os.getcwd).hex()
    bad = _tamper(model_path, tmp_path / "bad.safetensors", metadata={"architecture": payload})
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(bad)


def test_checkpoint_round_trip_keeps_optimizer_and_loop_state(tmp_path):
    from xpnet.optim import Adam
    from xpnet.train import fit

    X, y = blobs(n=60, features=4, classes=3)
    net = MLP([4, 6, 3], dropout=0.2)
    optimizer = Adam(lr=0.01)
    history = fit(net, X, y, epochs=2, batch_size=10, optimizer=optimizer, validation_data=(X[:10], y[:10]))
    path = tmp_path / "m.ckpt.safetensors"
    save_model(path, net, training={"seed": 0}, history=history, optimizer=optimizer)
    saved = ModelFile(path)
    loaded = saved.build()
    restored = Adam(lr=0.01)
    restored.load_state_arrays(
        saved.optimizer_buffers(loaded, restored), saved.checkpoint["optimizer_steps"], loaded.params
    )
    assert restored.steps == optimizer.steps == 12
    assert len(restored.state_arrays()) == len(optimizer.state_arrays()) == 8  # m and v per parameter
    for mine, theirs in zip(restored.state_arrays(), optimizer.state_arrays()):
        np.testing.assert_array_equal(mine, theirs)
    assert saved.checkpoint["state"]["epoch"] == 2
    assert len(saved.best_params(loaded)) == 4
    assert saved.resume_state()["epoch"] == 2


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epoch", "x"),
        ("batch", -1),
        ("partial", [1, "a", 3, 4]),
        ("records", ["not a record"]),
        ("rng_state", {"bit_generator": "PCG64", "state": "junk"}),
        ("dropout_state", [1, 2, 3]),
        ("interrupted", "yes"),
    ],
)
def test_tampered_loop_state_is_refused_before_resuming(tmp_path, key, value):
    from xpnet.optim import SGD
    from xpnet.train import fit

    X, y = blobs(n=60, features=4, classes=3)
    net = MLP([4, 6, 3], dropout=0.2)
    optimizer = SGD(lr=0.01, momentum=0.9)
    history = fit(net, X, y, epochs=1, batch_size=10, optimizer=optimizer)
    good = tmp_path / "good.ckpt.safetensors"
    save_model(good, net, training={"seed": 0}, history=history, optimizer=optimizer)
    checkpoint = json.loads(load_tensors(good)[1]["checkpoint"])
    checkpoint["state"][key] = value
    bad = _tamper(good, tmp_path / "bad.ckpt.safetensors", metadata={"checkpoint": json.dumps(checkpoint)})
    with pytest.raises(ModelFileError, match=f"bad.ckpt.safetensors: metadata checkpoint.state.{key}"):
        ModelFile(bad).resume_state()


_SAVER = textwrap.dedent(
    """
    import sys
    from xpnet.network import MLP
    from xpnet.optim import Adam
    from xpnet.checkpoint import save_model
    from xpnet.train import History
    import numpy as np

    net = MLP([784, 256, 10], dropout=0.1, seed=0)
    optimizer = Adam(lr=0.001)
    X = np.random.default_rng(0).random((64, 784), dtype=np.float32)
    optimizer.step(net.params, net.backprop(X, net.targets(net.to_device(np.arange(64) % 10)))[1])
    history = History(epoch=1)
    path = sys.argv[1]
    save_model(path, net, history=history, optimizer=optimizer)  # the good file
    print("ready", flush=True)
    while True:  # overwrite it again and again, until killed
        history.epoch += 1
        save_model(path, net, history=history, optimizer=optimizer)
    """
)


def test_killed_save_never_corrupts_the_previous_checkpoint(tmp_path):
    # Each save writes ~3 MB (weights plus two Adam buffers); SIGKILL lands at varied points in it.
    path = tmp_path / "run.ckpt.safetensors"
    for delay in (0.0, 0.01, 0.03, 0.07, 0.15):
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        saved = ModelFile(path)  # whole and valid: one of the completed saves
        assert saved.checkpoint["state"]["epoch"] >= 1
        net = saved.build()
        assert net.sizes == [784, 256, 10]
        assert all(np.all(np.isfinite(p)) for p in net.params)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != path.name]
    assert all(name.startswith(f".{path.name}.") and name.endswith(".tmp") for name in leftovers)


@pytest.mark.parametrize(("key", "value"), [("seed", "x"), ("layers", "128"), ("nesterov", 1), ("lr", None)])
def test_resume_refuses_tampered_training_settings(tmp_path, key, value, capsys):
    from xpnet.cli import main
    from xpnet.optim import SGD
    from xpnet.run import BASE_SETTINGS
    from xpnet.train import fit

    X, y = blobs(n=60, features=4, classes=3)
    net = MLP([4, 6, 3])
    optimizer = SGD(lr=0.01)
    history = fit(net, X, y, epochs=1, batch_size=10, optimizer=optimizer)
    good = tmp_path / "good.ckpt.safetensors"
    save_model(good, net, training={**BASE_SETTINGS, key: value}, history=history, optimizer=optimizer)
    assert main(["train", "--resume", str(good)]) == 2
    assert f"metadata training.{key}:" in capsys.readouterr().err


@pytest.mark.parametrize("spec", CPU_BACKENDS)
def test_a_run_with_dropout_resumes_from_its_checkpoint_on_every_backend(tmp_path, spec):
    """Each backend's dropout state (NumPy's PCG64, PyTorch's bytes and device kind) passes the
    checkpoint schema and continues its stream: the resumed run ends where the whole one does."""
    from xpnet.optim import SGD
    from xpnet.train import History, fit

    X, y = blobs(n=60, features=4, classes=3)
    whole = MLP([4, 6, 3], backend=spec[0], device=spec[1], dropout=0.3, seed=2)
    fit(whole, X, y, epochs=2, batch_size=10, optimizer=SGD(lr=0.1, momentum=0.9))
    net, optimizer = MLP([4, 6, 3], backend=spec[0], device=spec[1], dropout=0.3, seed=2), SGD(lr=0.1, momentum=0.9)
    history = fit(net, X, y, epochs=1, batch_size=10, optimizer=optimizer)
    path = tmp_path / "m.ckpt.safetensors"
    save_model(path, net, training={"seed": 0}, history=history, optimizer=optimizer)
    saved = ModelFile(path)
    state = saved.resume_state()
    assert state["dropout_state"] is not None
    resumed, optimizer = saved.build(*spec), SGD(lr=0.1, momentum=0.9)
    optimizer.load_state_arrays(
        saved.optimizer_buffers(resumed, optimizer), saved.checkpoint["optimizer_steps"], resumed.params
    )
    fit(resumed, X, y, epochs=2, batch_size=10, optimizer=optimizer, history=History.from_resume_state(state))
    for name, value in whole.state_dict().items():
        np.testing.assert_allclose(resumed.state_dict()[name], value, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_save_model_refuses_non_finite_weights_and_writes_nothing(tmp_path, bad):
    # The last guard behind divergence detection: no model or checkpoint file ever holds NaN or infinity.
    from xpnet.errors import DivergenceError

    net = MLP([3, 4, 2], seed=0)
    net.params[2][1, 3] = bad
    with pytest.raises(DivergenceError, match=r"not saving .*m\.safetensors: tensor 'layers\.1\.weight' holds NaN"):
        save_model(tmp_path / "m.safetensors", net)
    assert list(tmp_path.iterdir()) == []
