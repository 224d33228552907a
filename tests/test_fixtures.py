"""Model files written by an earlier xpnet load and predict as they did when written.

The files under tests/fixtures/ were written by ``tests/fixtures/make_fixtures.py`` before
the layer refactor (issue 20); ``expected.npz`` holds their inputs and the outputs the
writing code predicted. A change to the file format, the parameter names or the forward
pass's arithmetic fails here. Probabilities may differ by a few units in the last place
(ulps) from the writing machine's: OpenBLAS picks its kernels by CPU, and another CPU sums
a dot product in another order (an AMD EPYC reads one float64 softmax output 2 ulps off an
expected.npz written elsewhere, and an AVX-512 one the regressor's float32 outputs 2 ulps off).
So do a regressor's predictions, which are its outputs; class labels must be equal. A wrong
formula, a dropped bias or a swapped tensor moves far more.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xpnet.checkpoint import ModelFile, load_model
from xpnet.optim import Adam

#: How many units in the last place another CPU's BLAS may move a probability.
BLAS_ULPS = 4

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = ["classifier_f32", "layers_f64", "regressor", "binary", "mixed_f16", "adam.ckpt"]


@pytest.fixture(scope="module")
def expected():
    with np.load(FIXTURES / "expected.npz", allow_pickle=False) as arrays:
        return dict(arrays)


@pytest.mark.parametrize("name", MODELS)
def test_old_model_file_predicts_as_written(name, expected):
    path = FIXTURES / f"{name}.safetensors"
    net = load_model(path, precision=ModelFile(path).saved_precision)  # mixed_f16 computes in float16
    x = expected[f"{name}.x"]
    np.testing.assert_array_max_ulp(net.predict_proba(x), expected[f"{name}.proba"], maxulp=BLAS_ULPS)
    predicted, written = net.predict(x), expected[f"{name}.predict"]
    assert predicted.dtype == written.dtype
    if np.issubdtype(written.dtype, np.floating):  # a regressor's predictions are its outputs: the BLAS's ulps
        np.testing.assert_array_max_ulp(predicted, written, maxulp=BLAS_ULPS)
    else:  # class labels: exact
        np.testing.assert_array_equal(predicted, written)


def test_old_files_keep_their_settings():
    assert load_model(FIXTURES / "layers_f64.safetensors").dtype_name == "float64"
    assert ModelFile(FIXTURES / "mixed_f16.safetensors").saved_precision == "mixed-float16"
    assert ModelFile(FIXTURES / "classifier_f32.safetensors").class_names == ["ant", "bee", "cat"]
    assert [act.spec() for act in load_model(FIXTURES / "layers_f64.safetensors").activations] == [
        "sigmoid",
        "tanh",
        "softmax",
    ]


def test_old_checkpoint_resumes(expected):
    saved = ModelFile(FIXTURES / "adam.ckpt.safetensors")
    net = saved.build(precision=saved.saved_precision)
    optimizer = Adam(lr=0.01)
    buffers = saved.optimizer_buffers(net, optimizer)
    optimizer.load_state_arrays(buffers, saved.checkpoint["optimizer_steps"], net.params)
    assert optimizer.steps == saved.checkpoint["optimizer_steps"] > 0
    assert saved.resume_state()["epoch"] == 2
    best = saved.best_params(net)
    assert best is not None and len(best) == len(net.params)
    np.testing.assert_array_max_ulp(net.predict_proba(expected["adam.ckpt.x"]), expected["adam.ckpt.proba"], BLAS_ULPS)
