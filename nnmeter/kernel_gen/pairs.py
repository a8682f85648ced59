"""Test models for the fusion-rule tester: single ops, op pairs, op chains and the MON block.

Shapes come from :class:`TestShapes` (nn-Meter's test-case defaults). An op that
needs a feature map gets ``(HW, HW, CIN)``; an op that needs a vector (fc,
softmax) gets ``(FC_SIZE,)``; an element-wise op takes what its neighbour needs.
In a chain each op gets the previous op's output; add, mul and concat take it
plus a second model input of the same shape. Two ops that cannot be chained
(fc then conv: a vector cannot feed a map op) raise :class:`UnconnectablePair`.

One departure from nn-Meter: a conv or convtrans is light, a 1x1 one with only
``CONV_OUTER_CHANNELS`` channels on its side away from the other op of a pair (its
input when it comes first, its output when it comes second); the tensor the two ops
share keeps nn-Meter's size, so the other op does nn-Meter's work. The light conv takes
about as long as a relu on its output, where nn-Meter's 3x3 conv of 64 -> 128 channels
takes ~100x and drifts between loads by more than the whole op it is paired with
(docs/design-notes.md).

Every function here is module-level and takes picklable arguments, so that it
can be a :class:`~nnmeter.backends.base.ConversionJob` ``build`` run by a worker
process, e.g. ``ConversionJob(id, out_dir, build=build_pair, build_args=("conv", "relu", TestShapes()))``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from nnmeter import ops
from nnmeter.kernel_gen.op_traits import MAP_OPS, ONE_D_OPS, TO_VECTOR_OPS, TWO_INPUT_OPS, OpParams

if TYPE_CHECKING:
    import keras


class UnconnectablePair(ValueError):
    """Two ops whose tensors cannot be chained (e.g. fc, a vector, then conv, which needs a map)."""


@dataclass(frozen=True)
class TestShapes:
    """Sizes of the fusion test models (nn-Meter's defaults)."""

    __test__ = False  # not a pytest test class despite its name

    HW: int = 28
    CIN: int = 64
    COUT: int = 128
    KERNEL_SIZE: int = 3
    STRIDES: int = 1
    POOL_STRIDES: int = 2
    FC_SIZE: int = 428
    CONV_OUTER_CHANNELS: int = 8  # 0: nn-Meter's conv (KERNEL_SIZE, CIN in, COUT out), see the module doc

    def params(self) -> OpParams:
        return OpParams(
            cout=self.COUT, kernel_size=self.KERNEL_SIZE, strides=self.STRIDES, pool_strides=self.POOL_STRIDES
        )


#: Ops whose channel counts on both sides are free: light in a pair (1x1, few channels away from the other op).
CHANNEL_MAPPING_OPS = frozenset({ops.CONV, ops.CONVTRANS})
LIGHT_CONV_KERNEL_SIZE = 1


def is_light_conv(op: str, shapes: TestShapes) -> bool:
    """Whether ``op`` is built as the light conv of the module doc with these shapes."""
    return op in CHANNEL_MAPPING_OPS and shapes.CONV_OUTER_CHANNELS > 0


def _out_rank(op: str, rank: int) -> int:
    if op in TO_VECTOR_OPS:
        return 1
    if op == ops.RESHAPE:
        return 3  # (H, W, C) -> (C, H, W); (C,) -> (1, 1, C)
    return rank


def _accepts(op: str, rank: int) -> bool:
    return not ((op in ONE_D_OPS and rank != 1) or (op in MAP_OPS and rank != 3))


def _chain_rank(chain: Sequence[str]) -> int:
    """The input rank (1 or 3) a chain starts from; UnconnectablePair when no rank works."""
    for op in chain:
        ops.check_op(op)
    for rank in (3, 1):  # prefer feature maps: the common case in CNNs
        if _rank_ok(chain, rank):
            return rank
    raise UnconnectablePair(_unconnectable_reason(chain))


def _rank_ok(chain: Sequence[str], rank: int) -> bool:
    for op in chain:
        if not _accepts(op, rank):
            return False
        rank = _out_rank(op, rank)
    return True


def _unconnectable_reason(chain: Sequence[str]) -> str:
    for a, b in zip(chain, chain[1:]):
        if not any(_rank_ok((a, b), r) for r in (1, 3)):
            made = "a vector" if all(_out_rank(a, r) == 1 for r in (1, 3) if _accepts(a, r)) else "a feature map"
            needs = "a vector" if b in ONE_D_OPS else "an (H, W, C) feature map"
            return f"ops {a} -> {b} cannot be connected: {a} outputs {made} and {b} needs {needs}"
    return f"ops {' -> '.join(chain)} cannot be connected: no input rank suits every op"


def connectable(op1: str, op2: str) -> bool:
    """Whether op1's output can feed op2 (both ops of the vocabulary)."""
    try:
        _chain_rank((op1, op2))
    except UnconnectablePair:
        return False
    return True


def _input_shape(rank: int, shapes: TestShapes) -> tuple[int, ...]:
    return (shapes.HW, shapes.HW, shapes.CIN) if rank == 3 else (shapes.FC_SIZE,)


def build_chain(
    chain: Sequence[str],
    shapes: TestShapes = TestShapes(),
    input_shape: Sequence[int] | None = None,
    last_cout: int | None = None,
) -> keras.Model:
    """The model of ``chain`` applied one op after the other (op names of the vocabulary).

    ``input_shape`` (no batch dimension) overrides the shape chosen from
    ``shapes``: the fusion tester builds op2 alone with the shape op2 has inside
    the pair (see :func:`pair_input_shapes`). ``last_cout`` overrides ``COUT`` for
    the last op (see :func:`pair_output_channels`). A conv or convtrans is 1x1 when
    ``shapes.CONV_OUTER_CHANNELS`` is set (see the module doc).
    """
    chain = tuple(chain)
    if not chain:
        raise ValueError("an op chain needs at least one op")
    if input_shape is None:
        input_shape = _input_shape(_chain_rank(chain), shapes)
    elif not _rank_ok(chain, len(input_shape)):
        raise UnconnectablePair(f"ops {' -> '.join(chain)} cannot take an input of shape {tuple(input_shape)}")
    import keras  # with the builders: only when a model is built, so that planning cases loads no TensorFlow

    from nnmeter.kernel_gen.builders import build_op_layer

    params = shapes.params()
    first = keras.Input(shape=tuple(input_shape), batch_size=1)
    inputs = [first]
    extra_outputs = []  # split's second half: an output of the model, the chain goes on with the first
    x = first
    for position, op in enumerate(chain):
        op_params = params
        if is_light_conv(op, shapes):
            op_params = dataclasses.replace(op_params, kernel_size=LIGHT_CONV_KERNEL_SIZE)
        if last_cout and position == len(chain) - 1:
            op_params = dataclasses.replace(op_params, cout=last_cout)
        if op in TWO_INPUT_OPS:
            other = keras.Input(shape=tuple(int(d) for d in x.shape[1:]), batch_size=1)
            inputs.append(other)
            x = build_op_layer(op, [x, other], op_params)
        else:
            x = build_op_layer(op, x, op_params)
        if isinstance(x, (list, tuple)):
            extra_outputs += list(x[1:])
            x = x[0]
    outputs = [x] + extra_outputs
    return keras.Model(inputs, outputs if len(outputs) > 1 else x, name="_".join(chain).replace("-", "_"))


def build_single(op: str, shapes: TestShapes = TestShapes(), input_shape: Sequence[int] | None = None) -> keras.Model:
    """The model of op ``op`` alone (two inputs for add, mul, concat)."""
    return build_chain((op,), shapes, input_shape)


def build_pair(op1: str, op2: str, shapes: TestShapes = TestShapes()) -> keras.Model:
    """The model of op1 then op2 as the fusion test measures it; :class:`UnconnectablePair` when op1's output
    cannot feed op2."""
    op1_in, _ = pair_input_shapes(op1, op2, shapes)
    return build_chain((op1, op2), shapes, op1_in, pair_output_channels(op2, shapes))


def pair_input_shapes(op1: str, op2: str, shapes: TestShapes = TestShapes()) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The input shape of op1 and of op2 inside the pair op1 -> op2 (no batch dimension).

    The fusion test compares the pair's latency with op1 and op2 alone at these shapes.
    A conv or convtrans op1 gets ``CONV_OUTER_CHANNELS`` input channels (see the module doc).
    """
    rank = _chain_rank((op1, op2))
    op1_in = _input_shape(rank, shapes)
    if rank == 3 and is_light_conv(op1, shapes):
        op1_in = op1_in[:2] + (shapes.CONV_OUTER_CHANNELS,)
    op1_out = build_chain((op1,), shapes, op1_in).outputs[0]
    return op1_in, tuple(int(d) for d in op1_out.shape[1:])


def pair_output_channels(op2: str, shapes: TestShapes = TestShapes()) -> int | None:
    """The output channels of op2 inside a pair when they differ from ``COUT`` (a conv or convtrans op2, see
    the module doc); None otherwise."""
    return shapes.CONV_OUTER_CHANNELS if is_light_conv(op2, shapes) else None


# --- MON: one op whose output feeds two ops -------------------------------------

#: What nn-Meter compares the MON block's latency with: sums of chain latencies, one per hypothesis.
#: ``case1``: the dwconv runs alone and each branch runs on its own (a tensor with two consumers
#: stops fusion); ``case2``: the dwconv fuses with the relu-relu branch and the other branch runs
#: alone; ``case3``: the dwconv fuses with one relu, the rest runs alone. The case whose sum is
#: nearest to the block's latency is the device's behaviour (nn-Meter: true case ``case1``,
#: tested only when ``BF_dwconv_relu`` is obeyed).
MON_CASES: dict[str, tuple[tuple[str, ...], ...]] = {
    "case1": ((ops.RELU, ops.RELU), (ops.RELU, ops.DWCONV), (ops.DWCONV,)),
    "case2": ((ops.DWCONV, ops.RELU, ops.RELU), (ops.RELU, ops.DWCONV)),
    "case3": ((ops.DWCONV, ops.RELU), (ops.DWCONV,), (ops.RELU, ops.RELU)),
}


def build_mon(shapes: TestShapes = TestShapes()) -> keras.Model:
    """nn-Meter's multiple-outbound-nodes block.

    input (HW, HW, CIN) -> dwconv (k = KERNEL_SIZE, stride 1) -> x; branch 1:
    x -> relu -> relu; branch 2: x -> leaky relu (slope 0.2) -> dwconv. Two outputs.
    The second branch starts with a leaky relu (nn-Meter uses one too) so that the
    converter cannot merge the two branches' first ops into one shared relu.
    """
    import keras  # with the builders: only when a model is built

    from nnmeter.kernel_gen.builders import build_op_layer

    params = OpParams(kernel_size=shapes.KERNEL_SIZE, strides=1)
    inp = keras.Input(shape=(shapes.HW, shapes.HW, shapes.CIN), batch_size=1)
    x = build_op_layer(ops.DWCONV, inp, params)
    branch1 = build_op_layer(ops.RELU, build_op_layer(ops.RELU, x, params), params)
    branch2 = build_op_layer(ops.DWCONV, keras.layers.LeakyReLU(negative_slope=0.2)(x), params)
    return keras.Model(inp, [branch1, branch2], name="mon")
