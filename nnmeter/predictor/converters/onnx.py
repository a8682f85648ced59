"""ONNX files and ``onnx.ModelProto`` -> IR graph, with ONNX shape inference (no TensorFlow).

ONNX's NCHW 4-D shapes are stored NHWC in the IR (the IR's one layout); channel axes of
Concat follow. Initializers and Constant nodes are constants, not edges; so is what is
computed from a ``Shape`` and constants alone. A node of a quantized model (QDQ or QOperator) carries
its precision; QuantizeLinear and DequantizeLinear of activations are nodes of their own.

A file is input: external data (weights in other files) is never read (the converter needs only the
weights' shapes), a tensor's values are read only when it is small (scalars, axes, clip bounds), and a
malformed model is a :class:`~nnmeter.errors.ModelFileError` in one line naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nnmeter import ops
from nnmeter.errors import ModelFileError
from nnmeter.predictor.ir import Graph, GraphBuilder, scalar_operand

_OPS = {
    "Conv": ops.CONV,
    "ConvTranspose": ops.CONVTRANS,
    "BatchNormalization": ops.BN,
    "Relu": ops.RELU,
    "Sigmoid": ops.SIGMOID,
    "HardSigmoid": ops.HSIGMOID,
    "HardSwish": ops.HSWISH,
    "Add": ops.ADD,
    "Sub": ops.ADD,
    "Mul": ops.MUL,
    "Div": ops.MUL,
    "MaxPool": ops.MAXPOOL,
    "AveragePool": ops.AVGPOOL,
    "GlobalAveragePool": ops.GLOBAL_AVGPOOL,
    "ReduceMean": ops.GLOBAL_AVGPOOL,
    "Gemm": ops.FC,
    "MatMul": ops.FC,
    "Concat": ops.CONCAT,
    "Split": ops.SPLIT,
    "Pad": ops.PAD,
    "Slice": ops.CROP,
    "Softmax": ops.SOFTMAX,
    "Reshape": ops.RESHAPE,
    "Squeeze": ops.RESHAPE,
    "Unsqueeze": ops.RESHAPE,
    "Flatten": ops.FLATTEN,
}
_NOOPS = {"Identity", "Dropout"}
#: Constants with more values than this are read for their shape only (weights).
_MAX_CONST_VALUES = 1024
#: What a malformed model raises while it is converted.
_DAMAGE = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, ZeroDivisionError)
#: Ops that read only a tensor's shape (a dynamic batch's reshape starts with one).
_SHAPE_OPS = {"Shape", "Size"}
#: Element types of quantized or reduced-precision models -> the precision of the nodes that compute on them.
_PRECISION_OF_TYPE = {
    "FLOAT16": "float16",
    "BFLOAT16": "bfloat16",
    "FLOAT8E4M3FN": "float8",
    "FLOAT8E4M3FNUZ": "float8",
    "FLOAT8E5M2": "float8",
    "FLOAT8E5M2FNUZ": "float8",
    "INT16": "int16",
    "UINT16": "uint16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT4": "int4",
    "UINT4": "uint4",
}


def load(path: Path, input_shape: Sequence[int] | None = None) -> Graph:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)  # never read other files a model names
    except Exception as err:  # protobuf raises DecodeError and others for a file that is not ONNX
        raise ModelFileError(f"{path}: not an ONNX model ({type(err).__name__}: {_one_line(err)})") from None
    if not model.graph.node:
        raise ModelFileError(f"{path}: not an ONNX model (no graph nodes)")
    return convert(model, input_shape, name=path.stem, source=str(path))


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _const(tensor: Any) -> np.ndarray:
    """A constant's values when it is small and stored in the model, else an array of its shape that holds no
    memory (a weight: only its shape is read; external data is never loaded)."""
    from onnx import TensorProto, numpy_helper

    dims = [int(d) for d in tensor.dims]
    if any(d < 0 for d in dims):
        raise ValueError(f"tensor {tensor.name!r} has dims {dims}")
    external = tensor.data_location == TensorProto.EXTERNAL
    if not external and not tensor.HasField("segment") and int(np.prod(dims, dtype=np.float64)) <= _MAX_CONST_VALUES:
        return numpy_helper.to_array(tensor)
    return np.broadcast_to(np.float32(0), dims)


def _nhwc(shape: list[int]) -> list[int]:
    """NCHW -> NHWC for 4-D shapes; a dynamic batch dimension is 1."""
    shape = [1 if i == 0 and d <= 0 else d for i, d in enumerate(shape)]
    return [shape[0], shape[2], shape[3], shape[1]] if len(shape) == 4 else shape


def convert(
    model: Any, input_shape: Sequence[int] | None = None, name: str | None = None, source: str = "<onnx model>"
) -> Graph:
    try:
        return _convert(model, input_shape, name, source)
    except ModelFileError:
        raise
    except _DAMAGE as err:
        raise ModelFileError(f"{source}: malformed ONNX model ({_one_line(err)})") from None


def _convert(model: Any, input_shape: Sequence[int] | None, name: str | None, source: str) -> Graph:
    import onnx
    from onnx import shape_inference

    graph = model.graph
    consts: dict[str, np.ndarray] = {i.name: _const(i) for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in consts]
    if input_shape is not None and inputs:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        dims = model.graph.input[[i.name for i in model.graph.input].index(inputs[0].name)].type.tensor_type.shape.dim
        if len(dims) != len(input_shape):
            raise ModelFileError(
                f"{source}: input_shape {list(input_shape)} has {len(input_shape)} dims, "
                f"the model's input {inputs[0].name!r} has {len(dims)}"
            )
        for dim, value in zip(dims, input_shape):
            dim.Clear()
            dim.dim_value = int(value)
        graph = model.graph
    try:
        graph = shape_inference.infer_shapes(model, strict_mode=False).graph
    except Exception as err:  # inference errors name the node and its problem
        raise ModelFileError(f"{source}: ONNX shape inference failed: {_one_line(err)}") from None
    shapes: dict[str, list[int]] = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    precision_of = _precisions(graph)
    builder = GraphBuilder(name or graph.name or "onnx-model", source)
    for inp in inputs:
        dims = [None if d <= 0 else d for d in shapes.get(inp.name, [])]
        if any(d is None for d in dims[1:]):
            builder.input(inp.name, dims)  # raises: a dynamic shape needs input_shape
        builder.input(inp.name, _nhwc([d or 1 for d in dims]))
    producer: dict[str, str] = {i.name: i.name for i in inputs}
    for index, node in enumerate(graph.node):
        if node.op_type in _SHAPE_OPS:
            continue  # a tensor's shape: what is computed from it alone is a constant to the ops that read it
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and node.output:
                    consts[node.output[0]] = _const(attr.t)
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        data_in = [i for i in node.input if i in producer]
        const_in = [consts[i] for i in node.input if i in consts]
        name = node.name or f"{node.op_type}_{index}"
        # QDQ models: what a DequantizeLinear gives is computed in the format it dequantizes, by the op reading it
        precision = next((precision_of[i] for i in node.input if i in precision_of), ops.FLOAT32)
        if precision == ops.FLOAT32:
            precision = next((precision_of[o] for o in node.output if o in precision_of), ops.FLOAT32)
        if node.op_type == "DequantizeLinear" and precision != ops.FLOAT32:
            precision_of.update((o, precision) for o in node.output if o)
        if not data_in:  # computed from constants only (shape arithmetic, a dequantized weight): a constant too
            continue
        if node.op_type in _NOOPS:
            builder.bypass(name, producer[data_in[0]])
            producer.update({o: builder.resolve(name) for o in node.output if o})
            continue
        in_shapes = [_nhwc(shapes.get(i, [])) for i in data_in]
        out_shapes = [_nhwc(shapes.get(o, [])) for o in node.output if o]
        op, extra = _op(node.op_type, attrs, const_in, in_shapes, consts, node)
        builder.node(name, op, [producer[i] for i in data_in], in_shapes, out_shapes, precision, **extra)
        producer.update({o: name for o in node.output if o})
    return builder.finish(producer[o.name] for o in graph.output if o.name in producer)


def _precisions(graph: Any) -> dict[str, str]:
    """Tensor name -> precision, for the tensors of the graph whose element type is of a reduced precision."""
    from onnx import TensorProto

    names = {getattr(TensorProto, t): p for t, p in _PRECISION_OF_TYPE.items() if hasattr(TensorProto, t)}
    types = {i.name: i.data_type for i in graph.initializer}
    types.update((i.name, i.type.tensor_type.elem_type) for i in (*graph.input, *graph.value_info, *graph.output))
    return {name: names[t] for name, t in types.items() if t in names}


def _op(
    op_type: str,
    attrs: dict[str, Any],
    const_in: list[np.ndarray],
    in_shapes: list[list[int]],
    consts: dict[str, np.ndarray],
    node: Any,
) -> tuple[str, dict[str, Any]]:
    if op_type in ("Conv", "ConvTranspose"):
        weight = const_in[0].shape if const_in else None
        size = list(attrs.get("kernel_shape") or (weight[2:] if weight is not None else [1, 1]))
        extra: dict[str, Any] = {"kernel_size": size, "strides": list(attrs.get("strides", [1, 1]))}
        group = int(attrs.get("group", 1))
        if op_type == "ConvTranspose":
            return ops.CONVTRANS, extra
        cin = in_shapes[0][-1] if in_shapes and in_shapes[0] else 0
        if group > 1 and group == cin:
            extra["depth_multiplier"] = (weight[0] // cin) if weight is not None else 1
            return ops.DWCONV, extra
        if group > 1:
            extra["groups"] = group
        return ops.CONV, extra
    if op_type in ("MaxPool", "AveragePool"):
        size = list(attrs.get("kernel_shape", [1, 1]))
        op = ops.MAXPOOL if op_type == "MaxPool" else ops.AVGPOOL
        if op == ops.AVGPOOL and in_shapes and in_shapes[0][1:3] == size:
            return ops.GLOBAL_AVGPOOL, {}
        return op, {"kernel_size": size, "strides": list(attrs.get("strides", size))}
    if op_type == "ReduceMean":
        axes = attrs.get("axes", const_in[0].tolist() if const_in and const_in[0].size <= 8 else None)
        if axes is None or sorted(a % 4 for a in axes) != [2, 3]:
            return op_type, {}
        return ops.GLOBAL_AVGPOOL, {}
    if op_type == "Clip":
        bounds: tuple[float | None, ...] = attrs.get("min"), attrs.get("max")
        if len(node.input) >= 3:
            bounds = tuple(float(consts[i]) if i in consts else None for i in node.input[1:3])
        if bounds[0] == 0 and bounds[1] == 6:
            return ops.RELU6, {}
        if bounds[0] == 0 and bounds[1] is None:
            return ops.RELU, {}
        return op_type, {}
    if op_type == "Concat":
        axis = int(attrs.get("axis", 1))
        rank = len(in_shapes[0]) if in_shapes else 4
        channel = axis % rank == (1 if rank == 4 else rank - 1)
        return ops.CONCAT, {"axis": -1 if channel else axis}
    if op_type in ("Add", "Sub", "Mul", "Div") and len(in_shapes) == 1:
        value: Any = "tensor"
        if const_in and const_in[0].size == 1:
            scalar = float(const_in[0].reshape(-1)[0])
            value = scalar_operand(op_type, scalar)
        return _OPS[op_type], {"constant": value}
    if op_type == "Div":
        return op_type, {}
    return _OPS.get(op_type, op_type), {}
