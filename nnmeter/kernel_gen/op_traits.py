"""What builders, pairs and samplers need to know of each op's tensors; light (no TensorFlow)."""

from __future__ import annotations

from dataclasses import dataclass

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
