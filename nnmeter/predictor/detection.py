"""Kernel detection: partition an IR graph into the kernels a device runs, with its fusion rules.

Walk the nodes in topological order and merge a node ``v`` into the kernel that ends at
its single input ``u`` when

* the device fuses the pair (``rules.fused(op(u), op(v))``), where ``op(u)`` is the last
  op the device still sees: a ``bn`` folded into the conv before it is invisible;
* the merged ops are still the start of some kernel of :data:`nnmeter.ops.KERNELS`
  (so every partition names a kernel, and two-input ops such as add start a kernel);
* the connection allows it: ``u`` feeds only ``v``, or the multiple-outbound rule (MON)
  says the device fuses such an op with its first consumer (1) or with every consumer,
  computing it again in each branch (2).

A ``bn`` right after a conv or depthwise conv is folded into it when the rules fuse the
pair (TFLite's converter and OpenVINO do it; the file then has no bn at all). A kernel's
type is found from its *device signature* (its ops without folded bn), so a conv+bn+relu
from Keras and a conv with fused ReLU from a .tflite file are the same kernel: the type
with bn (conv-bn-relu, nn-Meter's names) is preferred when the predictor has it, then
the one without (conv-relu).

Stand-ins: a shape no kernel type has is predicted as one of the same work, and
``Kernel.stand_in`` says so: a conv with a non-square kernel (1x7, 7x1: Inception) as
the square conv with the same matrix product; a concat of more inputs than the concat
kernel takes as one of the most it takes, the trailing inputs merged (NASNet's six); a
window or strided slice of a feature map other than the crop kernel's (the map without
its first row and column) as the crop that copies the same bytes.

Free ops: ``reshape`` and ``flatten`` change only a tensor's shape metadata (runtimes
run them in place or not at all), so they are not kernels. Converters already drop
Identity, Const, Dropout and input placeholders.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Collection, Iterable

from nnmeter import ops
from nnmeter.ops import FLOAT32
from nnmeter.predictor.ir import Graph, Node, channels, spatial
from nnmeter.predictor.rules import MON_ALL, MON_FIRST, FusionRules

#: Ops that are not kernels (see the module doc).
FREE_OPS = frozenset({ops.RESHAPE, ops.FLATTEN})
_WEIGHTED = (ops.CONV, ops.DWCONV)


def _signature(kernel_ops: Iterable[str]) -> tuple[str, ...]:
    """The ops a device sees: a bn right after a conv or dwconv is folded into it."""
    out: list[str] = []
    for op in kernel_ops:
        if op == ops.BN and out and out[-1] in _WEIGHTED and len(out) == 1:
            continue
        out.append(op)
    return tuple(out)


def _candidates() -> dict[tuple[str, ...], list[str]]:
    by_sig: dict[tuple[str, ...], list[str]] = {}
    for name, ktype in ops.KERNELS.items():
        by_sig.setdefault(_signature(ktype.ops), []).append(name)
    for names in by_sig.values():  # the type with bn first (nn-Meter's names), then the vocabulary order
        names.sort(key=lambda n: ops.BN not in ops.KERNELS[n].ops)
    return by_sig


_BY_SIGNATURE = _candidates()
_PREFIXES = frozenset(sig[:i] for sig in _BY_SIGNATURE for i in range(1, len(sig) + 1))


@dataclass
class Kernel:
    """One kernel of a model: its nodes, type and config (``kernel`` is empty when unsupported)."""

    name: str
    nodes: list[str]
    ops: tuple[str, ...]  # the ops of its nodes, in order
    kernel: str = ""
    config: dict[str, object] = field(default_factory=dict)
    problem: str = ""  # why no kernel type or config could be given
    precision: str = FLOAT32  # the number format its nodes compute in
    stand_in: str = ""  # when ``config`` is a stand-in for a shape no kernel type has: what it stands for, how


@dataclass
class Detection:
    """The kernels of a graph, the nodes left out as free, and the kernels that cannot be predicted."""

    graph: str
    kernels: list[Kernel]
    free_nodes: list[str]

    @property
    def supported(self) -> list[Kernel]:
        return [k for k in self.kernels if not k.problem]

    @property
    def unsupported(self) -> list[Kernel]:
        return [k for k in self.kernels if k.problem]


def unfused_pairs(kernel: str, rules: FusionRules) -> list[tuple[str, str]]:
    """The consecutive op pairs of kernel type ``kernel``'s device signature that ``rules`` do not fuse. When there
    is one, :func:`detect` never forms a kernel of this type: a model's ops only merge across fused pairs (a bn
    after a conv is folded, so conv-bn-hswish needs conv -> hswish fused, and conv-bn serves a bare conv)."""
    sig = _signature(ops.kernel_type(kernel).ops)
    return [(a, b) for a, b in zip(sig, sig[1:]) if not rules.fused(a, b)]


def detect(
    graph: Graph,
    rules: FusionRules,
    available: Collection[str] | None = None,
    precisions: Collection[str] = (ops.FLOAT32,),
) -> Detection:
    """Partition ``graph`` into kernels with ``rules``; ``available`` restricts the kernel types to choose
    from (the predictor's regressors) and ``precisions`` the number formats they are measured in; a kernel
    with no available type, or in another precision, is reported with its problem."""
    readers = graph.consumers()
    policy = rules.mon_policy
    parts: list[list[Node]] = []
    sigs: list[tuple[str, ...]] = []  # the device signature of each partition
    tail_of: dict[str, int] = {}  # node name -> index of the partition that ends with it
    copies: dict[int, int] = {}  # partition index -> how many consumers took a copy (MON 2)
    free: list[str] = []
    for node in graph.nodes.values():
        if node.op in FREE_OPS:
            free.append(node.name)
            continue
        pid = tail_of.get(node.inputs[0]) if len(node.inputs) == 1 else None
        sig = _merged(sigs[pid], parts[pid], node, rules) if pid is not None else None
        if pid is not None and sig is not None:
            src = node.inputs[0]
            n_readers = len(readers.get(src, ()))
            if n_readers == 1 or (policy == MON_FIRST and readers[src][0] == node.name):
                parts[pid].append(node)
                sigs[pid] = sig
                del tail_of[src]
                tail_of[node.name] = pid
                continue
            if policy == MON_ALL:
                copies[pid] = copies.get(pid, 0) + 1
                parts.append(parts[pid] + [node])
                sigs.append(sig)
                tail_of[node.name] = len(parts) - 1
                continue
        parts.append([node])
        sigs.append((node.op,))
        tail_of[node.name] = len(parts) - 1
    kernels: list[Kernel] = []
    for pid, part in enumerate(parts):
        src = part[-1].name
        if copies.get(pid) == len(readers.get(src, ())) and src not in graph.outputs:
            continue  # every consumer computes it again in its own kernel
        kernels.append(_kernel(part, sigs[pid], available, precisions))
    return Detection(graph=graph.name, kernels=kernels, free_nodes=free)


def _merged(sig: tuple[str, ...], part: list[Node], node: Node, rules: FusionRules) -> tuple[str, ...] | None:
    """The signature of ``part`` + ``node`` if the device fuses them, else None."""
    if node.precision != part[-1].precision:
        return None  # a change of number format is a quantize or dequantize between them
    if node.op == ops.BN and len(part) == 1 and sig[-1] in _WEIGHTED:
        return sig if rules.fused(sig[-1], ops.BN) else None  # folded: the device does not see it
    merged = sig + (node.op,)
    return merged if merged in _PREFIXES and rules.fused(sig[-1], node.op) else None


@lru_cache(maxsize=65536)
def _validated(kernel: str, values: tuple) -> dict[str, object]:
    """``ops.validate_config`` of a config given as its values in key order (NAS loops repeat configs)."""
    keys = ops.kernel_type(kernel).keys
    return ops.validate_config(kernel, {k: list(v) if isinstance(v, tuple) else v for k, v in zip(keys, values)})


def _kernel(
    part: list[Node], sig: tuple[str, ...], available: Collection[str] | None, precisions: Collection[str]
) -> Kernel:
    node_ops = tuple(n.op for n in part)
    first = part[0]
    kernel = Kernel(name=part[-1].name, nodes=[n.name for n in part], ops=node_ops, precision=first.precision)
    if first.precision not in precisions:
        kernel.problem = f"computes in {first.precision}; the predictor's kernels are {', '.join(precisions)}"
        return kernel
    if not first.in_vocabulary:
        kernel.problem = f"op {first.op!r} is not in the vocabulary"
        return kernel
    names = _BY_SIGNATURE.get(sig)
    if not names:
        kernel.problem = f"no kernel runs {'-'.join(node_ops)}"
        return kernel
    chosen = [n for n in names if available is None or n in available]
    kernel.kernel = (chosen or names)[0]
    try:
        raw, kernel.stand_in = _config(kernel.kernel, first)
        kernel.config = dict(
            _validated(kernel.kernel, tuple(tuple(v) if isinstance(v, list) else v for v in raw.values()))
        )
    except ValueError as err:
        kernel.problem = str(err)
        return kernel
    if not chosen:
        kernel.problem = f"the predictor has no regressor for {' or '.join(names)}"
    return kernel


def _config(kernel: str, node: Node) -> tuple[dict[str, object], str]:
    """The config of ``kernel`` from its first node, and the stand-in note when the config stands in for a
    shape no kernel type has (:func:`_conv_twin`, :func:`_concat_twin`, :func:`_crop_twin`); raises
    ValueError when the node does not fit ``kernel``."""
    if not node.input_shapes:
        raise ValueError(f"node {node.name} ({node.op}) has no input shape")
    shape = node.input_shapes[0]
    out = node.output_shapes[0] if node.output_shapes else shape
    for dims in (*node.input_shapes, out):
        if any(d <= 0 for d in dims):  # unknown (-1) or empty: no config a regressor can take
            raise ValueError(
                f"node {node.name} ({node.op}) has the shape {dims}, with a dimension that is not positive"
            )
    keys = ops.kernel_type(kernel).keys
    config: dict[str, object] = {}
    stand_in = ""
    if ops.HW in keys:
        config[ops.HW] = spatial(shape)
    if ops.CIN in keys:
        config[ops.CIN] = channels(shape)
    if node.op == ops.CROP:
        config[ops.HW], stand_in = _crop_twin(node, shape, out)
    if ops.COUT in keys:
        config[ops.COUT] = channels(out)
    if ops.KERNEL_SIZE in keys:
        height, width = _pair(node, "kernel_size")
        if height == width:
            config[ops.KERNEL_SIZE] = height
        elif node.op == ops.CONV:
            config[ops.KERNEL_SIZE], config[ops.CIN], stand_in = _conv_twin(height, width, channels(shape))
        else:
            raise ValueError(f"node {node.name}: kernel_size {[height, width]} is not square")
    if ops.STRIDES in keys:
        config[ops.STRIDES] = _square(node, "strides")
    if ops.POOL_STRIDES in keys:
        config[ops.POOL_STRIDES] = _square(node, "strides")
    if ops.CINS in keys:
        config[ops.CINS], stand_in = _concat_twin([channels(s) for s in node.input_shapes])
        if node.attrs.get("axis", -1) not in (-1, 3):
            raise ValueError(f"node {node.name}: concat along axis {node.attrs['axis']}, not channels")
    if node.op == ops.DWCONV and node.attrs.get("depth_multiplier", 1) != 1:
        raise ValueError(
            f"node {node.name}: depthwise conv with depth multiplier "
            f"{node.attrs['depth_multiplier']}; only 1 is a kernel"
        )
    if node.op == ops.CONV and node.attrs.get("groups", 1) != 1:
        raise ValueError(f"node {node.name}: grouped conv ({node.attrs['groups']} groups) is not a kernel")
    if kernel == ops.FC and any(d != 1 for d in shape[:-1]):
        raise ValueError(f"node {node.name}: fc on an input of shape {shape}; the fc kernel takes 1-D inputs")
    return config, stand_in


def _conv_twin(height: int, width: int, cin: int) -> tuple[int, int, str]:
    """A square conv that stands in for a ``height`` x ``width`` one: the kernel size with the nearest tap
    count, and the input channels that give it the same matrix product. A CPU runs a conv as a matrix
    product (output pixels x COUT, reduced over CIN x taps; :func:`nnmeter.ops.gemm_shape`), so the twin has
    the same work and weight bytes; only its input tensor differs, by the ratio of the taps (7/9 for 1x7)."""
    taps = height * width
    size = min((k for k in ops.KERNEL_SIZE_VALUES if k > 1), key=lambda k: abs(k * k - taps))
    twin_cin = max(1, round(cin * taps / (size * size)))
    return (
        size,
        twin_cin,
        (
            f"{height}x{width} conv with CIN {cin} predicted as the {size}x{size} conv with CIN "
            f"{twin_cin}: the same matrix product"
        ),
    )


def _concat_twin(cins: list[int]) -> tuple[list[int], str]:
    """``cins`` when the concat kernel takes that many inputs, else a stand-in with the most inputs it takes:
    the trailing inputs merged into the last, so the same bytes are copied, in fewer pieces."""
    most = ops.CONCAT_INPUTS_RANGE[1]
    if len(cins) <= most:
        return cins, ""
    twin = cins[: most - 1] + [sum(cins[most - 1 :])]
    return twin, f"{len(cins)}-input concat predicted as the {most}-input concat {twin}: the same bytes copied"


def _crop_twin(node: Node, shape: list[int], out: list[int]) -> tuple[int, str]:
    """The ``HW`` of the crop kernel (a map without its first row and column) that copies as many bytes as
    ``node``, a window or strided slice of a feature map, and the stand-in note when it is another window;
    a slice that changes the channels or the rank is not a crop (ValueError)."""
    if len(shape) != 4 or len(out) != 4 or channels(out) != channels(shape) or spatial(out) >= spatial(shape):
        raise ValueError(
            f"node {node.name}: a slice from {shape} to {out} is not a crop of a feature map "
            f"(the crop kernel keeps the channels and cuts rows and columns)"
        )
    side = spatial(out) + 1
    if side == spatial(shape):
        return side, ""
    return side, (
        f"window of {list(out[1:3])} out of {list(shape[1:3])} predicted as the crop of HW {side}: "
        f"the same bytes copied"
    )


def _pair(node: Node, attr: str) -> tuple[int, int]:
    """The node's ``attr`` as two positive integers (an int stands for both); ValueError when it is not that."""
    value = node.attrs.get(attr, 1)
    pair = [value, value] if _positive_int(value) else list(value) if isinstance(value, (list, tuple)) else []
    if len(pair) < 2 or not (_positive_int(pair[0]) and _positive_int(pair[1])):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ValueError(f"node {node.name}: {attr} {shown} is not a pair of positive integers")
    return int(pair[0]), int(pair[1])


def _positive_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) > 0


def _square(node: Node, attr: str) -> int:
    pair = _pair(node, attr)
    if pair[0] != pair[1]:
        raise ValueError(f"node {node.name}: {attr} {list(pair)} is not square")
    return pair[0]
