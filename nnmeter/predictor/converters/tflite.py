""".tflite flatbuffer -> IR graph, read with LiteRT's generated schema (no TensorFlow, no interpreter).

Nodes are named after their first output tensor (TFLite ops have no names). A fused
activation (``fused_activation_function``) becomes a relu/relu6 node of its own after
the op, so kernel detection sees conv + act as in every other framework; a batch norm
the converter folded into a conv is simply absent. Tensors that no op produces and that
are not model inputs are constants (weights): attributes, not edges; so are tensors
computed from shapes and constants alone (``SHAPE`` and the arithmetic on its output).
A node of a quantized model carries its precision (int8 activations, or int8 or float16 weights alone);
QUANTIZE and DEQUANTIZE of activations are nodes of their own: real work on the device.

A file is input, read without a flatbuffer verifier: every count and index read from it is checked against
the file's size and the tables it indexes (a truncated or changed file, or one made to stall the reader, is a
:class:`~nnmeter.errors.ModelFileError` naming the file, never another exception).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nnmeter import ops
from nnmeter.errors import ModelFileError
from nnmeter.predictor.ir import Graph, GraphBuilder, scalar_operand

_OPS = {
    "CONV_2D": ops.CONV,
    "DEPTHWISE_CONV_2D": ops.DWCONV,
    "TRANSPOSE_CONV": ops.CONVTRANS,
    "FULLY_CONNECTED": ops.FC,
    "ADD": ops.ADD,
    "SUB": ops.ADD,
    "MUL": ops.MUL,
    "DIV": ops.MUL,
    "RELU": ops.RELU,
    "RELU6": ops.RELU6,
    "LOGISTIC": ops.SIGMOID,
    "HARD_SWISH": ops.HSWISH,
    "MAX_POOL_2D": ops.MAXPOOL,
    "AVERAGE_POOL_2D": ops.AVGPOOL,
    "MEAN": ops.GLOBAL_AVGPOOL,
    "CONCATENATION": ops.CONCAT,
    "SPLIT": ops.SPLIT,
    "SPLIT_V": ops.SPLIT,
    "PAD": ops.PAD,
    "PADV2": ops.PAD,
    "STRIDED_SLICE": ops.CROP,
    "SLICE": ops.CROP,
    "SOFTMAX": ops.SOFTMAX,
    "RESHAPE": ops.RESHAPE,
    "SQUEEZE": ops.RESHAPE,
    "EXPAND_DIMS": ops.RESHAPE,
}
#: Options table of the ops whose options we read.
_OPTIONS = {
    "CONV_2D": "Conv2DOptions",
    "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
    "MAX_POOL_2D": "Pool2DOptions",
    "AVERAGE_POOL_2D": "Pool2DOptions",
    "FULLY_CONNECTED": "FullyConnectedOptions",
    "ADD": "AddOptions",
    "MUL": "MulOptions",
    "DIV": "DivOptions",
    "SUB": "SubOptions",
    "CONCATENATION": "ConcatenationOptions",
    "TRANSPOSE_CONV": "TransposeConvOptions",
    "STRIDED_SLICE": "StridedSliceOptions",
}
#: Tensor types of quantized or reduced-precision models -> the precision of the nodes that read or write them.
_PRECISION_OF_TYPE = {
    "FLOAT16": "float16",
    "BFLOAT16": "bfloat16",
    "INT16": "int16",
    "UINT16": "uint16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT4": "int4",
}
#: Bounds no real model reaches: inputs or outputs of one op, and the rank of a tensor.
MAX_OP_TENSORS = 4096
MAX_RANK = 32
#: What reading a damaged flatbuffer raises (the generated schema reads offsets and lengths as they are).
_DAMAGE = (IndexError, ValueError, AttributeError, TypeError, KeyError, struct.error, OverflowError, ZeroDivisionError)


class _Damaged(Exception):
    """A count or an index of the file that cannot be right (its message says which)."""


def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def _op_names(schema) -> dict[int, str]:
    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _act_names(schema) -> dict[int, str]:
    return {v: k for k, v in vars(schema.ActivationFunctionType).items() if not k.startswith("_")}


def _type_precisions(schema) -> dict[int, str]:
    """Tensor type code -> precision, for the types of :data:`_PRECISION_OF_TYPE` this schema has."""
    codes = {k: v for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    return {codes[name]: precision for name, precision in _PRECISION_OF_TYPE.items() if name in codes}


def load(path: Path, input_shape: Sequence[int] | None = None) -> Graph:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ModelFileError(f"{path}: cannot read ({err.strerror or err})") from None
    schema = _schema()
    if len(data) < 8 or not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise ModelFileError(f"{path}: not a TFLite flatbuffer (no TFL3 identifier)")
    try:
        return _convert(schema, schema.Model.GetRootAs(data, 0), path, input_shape, len(data))
    except ModelFileError:
        raise
    except _Damaged as err:
        raise ModelFileError(f"{path}: damaged TFLite file ({err})") from None
    except _DAMAGE as err:
        raise ModelFileError(f"{path}: damaged TFLite file ({_one_line(err)})") from None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _count(n: int, limit: int, what: str) -> int:
    """``n``, the length of a vector of the file, if it is at most ``limit``."""
    if not 0 <= n <= limit:
        raise _Damaged(f"{what}: {n} entries, more than the file can hold")
    return n


def _indices(values: Any, n_tensors: int, what: str, optional: bool = False) -> list[int]:
    """Tensor indices read from the file, each in range (``-1`` too when ``optional``: an absent input)."""
    out = [int(i) for i in values]
    low = -1 if optional else 0
    bad = [i for i in out if not low <= i < n_tensors]
    if bad:
        raise _Damaged(f"{what} reads tensor {bad[0]}; the model has {n_tensors}")
    return out


def _convert(schema, model, path: Path, input_shape: Sequence[int] | None, size: int) -> Graph:
    vectors = size // 4  # a vector entry takes at least 4 bytes of the file
    if _count(model.SubgraphsLength(), vectors, "subgraphs") < 1:
        raise ModelFileError(f"{path}: the TFLite file has no subgraph")
    sub = model.Subgraphs(0)
    op_names, act_names = _op_names(schema), _act_names(schema)
    tensors = [sub.Tensors(i) for i in range(_count(sub.TensorsLength(), vectors, "tensors"))]
    n_tensors = len(tensors)
    n_codes = _count(model.OperatorCodesLength(), vectors, "operator codes")
    _count(model.BuffersLength(), vectors, "buffers")
    graph_inputs = _indices(sub.InputsAsNumpy(), n_tensors, "the subgraph's inputs") if sub.InputsLength() else []
    shapes = _shapes(path, tensors, sub, input_shape)
    names = [
        t.Name().decode(errors="replace") if t.Name() is not None else f"tensor_{i}" for i, t in enumerate(tensors)
    ]
    builder = GraphBuilder(path.stem, str(path))
    producer: dict[int, str] = {}  # tensor index -> node (or input) name
    type_precision = _type_precisions(schema)
    # tensor index -> precision, for tensors of a reduced-precision type and weights dequantized from one
    precision_of = {i: type_precision[t.Type()] for i, t in enumerate(tensors) if t.Type() in type_precision}
    for ti in graph_inputs:
        builder.input(names[ti], shapes[ti])
        producer[ti] = names[ti]
    for oi in range(_count(sub.OperatorsLength(), vectors, "operators")):
        op = sub.Operators(oi)
        if not 0 <= op.OpcodeIndex() < n_codes:
            raise _Damaged(f"operator {oi} has opcode {op.OpcodeIndex()}; the model has {n_codes}")
        code = model.OperatorCodes(op.OpcodeIndex())
        tf_name = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
        if tf_name == "CUSTOM" and code.CustomCode():
            tf_name = code.CustomCode().decode(errors="replace")
        _count(op.InputsLength(), MAX_OP_TENSORS, f"operator {oi}'s inputs")
        _count(op.OutputsLength(), MAX_OP_TENSORS, f"operator {oi}'s outputs")
        ins = _indices(op.InputsAsNumpy(), n_tensors, f"operator {oi}", optional=True) if op.InputsLength() else []
        outs = _indices(op.OutputsAsNumpy(), n_tensors, f"operator {oi}") if op.OutputsLength() else []
        if not outs:
            raise _Damaged(f"operator {oi} ({tf_name}) has no output")
        data_in = [i for i in ins if i >= 0 and i in producer]
        if tf_name == "SHAPE" or not data_in:
            # a tensor's shape, a dequantized weight, or arithmetic on shapes and constants (the reshape of a
            # model converted with a dynamic batch): no kernel, and a constant to the ops that read it
            if tf_name == "DEQUANTIZE" and ins and ins[0] in precision_of:
                precision_of[outs[0]] = precision_of[ins[0]]
            continue
        name = names[outs[0]]
        # activations first (an int8 conv's weights are int8 too), then weights quantized alone
        precision = next((precision_of[i] for i in (*data_in, *outs, *ins) if i in precision_of), ops.FLOAT32)
        options = _options(schema, op, tf_name)
        vocab = _OPS.get(tf_name, tf_name)
        attrs: dict[str, Any] = {}
        in_shapes = [shapes[i] for i in data_in]
        out_shapes = [shapes[o] for o in outs]
        if vocab in (ops.CONV, ops.DWCONV):
            weight = shapes[ins[1]]  # conv: [cout, kh, kw, cin]; depthwise: [1, kh, kw, cin * multiplier]
            attrs["kernel_size"] = [weight[1], weight[2]]
            attrs["strides"] = [options.StrideH(), options.StrideW()]
            if vocab == ops.DWCONV:
                attrs["depth_multiplier"] = options.DepthMultiplier() or (weight[3] // max(1, in_shapes[0][3]))
            elif in_shapes and weight[3] != in_shapes[0][3]:
                attrs["groups"] = in_shapes[0][3] // max(1, weight[3])
        elif vocab == ops.CONVTRANS:
            weight = shapes[ins[1]]
            data_in = [i for i in ins if i in producer and len(shapes[i]) == 4][-1:]
            in_shapes = [shapes[i] for i in data_in]
            attrs["kernel_size"] = [weight[1], weight[2]]
            attrs["strides"] = [options.StrideH(), options.StrideW()]
        elif vocab in (ops.MAXPOOL, ops.AVGPOOL):
            attrs["kernel_size"] = [options.FilterHeight(), options.FilterWidth()]
            attrs["strides"] = [options.StrideH(), options.StrideW()]
            if vocab == ops.AVGPOOL and in_shapes and attrs["kernel_size"] == in_shapes[0][1:3]:
                vocab, attrs = ops.GLOBAL_AVGPOOL, {}
        elif vocab == ops.GLOBAL_AVGPOOL:
            axes = _const(schema, model, tensors[ins[1]]) if len(ins) > 1 else None
            if axes is None or sorted(int(a) for a in np.ravel(axes)) != [1, 2]:
                vocab = tf_name  # a mean over other axes has no kernel
        elif vocab == ops.CONCAT:
            attrs["axis"] = -1 if options.Axis() in (-1, len(out_shapes[0]) - 1) else options.Axis()
        elif vocab in (ops.ADD, ops.MUL) and len(data_in) == 1:
            consts = [i for i in ins if i not in producer]
            value = _const(schema, model, tensors[consts[0]]) if consts else None
            if value is not None and np.size(value) == 1:
                scalar = float(np.ravel(value)[0])
                attrs["constant"] = scalar_operand(tf_name, scalar)
            else:
                attrs["constant"] = "tensor"
        elif vocab == ops.CROP:
            attrs.update(_channel_begin(schema, model, tensors, ins, options, in_shapes, out_shapes, tf_name))
        elif vocab == ops.MUL and tf_name == "DIV":
            vocab = tf_name  # a division of two tensors
        builder.node(name, vocab, [producer[i] for i in data_in], in_shapes, out_shapes, precision, **attrs)
        last = name
        act = (
            act_names.get(options.FusedActivationFunction(), "NONE")
            if hasattr(options, "FusedActivationFunction")
            else "NONE"
        )
        if act != "NONE":
            last = f"{name}/{act.lower()}"
            builder.node(
                last,
                {"RELU": ops.RELU, "RELU6": ops.RELU6}.get(act, act),
                [name],
                out_shapes[:1],
                out_shapes[:1],
                precision,
            )
        for o in outs:
            producer[o] = last
    outputs = _indices(sub.OutputsAsNumpy(), n_tensors, "the subgraph's outputs") if sub.OutputsLength() else []
    unknown = [o for o in outputs if o not in producer]
    if unknown:
        raise _Damaged(f"output tensor {unknown[0]} is computed by no operator")
    return builder.finish(producer[o] for o in outputs)


def _channel_begin(schema, model, tensors, ins, options, in_shapes, out_shapes, tf_name: str) -> dict[str, Any]:
    """``channel_begin`` of a slice of a 4-D map's channels alone (a ShuffleNet's split written as strided
    slices), read from its constant begin; nothing for other slices."""
    if not in_shapes or not out_shapes or len(in_shapes[0]) != 4 or len(out_shapes[0]) != 4 or len(ins) < 3:
        return {}
    if list(in_shapes[0][:3]) != list(out_shapes[0][:3]) or in_shapes[0][3] == out_shapes[0][3]:
        return {}
    begin = _const(schema, model, tensors[ins[1]]) if ins[1] >= 0 else None
    if begin is None or np.size(begin) != 4:
        return {}
    if tf_name == "STRIDED_SLICE":
        strides = _const(schema, model, tensors[ins[3]]) if len(ins) > 3 and ins[3] >= 0 else None
        if strides is None or np.size(strides) != 4 or int(np.ravel(strides)[3]) != 1:
            return {}
        if options is not None and (options.BeginMask() >> 3) & 1:
            return {"channel_begin": 0}
    start = int(np.ravel(begin)[3])
    return {"channel_begin": start} if start >= 0 else {}


def _options(schema, op, tf_name: str):
    cls_name = _OPTIONS.get(tf_name)
    table = op.BuiltinOptions()
    if cls_name is None or table is None:
        return None
    options = getattr(schema, cls_name)()
    options.Init(table.Bytes, table.Pos)
    return options


def _const(schema, model, tensor) -> np.ndarray | None:
    """The value of a float32 or int32 constant tensor (None for other types or no data)."""
    buffer = model.Buffers(tensor.Buffer())
    if buffer is None or buffer.DataLength() == 0:
        return None
    dtype = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT32: np.int32}.get(tensor.Type())
    return None if dtype is None else np.frombuffer(buffer.DataAsNumpy().tobytes(), dtype=dtype)


def _shapes(path: Path, tensors: list, sub, input_shape: Sequence[int] | None) -> list[list[int]]:
    """Every tensor's shape; a dynamic input needs ``input_shape`` and LiteRT's shape propagation."""
    shapes = []
    for i, t in enumerate(tensors):
        dims = [int(d) for d in t.ShapeAsNumpy()] if _count(t.ShapeLength(), MAX_RANK, f"tensor {i}'s shape") else []
        if any(d < 0 for d in dims):
            raise _Damaged(f"tensor {i} has shape {dims}")
        shapes.append(dims)
    dynamic = False
    for ti in sub.InputsAsNumpy():
        _count(tensors[ti].ShapeSignatureLength(), MAX_RANK, f"tensor {ti}'s shape signature")
        sig = tensors[ti].ShapeSignatureAsNumpy() if tensors[ti].ShapeSignatureLength() else []
        dynamic |= any(int(d) < 0 for d in list(sig)[1:])
    if not dynamic and input_shape is None:
        return shapes
    if input_shape is None:
        name = tensors[sub.InputsAsNumpy()[0]].Name().decode(errors="replace")
        sig = [int(d) for d in tensors[sub.InputsAsNumpy()[0]].ShapeSignatureAsNumpy()]
        raise ModelFileError(
            f"{path}: input {name!r} has a dynamic shape {sig}",
            hint="give the input shape, e.g. input_shape=(1, 224, 224, 3) or --input-shape 1,224,224,3",
        )
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    first = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(first, list(input_shape), strict=False)
    interpreter.allocate_tensors()
    for detail in interpreter.get_tensor_details():
        if detail["index"] < len(shapes) and len(detail["shape"]):
            shapes[detail["index"]] = [int(d) for d in detail["shape"]]
    return shapes
