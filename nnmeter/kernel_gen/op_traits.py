"""What builders, pairs and samplers need to know of each op's tensors; light (no TensorFlow)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from nnmeter import ops

#: Ops that take a 1-D (feature vector) input and nothing else.
ONE_D_OPS = frozenset({ops.FC, ops.SOFTMAX})
#: Ops that take only an (H, W, C) feature map.
MAP_OPS = frozenset(
    {
        ops.CONV,
        ops.DWCONV,
        ops.CONVTRANS,
        ops.MAXPOOL,
        ops.AVGPOOL,
        ops.GLOBAL_AVGPOOL,
        ops.SE,
        ops.CHANNELSHUFFLE,
        ops.PAD,
        ops.CROP,
    }
)
#: Ops whose output is a vector whatever their input (the others keep their input's rank, but reshape).
TO_VECTOR_OPS = frozenset({ops.GLOBAL_AVGPOOL, ops.FLATTEN, ops.FC, ops.SOFTMAX})
#: Ops with two tensor inputs of the same shape (concat takes 2-4 in kernels, 2 in pairs).
TWO_INPUT_OPS = frozenset({ops.ADD, ops.MUL, ops.CONCAT})
#: Ops whose channel count must be even (they cut channels in two halves).
EVEN_CHANNEL_OPS = frozenset({ops.SPLIT, ops.CHANNELSHUFFLE})


@dataclass(frozen=True)
class OpParams:
    """The attributes an op builder may use; each op reads only its own."""

    cout: int = 0  # conv, convtrans, fc
    kernel_size: int = 3  # conv, dwconv, convtrans, pools
    strides: int = 1  # conv, dwconv, convtrans
    pool_strides: int = 2  # pools
    bias: bool = True  # conv, dwconv: False when a bn follows (it folds the bias)
    seed: int = 0  # random bn statistics


def kernel_input_shapes(kernel: str, config: Mapping[str, object]) -> tuple[tuple[int, ...], ...]:
    """The input shapes (without the batch dimension) of ``kernel`` with a validated ``config``."""
    ktype = ops.kernel_type(kernel)
    first = ktype.ops[0]
    if first in ONE_D_OPS:
        return ((int(config[ops.CIN]),),)
    hw = int(config[ops.HW])
    if first == ops.CONCAT:
        return tuple((hw, hw, int(c)) for c in config[ops.CINS])  # type: ignore[union-attr]
    return ((hw, hw, int(config[ops.CIN])),) * ktype.inputs


def kernel_params(kernel: str, config: Mapping[str, object]) -> OpParams:
    """The op attributes of ``kernel`` with a validated ``config``."""
    ktype = ops.kernel_type(kernel)
    first = ktype.ops[0]
    # A conv followed by bn has no bias: the bn's shift is the bias after folding.
    bias = not (first in (ops.CONV, ops.DWCONV) and len(ktype.ops) > 1 and ktype.ops[1] == ops.BN)
    return OpParams(
        cout=int(config.get(ops.COUT, 0)),
        kernel_size=int(config.get(ops.KERNEL_SIZE, 3)),  # type: ignore[arg-type]
        strides=int(config.get(ops.STRIDES, 1)),  # type: ignore[arg-type]
        pool_strides=int(config.get(ops.POOL_STRIDES, 1)),
        bias=bias,
    )  # type: ignore[arg-type]
