"""TensorFlow SavedModel folders and frozen ``.pb`` graphs -> IR graph (imports TensorFlow).

The TensorFlow graph is put in nn-Meter's IR shape (TF op types, inbounds, shapes,
strides and kernel sizes) and converted by :mod:`nnmeter.predictor.converters.nnmeter_ir`:
one table of TensorFlow op types serves both inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from nnmeter.errors import ModelFileError
from nnmeter.predictor.converters.nnmeter_ir import convert_dict
from nnmeter.predictor.ir import Graph


def load_saved_model(path: Path, input_shape: Sequence[int] | None = None) -> Graph:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as err:  # TF raises many types for a damaged folder
        raise ModelFileError(f"{path}: not a SavedModel TensorFlow can load ({type(err).__name__})") from None
    signatures = getattr(loaded, "signatures", {})
    if "serving_default" not in signatures:
        raise ModelFileError(f"{path}: the SavedModel has no serving_default signature")
    function = signatures["serving_default"]
    if input_shape is not None:
        spec = function.structured_input_signature[1]
        key, first = next(iter(spec.items()))
        serving = function
        function = tf.function(lambda x: serving(**{key: x})).get_concrete_function(
            tf.TensorSpec(list(input_shape), first.dtype)
        )
    frozen = convert_variables_to_constants_v2(function)
    return convert_dict(_ir_dict(frozen.graph, input_shape), name=path.name, source=str(path))


def load_frozen_graph(path: Path, input_shape: Sequence[int] | None = None) -> Graph:
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except Exception as err:  # protobuf's DecodeError
        raise ModelFileError(f"{path}: not a frozen TensorFlow graph ({type(err).__name__})") from None
    if not graph_def.node:
        raise ModelFileError(f"{path}: not a frozen TensorFlow graph (no nodes)")
    graph = tf.Graph()
    with graph.as_default():
        input_map = {}
        if input_shape is not None:
            placeholders = [n.name for n in graph_def.node if n.op == "Placeholder"]
            input_map = {f"{placeholders[0]}:0": tf.compat.v1.placeholder(tf.float32, list(input_shape))}
        tf.import_graph_def(graph_def, name="", input_map=input_map)
    return convert_dict(_ir_dict(graph, input_shape), name=path.stem, source=str(path))


def _shape(tensor: Any) -> list[int] | None:
    try:
        return [-1 if d is None else int(d) for d in tensor.shape.as_list()]
    except ValueError:  # unknown rank
        return None


def _ir_dict(graph: Any, input_shape: Sequence[int] | None) -> dict[str, Any]:
    """The graph in nn-Meter IR form (see the nnmeter_ir module)."""
    import tensorflow as tf

    nodes: dict[str, Any] = {}
    for op in graph.get_operations():
        inbounds = [t.op.name for t in op.inputs]
        attrs: dict[str, Any] = {}
        for key in ("strides", "ksize", "padding", "num_split"):
            try:
                value = op.get_attr(key)
            except (ValueError, TypeError):
                continue
            attrs[key] = (
                value.decode() if isinstance(value, bytes) else list(value) if isinstance(value, list) else value
            )
        if op.type in ("Conv2D", "DepthwiseConv2dNative", "Conv2DBackpropInput") and len(op.inputs) > 1:
            attrs["weight_shape"] = _shape(op.inputs[1])
        if op.type == "Const":
            value = tf.make_ndarray(op.get_attr("value"))
            attrs["constant"] = value.reshape(-1).tolist() if value.size <= 4 else None
        if op.type == "Placeholder":
            shape = _shape(op.outputs[0])
            attrs["shape"] = list(input_shape) if input_shape is not None else shape
        nodes[op.name] = {
            "inbounds": inbounds,
            "outbounds": [],
            "attr": {
                "name": op.name,
                "type": op.type,
                "attr": attrs,
                "input_shape": [_shape(t) for t in op.inputs],
                "output_shape": [_shape(t) for t in op.outputs],
            },
        }
    for name, entry in nodes.items():
        for src in entry["inbounds"]:
            nodes[src]["outbounds"].append(name)
    return nodes
