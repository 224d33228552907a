"""export_onnx, to_onnx, MLP.save and load_model refuse every wrong argument with an XpnetError
naming it (generated values of the wrong kind), refuse class names that do not fit the outputs,
NaN weights and graphs over protobuf's 2 GiB, each before any file is written."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("onnx", reason='needs onnx (pip install "xpnet[onnx]")')

from xpnet import MLP, export
from xpnet.checkpoint import load_model
from xpnet.errors import DivergenceError, XpnetError
from xpnet.export import PROTO_LIMIT, export_estimate, export_onnx

#: Values of every kind but a path, a network or a list of strings.
WRONG = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.binary(max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.just(object()), st.just(np.zeros(3)),
)  # fmt: skip
NET = MLP([3, 4, 3], seed=0)


@settings(max_examples=40, deadline=None)
@given(value=WRONG)
def test_wrong_python_arguments_are_xpnet_errors(tmp_path_factory, value):
    out = tmp_path_factory.mktemp("e") / "m.onnx"
    calls = [
        lambda: export_onnx(value, out),
        lambda: export_onnx(NET, value),
        lambda: NET.save(value),
        lambda: load_model(value),
    ]
    if value is not None:  # None is "no class names"
        calls.append(lambda: export_onnx(NET, out, class_names=value))
        calls.append(lambda: NET.save(out.with_suffix(".safetensors"), class_names=value))
    for call in calls:
        with pytest.raises(XpnetError):
            call()
    assert not out.exists()


@settings(max_examples=30, deadline=None)
@given(names=st.lists(st.text(max_size=5), max_size=6))
def test_class_names_must_fit_the_outputs(tmp_path_factory, names):
    out = tmp_path_factory.mktemp("c") / "m.onnx"
    if names and len(names) != 3:
        with pytest.raises(XpnetError, match="class_names"):
            export_onnx(NET, out, class_names=names)
        assert not out.exists()
    elif all("\ud800" not in n for n in names):
        export_onnx(NET, out, class_names=names)
        assert out.exists()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("which", [0, 1, 2, 3])
def test_a_network_holding_nan_is_not_exported(tmp_path, bad, which):
    net = MLP([3, 4, 3], seed=0)
    host = net.backend.to_host(net.params[which]).copy()
    host.reshape(-1)[0] = bad
    net.params[which] = net.backend.upload(host, net.dtype)
    with pytest.raises(DivergenceError, match="NaN or infinite"):
        export_onnx(net, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("sizes", [[32767, 16384, 10], [2**16, 2**14], [1, 2**29, 2], [10, 2**15, 2**15, 3]])
def test_a_graph_over_protobufs_limit_is_refused_by_its_estimate(sizes):
    with pytest.raises(XpnetError, match=f"{PROTO_LIMIT:,} bytes"):
        export_estimate(sizes)


@pytest.mark.parametrize("limit", [0, 100, 123])
def test_export_refuses_before_any_work_a_model_over_the_limit(tmp_path, monkeypatch, limit):
    monkeypatch.setattr(export, "PROTO_LIMIT", limit)
    monkeypatch.setattr(export, "PROTO_SLACK", 0)
    NET.save(tmp_path / "m.safetensors")
    for model in (NET, tmp_path / "m.safetensors"):
        with pytest.raises(XpnetError, match="protobuf"):
            export_onnx(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
