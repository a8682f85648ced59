"""Keras 3 models and ``.keras`` / ``.h5`` files -> IR graph, by walking the layer graph (imports Keras).

Layers are read from the model's node graph (``Function._nodes_by_depth``, Keras 3), so
functional models, Sequential models and models nested inside models all work. A
layer's ``activation`` becomes a node of its own, as in every other framework.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from nnmeter import ops
from nnmeter.errors import ModelFileError
from nnmeter.predictor.ir import Graph, GraphBuilder, scalar_operand

#: Activation function name (``fn.__name__``) -> op; "linear" is no op at all.
_ACTIVATIONS = {
    "relu": ops.RELU,
    "relu6": ops.RELU6,
    "hard_swish": ops.HSWISH,
    "hard_silu": ops.HSWISH,
    "hard_sigmoid": ops.HSIGMOID,
    "sigmoid": ops.SIGMOID,
    "swish": ops.SWISH,
    "silu": ops.SWISH,
    "softmax": ops.SOFTMAX,
}
#: Layer or keras.ops class name -> op, for those whose attributes need no reading.
_LAYERS = {
    "BatchNormalization": ops.BN,
    "Add": ops.ADD,
    "Multiply": ops.MUL,
    "Concatenate": ops.CONCAT,
    "GlobalAveragePooling2D": ops.GLOBAL_AVGPOOL,
    "ZeroPadding2D": ops.PAD,
    "Cropping2D": ops.CROP,
    "Permute": "Transpose",  # a channel shuffle's transpose (patterns); alone it is no kernel
    "Reshape": ops.RESHAPE,
    "Flatten": ops.FLATTEN,
    "Softmax": ops.SOFTMAX,
    "Relu": ops.RELU,
    "Relu6": ops.RELU6,
    "Sigmoid": ops.SIGMOID,
    "HardSigmoid": ops.HSIGMOID,
    "HardSilu": ops.HSWISH,
    "Silu": ops.SWISH,
    "Divide": ops.MUL,
    "TrueDivide": ops.MUL,
}
_NOOPS = {
    "InputLayer",
    "Dropout",
    "SpatialDropout2D",
    "GaussianDropout",
    "GaussianNoise",
    "Identity",
    "ActivityRegularization",
}


def load(path: Path, input_shape: Sequence[int] | None = None) -> Graph:
    import keras

    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)  # never deserialize Lambda code
    except Exception as err:  # Keras raises many types for a bad file; each says what is wrong
        raise ModelFileError(
            f"{path}: not a Keras model Keras can load ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    return convert(model, input_shape, name=path.stem)


def convert(model: Any, input_shape: Sequence[int] | None = None, name: str | None = None) -> Graph:
    import keras

    source = f"keras model {model.name}"
    if input_shape is not None:
        inp = keras.Input(batch_shape=tuple(int(d) for d in input_shape))
        model = keras.models.clone_model(model, input_tensors=inp)
    function = getattr(model, "_functional", None) or model
    if not hasattr(function, "_nodes_by_depth"):
        raise ModelFileError(
            f"{source}: a subclassed Keras model has no layer graph to read",
            hint="build it as a functional or Sequential model, or convert it to .tflite or ONNX",
        )
    builder = GraphBuilder(name or model.name, source)
    for tensor in function.inputs:
        builder.input(_tensor_name(tensor, ""), tensor.shape)
    outputs = _walk(function, builder, "")
    return builder.finish(outputs)


def _tensor_name(tensor: Any, prefix: str) -> str:
    op, node_index, _ = tensor._keras_history
    return f"{prefix}{op.name}" + (f":{node_index}" if node_index else "")


def _walk(function: Any, builder: GraphBuilder, prefix: str) -> list[str]:
    """Add the nodes of ``function`` (a Functional model) to ``builder``; return its output names."""
    for depth in sorted(function._nodes_by_depth, reverse=True):
        for node in function._nodes_by_depth[depth]:
            _add(node, builder, prefix)
    return [builder.resolve(_tensor_name(t, prefix)) for t in function.outputs]


def _shape(tensor: Any) -> list[int]:
    return [1 if (i == 0 and d is None) else (-1 if d is None else int(d)) for i, d in enumerate(tensor.shape)]


def _add(node: Any, builder: GraphBuilder, prefix: str) -> None:
    layer = node.operation
    kind = type(layer).__name__
    outs = list(node.outputs)
    name = _tensor_name(outs[0], prefix)
    ins = [_tensor_name(t, prefix) for t in node.input_tensors]
    if kind == "InputLayer" and not ins:
        if not builder.known(name):  # the input of a nested model: bound by its caller
            builder.input(name, outs[0].shape)
        return
    if kind in _NOOPS or (kind == "Activation" and _act_name(layer.activation) == "linear"):
        builder.bypass(name, ins[0])
        return
    inner = getattr(layer, "_functional", None) or (layer if hasattr(layer, "_nodes_by_depth") else None)
    if inner is not None:  # a model used as a layer: inline it
        inner_prefix = f"{name}/"
        for tensor, src in zip(inner.inputs, ins):
            builder.bypass(_tensor_name(tensor, inner_prefix), src)
        results = _walk(inner, builder, inner_prefix)
        builder.bypass(name, results[0])
        return
    in_shapes = [_shape(t) for t in node.input_tensors]
    out_shapes = [_shape(t) for t in outs]
    affine = _affine(layer, kind)
    if affine:  # preprocessing layers: constant multiplies and adds over the tensor, one node each
        for i, (op, constant) in enumerate(affine):
            last_step = i == len(affine) - 1
            builder.node(
                name if last_step else f"{name}/{op}", op, ins, in_shapes[:1], out_shapes[:1], constant=constant
            )
            ins = [f"{name}/{op}"]
        return
    op, attrs = _op(layer, kind, node, in_shapes)
    activation = _act_name(getattr(layer, "activation", None)) if kind != "Activation" else "linear"
    if kind == "SeparableConv2D":  # depthwise then pointwise
        mid = [in_shapes[0][:3] + [in_shapes[0][3] * layer.depth_multiplier]]
        builder.node(
            f"{name}/depthwise",
            ops.DWCONV,
            ins,
            in_shapes,
            mid,
            kernel_size=list(layer.kernel_size),
            strides=list(layer.strides),
            depth_multiplier=layer.depth_multiplier,
        )
        ins, in_shapes = [f"{name}/depthwise"], mid
        op, attrs = ops.CONV, {"kernel_size": [1, 1], "strides": [1, 1]}
    last = builder.node(
        name if activation == "linear" else f"{name}/{op}", op, ins, in_shapes, out_shapes, **attrs
    ).name
    if activation != "linear":
        act_op = _ACTIVATIONS.get(activation, activation)
        builder.node(name, act_op, [last], out_shapes[:1], out_shapes[:1])
    for extra in outs[1:]:
        builder.bypass(_tensor_name(extra, prefix), name)


def _affine(layer: Any, kind: str) -> list[tuple[str, Any]]:
    """What a preprocessing layer computes as (op, constant) steps: ``Rescaling`` is ``x * scale + offset``,
    ``Normalization`` is ``(x - mean) / std`` (a constant is a scalar or ``"tensor"``, per channel); empty for
    other layers."""
    import numpy as np

    def constant(value: Any, op: str, neutral: float) -> Any:
        values = np.ravel(np.asarray(value, dtype=np.float64))
        if values.size == 1:
            return None if float(values[0]) == neutral else scalar_operand(op, float(values[0]))
        return "tensor"

    steps: list[tuple[str, Any]]
    if kind == "Rescaling":
        steps = [(ops.MUL, constant(layer.scale, "Mul", 1.0)), (ops.ADD, constant(layer.offset, "Add", 0.0))]
    elif kind == "Normalization" and not getattr(layer, "invert", False):
        steps = [(ops.ADD, "tensor"), (ops.MUL, "tensor")]
    else:
        return []
    kept = [(op, c) for op, c in steps if c is not None]
    return kept or [(ops.MUL, 1.0)]  # x * 1: a copy, still a pass over the tensor


def _getitem(node: Any, in_shapes: list[list[int]]) -> dict[str, Any]:
    """``channel_begin`` of ``x[..., a:b]`` (a slice of the channels alone: a ShuffleNet's split), else nothing."""
    key = node.arguments.args[1] if len(node.arguments.args) > 1 else None
    rank = len(in_shapes[0]) if in_shapes else 0
    items = list(key) if isinstance(key, tuple) else [key]
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items = items[:at] + [slice(None)] * (rank - len(items) + 1) + items[at + 1 :]
    items += [slice(None)] * (rank - len(items))
    slices = [i for i in items if isinstance(i, slice) and i.step in (None, 1)]
    if rank != 4 or len(slices) != rank:
        return {}
    full = [i.start in (None, 0) and i.stop is None for i in slices]
    if any(not f for f in full[:-1]) or full[-1]:
        return {}
    start = slices[-1].start or 0
    return {"channel_begin": int(start)} if isinstance(start, int) and start >= 0 else {}


def _act_name(fn: Any) -> str:
    return "linear" if fn is None else getattr(fn, "__name__", str(fn))


def _op(layer: Any, kind: str, node: Any, in_shapes: list[list[int]]) -> tuple[str, dict[str, Any]]:
    """The op of a layer and its attributes."""
    if kind in ("Conv2D", "DepthwiseConv2D", "Conv2DTranspose"):
        attrs: dict[str, Any] = {"kernel_size": list(layer.kernel_size), "strides": list(layer.strides)}
        if kind == "DepthwiseConv2D":
            attrs["depth_multiplier"] = layer.depth_multiplier
        elif kind == "Conv2D" and getattr(layer, "groups", 1) != 1:
            attrs["groups"] = layer.groups
        return {"Conv2D": ops.CONV, "DepthwiseConv2D": ops.DWCONV}.get(kind, ops.CONVTRANS), attrs
    if kind in ("MaxPooling2D", "AveragePooling2D"):
        size = list(layer.pool_size)
        return (ops.MAXPOOL if kind == "MaxPooling2D" else ops.AVGPOOL), {
            "kernel_size": size,
            "strides": list(layer.strides or size),
        }
    if kind == "Dense":
        return ops.FC, {}
    if kind == "ReLU":
        if layer.negative_slope == 0 and layer.threshold == 0 and layer.max_value in (None, 6):
            return (ops.RELU if layer.max_value is None else ops.RELU6), {}
        return "LeakyReLU", {}
    if kind == "Activation":
        act = _act_name(layer.activation)
        return _ACTIVATIONS.get(act, act), {}
    if kind == "Concatenate":
        axis = layer.axis
        return ops.CONCAT, {"axis": -1 if axis in (-1, len(in_shapes[0]) - 1) else axis}
    op = _LAYERS.get(kind, kind)
    if op in (ops.ADD, ops.MUL) and len(node.input_tensors) == 1:
        scalars = [a for a in node.arguments.args if isinstance(a, (int, float))]
        return op, {"constant": scalar_operand(kind, float(scalars[0])) if scalars else "tensor"}
    if kind in ("Divide", "TrueDivide"):
        return kind, {}
    if kind == "GetItem":
        return ops.CROP, _getitem(node, in_shapes)
    return op, {}
