"""The one vocabulary of op and kernel names, their config keys, valid values and costs.

Every part of nnmeter (kernel generator, rule tester, builder, predictor) names
ops and kernels with the constants defined here. This module imports nothing
heavy: the predictor engine loads it without TensorFlow.

Conventions
-----------
* Tensors are NHWC with batch 1 and square feature maps: ``HW`` is height = width.
* Padding is ``same``: an op with stride ``s`` maps ``HW`` to ``ceil(HW / s)``.
* ``flops`` counts a multiply-add as 2 operations.
* Bytes assume float32 (4 bytes per element): ``bytes_read`` is every input
  activation plus the weights, ``bytes_written`` every output activation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

# --- ops -------------------------------------------------------------------

CONV = "conv"
DWCONV = "dwconv"
CONVTRANS = "convtrans"
BN = "bn"
RELU = "relu"
RELU6 = "relu6"
HSWISH = "hswish"
HSIGMOID = "hsigmoid"
SIGMOID = "sigmoid"
SWISH = "swish"
MAXPOOL = "maxpool"
AVGPOOL = "avgpool"
GLOBAL_AVGPOOL = "global-avgpool"
SE = "se"
FC = "fc"
ADD = "add"
MUL = "mul"
CONCAT = "concat"
SPLIT = "split"
CHANNELSHUFFLE = "channelshuffle"
RESHAPE = "reshape"
FLATTEN = "flatten"
PAD = "pad"
CROP = "crop"
SOFTMAX = "softmax"

#: Activations: element-wise ops that a device commonly fuses into the op before.
ACTIVATIONS = (RELU, RELU6, HSWISH, HSIGMOID, SIGMOID, SWISH)

#: Every op name of the vocabulary, in a stable order.
OPS: tuple[str, ...] = (
    CONV,
    DWCONV,
    CONVTRANS,
    BN,
    RELU,
    RELU6,
    HSWISH,
    HSIGMOID,
    SIGMOID,
    SWISH,
    MAXPOOL,
    AVGPOOL,
    GLOBAL_AVGPOOL,
    SE,
    FC,
    ADD,
    MUL,
    CONCAT,
    SPLIT,
    CHANNELSHUFFLE,
    RESHAPE,
    FLATTEN,
    PAD,
    CROP,
    SOFTMAX,
)

#: The number formats a model's node may compute in: what its activations are, or its weights when only they
#: are quantized. Kernels are measured and predicted in float32; a node in another format is reported with it,
#: never predicted as if it were float32 (on XNNPACK an int8 conv is another micro-kernel at another cost).
FLOAT32 = "float32"
PRECISIONS: tuple[str, ...] = (
    FLOAT32,
    "float16",
    "bfloat16",
    "float8",
    "int16",
    "uint16",
    "int8",
    "uint8",
    "int4",
    "uint4",
)

# --- config keys and valid values -----------------------------------------

HW = "HW"
CIN = "CIN"
COUT = "COUT"
KERNEL_SIZE = "KERNEL_SIZE"
STRIDES = "STRIDES"
POOL_STRIDES = "POOL_STRIDES"
CINS = "CINS"  # concat: the channel counts of its 2-4 inputs

#: The feature-map sizes samplers draw: those of networks with inputs of 96-256 px in steps of 32 (a
#: 160 px input gives 80, 40, 20, 10, 5). nn-Meter's grid has only 224 px's (1, 3, 7, 14, ..., 224), off which
#: kernels of models at 160 or 192 px are predicted worse (docs/design-notes.md).
HW_VALUES = (1, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224)
KERNEL_SIZE_VALUES = (1, 3, 5, 7)
POOL_KERNEL_SIZE_VALUES = (1, 2, 3, 5, 7)  # 2x2 pools are common (DenseNet transitions, VGG)
STRIDES_VALUES = (1, 2, 4)
POOL_STRIDES_VALUES = (1, 2, 3)
CHANNELS_RANGE = (1, 4096)  # inclusive bounds for CIN / COUT / each of CINS
HW_RANGE = (1, 1024)  # what a builder accepts; samplers snap to HW_VALUES
CONCAT_INPUTS_RANGE = (2, 4)


def snap(value: float, valid: tuple[int, ...]) -> int:
    """The member of ``valid`` nearest to ``value`` (ties go to the smaller)."""
    return min(valid, key=lambda v: (abs(v - value), v))


def out_hw(hw: int, stride: int) -> int:
    """Spatial size after an op with ``same`` padding and ``stride``."""
    return -(-hw // stride)


# --- kernels ---------------------------------------------------------------

#: Config keys per kernel family.
_CONV_KEYS = (HW, CIN, COUT, KERNEL_SIZE, STRIDES)
_DWCONV_KEYS = (HW, CIN, KERNEL_SIZE, STRIDES)
_POOL_KEYS = (HW, CIN, KERNEL_SIZE, POOL_STRIDES)
_FC_KEYS = (CIN, COUT)
_CONCAT_KEYS = (HW, CINS)
_ELEMENTWISE_KEYS = (HW, CIN)


@dataclass(frozen=True)
class KernelType:
    """A kernel: ops a device runs as one unit, and the keys of its config."""

    name: str
    ops: tuple[str, ...]
    keys: tuple[str, ...]
    doc: str = ""
    #: Number of tensor inputs the kernel takes (concat: given by len(CINS)).
    inputs: int = 1
    extra: Mapping[str, object] = field(default_factory=dict)


def _k(name: str, ops: tuple[str, ...], keys: tuple[str, ...], doc: str, inputs: int = 1) -> KernelType:
    return KernelType(name=name, ops=ops, keys=keys, doc=doc, inputs=inputs)


# The first kernel of a family (kernel_family) is the one networks use most: trained by a campaign, it gets the
# full sample budget and its siblings fewer (builder.training.kernel_settings).
_KERNEL_LIST = [
    _k("conv-bn-relu", (CONV, BN, RELU), _CONV_KEYS, "convolution, batch norm, ReLU"),
    _k("conv-bn-relu6", (CONV, BN, RELU6), _CONV_KEYS, "convolution, batch norm, ReLU6"),
    _k("conv-bn", (CONV, BN), _CONV_KEYS, "convolution and batch norm"),
    _k("conv-relu", (CONV, RELU), _CONV_KEYS, "convolution with bias, ReLU"),
    _k("conv-relu6", (CONV, RELU6), _CONV_KEYS, "convolution with bias, ReLU6"),
    _k("conv-hswish", (CONV, HSWISH), _CONV_KEYS, "convolution with bias, hard swish"),
    _k("conv-bn-hswish", (CONV, BN, HSWISH), _CONV_KEYS, "convolution, batch norm, hard swish"),
    _k("conv-bn-swish", (CONV, BN, SWISH), _CONV_KEYS, "convolution, batch norm, swish (EfficientNet)"),
    _k("conv-block", (CONV,), _CONV_KEYS, "a bare convolution with bias, no norm or activation"),
    _k("dwconv-bn-relu", (DWCONV, BN, RELU), _DWCONV_KEYS, "depthwise convolution, batch norm, ReLU"),
    _k("dwconv-bn", (DWCONV, BN), _DWCONV_KEYS, "depthwise convolution and batch norm"),
    _k("dwconv-relu", (DWCONV, RELU), _DWCONV_KEYS, "depthwise convolution with bias, ReLU"),
    _k("dwconv-relu6", (DWCONV, RELU6), _DWCONV_KEYS, "depthwise convolution with bias, ReLU6"),
    _k("dwconv-bn-relu6", (DWCONV, BN, RELU6), _DWCONV_KEYS, "depthwise convolution, batch norm, ReLU6"),
    _k("dwconv-bn-hswish", (DWCONV, BN, HSWISH), _DWCONV_KEYS, "depthwise convolution, batch norm, hard swish"),
    _k("dwconv-bn-swish", (DWCONV, BN, SWISH), _DWCONV_KEYS, "depthwise convolution, batch norm, swish"),
    _k("dwconv-block", (DWCONV,), _DWCONV_KEYS, "a bare depthwise convolution with bias"),
    _k("maxpool", (MAXPOOL,), _POOL_KEYS, "max pooling"),
    _k("avgpool", (AVGPOOL,), _POOL_KEYS, "average pooling"),
    _k("fc", (FC,), _FC_KEYS, "fully connected layer on a 1-D input"),
    _k("concat", (CONCAT,), _CONCAT_KEYS, "channel concatenation of 2-4 inputs", inputs=0),
    _k("split", (SPLIT,), _ELEMENTWISE_KEYS, "split along channels into two halves"),
    _k("channelshuffle", (CHANNELSHUFFLE,), _ELEMENTWISE_KEYS, "channel shuffle with 2 groups"),
    _k("se", (SE,), _ELEMENTWISE_KEYS, "squeeze-and-excitation block (reduction 4)"),
    _k("global-avgpool", (GLOBAL_AVGPOOL,), _ELEMENTWISE_KEYS, "global average pooling"),
    _k("bnrelu", (BN, RELU), _ELEMENTWISE_KEYS, "batch norm and ReLU"),
    _k("bn", (BN,), _ELEMENTWISE_KEYS, "batch norm alone"),
    _k("hswish", (HSWISH,), _ELEMENTWISE_KEYS, "hard swish alone"),
    _k("relu", (RELU,), _ELEMENTWISE_KEYS, "ReLU alone"),
    _k("addrelu", (ADD, RELU), _ELEMENTWISE_KEYS, "element-wise add of two tensors, ReLU", inputs=2),
    _k("add", (ADD,), _ELEMENTWISE_KEYS, "element-wise add of two tensors", inputs=2),
    # Beyond nn-Meter's list: lone ops that real models (MobileNetV3, EfficientNet, ResNet) run as
    # kernels of their own when the device does not fuse them.
    _k("relu6", (RELU6,), _ELEMENTWISE_KEYS, "ReLU6 alone"),
    _k("hsigmoid", (HSIGMOID,), _ELEMENTWISE_KEYS, "hard sigmoid alone"),
    _k("sigmoid", (SIGMOID,), _ELEMENTWISE_KEYS, "sigmoid alone"),
    _k("swish", (SWISH,), _ELEMENTWISE_KEYS, "swish (x * sigmoid(x)) alone"),
    _k("mul", (MUL,), _ELEMENTWISE_KEYS, "element-wise multiply of two tensors", inputs=2),
    _k("pad", (PAD,), _ELEMENTWISE_KEYS, "zero padding by one pixel on each side"),
    _k(
        "crop",
        (CROP,),
        _ELEMENTWISE_KEYS,
        "the feature map without its first row and column (NASNet's crop; "
        "other windows and strided slices of a map are predicted as the crop copying the same bytes)",
    ),
    _k("softmax", (SOFTMAX,), (CIN,), "softmax over a 1-D input"),
]

#: Every kernel type by name, in a stable order.
KERNELS: dict[str, KernelType] = {k.name: k for k in _KERNEL_LIST}


def kernel_type(name: str) -> KernelType:
    """The kernel type called ``name``; a clear error listing the valid names otherwise."""
    try:
        return KERNELS[name]
    except KeyError:
        raise ValueError(f"{name!r} is not a kernel; known: {', '.join(KERNELS)}") from None


def kernel_family(name: str) -> tuple[str, ...]:
    """The kernels that run the same main op on the same config and inputs as ``name`` (itself included), in
    :data:`KERNELS` order: ``conv-bn-relu``'s family is every ``conv-*`` kernel. They differ only in what
    follows the main op, so one family's measurements inform each other's regressors."""
    ktype = kernel_type(name)
    return tuple(
        k.name for k in _KERNEL_LIST if (k.ops[0], k.keys, k.inputs) == (ktype.ops[0], ktype.keys, ktype.inputs)
    )


def family_tail_ops(name: str) -> tuple[str, ...]:
    """The ops that follow the main op in any kernel of ``name``'s family, in :data:`OPS` order (none for a
    kernel alone in its family)."""
    family = kernel_family(name)
    tails = {op for k in family for op in KERNELS[k].ops[1:]} if len(family) > 1 else set()
    return tuple(op for op in OPS if op in tails)


def check_op(name: str) -> str:
    """``name`` if it is an op of the vocabulary; a clear error listing the valid names otherwise."""
    if name not in OPS:
        raise ValueError(f"{name!r} is not an op; known: {', '.join(OPS)}")
    return name


# --- config validation -----------------------------------------------------


def validate_config(kernel: str, config: Mapping[str, object]) -> dict[str, object]:
    """Check a kernel config; return it normalised (ints, CINS as a list).

    Raises ``ValueError`` naming the kernel, the key, the value and the valid set.
    Sizes are checked against what builders accept (``HW`` in ``HW_RANGE``), not
    against the sampling grid ``HW_VALUES``: real models have HW 10, 19, 38, ...
    """
    ktype = kernel_type(kernel)
    missing = [k for k in ktype.keys if k not in config]
    if missing:
        raise ValueError(f"kernel {kernel}: config misses {', '.join(missing)}; needs {', '.join(ktype.keys)}")
    extra = [k for k in config if k not in ktype.keys]
    if extra:
        raise ValueError(f"kernel {kernel}: unknown config key(s) {', '.join(extra)}; valid: {', '.join(ktype.keys)}")
    out: dict[str, object] = {}
    for key in ktype.keys:
        value = config[key]
        if key == CINS:
            if not isinstance(value, (list, tuple)) or not (
                CONCAT_INPUTS_RANGE[0] <= len(value) <= CONCAT_INPUTS_RANGE[1]
            ):
                raise ValueError(
                    f"kernel {kernel}: {key}={value!r} must be a list of "
                    f"{CONCAT_INPUTS_RANGE[0]}-{CONCAT_INPUTS_RANGE[1]} channel counts"
                )
            out[key] = [_check_int(kernel, f"{key}[{i}]", v, CHANNELS_RANGE) for i, v in enumerate(value)]
        elif key in (CIN, COUT):
            out[key] = _check_int(kernel, key, value, CHANNELS_RANGE)
            if key == CIN and ktype.ops[0] in (SPLIT, CHANNELSHUFFLE) and out[key] % 2:
                raise ValueError(f"kernel {kernel}: {key}={value!r} must be even (it is cut into two halves)")
        elif key == HW:
            out[key] = _check_int(kernel, key, value, hw_range(kernel))
        elif key in (KERNEL_SIZE, STRIDES, POOL_STRIDES):
            out[key] = _check_choice(kernel, key, value, valid_values(kernel, key))
        else:  # a key added to a kernel without a rule here is a programming error
            raise AssertionError(f"no validation rule for config key {key}")
    return out


def hw_range(kernel: str) -> tuple[int, int]:
    """Inclusive bounds of ``HW`` for ``kernel``: :data:`HW_RANGE`, but a crop needs a row and column to cut."""
    return (2, HW_RANGE[1]) if kernel_type(kernel).ops[0] == CROP else HW_RANGE


def valid_values(kernel: str, key: str) -> tuple[int, ...]:
    """The valid set of a discrete config key of ``kernel`` (KERNEL_SIZE, STRIDES, POOL_STRIDES)."""
    if key == KERNEL_SIZE:
        pool = kernel_type(kernel).ops[0] in (MAXPOOL, AVGPOOL)
        return POOL_KERNEL_SIZE_VALUES if pool else KERNEL_SIZE_VALUES
    if key == STRIDES:
        return STRIDES_VALUES
    if key == POOL_STRIDES:
        return POOL_STRIDES_VALUES
    raise ValueError(f"{key} has no discrete valid set; ranges: {describe_range(key)}")


def _check_int(kernel: str, key: str, value: object, bounds: tuple[int, int]) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"kernel {kernel}: {key}={value!r} must be an integer in [{bounds[0]}, {bounds[1]}]")
    if not bounds[0] <= value <= bounds[1]:
        raise ValueError(f"kernel {kernel}: {key}={value!r} is out of range; valid: [{bounds[0]}, {bounds[1]}]")
    return int(value)


def _check_choice(kernel: str, key: str, value: object, valid: tuple[int, ...]) -> int:
    if isinstance(value, bool) or value not in valid:
        raise ValueError(f"kernel {kernel}: {key}={value!r} is not valid; valid: {', '.join(map(str, valid))}")
    return int(value)  # type: ignore[arg-type]


# --- costs -----------------------------------------------------------------

_F32 = 4


@dataclass(frozen=True)
class Cost:
    """Work and memory traffic of a kernel, from its config alone."""

    flops: int
    params: int
    bytes_read: int
    bytes_written: int

    @property
    def bytes_moved(self) -> int:
        return self.bytes_read + self.bytes_written


def kernel_cost(kernel: str, config: Mapping[str, object]) -> Cost:
    """FLOPs, parameters and bytes read/written of ``kernel`` with ``config``.

    Batch norm that follows a conv is counted as folded into it (what every
    runtime does); a standalone ``bn`` counts its scale and shift.
    """
    ktype = kernel_type(kernel)
    cfg = validate_config(kernel, config)
    first = ktype.ops[0]
    acts = ktype.ops[1:]
    if first in (CONV, DWCONV):
        hw, cin, k, s = cfg[HW], cfg[CIN], cfg[KERNEL_SIZE], cfg[STRIDES]
        cout = cfg[COUT] if first == CONV else cin
        ho = out_hw(hw, s)
        per_out = k * k * (cin if first == CONV else 1)
        macs = ho * ho * cout * per_out
        params = per_out * cout + cout  # weights + bias (bn folds into both)
        act_flops = sum(_ACT_FLOPS.get(a, 0) for a in acts) * ho * ho * cout
        return Cost(2 * macs + act_flops, params, _F32 * (hw * hw * cin + params), _F32 * ho * ho * cout)
    if first in (MAXPOOL, AVGPOOL):
        hw, cin, k, s = cfg[HW], cfg[CIN], cfg[KERNEL_SIZE], cfg[POOL_STRIDES]
        ho = out_hw(hw, s)
        return Cost(ho * ho * cin * k * k, 0, _F32 * hw * hw * cin, _F32 * ho * ho * cin)
    if first == FC:
        cin, cout = cfg[CIN], cfg[COUT]
        params = cin * cout + cout
        return Cost(2 * cin * cout, params, _F32 * (cin + params), _F32 * cout)
    if first == CONCAT:
        hw, cins = cfg[HW], cfg[CINS]
        n = hw * hw * sum(cins)
        return Cost(0, 0, _F32 * n, _F32 * n)
    if first == SOFTMAX:
        cin = cfg[CIN]
        return Cost(_ACT_FLOPS[SOFTMAX] * cin, 0, _F32 * cin, _F32 * cin)
    hw, cin = cfg[HW], cfg[CIN]
    n = hw * hw * cin
    if first == PAD:
        return Cost(0, 0, _F32 * n, _F32 * (hw + 2) * (hw + 2) * cin)
    if first == CROP:  # only the kept window is read
        kept = (hw - 1) * (hw - 1) * cin
        return Cost(0, 0, _F32 * kept, _F32 * kept)
    if first == SE:
        mid = max(1, cin // 4)
        params = cin * mid + mid + mid * cin + cin
        flops = n + 2 * (cin * mid + mid * cin) + 2 * n  # pool, two fc, hsigmoid scale and multiply
        return Cost(flops, params, _F32 * (n + params), _F32 * n)
    if first == GLOBAL_AVGPOOL:
        return Cost(n, 0, _F32 * n, _F32 * cin)
    if first == BN:
        return Cost(2 * n + sum(_ACT_FLOPS.get(a, 0) for a in acts) * n, 2 * cin, _F32 * (n + 2 * cin), _F32 * n)
    if first in (ADD, MUL):
        return Cost(n * (1 + len(acts)), 0, _F32 * 2 * n, _F32 * n)
    if first in (SPLIT, CHANNELSHUFFLE):
        return Cost(0, 0, _F32 * n, _F32 * n)
    # a lone activation
    return Cost(_ACT_FLOPS.get(first, 1) * n, 0, _F32 * n, _F32 * n)


def runs_as_gemm(kernel: str) -> bool:
    """Whether ``kernel`` is a dense conv or an fc, which CPU runtimes run as a matrix product (see
    :func:`gemm_shape`)."""
    return kernel_type(kernel).ops[0] in (CONV, FC)


def runs_as_fully_connected(kernel: str, config: Mapping[str, object]) -> bool:
    """Whether ``kernel`` with ``config`` is a matrix-vector product that runtimes run as a fully connected
    layer: an fc, or a 1x1 conv on a 1x1 map (the squeeze-excite convs)."""
    ops_ = kernel_type(kernel).ops
    if ops_[0] == FC:
        return True
    return ops_[0] == CONV and config[HW] == 1 and config[KERNEL_SIZE] == 1  # type: ignore[index]


def gemm_shape(kernel: str, config: Mapping[str, object]) -> tuple[int, int, int] | None:
    """``(M, N, K)`` of the matrix product a dense conv or an fc kernel runs as, or None for other kernels.

    CPU runtimes (XNNPACK, oneDNN, Arm Compute Library) run a dense convolution as a
    GEMM, or an indirect GEMM, with one row per output pixel (``M``), one column per
    output channel (``N``) and a reduction over ``CIN * KERNEL_SIZE**2`` (``K``),
    computed in whole tiles of rows and columns; an fc is the one-row case.
    """
    if not runs_as_gemm(kernel):
        return None
    cfg = validate_config(kernel, config)
    if kernel_type(kernel).ops[0] == FC:
        return 1, cfg[COUT], cfg[CIN]  # type: ignore[return-value]
    ho = out_hw(cfg[HW], cfg[STRIDES])  # type: ignore[arg-type]
    k = cfg[KERNEL_SIZE]
    return ho * ho, cfg[COUT], cfg[CIN] * k * k  # type: ignore[return-value,operator]


#: FLOPs per element of each activation (hswish: x * relu6(x + 3) / 6).
_ACT_FLOPS = {RELU: 1, RELU6: 2, HSWISH: 4, HSIGMOID: 3, SIGMOID: 4, SWISH: 5, BN: 2, SOFTMAX: 5}


def describe_range(key: str) -> str:
    """Human-readable valid values of a config key, for ``nnmeter-build kernels``."""
    return {
        HW: f"{HW_RANGE[0]}-{HW_RANGE[1]} (sampled from {', '.join(map(str, HW_VALUES))})",
        CIN: f"{CHANNELS_RANGE[0]}-{CHANNELS_RANGE[1]}",
        COUT: f"{CHANNELS_RANGE[0]}-{CHANNELS_RANGE[1]}",
        KERNEL_SIZE: ", ".join(map(str, KERNEL_SIZE_VALUES)) + " (pools also 2)",
        STRIDES: ", ".join(map(str, STRIDES_VALUES)),
        POOL_STRIDES: ", ".join(map(str, POOL_STRIDES_VALUES)),
        CINS: f"{CONCAT_INPUTS_RANGE[0]}-{CONCAT_INPUTS_RANGE[1]} channel counts, each "
        f"{CHANNELS_RANGE[0]}-{CHANNELS_RANGE[1]}",
    }[key]
