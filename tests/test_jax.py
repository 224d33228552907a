"""Every feature on JAX, or refused naming the backend: mixed precision, the estimators, export,
the CLI (compiled and ``--no-compile``), float64 through x64, ``--device cuda`` with and without
JAX's CUDA build. (Data-parallel's refusal is in test_distributed.py; the shared core tests run on
jax-cpu through conftest's CPU_BACKENDS, and on jax-cuda in tests/test_gpu.py.) Not on JAX:
tests/test_device_audit.py, whose monitor is PyTorch's dispatch on its ``meta`` device; JAX's own
``jax.transfer_guard`` flags every Python scalar in an eager operation as a host-to-device
transfer, so it cannot stand in for that audit; a JAX run's host reads are counted instead
(``Backend.host_reads``: test_compiled.py, test_gpu.py)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import HAVE_JAX, blobs

from xpnet.network import MLP
from xpnet.optim import Adam

pytestmark = pytest.mark.skipif(not HAVE_JAX, reason='needs JAX (pip install "xpnet[jax]")')


def test_float64_switches_jax_to_x64_and_computes_in_it():
    net = MLP([3, 4, 2], backend="jax", dtype="float64")
    assert str(net.params[0].dtype) == "float64"
    _, layers = net.gradients(np.ones((2, 3)), np.array([0, 1]))
    assert str(layers[0].W.dtype) == "float64"


@pytest.mark.parametrize("precision", ["mixed-float16", "mixed-bfloat16"])
def test_mixed_precision_trains_on_jax_compiled_as_eagerly(precision):
    X, y = blobs(n=96, features=4, classes=3)
    runs = []
    for compile in (True, False):
        net = MLP([4, 8, 3], backend="jax", precision=precision, seed=0)
        history = net.fit(X, y, epochs=2, batch_size=16, optimizer=Adam(lr=0.01), compile=compile)
        runs.append((history, [net.backend.to_host(p) for p in net.params]))
    (compiled, weights), (eager, eager_weights) = runs
    assert compiled.records[-1]["accuracy"] > 0.9
    assert compiled.loss_scaler == eager.loss_scaler  # float16's scale state carried through the chunks
    for a, b in zip(weights, eager_weights):
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3)


@pytest.mark.filterwarnings("ignore:XpnetClassifier. max_iter")
def test_the_estimators_fit_and_predict_on_jax():
    from xpnet.estimators import XpnetClassifier

    X, y = blobs(n=80, features=3, classes=2)
    clf = XpnetClassifier(hidden_layer_sizes=(8,), max_iter=5, backend="jax", random_state=0).fit(X, y)
    assert clf.score(X, y) > 0.9


def test_a_jax_network_exports_the_same_onnx_as_its_numpy_copy():
    pytest.importorskip("onnx")
    from xpnet.export import to_onnx

    net = MLP([3, 5, 2], backend="jax", seed=4)
    twin = MLP([3, 5, 2], backend="numpy", seed=9)
    twin.load_state_dict(net.state_dict())
    assert to_onnx(net).SerializeToString() == to_onnx(twin).SerializeToString()


def test_the_cli_trains_on_jax_compiled_and_eagerly(tmp_path, capsys):
    from test_cli import SMALL, _images

    from xpnet.cli import main
    from xpnet.data import write_idx

    rng = np.random.default_rng(0)
    for split, n in (("train", 300), ("t10k", 100)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", _images(rng, labels))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", labels)
    accuracy = []
    for extra in ([], ["--no-compile"]):
        out = tmp_path / f"m{len(extra)}.safetensors"
        args = ["train", "--data-dir", str(tmp_path), "--out", str(out), "--backend", "jax", *SMALL, *extra]
        assert main(args) == 0
        accuracy.append(capsys.readouterr().out.split("accuracy")[1].split()[0])
    compiled, eager = (float(a) for a in accuracy)
    assert compiled > 0.5 and compiled == pytest.approx(eager, abs=0.02)


def test_cuda_with_a_cpu_only_jax_is_refused_saying_how_to_get_jaxs_cuda_build(monkeypatch, capsys, tmp_path):
    """On a GPU machine (the driver check passed) whose JAX is the plain CPU wheel, as here."""
    from xpnet.backend import resolve
    from xpnet.cli import main

    monkeypatch.setattr(resolve, "nvidia_driver_missing", lambda: False)
    assert main(["train", "--backend", "jax", "--device", "cuda", "--out", str(tmp_path / "m.safetensors")]) == 2
    error = capsys.readouterr().err
    assert "xpnet: error: device 'cuda': JAX has no CUDA here" in error and "Traceback" not in error
    assert 'pip install -U "jax[cuda13]"' in error and "--device cpu" in error


def test_cuda_picks_the_gpu_jax_sees_where_its_jaxlib_has_cuda(monkeypatch):
    """A CUDA jaxlib stood in for: ``jax.devices("gpu")`` lists two GPUs; cuda:N is the N-th."""
    import jax

    from xpnet.backend import get_backend, resolve
    from xpnet.errors import BackendError

    class Gpu:
        platform = "gpu"

        def __init__(self, index):
            self.id = index

    gpus, listed = [Gpu(0), Gpu(1)], jax.devices
    monkeypatch.setattr(resolve, "nvidia_driver_missing", lambda: False)
    monkeypatch.setattr(jax, "devices", lambda kind=None: gpus if kind == "gpu" else listed(kind))
    backend = get_backend("jax", "cuda:1")
    assert backend.device is gpus[1] and backend.device_name == "cuda:1" and backend.cuda_index == 1
    assert get_backend("jax", "cuda").device is gpus[0]
    with pytest.raises(BackendError, match="cuda:2 does not exist; JAX sees 2 GPU"):
        get_backend("jax", "cuda:2")
