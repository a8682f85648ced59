"""The ``rules`` section of campaign.yaml: which op pairs the fusion test covers, and how."""

from __future__ import annotations

from dataclasses import dataclass

from nnmeter import ops
from nnmeter.schema import setting


@dataclass(frozen=True)
class RuleTestShapes:
    """Tensor sizes of the fusion test cases (nn-Meter's defaults, but for ``CONV_OUTER_CHANNELS``)."""

    HW: int = setting(28, "input height = width of the test cases", minimum=ops.HW_RANGE[0], maximum=ops.HW_RANGE[1])
    CIN: int = setting(64, "input channels", minimum=ops.CHANNELS_RANGE[0], maximum=ops.CHANNELS_RANGE[1])
    COUT: int = setting(
        128, "output channels of conv-like ops", minimum=ops.CHANNELS_RANGE[0], maximum=ops.CHANNELS_RANGE[1]
    )
    KERNEL_SIZE: int = setting(3, "kernel size of conv-like and pooling ops", choices=ops.KERNEL_SIZE_VALUES)
    STRIDES: int = setting(1, "stride of conv-like ops", choices=ops.STRIDES_VALUES)
    POOL_STRIDES: int = setting(2, "stride of pooling ops", choices=ops.POOL_STRIDES_VALUES)
    FC_SIZE: int = setting(
        428, "size of the 1-D input of fc and softmax", minimum=ops.CHANNELS_RANGE[0], maximum=ops.CHANNELS_RANGE[1]
    )
    CONV_OUTER_CHANNELS: int = setting(
        8,
        "a conv or convtrans is 1x1 with this many channels on its side away from the op it is paired with "
        "(its input when it comes first, its output when second), so that its time does not drown the other "
        "op's; 0: nn-Meter's conv (KERNEL_SIZE, CIN in, COUT out)",
        minimum=0,
        maximum=ops.CHANNELS_RANGE[1],
    )


#: The default op list: nn-Meter's twelve (its 79 basic test cases are pairs of them) plus the activations,
#: pools and shuffles of MobileNetV2/V3, EfficientNet and ShuffleNet. Every connectable ordered pair is tested.
DEFAULT_OPS = [
    ops.CONV,
    ops.DWCONV,
    ops.CONVTRANS,
    ops.BN,
    ops.RELU,
    ops.RELU6,
    ops.HSWISH,
    ops.SIGMOID,
    ops.SWISH,
    ops.MAXPOOL,
    ops.AVGPOOL,
    ops.GLOBAL_AVGPOOL,
    ops.SE,
    ops.FC,
    ops.ADD,
    ops.CONCAT,
    ops.CHANNELSHUFFLE,
    ops.RESHAPE,
]


@dataclass(frozen=True)
class RuleTestSettings:
    """The ``rules`` section: op pairs are fused when T1 + T2 - T12 > alpha * min(T1, T2)."""

    # No `choices` here on purpose: an unknown op is reported per test case and the others still run.
    ops: list[str] = setting(
        DEFAULT_OPS,
        "ops whose ordered pairs are tested for fusion (every pair whose "
        "ops can be connected; names as in `nnmeter-build kernels`)",
    )
    pairs: list[str] = setting([], "extra pairs to test besides those of `ops`, as op1_op2 (e.g. conv_hsigmoid)")
    mon: bool = setting(True, "test what the device fuses when an op feeds several ops (nn-Meter's MON case)")
    alpha: float = setting(
        0.5, "fusion threshold: fused when T1 + T2 - T12 > alpha * min(T1, T2)", minimum=0.0, maximum=1.0
    )
    shapes: RuleTestShapes = setting(RuleTestShapes(), "tensor sizes of the test cases")
    passes: int = setting(
        2,
        "independent measurements of every case (each loads the case's models anew and "
        "measures them together, in its own batch); the decision's interval covers their "
        "spread",
        minimum=2,
        maximum=100,
    )
    max_remeasures: int = setting(
        3,
        "extra passes of a case whose decision lies inside the measurement noise, "
        "one at a time, before it is reported as uncertain",
        minimum=0,
        maximum=100,
    )
