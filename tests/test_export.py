"""ONNX export (xpnet.export) checked by the onnx checker and run by ONNX Runtime on the CPU.

ONNX Runtime's outputs must match xpnet's ``predict_proba`` within 1e-5 relative. Near zero
a relative bound means nothing in float32 (a sum of terms of size 1 that cancels to 1e-3
carries their rounding, ~1e-7; xpnet's sigmoid, computed as (1 + tanh(z/2))/2, is exact to
~6e-8 absolute), so values also pass within 1e-6 of the output's largest magnitude. Labels
must be equal.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason='needs onnx (pip install "xpnet[onnx]")')
pytest.importorskip("onnxruntime", reason='needs onnxruntime (pip install "xpnet[onnx]")')

import onnx
import onnxruntime as ort

import xpnet
from tests.conftest import GPU_BACKENDS, NO_TORCH
from xpnet.activations import Activation
from xpnet.data import Scaling, load_dataset
from xpnet.errors import ConfigError, XpnetError
from xpnet.export import INPUT, LABEL, OPSET, OUTPUT, export_onnx, to_onnx

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")
HIDDEN = ["sigmoid", "tanh", "relu", "leaky_relu(0.1)", "identity"]
#: (output activation, loss, outputs): every output xpnet trains, classifiers and regressors.
OUTPUTS = [
    ("softmax", "cross_entropy", 5),
    ("sigmoid", "binary_cross_entropy", 1),
    ("sigmoid", "binary_cross_entropy", 3),
    ("identity", "mse", 1),
    ("identity", "mse", 3),
    ("tanh", "mse", 2),
    ("relu", "mse", 2),
    ("leaky_relu(0.3)", "mse", 2),
    ("sigmoid", "mse", 2),
    ("softmax", "mse", 4),
    ("exp", "poisson", 1),  # the Poisson output: ONNX Exp
    ("exp", "poisson", 2),
    ("identity", "huber", 2),
]


def _inputs(n=300, features=12, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, features)) * 3 + 1).astype(np.float32)


def run_onnx(model_bytes: bytes, X: np.ndarray) -> dict:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, {INPUT: X})))


def assert_matches(net, X, result):
    expected = np.asarray(net.predict_proba(X))
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(result[OUTPUT], expected, rtol=1e-5, atol=1e-6 * scale)
    if net.is_classifier:
        assert result[LABEL].dtype == np.int64
        assert np.array_equal(result[LABEL], np.asarray(net.predict(X)))
    else:
        assert LABEL not in result


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("output", "loss", "outputs"), OUTPUTS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_onnx_runtime_matches_xpnet_for_every_activation_and_output(hidden, output, loss, outputs, dtype):
    X = _inputs()
    net = xpnet.MLP([12, 16, 8, outputs], activation=[hidden, hidden, output], loss=loss, seed=3, dtype=dtype)
    net.set_scaling(Scaling.fit("standard", X))
    model = to_onnx(net)
    onnx.checker.check_model(model, full_check=True)
    assert_matches(net, X, run_onnx(model.SerializeToString(), X.astype(dtype)))


def test_graph_is_standard_and_documented(tmp_path):
    X = _inputs()
    net = xpnet.MLP([12, 8, 3], activation="leaky_relu(0.2)", seed=0)
    net.set_scaling(Scaling.fit("unit", X))
    export_onnx(net, tmp_path / "m.onnx", class_names=["a", "b", "c"])
    model = onnx.load(tmp_path / "m.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == OPSET and model.ir_version == 8
    ops = [node.op_type for node in model.graph.node]
    assert ops == ["Sub", "Mul", "Gemm", "LeakyRelu", "Gemm", "Softmax", "ArgMax"]
    (graph_input,) = model.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == INPUT and dims[0].dim_param == "batch" and dims[1].dim_value == 12
    assert [o.name for o in model.graph.output] == [OUTPUT, LABEL]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["class_names"] == '["a", "b", "c"]' and props["xpnet_version"] == xpnet.__version__


@pytest.mark.parametrize("batch", [1, 7, 2000])
def test_batch_size_is_dynamic(batch):
    X = _inputs(n=batch)
    net = xpnet.MLP([12, 8, 1], activation="tanh", loss="mse", seed=0)
    assert_matches(net, X, run_onnx(to_onnx(net).SerializeToString(), X))


def test_a_saved_model_file_exports_with_its_scaling_and_class_names(tmp_path):
    X = (_inputs() * 40 + 100).clip(0, 255).astype(np.uint8)
    y = (X[:, 0] > 120).astype(np.int32) + (X[:, 1] > 120)
    net = xpnet.MLP([12, 16, 3], seed=0)
    net.fit(X, y, epochs=3, batch_size=32)  # uint8 inputs: fit sets the x/255 scaling
    net.save(tmp_path / "m.safetensors", class_names=["lo", "mid", "hi"])
    proto = export_onnx(tmp_path / "m.safetensors", tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == proto.SerializeToString()
    assert [node.op_type for node in proto.graph.node][:2] == ["Sub", "Mul"]
    loaded = xpnet.load_model(tmp_path / "m.safetensors")
    assert_matches(loaded, X, run_onnx(proto.SerializeToString(), X.astype(np.float32)))
    assert {p.key: p.value for p in proto.metadata_props}["class_names"] == '["lo", "mid", "hi"]'


@pytest.mark.skipif(not REAL_FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist (apt-get install)")
def test_a_model_trained_on_fashion_mnist_matches_on_the_test_set(tmp_path):
    data = load_dataset("fashion-mnist", download=False, progress=False)
    net = xpnet.MLP([784, 64, 10], seed=0)
    net.fit(data.X_train[:6000], data.y_train[:6000], epochs=1, optimizer=xpnet.SGD(lr=0.05, momentum=0.9))
    assert net.evaluate(data.X_test, data.y_test)["accuracy"] > 0.7
    export_onnx(net, tmp_path / "fashion.onnx")
    result = run_onnx((tmp_path / "fashion.onnx").read_bytes(), data.X_test.astype(np.float32))
    assert_matches(net, data.X_test, result)


def _trained(backend, device):
    X = _inputs(n=128)
    y = (X[:, 0] > 1).astype(np.int32)
    net = xpnet.MLP([12, 8, 2], activation="tanh", seed=5, backend=backend, device=device)
    net.set_scaling(Scaling.fit("standard", X))
    net.fit(X, y, epochs=2, batch_size=16, optimizer=xpnet.Adam(lr=0.01))
    return net


def test_array_api_strict_training_exports_the_numpy_file_byte_for_byte():
    reference, strict = _trained("numpy", None), _trained("array-api-strict", "device1")
    for name, weights in reference.state_dict().items():
        assert np.array_equal(strict.state_dict()[name], weights), "identical weights on both backends"
    assert to_onnx(strict).SerializeToString() == to_onnx(reference).SerializeToString()


@NO_TORCH
def test_a_torch_network_exports_the_numpy_file_for_the_same_weights():
    reference = _trained("numpy", None)
    torch_net = xpnet.MLP([12, 8, 2], activation="tanh", backend="torch", device="cpu")
    torch_net.load_state_dict(reference.state_dict())
    torch_net.set_scaling(reference.scaling)
    assert to_onnx(torch_net).SerializeToString() == to_onnx(reference).SerializeToString()
    trained = _trained("torch", "cpu")  # trained on torch: its own file, and ONNX Runtime agrees with it
    X = _inputs(n=50, seed=1)
    assert_matches(trained, X, run_onnx(to_onnx(trained).SerializeToString(), X))


@pytest.mark.parametrize("spec", GPU_BACKENDS)
def test_a_gpu_network_exports_the_numpy_file_for_the_same_weights(spec):
    backend, device = spec
    reference = _trained("numpy", None)
    gpu_net = xpnet.MLP([12, 8, 2], activation="tanh", backend=backend, device=device)
    gpu_net.load_state_dict(reference.state_dict())
    gpu_net.set_scaling(reference.scaling)
    assert to_onnx(gpu_net).SerializeToString() == to_onnx(reference).SerializeToString()
    trained = _trained(backend, device)
    X = _inputs(n=50, seed=1)
    assert_matches(trained, X, run_onnx(to_onnx(trained).SerializeToString(), X))


class _Swish(Activation):
    name = "swish"

    def forward(self, xp, z):
        return z / (1 + xp.exp(-z))


def test_an_activation_onnx_cannot_express_is_refused_and_nothing_is_written(tmp_path):
    net = xpnet.MLP([4, 3, 2], activation=[_Swish(), "softmax"])
    with pytest.raises(ConfigError, match="'swish' has no ONNX export"):
        export_onnx(net, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_a_wrong_suffix_or_a_bad_model_file_is_refused(tmp_path):
    net = xpnet.MLP([4, 3, 2])
    with pytest.raises(ConfigError, match=r"must end in \.onnx"):
        export_onnx(net, tmp_path / "m.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(XpnetError, match=r"junk\.safetensors"):
        export_onnx(tmp_path / "junk.safetensors", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_without_the_onnx_package_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(XpnetError, match=r'pip install "xpnet\[onnx\]"'):
        to_onnx(xpnet.MLP([4, 3, 2]))


def test_the_export_command_writes_the_file_and_refuses_bad_names(tmp_path, capsys):
    from xpnet.cli import main

    net = xpnet.MLP([12, 8, 3], seed=0)
    net.save(tmp_path / "m.safetensors", class_names=["a", "b", "c"])
    assert main(["export", str(tmp_path / "m.safetensors"), "--onnx", str(tmp_path / "m.onnx")]) == 0
    said = capsys.readouterr().out
    assert "ONNX opset 17, input 'input' [batch, 12], outputs 'output' [batch, 3], 'label' [batch]" in said
    X = _inputs()
    assert_matches(net, X, run_onnx((tmp_path / "m.onnx").read_bytes(), X))
    assert main(["export", str(tmp_path / "m.safetensors"), "--onnx", str(tmp_path / "m.pb")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "absent.safetensors"), "--onnx", str(tmp_path / "x.onnx")]) == 2
    assert "absent.safetensors" in capsys.readouterr().err
