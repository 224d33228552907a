"""ONNX export: a trained network as a standard ONNX graph, for ONNX Runtime and other runtimes.

The graph (opset ``OPSET``, IR version ``IR_VERSION``), in the model's float type
(float32 unless it was trained in float64)::

    input   "input"  [batch, n_features]       batch is dynamic; raw features, as xpnet's predict takes
    Sub, Mul         (x - shift) * scale       only when the model carries an input scaling
    Gemm             a W^T + b                 per layer; W stays (out, in), as in the model file
    Sigmoid | Tanh | Relu | LeakyRelu(alpha) | Softmax(axis=1) | Exp    the layer's activation (identity: none)
    LayerNormalization(axis=-1, epsilon)       after each hidden layer of a network with norm="layer"
    output  "output" [batch, n_outputs]        the network's outputs (probabilities for classifiers)
    output  "label"  [batch] int64             classifiers only: argmax, or output > 0.5 for one sigmoid

The file is built with the ``onnx`` package (``pip install "xpnet[onnx]"``) from the
host copies of the weights, so a network gives the same bytes whichever backend trained
it. Metadata: the xpnet version, the architecture and the class names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from xpnet import __version__
from xpnet.activations import ACTIVATIONS
from xpnet.checkpoint import ModelFile
from xpnet.errors import ConfigError, XpnetError
from xpnet.fileio import atomic_write_bytes, check_output_path
from xpnet.memory import Estimate, network_estimate, parameter_count
from xpnet.modelfile import check_class_names, check_finite, check_path
from xpnet.network import MLP

OPSET = 17
#: IR version 8 goes with opset 17 (onnx 1.12); runtimes from 2022 on read it.
IR_VERSION = 8
INPUT, OUTPUT, LABEL = "input", "output", "label"
#: protobuf's limit on one serialized message, and room for the graph besides its weights.
PROTO_LIMIT, PROTO_SLACK = 2**31, 2**20


def _onnx():
    """The onnx package, or an error saying how to install it (it is an optional extra)."""
    try:
        import onnx
    except ImportError:
        raise XpnetError('ONNX export needs the onnx package; install it with: pip install "xpnet[onnx]"') from None
    return onnx


def to_onnx(net: MLP, *, class_names: list[str] | None = None):
    """``net`` as an ``onnx.ModelProto`` (checked by ``onnx.checker``); see the module docstring."""
    if not isinstance(net, MLP):
        raise ConfigError(f"to_onnx: net must be an MLP, not {type(net).__name__}")
    class_names = check_class_names(class_names, net.num_outputs, "export_onnx: class_names")
    check_finite(net.state_dict(), "exporting the network")
    onnx = _onnx()
    from onnx import helper, numpy_helper

    float_type = {"float32": onnx.TensorProto.FLOAT, "float64": onnx.TensorProto.DOUBLE}[net.dtype_name]
    host_dtype = np.dtype(net.dtype_name)
    nodes, initializers = [], []
    a = INPUT
    if net.scaling is not None:
        for name, op, value in (("input_shift", "Sub", net.scaling.shift), ("input_scale", "Mul", net.scaling.scale)):
            initializers.append(numpy_helper.from_array(np.asarray(value, dtype=host_dtype), name))
            nodes.append(helper.make_node(op, [a, name], [f"{name}ed"], name=f"scaling_{op.lower()}"))
            a = f"{name}ed"
    graph = _Graph(helper, nodes)
    for name, array in net.state_dict().items():
        initializers.append(numpy_helper.from_array(array.astype(host_dtype), name))
    for k, layer in enumerate(net.layers):
        a = layer.to_onnx(graph, a, OUTPUT if k == len(net.layers) - 1 else None)
    outputs = [helper.make_tensor_value_info(OUTPUT, float_type, ["batch", net.num_outputs])]
    if net.is_classifier:
        label_nodes, label_constants = _label_nodes(helper, onnx, net.num_outputs, host_dtype)
        nodes += label_nodes
        initializers += [numpy_helper.from_array(value, name) for name, value in label_constants.items()]
        outputs.append(helper.make_tensor_value_info(LABEL, onnx.TensorProto.INT64, ["batch"]))
    graph = helper.make_graph(
        nodes,
        "xpnet_mlp",
        [helper.make_tensor_value_info(INPUT, float_type, ["batch", net.sizes[0]])],
        outputs,
        initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="xpnet",
        producer_version=__version__,
        doc_string=_describe(net),
    )
    metadata = {"xpnet_version": __version__, "architecture": json.dumps(net.config())}
    metadata["class_names"] = json.dumps(list(class_names or []))
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model


class _Graph:
    """What a layer's ``to_onnx`` adds nodes through: each node named after its output."""

    def __init__(self, helper, nodes: list):
        self.helper, self.nodes = helper, nodes

    def node(self, op: str, inputs: list[str], output: str, **attributes) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=f"{output}_{op.lower()}", **attributes))
        return output

    @staticmethod
    def activation_op(act) -> tuple[str, dict] | None:
        """The ONNX operator and attributes of activation ``act`` (its ``onnx``); None: no node."""
        if act.onnx is False:
            exported = ", ".join(name for name, cls in ACTIVATIONS.items() if cls.onnx is not False)
            raise ConfigError(f"activation {act.spec()!r} has no ONNX export; xpnet exports {exported}")
        return act.onnx


def _describe(net: MLP) -> str:
    """What the graph computes, without the backend that trained it (the file must not depend on it)."""
    layers = ", ".join(layer.describe() for layer in net.layers)
    return f"xpnet multilayer perceptron: {layers}; trained with loss {net.loss_name}"


def _label_nodes(helper, onnx, num_outputs: int, dtype) -> tuple[list, dict]:
    """Nodes (and their constants) computing "label" from "output" as xpnet's ``predict`` does."""
    if num_outputs > 1:  # the first maximum, as NumPy's argmax
        return [helper.make_node("ArgMax", [OUTPUT], [LABEL], name="label_argmax", axis=1, keepdims=0)], {}
    nodes = [
        helper.make_node("Greater", [OUTPUT, "label_threshold"], ["label_bool"], name="label_greater"),
        helper.make_node("Cast", ["label_bool"], ["label_column"], name="label_cast", to=onnx.TensorProto.INT64),
        helper.make_node("Squeeze", ["label_column", "label_axes"], [LABEL], name="label_squeeze"),
    ]
    return nodes, {"label_threshold": np.asarray(0.5, dtype=dtype), "label_axes": np.asarray([1], dtype=np.int64)}


def export_onnx(model: MLP | str | os.PathLike, out: str | os.PathLike, *, class_names: list[str] | None = None):
    """Write ``model`` (a network, or the path of an xpnet model file) to ``out`` as ONNX.

    Checked before any work: the arguments' types, ``out`` (an ``.onnx`` path the output rule
    of ``xpnet.fileio`` takes), the class names against the outputs, the graph's size against
    protobuf's 2 GiB and the memory the export holds against the limit. A network holding
    NaN or infinities is refused, as ``save_model`` refuses it. The file is written
    atomically; returns the ``onnx.ModelProto`` written.
    """
    if not isinstance(model, (MLP, str, os.PathLike)):
        raise ConfigError(f"export_onnx: model must be an MLP or a model file path, not {type(model).__name__}")
    check_path(out, "export_onnx: out")
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"{out}: an ONNX file name must end in .onnx")
    check_output_path(out, "the ONNX file")
    if not isinstance(model, MLP):
        saved = ModelFile(model)
        export_estimate(saved.sizes, saved.architecture.get("dtype", "float32")).check(f"exporting {model}")
        model, class_names = saved.build("numpy"), class_names or saved.class_names
    else:
        export_estimate(model.sizes, model.dtype_name).check("exporting the network")
    proto = to_onnx(model, class_names=class_names)
    atomic_write_bytes(out, proto.SerializeToString())
    return proto


def export_estimate(sizes: list[int], dtype: str = "float32") -> Estimate:
    """Refuse a graph over protobuf's 2 GiB (its initializers are float32 or float64); else what the
    export holds: the network, its host copies, the graph's initializers and the serialized bytes."""
    weights = parameter_count(sizes) * max(4, np.dtype(dtype).itemsize)
    if weights + PROTO_SLACK > PROTO_LIMIT:
        raise ConfigError(
            f"an ONNX file of this model ({weights:,} bytes of weights) would pass protobuf's limit of 2 GiB "
            f"({PROTO_LIMIT:,} bytes) on one file, which xpnet's export does not split; export a smaller model"
        )
    return network_estimate(sizes, max(4, np.dtype(dtype).itemsize)).add(
        "host copies, graph initializers and file bytes", 3 * weights
    )
