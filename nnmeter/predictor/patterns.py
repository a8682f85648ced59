"""Multi-node patterns that are one op of the vocabulary, recognised once, on the IR graph.

Frameworks spell some ops as several nodes; every converter's output goes through
:func:`recognise`, so the Keras, TFLite, ONNX and nn-Meter IR paths agree:

* ``bn``: x * scale + shift, or (x + shift) * scale, with constants (per-channel tensors, or scalars: a
  ``Rescaling`` of the input, ``Normalization``), and x * scale alone with a per-channel tensor (a bn whose
  zero shift a converter dropped)
* ``hsigmoid``: relu6(x + 3) * (1/6)
* ``hswish``: x * hsigmoid(x), or x * relu6(x + 3) * (1/6)
* ``swish``: x * sigmoid(x)
* ``se``: x * gate(x) where gate is global-avgpool -> 1x1 conv or fc -> act -> 1x1 conv or fc
  -> hsigmoid or sigmoid (reshapes allowed in between), squeezing to 1/8-1/2 of the channels
  as the ``se`` kernel does (1/4); a narrower gate (EfficientNet's) stays as its parts
* ``channelshuffle``: reshape to 5-D -> transpose -> reshape back to the input's shape
* ``split``: two slices of a feature map's channels that take its first and its second half (a ShuffleNet's
  split written as strided slices): one split node, which the readers of both slices read
"""

from __future__ import annotations

from typing import Callable, TypeGuard

from nnmeter import ops
from nnmeter.predictor.ir import Graph, Node

_TOL = 1e-3
# Ops that may sit inside an SE gate between the pooling and the final activation.
_SE_GATE_OPS = {ops.CONV, ops.FC, ops.RELU, ops.RELU6, ops.HSWISH, ops.SWISH, ops.RESHAPE, ops.FLATTEN}

Match = tuple[list[str], Node, str]  # (nodes to remove, the replacement, node whose place it takes)


def _scalar(node: Node | None, op: str, value: float) -> TypeGuard[Node]:
    """``node`` is ``op`` with one activation input and the scalar constant ``value``."""
    if node is None or node.op != op or len(node.inputs) != 1:
        return False
    const = node.attrs.get("constant")
    return isinstance(const, (int, float)) and abs(float(const) - value) < _TOL


class _View:
    """Read helpers over a graph whose consumer lists are computed once per pass."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.readers = graph.consumers()
        self.used: set[str] = set()
        self.aliases: dict[str, str] = {}  # a removed node -> the new node its readers read instead

    def node(self, name: str) -> Node | None:
        return self.graph.nodes.get(name)

    def only_reader(self, name: str) -> Node | None:
        readers = self.readers.get(name, [])
        if len(readers) != 1 or name in self.graph.outputs:
            return None
        return self.graph.nodes[readers[0]]

    def private(self, name: str) -> bool:
        """Node ``name`` feeds exactly one node and is not a model output."""
        return self.only_reader(name) is not None

    def free(self, names: list[str]) -> bool:
        return not self.used.intersection(names)

    def replace(self, names: list[str], op: str, last: Node, source: str, attrs: dict | None = None) -> Match:
        """A new node ``op`` reading ``source``, with ``last``'s name and output, in place of ``names``."""
        self.used.update(names)
        first = self.graph.nodes[names[0]]
        shapes = [s for s, i in zip(first.input_shapes, first.inputs) if i == source][:1] or first.input_shapes[:1]
        node = Node(
            name=last.name,
            op=op,
            inputs=[source],
            input_shapes=shapes,
            output_shapes=last.output_shapes,
            attrs={"pattern": names, **(attrs or {})},
            precision=next(
                (p for p in (self.graph.nodes[n].precision for n in names) if p != ops.FLOAT32), ops.FLOAT32
            ),
        )
        return names, node, last.name


def _hsigmoid(v: _View, add: Node) -> Match | None:
    # relu6(x + 3) * (1/6); converters fold the + 3 into the bias of a conv before it (TFLite does):
    # then relu6(x) * (1/6) is what is left of it, and nothing else is spelled that way
    if add.op == ops.RELU6:
        mul = v.only_reader(add.name)
        if _scalar(mul, ops.MUL, 1 / 6) and len(add.inputs) == 1 and v.free([add.name, mul.name]):
            return v.replace([add.name, mul.name], ops.HSIGMOID, mul, add.inputs[0])
        return None
    if not _scalar(add, ops.ADD, 3.0):
        return None
    relu6 = v.only_reader(add.name)
    if relu6 is None or relu6.op != ops.RELU6:
        return None
    mul = v.only_reader(relu6.name)
    if not _scalar(mul, ops.MUL, 1 / 6):
        return None
    names = [add.name, relu6.name, mul.name]
    return v.replace(names, ops.HSIGMOID, mul, add.inputs[0]) if v.free(names) else None


def _constant_operand(node: Node | None, op: str) -> TypeGuard[Node]:
    """``node`` is ``op`` of one activation input and a constant (a tensor, or a scalar)."""
    return node is not None and node.op == op and len(node.inputs) == 1 and "constant" in node.attrs


def _bn(v: _View, first: Node) -> Match | None:
    # an affine map of a tensor by constants, as frameworks spell a batch norm (x * scale + shift), and as
    # input preprocessing is written (Rescaling: x * s + o; Normalization: (x - mean) / std): the ops of the
    # bn kernel (a multiply and an add of constants, over the tensor)
    if not (_constant_operand(first, ops.MUL) or _constant_operand(first, ops.ADD)):
        return None
    second = v.only_reader(first.name)
    other = ops.ADD if first.op == ops.MUL else ops.MUL
    if _constant_operand(second, other):
        names = [first.name, second.name]
        return v.replace(names, ops.BN, second, first.inputs[0]) if v.free(names) else None
    if first.op == ops.MUL and first.attrs["constant"] == "tensor" and v.free([first.name]):
        return v.replace([first.name], ops.BN, first, first.inputs[0])  # x * scale: its zero shift dropped
    return None


def _hswish(v: _View, mul: Node) -> Match | None:
    if mul.op != ops.MUL or len(mul.inputs) != 2:
        return None
    for x, other in (mul.inputs, mul.inputs[::-1]):
        gate = v.node(other)
        if gate is None or gate.inputs != [x] or not v.private(gate.name):
            continue
        if gate.op == ops.HSIGMOID:  # x * hsigmoid(x)
            names = [gate.name, mul.name]
            if v.free(names):
                return v.replace(names, ops.HSWISH, mul, x)
    # x * relu6(x + 3) * (1/6)
    for x, other in (mul.inputs, mul.inputs[::-1]):
        relu6 = v.node(other)
        if relu6 is None or relu6.op != ops.RELU6 or not v.private(relu6.name):
            continue
        add = v.node(relu6.inputs[0])
        if not _scalar(add, ops.ADD, 3.0) or add.inputs != [x] or not v.private(add.name):
            continue
        scale = v.only_reader(mul.name)
        if not _scalar(scale, ops.MUL, 1 / 6):
            continue
        names = [add.name, relu6.name, mul.name, scale.name]
        if v.free(names):
            return v.replace(names, ops.HSWISH, scale, x)
    return None


def _swish(v: _View, mul: Node) -> Match | None:
    if mul.op != ops.MUL or len(mul.inputs) != 2:
        return None
    for x, other in (mul.inputs, mul.inputs[::-1]):
        gate = v.node(other)
        if gate is not None and gate.op == ops.SIGMOID and gate.inputs == [x] and v.private(gate.name):
            names = [gate.name, mul.name]
            if v.free(names):
                return v.replace(names, ops.SWISH, mul, x)
    return None


def _se(v: _View, mul: Node) -> Match | None:
    if mul.op != ops.MUL or len(mul.inputs) != 2:
        return None
    for x, other in (mul.inputs, mul.inputs[::-1]):
        gate = v.node(other)
        if gate is None or gate.op not in (ops.HSIGMOID, ops.SIGMOID) or not v.private(gate.name):
            continue
        chain = [gate.name]
        node = v.node(gate.inputs[0]) if len(gate.inputs) == 1 else None
        while node is not None and node.op in _SE_GATE_OPS and len(node.inputs) == 1 and v.private(node.name):
            chain.append(node.name)
            node = v.node(node.inputs[0])
        if node is None or node.op != ops.GLOBAL_AVGPOOL or node.inputs != [x] or not v.private(node.name):
            continue
        # the squeeze: the gate's first conv or fc after the pooling
        squeeze = next((v.graph.nodes[n] for n in reversed(chain) if v.graph.nodes[n].op in (ops.CONV, ops.FC)), None)
        if squeeze is None or not _squeezes_like_the_kernel(node, squeeze):
            continue
        names = [node.name, *reversed(chain), mul.name]
        if v.free(names):
            return v.replace(names, ops.SE, mul, x, {"gate": gate.op})
    return None


def _squeezes_like_the_kernel(pool: Node, squeeze: Node) -> bool:
    """Whether the gate squeezes to about a quarter of the channels, as the ``se`` kernel does (MobileNetV3
    rounds it to a multiple of 8). EfficientNet's squeeze to a quarter of the block's input, a 24th of these
    channels: as an ``se`` kernel such a block would carry 6x the weights it has, so it stays as its parts
    (global-avgpool, two small convs, the gate, a multiply), each predicted by its own kernel."""
    if not squeeze.output_shapes or not pool.output_shapes:
        return True  # shapes unknown: nothing to compare
    channels, width = pool.output_shapes[0][-1], squeeze.output_shapes[0][-1]
    return channels / 8 <= width <= channels / 2


def _channelshuffle(v: _View, first: Node) -> Match | None:
    if first.op != ops.RESHAPE or len(first.inputs) != 1 or not first.input_shapes or not first.output_shapes:
        return None
    if len(first.input_shapes[0]) != 4 or len(first.output_shapes[0]) != 5:
        return None
    transpose = v.only_reader(first.name)
    if transpose is None or transpose.op.lower() != "transpose":
        return None
    last = v.only_reader(transpose.name)
    if last is None or last.op != ops.RESHAPE or not last.output_shapes:
        return None
    if list(last.output_shapes[0]) != list(first.input_shapes[0]):
        return None
    names = [first.name, transpose.name, last.name]
    return v.replace(names, ops.CHANNELSHUFFLE, last, first.inputs[0]) if v.free(names) else None


def _split(v: _View, first: Node) -> Match | None:
    # two slices of one map's channels, its first and its second half: the split kernel (one op, two outputs)
    if first.op != ops.CROP or first.attrs.get("channel_begin") != 0 or len(first.inputs) != 1:
        return None
    if not first.input_shapes or not first.output_shapes or len(first.input_shapes[0]) != 4:
        return None
    shape, half = first.input_shapes[0], first.output_shapes[0]
    if shape[-1] % 2 or list(half) != [*shape[:3], shape[-1] // 2]:
        return None
    source = first.inputs[0]
    second = next(
        (
            n
            for n in (v.graph.nodes[r] for r in v.readers.get(source, []))
            if n.op == ops.CROP
            and n.attrs.get("channel_begin") == shape[-1] // 2
            and n.output_shapes
            and list(n.output_shapes[0]) == list(half)
        ),
        None,
    )
    if second is None or not v.free([first.name, second.name]):
        return None
    order = list(v.graph.nodes)
    early, late = sorted((first, second), key=lambda n: order.index(n.name))  # the split takes the earlier place
    names = [early.name, late.name]
    _, node, at = v.replace(names, ops.SPLIT, early, source)
    node.output_shapes = [list(half), list(half)]
    v.aliases[late.name] = early.name
    return names, node, at


#: In order: hsigmoid before hswish and se (both are built on it).
_PATTERNS: tuple[Callable[[_View, Node], Match | None], ...] = (
    _bn,
    _hsigmoid,
    _hswish,
    _swish,
    _se,
    _channelshuffle,
    _split,
)


def recognise(graph: Graph) -> Graph:
    """Collapse every pattern of this module into its single op, in place; return the graph."""
    for pattern in _PATTERNS:
        view = _View(graph)
        matches = [m for m in (pattern(view, node) for node in list(graph.nodes.values())) if m is not None]
        if not matches:
            continue
        drop: set[str] = set()
        placed: dict[str, Node] = {}
        for names, node, at in matches:
            drop.update(names)
            placed[at] = node
        graph.nodes = {
            name: placed.get(name, node) for name, node in graph.nodes.items() if name not in drop or name in placed
        }
        if view.aliases:  # readers of a removed node read the node that took its place
            for node in graph.nodes.values():
                node.inputs = [view.aliases.get(i, i) for i in node.inputs]
            graph.outputs = [view.aliases.get(o, o) for o in graph.outputs]
    return graph
