"""Kernel models written as .tflite directly, without TensorFlow: the graph TFLite's converter makes of the
Keras kernel (:func:`nnmeter.kernel_gen.builders.build_kernel`), packed with LiteRT's generated schema.

What the converter makes of each op (``tests/test_kernel_gen.py`` converts configs of every kernel both ways
and compares op types, options and tensor shapes): a bn after a conv is folded into its weights and bias,
ReLU and ReLU6 after a conv, an add or a bn's add are its fused activation; ``hswish`` is ``HARD_SWISH``;
``swish`` is ``LOGISTIC`` and ``MUL``; ``hsigmoid`` is ``ADD 3`` with a fused ReLU6 and ``MUL 1/6``; ``se`` is
``MEAN`` (kept dims), two 1x1 ``CONV_2D`` (ReLU; ReLU6 with the ``+ 3`` in its bias), ``MUL 1/6`` and the
``MUL`` by the input; a lone bn is ``MUL`` and ``ADD`` of per-channel constants; ``fc`` has no bias (Keras
initialises it to zeros, which the converter drops); ``channelshuffle`` is ``RESHAPE``, ``TRANSPOSE``,
``RESHAPE``; ``crop`` is a ``STRIDED_SLICE``. Convs and pools pad ``SAME``; the 1x1 convs of ``se`` ``VALID``.

Weights are seeded random values, a block of them repeated (latency does not depend on them; they are finite
and not denormal).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from nnmeter import ops
from nnmeter.kernel_gen.op_traits import OpParams, kernel_input_shapes, kernel_params

#: The version of each operator as the converter writes it (the runtime picks kernels by op and version).
_VERSIONS = {"TRANSPOSE": 4}
_SAME, _VALID = 0, 1
_WEIGHT_BLOCK = 4099  # values drawn per weight tensor (prime: the repeats do not line up with channels)
_ACTIVATION_OPS = {ops.RELU: "RELU", ops.RELU6: "RELU6"}


def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


class _ModelWriter:
    """Tensors, buffers and operators of one subgraph, packed into a TFLite flatbuffer."""

    def __init__(self, seed: int) -> None:
        self.schema = _schema()
        self.rng = np.random.default_rng(seed)
        self.tensors: list[Any] = []
        self.buffers: list[Any] = [self.schema.BufferT()]  # buffer 0: the empty one tensors without data use
        self.codes: list[str] = []
        self.operators: list[Any] = []

    def tensor(self, shape: tuple[int, ...] | list[int], data: np.ndarray | None = None) -> int:
        t = self.schema.TensorT()
        t.shape = [int(d) for d in shape]
        t.name = f"t{len(self.tensors)}".encode()
        t.type = self.schema.TensorType.INT32 if data is not None and data.dtype == np.int32 else 0
        t.buffer = 0
        if data is not None:
            buffer = self.schema.BufferT()
            buffer.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
            self.buffers.append(buffer)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def weights(self, shape: tuple[int, ...], scale: float = 0.1) -> int:
        # a seeded block repeated: drawing millions of values would cost more than the rest of the model
        block = (self.rng.standard_normal(_WEIGHT_BLOCK) * scale).astype(np.float32)
        return self.tensor(shape, np.resize(block, shape))

    def const(self, values: Any, dtype: Any = np.float32) -> int:
        data = np.asarray(values, dtype=dtype)
        return self.tensor(data.shape, data)

    def shape(self, index: int) -> list[int]:
        return list(self.tensors[index].shape)

    def op(self, name: str, inputs: list[int], out_shapes: list[list[int]], options: str = "", **fields: Any) -> int:
        """Add operator ``name`` reading tensors ``inputs``; returns its first output tensor."""
        schema = self.schema
        if name not in self.codes:
            self.codes.append(name)
        operator = schema.OperatorT()
        operator.opcodeIndex = self.codes.index(name)
        operator.inputs = inputs
        operator.outputs = [self.tensor(s) for s in out_shapes]
        if options:
            table = getattr(schema, f"{options}T")()
            for key, value in fields.items():
                setattr(table, key, value)
            operator.builtinOptionsType = getattr(schema.BuiltinOptions, options)
            operator.builtinOptions = table
        self.operators.append(operator)
        return operator.outputs[0]

    def pack(self, inputs: list[int], outputs: list[int]) -> bytes:
        import flatbuffers

        schema = self.schema
        codes = []
        for name in self.codes:
            code = schema.OperatorCodeT()
            code.builtinCode = getattr(schema.BuiltinOperator, name)
            code.deprecatedBuiltinCode = min(code.builtinCode, 127)  # the int8 field old readers look at
            code.version = _VERSIONS.get(name, 1)
            codes.append(code)
        graph = schema.SubGraphT()
        graph.tensors, graph.inputs, graph.outputs, graph.operators = self.tensors, inputs, outputs, self.operators
        model = schema.ModelT()
        model.version, model.operatorCodes, model.buffers, model.subgraphs = 3, codes, self.buffers, [graph]
        model.description = b"nnmeter kernel"
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def _conv_out(hw: int, stride: int) -> int:
    return -(-hw // stride)  # SAME padding


def _activation(rest: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """The fused activation of an op followed by ``rest`` (ReLU or ReLU6 first), and what is left after it."""
    if rest and rest[0] in _ACTIVATION_OPS:
        return _ACTIVATION_OPS[rest[0]], rest[1:]
    return "NONE", rest


def _act_code(w: _ModelWriter, name: str) -> int:
    return int(getattr(w.schema.ActivationFunctionType, name))


def _standalone(w: _ModelWriter, op: str, x: int) -> int:
    """An activation-like op on its own (after an unfused conv or bn, or as the kernel)."""
    shape = w.shape(x)
    if op in _ACTIVATION_OPS:
        return w.op(_ACTIVATION_OPS[op], [x], [shape])
    if op == ops.HSWISH:
        return w.op("HARD_SWISH", [x], [shape])
    if op == ops.SIGMOID:
        return w.op("LOGISTIC", [x], [shape])
    if op == ops.SWISH:
        return w.op("MUL", [x, w.op("LOGISTIC", [x], [shape])], [shape], "MulOptions")
    if op == ops.HSIGMOID:
        y = w.op("ADD", [x, w.const(3.0)], [shape], "AddOptions", fusedActivationFunction=_act_code(w, "RELU6"))
        return w.op("MUL", [y, w.const(np.float32(1.0) / np.float32(6.0))], [shape], "MulOptions")
    raise _Unsupported(op)


class _Unsupported(Exception):
    """An op or a sequence this writer does not write (the caller builds the model with Keras instead)."""


def _conv(w: _ModelWriter, x: int, kernel_ops: tuple[str, ...], p: OpParams) -> tuple[int, tuple]:
    n, hw, _, cin = w.shape(x)
    folded = len(kernel_ops) > 1 and kernel_ops[1] == ops.BN  # bias present either way: bn's shift or zeros
    act, rest = _activation(kernel_ops[2:] if folded else kernel_ops[1:])
    out_hw = _conv_out(hw, p.strides)
    k = p.kernel_size
    if kernel_ops[0] == ops.CONV:
        weights, bias = w.weights((p.cout, k, k, cin)), w.const(np.zeros(p.cout) if not folded else _shift(w, p.cout))
        out = [n, out_hw, out_hw, p.cout]
        name, options, extra = "CONV_2D", "Conv2DOptions", {}
    else:
        weights, bias = w.weights((1, k, k, cin)), w.const(np.zeros(cin) if not folded else _shift(w, cin))
        out = [n, out_hw, out_hw, cin]
        name, options, extra = "DEPTHWISE_CONV_2D", "DepthwiseConv2DOptions", {"depthMultiplier": 1}
    y = w.op(
        name,
        [x, weights, bias],
        [out],
        options,
        padding=_SAME,
        strideH=p.strides,
        strideW=p.strides,
        dilationHFactor=1,
        dilationWFactor=1,
        fusedActivationFunction=_act_code(w, act),
        **extra,
    )
    return y, rest


def _shift(w: _ModelWriter, c: int) -> np.ndarray:
    return w.rng.normal(0, 0.1, c).astype(np.float32)


def _bn(w: _ModelWriter, x: int, rest: tuple[str, ...]) -> tuple[int, tuple]:
    c = w.shape(x)[-1]
    act, rest = _activation(rest)
    y = w.op("MUL", [x, w.const(w.rng.uniform(0.5, 1.5, c))], [w.shape(x)], "MulOptions")
    y = w.op("ADD", [y, w.const(_shift(w, c))], [w.shape(x)], "AddOptions", fusedActivationFunction=_act_code(w, act))
    return y, rest


def _se(w: _ModelWriter, x: int) -> int:
    n, hw, _, c = w.shape(x)
    squeezed = max(1, c // 4)
    # the mean over a 1x1 map is the map: the converter leaves it out
    s = x if hw == 1 else w.op("MEAN", [x, w.const([1, 2], np.int32)], [[n, 1, 1, c]], "ReducerOptions", keepDims=True)
    common = {"padding": _VALID, "strideH": 1, "strideW": 1, "dilationHFactor": 1, "dilationWFactor": 1}
    s = w.op(
        "CONV_2D",
        [s, w.weights((squeezed, 1, 1, c)), w.const(np.zeros(squeezed))],
        [[n, 1, 1, squeezed]],
        "Conv2DOptions",
        fusedActivationFunction=_act_code(w, "RELU"),
        **common,
    )
    s = w.op(
        "CONV_2D",
        [s, w.weights((c, 1, 1, squeezed)), w.const(np.full(c, 3.0))],  # the hard sigmoid's + 3, folded
        [[n, 1, 1, c]],
        "Conv2DOptions",
        fusedActivationFunction=_act_code(w, "RELU6"),
        **common,
    )
    s = w.op("MUL", [s, w.const(np.float32(1.0) / np.float32(6.0))], [[n, 1, 1, c]], "MulOptions")
    return w.op("MUL", [x, s], [w.shape(x)], "MulOptions")


def _first(w: _ModelWriter, xs: list[int], kernel_ops: tuple[str, ...], p: OpParams) -> tuple[list, tuple]:
    """The ops of the kernel's first op (with what the converter fuses into them); the outputs and the rest."""
    op, rest = kernel_ops[0], kernel_ops[1:]
    x = xs[0]
    shape = w.shape(x)
    if op in (ops.CONV, ops.DWCONV):
        y, rest = _conv(w, x, kernel_ops, p)
        return [y], rest
    if op == ops.BN:
        y, rest = _bn(w, x, rest)
        return [y], rest
    if op in (ops.ADD, ops.MUL):
        act, rest = _activation(rest) if op == ops.ADD else ("NONE", rest)
        name, options = ("ADD", "AddOptions") if op == ops.ADD else ("MUL", "MulOptions")
        return [w.op(name, xs, [shape], options, fusedActivationFunction=_act_code(w, act))], rest
    if op in (ops.MAXPOOL, ops.AVGPOOL):
        out = _conv_out(shape[1], p.pool_strides)
        name = "MAX_POOL_2D" if op == ops.MAXPOOL else "AVERAGE_POOL_2D"
        k, s = p.kernel_size, p.pool_strides
        y = w.op(
            name,
            [x],
            [[shape[0], out, out, shape[3]]],
            "Pool2DOptions",
            padding=_SAME,
            strideH=s,
            strideW=s,
            filterHeight=k,
            filterWidth=k,
        )
        return [y], rest
    if op == ops.GLOBAL_AVGPOOL:
        y = w.op("MEAN", [x, w.const([1, 2], np.int32)], [[shape[0], shape[3]]], "ReducerOptions", keepDims=False)
        return [y], rest
    if op == ops.SE:
        return [_se(w, x)], rest
    if op == ops.FC:
        y = w.op(
            "FULLY_CONNECTED", [x, w.weights((p.cout, shape[1])), -1], [[shape[0], p.cout]], "FullyConnectedOptions"
        )
        return [y], rest
    if op == ops.CONCAT:
        out = [*shape[:3], sum(w.shape(t)[-1] for t in xs)]
        return [w.op("CONCATENATION", xs, [out], "ConcatenationOptions", axis=-1)], rest
    if op == ops.SPLIT:
        half = [*shape[:3], shape[3] // 2]
        axis = w.const(-1, np.int32)
        w.op("SPLIT", [axis, x], [half, half], "SplitOptions", numSplits=2)
        return list(w.operators[-1].outputs), rest
    if op == ops.CHANNELSHUFFLE:
        n, h, wd, c = shape
        grouped = [n, h, wd, 2, c // 2]
        y = w.op("RESHAPE", [x, w.const(grouped, np.int32)], [grouped])
        y = w.op("TRANSPOSE", [y, w.const([0, 1, 2, 4, 3], np.int32)], [[n, h, wd, c // 2, 2]])
        return [w.op("RESHAPE", [y, w.const(shape, np.int32)], [shape])], rest
    if op == ops.PAD:
        padded = [shape[0], shape[1] + 2, shape[2] + 2, shape[3]]
        return [w.op("PAD", [x, w.const([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32)], [padded], "PadOptions")], rest
    if op == ops.CROP:
        cropped = [shape[0], shape[1] - 1, shape[2] - 1, shape[3]]
        y = w.op(
            "STRIDED_SLICE",
            [x, w.const([0, 1, 1, 0], np.int32), w.const([0, 0, 0, 0], np.int32), w.const([1, 1, 1, 1], np.int32)],
            [cropped],
            "StridedSliceOptions",
            beginMask=9,
            endMask=15,
        )
        return [y], rest
    if op == ops.SOFTMAX:
        return [w.op("SOFTMAX", [x], [shape], "SoftmaxOptions", beta=1.0)], rest
    return [_standalone(w, op, x)], rest


def _converter_rewrites(kernel_ops: tuple[str, ...], cfg: Mapping[str, object]) -> bool:
    """Degenerate shapes the converter rewrites into other graphs: an add or mul of two 1x1 maps runs on
    reshaped vectors, and the shuffle of two channels is no op at all."""
    if kernel_ops[0] in (ops.ADD, ops.MUL) and cfg.get(ops.HW) == 1:
        return True
    return kernel_ops[0] == ops.CHANNELSHUFFLE and cfg.get(ops.CIN) == 2


def write_kernel_tflite(kernel: str, config: Mapping[str, object], seed: int = 0) -> bytes | None:
    """The .tflite bytes of ``kernel`` with ``config`` (validated: a bad one raises ValueError), as TFLite's
    converter writes the Keras kernel; None when this writer does not know the kernel's ops (build it in Keras)."""
    cfg = ops.validate_config(kernel, config)
    kernel_ops = ops.kernel_type(kernel).ops
    if _converter_rewrites(kernel_ops, cfg):
        return None
    w = _ModelWriter(seed)
    inputs = [w.tensor([1, *shape]) for shape in kernel_input_shapes(kernel, cfg)]
    try:
        outputs, rest = _first(w, inputs, kernel_ops, kernel_params(kernel, cfg))
        for op in rest:
            outputs = [_standalone(w, op, outputs[0])]
    except _Unsupported:
        return None
    return w.pack(inputs, outputs)
