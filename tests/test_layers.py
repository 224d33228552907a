"""The layer seam: LayerNorm (xpnet.layers.norm) end to end, and what every layer owns.

LayerNorm's gradients against finite differences (γ and β moved off their initial 1 and
0, so every term counts), its parameters saved and loaded under their names, exported to
ONNX as LayerNormalization, reachable from the CLI (--norm layer) and the estimators, and
per sample: a batch's rows are normalised alone (so data-parallel ranks compute what one
process does; tests/mpi_job.py trains a LayerNorm case on real ranks too).
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from conftest import CPU_BACKENDS, build_mlp, host
from test_gradients import assert_matches_the_forward_pass

from xpnet.checkpoint import ModelFile, load_model
from xpnet.cli import main
from xpnet.errors import ConfigError, ModelFileError
from xpnet.layers import Dense, Dropout, LayerNorm
from xpnet.network import MLP

HAVE_ONNX = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
HAVE_SKLEARN = importlib.util.find_spec("sklearn") is not None


def _normed(spec=("numpy", None), dtype="float64", **options) -> MLP:
    """A 4-6-5-3 network with LayerNorm, its γ and β drawn away from 1 and 0."""
    net = build_mlp(spec, [4, 6, 5, 3], activation="tanh", norm="layer", dtype=dtype, seed=1, **options)
    rng = np.random.default_rng(2)
    state = net.state_dict()
    for name in state:
        if ".norm." in name:  # γ in [0.5, 1.5], β around 0
            shape = state[name].shape
            state[name] = rng.uniform(0.5, 1.5, shape) if name.endswith("weight") else rng.normal(size=shape)
    net.load_state_dict(state)
    return net


def test_layers_of_a_normed_network_and_their_names():
    net = MLP([4, 6, 5, 3], norm="layer", dropout=0.1)
    assert [type(layer) for layer in net.layers] == [Dense, LayerNorm, Dropout, Dense, LayerNorm, Dropout, Dense]
    assert net.param_names == [
        "layers.0.weight", "layers.0.bias", "layers.0.norm.weight", "layers.0.norm.bias",
        "layers.1.weight", "layers.1.bias", "layers.1.norm.weight", "layers.1.norm.bias",
        "layers.2.weight", "layers.2.bias",
    ]  # fmt: skip
    assert len(net.params) == len(net.param_names)
    assert net.config()["norm"] == "layer" and "norm" not in MLP([4, 3]).config()
    with pytest.raises(ConfigError, match="unknown norm 'batch'"):
        MLP([4, 3], norm="batch")


def test_the_dense_weights_are_the_same_with_or_without_a_norm():
    plain, normed = MLP([4, 6, 3], seed=5).state_dict(), MLP([4, 6, 3], seed=5, norm="layer").state_dict()
    for name, value in plain.items():
        np.testing.assert_array_equal(normed[name], value)


@pytest.mark.parametrize("spec", CPU_BACKENDS)
def test_layernorm_gradients_match_finite_differences(spec):
    net = _normed(spec)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 4)), np.eye(3)[rng.integers(0, 3, 6)]
    cost, layers = net.gradients(x, y)
    assert [len(group) for group in layers] == [2, 2, 2, 2, 2]
    analytic = [host(net, g) for group in layers for g in group]
    assert_matches_the_forward_pass(net, x, y, cost, analytic)


def test_layernorm_normalises_each_sample_alone():
    net = _normed()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 4))
    whole = net.predict_proba(x)
    halves = np.concatenate([net.predict_proba(x[:3]), net.predict_proba(x[3:])])
    np.testing.assert_allclose(halves, whole, rtol=0, atol=1e-15)


def test_layernorm_matches_torch():
    torch = pytest.importorskip("torch")
    net = _normed()
    x = np.random.default_rng(4).standard_normal((5, 4))
    state = net.state_dict()
    h = torch.tanh(
        torch.from_numpy(x) @ torch.from_numpy(state["layers.0.weight"]).T + torch.from_numpy(state["layers.0.bias"])
    )
    expected = torch.nn.functional.layer_norm(
        h,
        (6,),
        torch.from_numpy(state["layers.0.norm.weight"]),
        torch.from_numpy(state["layers.0.norm.bias"]),
        eps=1e-5,
    )
    ctx = net._pass(train=False)
    a, _ = net.layers[0].forward(ctx, net.params[:2], net.to_device(x))
    got, _ = net.layers[1].forward(ctx, net.params[2:4], a)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-12, atol=1e-12)


def test_layernorm_trains_saves_and_loads(tmp_path):
    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((64, 4)).astype(np.float32), rng.integers(0, 3, 64)
    net = MLP([4, 8, 3], norm="layer", seed=0)
    before = net.state_dict()["layers.0.norm.weight"].copy()
    net.fit(X, y, epochs=2, batch_size=16)
    assert not np.array_equal(net.state_dict()["layers.0.norm.weight"], before)  # γ is trained
    net.save(tmp_path / "m.safetensors")
    saved = ModelFile(tmp_path / "m.safetensors")
    assert saved.architecture["norm"] == "layer" and "layers.0.norm.bias" in saved.tensors
    np.testing.assert_array_equal(load_model(tmp_path / "m.safetensors").predict_proba(X), net.predict_proba(X))


def test_a_file_missing_a_norm_tensor_is_refused(tmp_path):
    from xpnet.safetensors import load_tensors, save_tensors

    MLP([4, 8, 3], norm="layer").save(tmp_path / "m.safetensors")
    tensors, metadata = load_tensors(tmp_path / "m.safetensors")
    del tensors["layers.0.norm.bias"]
    save_tensors(tmp_path / "bad.safetensors", tensors, metadata)
    with pytest.raises(ModelFileError, match=r"layers\.0\.norm\.bias"):
        load_model(tmp_path / "bad.safetensors")
    metadata["architecture"] = json.dumps({**json.loads(metadata["architecture"]), "norm": "batch"})
    save_tensors(tmp_path / "bad2.safetensors", {**tensors}, metadata)
    with pytest.raises(ModelFileError, match="norm"):
        load_model(tmp_path / "bad2.safetensors")


@pytest.mark.skipif(not HAVE_ONNX, reason='needs onnx and onnxruntime (pip install "xpnet[onnx]")')
def test_layernorm_exports_to_onnx_as_layer_normalization():
    import onnxruntime

    from xpnet.export import OPSET, to_onnx

    net = _normed(dtype="float32")
    model = to_onnx(net)
    assert OPSET >= 17
    ops = [node.op_type for node in model.graph.node]
    assert ops == [
        "Gemm",
        "Tanh",
        "LayerNormalization",
        "Gemm",
        "Tanh",
        "LayerNormalization",
        "Gemm",
        "Softmax",
        "ArgMax",
    ]
    x = np.random.default_rng(6).standard_normal((7, 4)).astype(np.float32)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out, _) = session.run(None, {"input": x})
    np.testing.assert_allclose(out, net.predict_proba(x), rtol=1e-5, atol=1e-6)


def test_cli_trains_with_norm_layer(tmp_path, capsys):
    rng = np.random.default_rng(7)
    np.savez(tmp_path / "d.npz", X=rng.standard_normal((120, 5)).astype(np.float32), y=rng.integers(0, 3, 120))
    out = tmp_path / "m.safetensors"
    code = main(["train", "--dataset", str(tmp_path / "d.npz"), "--layers", "8", "--norm", "layer", "--epochs", "1",
                 "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    assert ModelFile(out).architecture["norm"] == "layer"
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--norm", "batch", "--epochs", "1"])
    assert exit_.value.code != 0
    assert "unknown norm 'batch'; choose from none, layer" in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_SKLEARN, reason='needs scikit-learn (pip install "xpnet[sklearn]")')
@pytest.mark.filterwarnings("ignore:.*has not converged")
def test_estimators_take_norm():
    from xpnet.estimators import XpnetClassifier

    rng = np.random.default_rng(8)
    X, y = rng.standard_normal((60, 4)), rng.integers(0, 2, 60)
    clf = XpnetClassifier((8,), norm="layer", max_iter=3, random_state=0).fit(X, y)
    assert clf.model_.norm == "layer" and clf.get_params()["norm"] == "layer"
    assert isinstance(clf.model_.layers[1], LayerNorm)


def test_layernorm_under_mixed_precision_hands_float32_gradients():
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((16, 4)).astype(np.float32), rng.integers(0, 3, 16)
    reference = MLP([4, 6, 5, 3], norm="layer", seed=1)
    mixed = MLP([4, 6, 5, 3], norm="layer", precision="mixed-float16", seed=1)
    _, want = reference.gradients(x, y)
    _, got = mixed.gradients(x, y)
    for got_group, want_group in zip(got, want):
        for g, w in zip(got_group, want_group):
            assert g.dtype == np.float32
            assert np.linalg.norm(g - w) <= 2e-2 * np.linalg.norm(w) + 1e-6


def test_gradients_are_named_per_layer():
    net = MLP([4, 6, 3], norm="layer", dtype="float64")
    _, layers = net.gradients(np.ones((2, 4)), np.array([0, 2]))
    assert layers[0].W.shape == (6, 4) and layers[0].b.shape == (6,)
    assert layers[1].gamma.shape == (6,) and layers[1].beta.shape == (6,)
    assert layers[2].W.shape == (3, 6)


class Gain(LayerNorm):
    """y = γ ⊙ x: a new layer kind written in a test, to show the seam is one class plus one registry line.

    It borrows only LayerNorm's constructor and parameter names; its math is its own.
    """

    param_names = ("weight",)

    def param_shapes(self):
        return {f"{self.prefix}.weight": (self.width,)}

    def initial(self, drawn):
        return [np.linspace(0.5, 1.5, self.width)]

    def named(self, arrays):
        return tuple(arrays)

    def forward(self, ctx, params, x):
        return x * params[0], x

    def backward(self, ctx, params, cache, grad, input_error=True):
        return (grad * params[0] if input_error else None), [ctx.xp.sum(grad * cache, axis=0)]

    def describe(self):
        return "gain"


def test_a_new_layer_kind_is_one_class_plus_one_registry_line(monkeypatch, tmp_path):
    from xpnet.layers import NORMS

    monkeypatch.setitem(NORMS._entries, "gain", Gain)
    net = build_mlp(("numpy", None), [4, 6, 3], activation="tanh", norm="gain", dtype="float64", seed=1)
    assert [type(layer) for layer in net.layers] == [Dense, Gain, Dense]
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 4)), np.eye(3)[rng.integers(0, 3, 6)]
    cost, layers = net.gradients(x, y)
    assert_matches_the_forward_pass(net, x, y, cost, [host(net, g) for group in layers for g in group])
    X, labels = rng.standard_normal((40, 4)).astype(np.float32), rng.integers(0, 3, 40)
    net.fit(X, labels, epochs=2, batch_size=8)
    net.save(tmp_path / "gain.safetensors")
    loaded = load_model(tmp_path / "gain.safetensors")
    assert [type(layer) for layer in loaded.layers] == [Dense, Gain, Dense]
    np.testing.assert_array_equal(loaded.predict_proba(X), net.predict_proba(X))
