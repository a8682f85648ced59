"""Keras builders: one function per op of :mod:`nnmeter.ops`, and the kernel blocks made of them.

Every model is Keras 3, batch size 1, NHWC, ``same`` padding. An op builder
takes the op's input tensors and an :class:`OpParams` and returns its output
tensor(s); :data:`OP_BUILDERS` maps each op name to its builder, so adding an op
to the vocabulary is adding one function here. Op pairs, chains and the MON
block (:mod:`nnmeter.kernel_gen.pairs`) and kernels (:func:`build_kernel`) all
compose ops through :func:`build_op_layer`. A kernel's Keras model is the reference of the
direct .tflite writer (:mod:`nnmeter.kernel_gen.tflite_writer`), which campaigns use.

Weights are random (Keras initialisers) and batch-norm statistics are drawn at
random too: with the identity statistics of a fresh layer a converter could
simplify a lone bn away and the model would not measure what its name says.

What TFLite makes of the ops (checked in ``tests/test_kernel_gen.py``): bn after
a conv folds into the conv; ``hswish`` is ``x * relu6(x + 3) / 6`` which the
converter fuses into ``HARD_SWISH``; ``se`` is global-avgpool (kept dims) ->
1x1 conv (C/4) -> relu -> 1x1 conv (C) -> hsigmoid -> mul; ``channelshuffle``
is reshape -> transpose -> reshape with 2 groups; ``split`` is ``tf.split`` in 2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow loads: no banner on every import
import keras  # noqa: E402
import numpy as np  # noqa: E402

from nnmeter import ops  # noqa: E402
from nnmeter.kernel_gen.op_traits import (  # noqa: E402
    EVEN_CHANNEL_OPS,
    MAP_OPS,
    ONE_D_OPS,
    OpParams,
    kernel_input_shapes,
    kernel_params,
)

Tensor = object  # a symbolic KerasTensor


def _conv(x, p: OpParams):
    return keras.layers.Conv2D(p.cout, p.kernel_size, strides=p.strides, padding="same", use_bias=p.bias)(x[0])


def _dwconv(x, p: OpParams):
    return keras.layers.DepthwiseConv2D(p.kernel_size, strides=p.strides, padding="same", use_bias=p.bias)(x[0])


def _convtrans(x, p: OpParams):
    return keras.layers.Conv2DTranspose(p.cout, p.kernel_size, strides=p.strides, padding="same", use_bias=p.bias)(x[0])


def _bn(x, p: OpParams):
    layer = keras.layers.BatchNormalization()
    y = layer(x[0])
    rng = np.random.default_rng(p.seed)
    c = int(x[0].shape[-1])
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c)
    mean, var = rng.normal(0, 0.1, c), rng.uniform(0.5, 1.5, c)
    layer.set_weights([w.astype("float32") for w in (gamma, beta, mean, var)])
    return y


def _hsigmoid_of(t):
    # relu6(x + 3) / 6: the form TFLite's converter pattern-matches (with the multiply by x) into HARD_SWISH.
    return keras.ops.relu6(t + 3.0) / 6.0


def _relu(x, p: OpParams):
    return keras.layers.ReLU()(x[0])


def _relu6(x, p: OpParams):
    return keras.layers.ReLU(max_value=6.0)(x[0])


def _hswish(x, p: OpParams):
    return x[0] * _hsigmoid_of(x[0])


def _hsigmoid(x, p: OpParams):
    return _hsigmoid_of(x[0])


def _sigmoid(x, p: OpParams):
    return keras.layers.Activation("sigmoid")(x[0])


def _swish(x, p: OpParams):
    return keras.layers.Activation("silu")(x[0])


def _maxpool(x, p: OpParams):
    return keras.layers.MaxPooling2D(p.kernel_size, strides=p.pool_strides, padding="same")(x[0])


def _avgpool(x, p: OpParams):
    return keras.layers.AveragePooling2D(p.kernel_size, strides=p.pool_strides, padding="same")(x[0])


def _global_avgpool(x, p: OpParams):
    return keras.layers.GlobalAveragePooling2D()(x[0])


def _se(x, p: OpParams):
    c = int(x[0].shape[-1])
    s = keras.layers.GlobalAveragePooling2D(keepdims=True)(x[0])
    s = keras.layers.Conv2D(max(1, c // 4), 1)(s)
    s = keras.layers.ReLU()(s)
    s = keras.layers.Conv2D(c, 1)(s)
    return x[0] * _hsigmoid_of(s)


def _fc(x, p: OpParams):
    return keras.layers.Dense(p.cout)(x[0])


def _add(x, p: OpParams):
    return keras.layers.Add()(list(x))


def _mul(x, p: OpParams):
    return keras.layers.Multiply()(list(x))


def _concat(x, p: OpParams):
    return keras.layers.Concatenate(axis=-1)(list(x))


def _split(x, p: OpParams):
    return keras.ops.split(x[0], 2, axis=-1)


def _channelshuffle(x, p: OpParams):
    h, w, c = (int(d) for d in x[0].shape[1:])
    y = keras.layers.Reshape((h, w, 2, c // 2))(x[0])
    y = keras.layers.Permute((1, 2, 4, 3))(y)
    return keras.layers.Reshape((h, w, c))(y)


def _reshape(x, p: OpParams):
    # (H, W, C) -> (C, H, W), the layout change nn-Meter's reshape test makes; (C,) -> (1, 1, C), a feature
    # vector turned into a map, which lets a 1-D op connect to a map op through it.
    shape = tuple(int(d) for d in x[0].shape[1:])
    target = (shape[2], shape[0], shape[1]) if len(shape) == 3 else (1, 1, shape[0])
    return keras.layers.Reshape(target)(x[0])


def _flatten(x, p: OpParams):
    return keras.layers.Flatten()(x[0])


def _pad(x, p: OpParams):
    return keras.layers.ZeroPadding2D(1)(x[0])


def _crop(x, p: OpParams):
    return keras.layers.Cropping2D(((1, 0), (1, 0)))(x[0])


def _softmax(x, p: OpParams):
    return keras.layers.Softmax()(x[0])


OpBuilder = Callable[[Sequence[Tensor], OpParams], object]

#: op name -> builder; every op of :data:`nnmeter.ops.OPS` has one (checked at import).
OP_BUILDERS: dict[str, OpBuilder] = {
    ops.CONV: _conv,
    ops.DWCONV: _dwconv,
    ops.CONVTRANS: _convtrans,
    ops.BN: _bn,
    ops.RELU: _relu,
    ops.RELU6: _relu6,
    ops.HSWISH: _hswish,
    ops.HSIGMOID: _hsigmoid,
    ops.SIGMOID: _sigmoid,
    ops.SWISH: _swish,
    ops.MAXPOOL: _maxpool,
    ops.AVGPOOL: _avgpool,
    ops.GLOBAL_AVGPOOL: _global_avgpool,
    ops.SE: _se,
    ops.FC: _fc,
    ops.ADD: _add,
    ops.MUL: _mul,
    ops.CONCAT: _concat,
    ops.SPLIT: _split,
    ops.CHANNELSHUFFLE: _channelshuffle,
    ops.RESHAPE: _reshape,
    ops.FLATTEN: _flatten,
    ops.PAD: _pad,
    ops.CROP: _crop,
    ops.SOFTMAX: _softmax,
}
assert set(OP_BUILDERS) == set(ops.OPS), f"ops without a builder: {set(ops.OPS) - set(OP_BUILDERS)}"


def build_op_layer(op: str, x: Tensor | Sequence[Tensor], params: OpParams = OpParams()):
    """Apply op ``op`` to tensor ``x`` (a list of tensors for add, mul, concat); return its output.

    Raises ``ValueError`` naming the op when ``x`` has the wrong rank or (split,
    channelshuffle) an odd channel count.
    """
    ops.check_op(op)
    inputs = list(x) if isinstance(x, (list, tuple)) else [x]
    rank = len(inputs[0].shape) - 1
    if op in ONE_D_OPS and rank != 1:
        raise ValueError(f"op {op} needs a 1-D input, got shape {tuple(inputs[0].shape[1:])}")
    if op in MAP_OPS and rank != 3:
        raise ValueError(f"op {op} needs an (H, W, C) input, got shape {tuple(inputs[0].shape[1:])}")
    if op in EVEN_CHANNEL_OPS and int(inputs[0].shape[-1]) % 2:
        raise ValueError(
            f"op {op} cuts channels in two halves and needs an even channel count, got {int(inputs[0].shape[-1])}"
        )
    return OP_BUILDERS[op](inputs, params)


# --- kernels -------------------------------------------------------------------


@dataclass(frozen=True)
class KernelModel:
    """A built kernel model and what is known of it without running it."""

    model: keras.Model
    kernel: str
    config: dict
    input_shapes: tuple[tuple[int, ...], ...]
    output_shapes: tuple[tuple[int, ...], ...]
    cost: ops.Cost


def build_kernel(kernel: str, config: Mapping[str, object]) -> KernelModel:
    """Build the Keras model of ``kernel`` with ``config`` (validated: a bad one raises ValueError)."""
    cfg = ops.validate_config(kernel, config)
    ktype = ops.kernel_type(kernel)
    shapes = kernel_input_shapes(kernel, cfg)
    params = kernel_params(kernel, cfg)
    inputs = [keras.Input(shape=s, batch_size=1) for s in shapes]
    x: object = inputs
    for op in ktype.ops:
        x = build_op_layer(op, x, params)
    outputs = list(x) if isinstance(x, (list, tuple)) else [x]
    model = keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0], name=kernel.replace("-", "_"))
    return KernelModel(
        model=model,
        kernel=kernel,
        config=cfg,
        input_shapes=shapes,
        output_shapes=tuple(tuple(int(d) for d in o.shape[1:]) for o in outputs),
        cost=ops.kernel_cost(kernel, cfg),
    )
