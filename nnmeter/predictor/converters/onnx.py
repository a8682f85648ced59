"""ONNX files and ``onnx.ModelProto`` -> IR graph, with ONNX shape inference (no TensorFlow).

ONNX's NCHW 4-D shapes are stored NHWC in the IR (the IR's one layout); channel axes of
Concat, Slice and ReduceMean follow. A model converted from an NHWC framework can hold NHWC tensors too:
tf2onnx keeps its input NHWC, and leaves its whole graph NHWC with a Transpose around every conv when its
transpose optimizer fails (it does on MobileNetV3's ``x + 3``). Each 4-D tensor's layout is inferred from
the ops that fix it (a Conv or pool reads and writes NCHW, a Transpose between NCHW and NHWC says both
sides, element-wise ops keep it), and such a layout Transpose is free: in the IR's one layout it is no op,
and the network it describes runs without it. Initializers and Constant nodes are constants, not edges; so is what is
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


def _nhwc(shape: list[int], nhwc: bool = False) -> list[int]:
    """NCHW -> NHWC for 4-D shapes (``nhwc``: the tensor is NHWC already); a dynamic batch dimension is 1."""
    shape = [1 if i == 0 and d <= 0 else d for i, d in enumerate(shape)]
    return [shape[0], shape[2], shape[3], shape[1]] if len(shape) == 4 and not nhwc else shape


#: ONNX ops whose 4-D data input and output are NCHW by the operator's definition.
_NCHW_OPS = {
    "Conv",
    "ConvTranspose",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "BatchNormalization",
    "InstanceNormalization",
}
#: Ops whose 4-D outputs have the layout of their 4-D data inputs (element-wise ops, copies of a window, joins).
_SAME_LAYOUT_OPS = {
    "Relu",
    "Clip",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "LeakyRelu",
    "Tanh",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pad",
    "Slice",
    "Split",
    "Concat",
    "Identity",
    "Dropout",
}
#: Transpose permutations between the two layouts: NCHW -> NHWC and NHWC -> NCHW.
_TO_NHWC, _TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]


def _reduce_axes(node: Any, consts: dict[str, np.ndarray]) -> list[int] | None:
    """The sorted axes (of a 4-D input) a ReduceMean reduces, from its attribute or its constant input."""
    import onnx

    for a in node.attribute:
        if a.name == "axes":
            return sorted(int(x) % 4 for x in onnx.helper.get_attribute_value(a))
    axes = consts.get(node.input[1]) if len(node.input) > 1 else None
    return sorted(int(x) % 4 for x in np.ravel(axes)) if axes is not None and 0 < axes.size <= 4 else None


def _keeps_dims(node: Any) -> bool:
    import onnx

    return next((bool(onnx.helper.get_attribute_value(a)) for a in node.attribute if a.name == "keepdims"), True)


def _shuffled(reshape: Any, made_by: dict[str, Any], shapes: dict[str, list[int]]) -> str | None:
    """The 4-D tensor a channel shuffle (4-D -> Reshape -> 5-D Transpose -> Reshape) ending at ``reshape``
    started from, when it has the shape ``reshape`` gives back; else None."""
    transpose = made_by.get(reshape.input[0])
    if transpose is None or transpose.op_type != "Transpose" or not transpose.input:
        return None
    first = made_by.get(transpose.input[0])
    if first is None or first.op_type != "Reshape" or not first.input:
        return None
    source = first.input[0]
    same = shapes.get(source) == shapes.get(reshape.output[0]) and len(shapes.get(source, [])) == 4
    return source if same else None


def _perm(node: Any) -> list[int]:
    import onnx

    return next((list(onnx.helper.get_attribute_value(a)) for a in node.attribute if a.name == "perm"), [])


def _nhwc_tensors(graph: Any, shapes: dict[str, list[int]], data: set[str], consts: dict[str, np.ndarray]) -> set[str]:
    """The 4-D tensors of ``graph`` (among ``data``, the activations) that are NHWC: the layouts the ops that fix
    one say, spread through the element-wise ops that keep it, both ways, until nothing changes; a 4-D tensor
    no op decides is NCHW (ONNX's own layout)."""
    layout: dict[str, str] = {}
    four = {t for t in data if len(shapes.get(t, [])) == 4}
    rules = []  # (tensors that share one layout, fixed layout or "")
    made_by = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        ins = [i for i in node.input if i in four]
        outs = [o for o in node.output if o in four]
        if node.op_type == "ReduceMean" and ins:  # a global mean over the spatial axes says where they are
            axes = _reduce_axes(node, consts)
            if axes in ([1, 2], [2, 3]):
                rules.append((ins[:1], "NHWC" if axes == [1, 2] else "NCHW"))
            if _keeps_dims(node):
                rules.append((ins[:1] + outs, ""))
        elif node.op_type == "Reshape" and outs and node.input:  # a channel shuffle: back to its input's shape
            source = _shuffled(node, made_by, shapes)
            if source is not None and source in four:
                rules.append(([source, *outs], ""))
        elif node.op_type in _NCHW_OPS:
            rules.append((ins[:1] + outs, "NCHW"))
        elif node.op_type == "Transpose" and ins and outs and _perm(node) in (_TO_NHWC, _TO_NCHW):
            to_nhwc = _perm(node) == _TO_NHWC
            rules.append((ins[:1], "NCHW" if to_nhwc else "NHWC"))
            rules.append((outs, "NHWC" if to_nhwc else "NCHW"))
        elif node.op_type in _SAME_LAYOUT_OPS and ins:
            rules.append((ins + outs, ""))
    for tensors, fixed in rules:  # what an op fixes (the first op that fixes a tensor decides it)
        for t in tensors if fixed else ():
            layout.setdefault(t, fixed)
    changed = True
    while changed:  # each pass gives a layout to tensors without one: it ends
        changed = False
        for tensors, fixed in rules:
            value = next((layout[t] for t in tensors if t in layout), "") if not fixed else ""
            for t in tensors if value else ():
                if t not in layout:
                    layout[t] = value
                    changed = True
    return {t for t, v in layout.items() if v == "NHWC"}


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
    constant_outputs = {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    nhwc = _nhwc_tensors(graph, shapes, set(shapes) - set(consts) - constant_outputs, consts)
    precision_of = _precisions(graph)
    builder = GraphBuilder(name or graph.name or "onnx-model", source)
    for inp in inputs:
        dims = [None if d <= 0 else d for d in shapes.get(inp.name, [])]
        if any(d is None for d in dims[1:]):
            builder.input(inp.name, dims)  # raises: a dynamic shape needs input_shape
        builder.input(inp.name, _nhwc([d or 1 for d in dims], inp.name in nhwc))
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
        layout_change = node.op_type == "Transpose" and _perm(node) in (_TO_NHWC, _TO_NCHW)
        if node.op_type in _NOOPS or (layout_change and len(shapes.get(data_in[0], [])) == 4):
            builder.bypass(name, producer[data_in[0]])
            producer.update({o: builder.resolve(name) for o in node.output if o})
            continue
        in_shapes = [_nhwc(shapes.get(i, []), i in nhwc) for i in data_in]
        out_shapes = [_nhwc(shapes.get(o, []), o in nhwc) for o in node.output if o]
        channel_last = bool(data_in) and data_in[0] in nhwc
        op, extra = _op(node.op_type, attrs, const_in, in_shapes, consts, node, channel_last)
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
    channel_last: bool = False,
) -> tuple[str, dict[str, Any]]:
    """The op of an ONNX node and its attributes; ``channel_last``: its 4-D data input is NHWC."""
    rank = len(in_shapes[0]) if in_shapes else 4
    channel_axis = rank - 1 if (channel_last or rank != 4) else 1
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
        if axes is None or sorted(a % 4 for a in axes) != ([1, 2] if channel_last else [2, 3]):
            return op_type, {}
        return ops.GLOBAL_AVGPOOL, {}
    if op_type == "Slice":
        return ops.CROP, _slice_begin(node, consts, rank, channel_axis)
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
        channel = axis % rank == channel_axis
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


def _slice_begin(node: Any, consts: dict[str, np.ndarray], rank: int, channel_axis: int) -> dict[str, Any]:
    """``channel_begin``: the first channel a Slice of the channels alone keeps (a ShuffleNet's split written as
    two slices); nothing when it slices other axes, or its bounds are not constants."""
    names = list(node.input[1:4])
    if len(names) < 2 or any(n not in consts for n in names):
        return {}
    starts = [int(v) for v in np.ravel(consts[names[0]])]
    axes = [int(v) % rank for v in np.ravel(consts[names[2]])] if len(names) > 2 else list(range(len(starts)))
    ends = [int(v) for v in np.ravel(consts[names[1]])]
    kept = [(a, s, e) for a, s, e in zip(axes, starts, ends) if not (s == 0 and e >= 2**31 - 1)]
    if len(kept) != 1 or kept[0][0] != channel_axis or kept[0][1] < 0:
        return {}
    return {"channel_begin": kept[0][1]}
