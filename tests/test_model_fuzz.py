"""Fuzz model files: whatever a damaged or hostile file holds, loading it raises an XpnetError.

Two strategies start from one valid model file: flip, insert and delete raw bytes,
and replace metadata values (the JSON strings and the values inside them) with
arbitrary JSON. Either the file still loads as a working network, or ``ModelFile``
/ ``build`` / ``load_model`` raise an ``XpnetError`` subclass; any other exception
is a bug.

A loader that refused every file would pass these tests: that valid model files and
checkpoints load, weights and state exact, is tested in tests/test_checkpoint.py (round trips on
every backend, across backends, optimizer and loop state).
"""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpnet.checkpoint import ModelFile, load_model, save_model
from xpnet.data import Scaling
from xpnet.errors import XpnetError
from xpnet.network import MLP
from xpnet.optim import Adam
from xpnet.safetensors import load_tensors, save_tensors
from xpnet.train import fit

FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> tuple[bytes, dict, dict]:
    """A small resumable checkpoint: its bytes, tensors and metadata."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 3)).astype(np.float32), np.arange(40) % 2
    net = MLP([3, 4, 2], dropout=0.1)
    net.set_scaling(Scaling.fit("standard", X))
    optimizer = Adam(lr=0.01)
    history = fit(net, X, y, epochs=1, batch_size=10, optimizer=optimizer, validation_data=(X[:8], y[:8]))
    path = tmp_path_factory.mktemp("fuzz") / "model.ckpt.safetensors"
    save_model(path, net, training={"seed": 0}, class_names=["no", "yes"], history=history, optimizer=optimizer)
    tensors, metadata = load_tensors(path)
    return path.read_bytes(), tensors, metadata


def _load_everything(path) -> None:
    """Every way the CLI reads a model file; only XpnetError may escape."""
    with contextlib.suppress(XpnetError):
        saved = ModelFile(path)
        net = saved.build()
        saved.best_params(net)
        saved.optimizer_buffers(net, Adam())
        net.predict(np.zeros((2, net.sizes[0]), np.float32))
    with contextlib.suppress(XpnetError):
        load_model(path, "array-api-strict", "device1")


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**12), max_value=10**12)
    | st.sampled_from([0, 1, 2, 3, 4, -1, 10**9, 2**63])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["relu", "softmax", "sigmoid", "identity", "mse", "float64", "unit", "standard", "none"]),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _replace_inside(value, path: list[int], new):
    """``value`` with the node picked by ``path`` (indices into lists/dict values) replaced by ``new``."""
    if not path or not isinstance(value, (list, dict)) or not value:
        return new
    keys = list(range(len(value))) if isinstance(value, list) else list(value)
    key = keys[path[0] % len(keys)]
    copy = list(value) if isinstance(value, list) else dict(value)
    copy[key] = _replace_inside(value[key], path[1:], new)
    return copy


@FUZZ
@given(
    key=st.sampled_from(
        ["format", "format_version", "architecture", "training", "class_names", "scaling", "checkpoint"]
    ),
    where=st.lists(st.integers(min_value=0, max_value=50), max_size=3),
    new=_json_values,
    raw=st.booleans(),
    text=st.text(max_size=30),
)
def test_mutated_metadata_raises_only_xpnet_errors(original, tmp_path, key, where, new, raw, text):
    _, tensors, metadata = original
    metadata = dict(metadata)
    if raw:
        metadata[key] = text  # any string at all: invalid JSON, wrong types, ...
    else:
        decoded = json.loads(metadata[key]) if key not in ("format", "format_version") else metadata[key]
        metadata[key] = json.dumps(_replace_inside(decoded, where, new))
    path = tmp_path / "m.safetensors"
    save_tensors(path, tensors, metadata)
    _load_everything(path)


@FUZZ
@given(data=st.data())
def test_mutated_bytes_raise_only_xpnet_errors(original, tmp_path, data):
    blob = bytearray(original[0])
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        kind = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        at = data.draw(st.integers(min_value=0, max_value=max(len(blob) - 1, 0)))
        if kind == "flip" and blob:
            blob[at] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
        elif kind == "set" and blob:
            blob[at] = data.draw(st.integers(min_value=0, max_value=255))
        elif kind == "insert":
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del blob[at : at + data.draw(st.integers(min_value=1, max_value=8))]
        else:
            del blob[at:]
    path = tmp_path / "m.safetensors"
    path.write_bytes(bytes(blob))
    _load_everything(path)
