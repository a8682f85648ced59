"""The IR graph: the one model representation every converter produces and kernel detection reads.

A :class:`Graph` holds :class:`Node` objects in topological order. A node's ``op`` is an
op of the vocabulary (:data:`nnmeter.ops.OPS`) when the framework op has an equivalent,
otherwise the framework's own op name (``"Transpose"``, ``"GATHER"``, ...), which kernel
detection reports as unsupported.

Conventions:

* 4-D tensor shapes are NHWC with the batch dimension first (ONNX's NCHW is transposed
  by its converter), so ``input_shapes[0][1]`` is always the spatial height.
* ``inputs`` lists the producers of the node's *activation* inputs only, by node name or
  by graph-input name; weights and other constants are attributes, not edges.
* Nodes that are no-ops in every runtime (Identity, Const, Dropout, input placeholders)
  are never nodes: converters bypass them.
* ``precision`` is the number format the node computes in (:data:`nnmeter.ops.PRECISIONS`): the type of its
  quantized activations, or of its weights when only they are quantized; ``float32`` otherwise.
* A scalar ``add``/``mul`` (one activation input and a constant) carries the constant in
  ``attrs["constant"]``; the patterns of :mod:`nnmeter.predictor.patterns` read it.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from nnmeter import ops
from nnmeter.errors import ModelFileError

#: Version of the IR JSON written by :meth:`Graph.to_dict`.
IR_FORMAT_VERSION = 1
#: The largest dimension and rank of a tensor a model may have (runtimes index tensors with 32-bit integers);
#: a dimension may be -1 (unknown) in a node's shapes.
MAX_DIM = 2**31 - 1
MAX_RANK = 32


def check_shape(shape: Any, what: str) -> list[int]:
    """``shape`` as a list of ints if it is a list of at most :data:`MAX_RANK` integers in -1..:data:`MAX_DIM`;
    ValueError saying ``what`` is wrong otherwise (a string, a bool, a float or a huge number is not a dimension)."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Iterable):
        raise ValueError(f"{what}: {show_value(shape)} is not a list of dimensions")
    dims = list(shape)
    if len(dims) > MAX_RANK:
        raise ValueError(f"{what}: {len(dims)} dimensions, more than {MAX_RANK}")
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or not -1 <= int(d) <= MAX_DIM:
            raise ValueError(
                f"{what}: {show_value(d)} in {show_value(dims)} is not a dimension (an integer in -1..{MAX_DIM})"
            )
    return [int(d) for d in dims]


def show_value(value: Any) -> str:
    """``value`` for a one-line message: its repr on one line, at most 60 characters."""
    try:
        text = " ".join(repr(value).split())
    except ValueError:  # an integer of more digits than Python prints
        return "a huge integer"
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass
class Node:
    """One operation of a model."""

    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    input_shapes: list[list[int]] = field(default_factory=list)
    output_shapes: list[list[int]] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    precision: str = ops.FLOAT32

    @property
    def in_vocabulary(self) -> bool:
        return self.op in ops.OPS


@dataclass
class Graph:
    """A model as nodes in topological order; edges are the nodes' ``inputs``."""

    name: str
    inputs: dict[str, list[int]] = field(default_factory=dict)  # graph input name -> shape
    nodes: dict[str, Node] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)  # names of the nodes whose results the model returns

    def add(self, node: Node) -> Node:
        if node.name in self.nodes or node.name in self.inputs:
            raise ValueError(f"graph {self.name}: duplicate node name {node.name!r}")
        self.nodes[node.name] = node
        return node

    def consumers(self) -> dict[str, list[str]]:
        """Node or input name -> names of the nodes that read it (one entry per edge)."""
        out: dict[str, list[str]] = {n: [] for n in (*self.inputs, *self.nodes)}
        for node in self.nodes.values():
            for src in node.inputs:
                out.setdefault(src, []).append(node.name)
        return out

    def check(self) -> Graph:
        """Verify edges point backwards to existing nodes or inputs; raise ValueError otherwise."""
        seen = set(self.inputs)
        for node in self.nodes.values():
            for src in node.inputs:
                if src not in seen:
                    raise ValueError(
                        f"graph {self.name}: node {node.name} reads {src!r}, which is not "
                        "an earlier node or a graph input"
                    )
            seen.add(node.name)
        return self

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes.values():
            counts[node.op] = counts.get(node.op, 0) + 1
        return counts

    # --- JSON ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "nnmeter-ir",
            "version": IR_FORMAT_VERSION,
            "name": self.name,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "nodes": [
                {
                    "name": n.name,
                    "op": n.op,
                    "inputs": n.inputs,
                    "input_shapes": n.input_shapes,
                    "output_shapes": n.output_shapes,
                    "attrs": n.attrs,
                    **({"precision": n.precision} if n.precision != ops.FLOAT32 else {}),
                }
                for n in self.nodes.values()
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> Graph:
        if data.get("format") != "nnmeter-ir":
            raise ModelFileError(f"{source}: not an nnmeter IR graph (no 'format: nnmeter-ir' key)")
        if data.get("version") != IR_FORMAT_VERSION:
            raise ModelFileError(
                f"{source}: IR format version {data.get('version')!r} is not supported; "
                f"this nnmeter reads version {IR_FORMAT_VERSION}"
            )
        try:
            inputs = _typed(data["inputs"], dict, "inputs")
            graph = cls(
                name=_typed(data["name"], str, "name"),
                inputs={check_name(k, "input"): check_shape(v, f"input {show_value(k)}") for k, v in inputs.items()},
                outputs=[_typed(o, str, "outputs") for o in _typed(data.get("outputs", []), list, "outputs")],
            )
            for item in _typed(data["nodes"], list, "nodes"):
                item = _typed(item, dict, "a node")
                name = check_name(item["name"], "node name")
                where = f"node {show_value(name)}"
                graph.add(
                    Node(
                        name=name,
                        op=_typed(item["op"], str, f"{where}: op"),
                        inputs=[check_name(i, f"{where}: input") for i in _typed(item["inputs"], list, where)],
                        input_shapes=[
                            check_shape(s, f"{where}: input_shapes")
                            for s in _typed(item["input_shapes"], list, f"{where}: input_shapes")
                        ],
                        output_shapes=[
                            check_shape(s, f"{where}: output_shapes")
                            for s in _typed(item["output_shapes"], list, f"{where}: output_shapes")
                        ],
                        attrs=dict(_typed(item.get("attrs", {}), dict, f"{where}: attrs")),
                        precision=check_precision(item.get("precision", ops.FLOAT32), f"{where}: precision"),
                    )
                )
            return graph.check()
        except KeyError as err:
            raise ModelFileError(f"{source}: malformed nnmeter IR graph: no key {show_value(err.args[0])}") from None
        except (TypeError, AttributeError, ValueError) as err:
            raise ModelFileError(f"{source}: malformed nnmeter IR graph: {_show_error(err)}") from None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path


def check_name(name: Any, what: str) -> str:
    """``name`` if it is a string of one line (messages name nodes); ValueError otherwise."""
    if not isinstance(name, str) or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"{what} {show_value(name)} is not a name (a string without control characters)")
    return name


def check_precision(precision: Any, what: str) -> str:
    """``precision`` if it is one of :data:`nnmeter.ops.PRECISIONS`; ValueError otherwise."""
    if precision not in ops.PRECISIONS:
        raise ValueError(f"{what} {show_value(precision)} is not one of {', '.join(ops.PRECISIONS)}")
    return str(precision)


def _typed(value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind):
        raise ValueError(f"{what}: {show_value(value)} is not a {kind.__name__}")
    return value


def _show_error(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


#: Framework op names (lower case) of a division: TFLite and ONNX, TensorFlow, Keras.
_DIVISIONS = frozenset({"div", "realdiv", "divide", "truedivide"})


def scalar_operand(op: str, value: float) -> float:
    """The constant of ``x <op> value`` written as an add or a multiply (``op``: the framework's op name):
    ``x - c`` is ``x + (-c)``, ``x / c`` is ``x * (1 / c)``; patterns (hard swish's ``+ 3``, ``/ 6``) match on it."""
    if op.lower() == "sub":  # TFLite's SUB, ONNX's Sub
        return -value
    if op.lower() in _DIVISIONS and value:
        return 1.0 / value
    return value


def spatial(shape: list[int]) -> int:
    """The ``HW`` of an NHWC shape: its height when square, else the side of a square of the same area."""
    if len(shape) != 4:
        return 1
    h, w = shape[1], shape[2]
    return h if h == w else max(1, round((h * w) ** 0.5))


def channels(shape: list[int]) -> int:
    """The channel count of an NHWC (or N, C) shape: its last dimension."""
    return int(shape[-1]) if shape else 1


class GraphBuilder:
    """What converters use to make a graph: bypassed no-op nodes, dynamic-shape checks, patterns."""

    def __init__(self, name: str, source: str) -> None:
        self.graph = Graph(name=name)
        self.source = source
        self._alias: dict[str, str] = {}

    def input(self, name: str, shape: Iterable[int | None]) -> None:
        try:
            shape = list(shape)
            check_name(name, "input")
            check_shape([-1 if d is None else d for d in shape], f"input {name!r}")
        except (ValueError, TypeError) as err:
            raise ModelFileError(f"{self.source}: {err}") from None
        dims = [1 if i == 0 and d in (None, -1, 0) else d for i, d in enumerate(shape)]
        sizes = [d for d in dims if d is not None and d > 0]
        if len(sizes) != len(dims):
            raise ModelFileError(
                f"{self.source}: input {name!r} has a dynamic shape {list(shape)}",
                hint="give the input shape in the model's own layout, e.g. input_shape=(1, 224, 224, 3) "
                "or --input-shape 1,224,224,3",
            )
        self.graph.inputs[name] = [int(d) for d in sizes]

    def bypass(self, name: str, source: str) -> None:
        """``name`` is a no-op: its readers read ``source``."""
        self._alias[name] = self.resolve(source)

    def resolve(self, name: str) -> str:
        return self._alias.get(name, name)

    def known(self, name: str) -> bool:
        return self.resolve(name) in self.graph.nodes or self.resolve(name) in self.graph.inputs

    def node(
        self,
        name: str,
        op: str,
        inputs: Iterable[str],
        input_shapes: Iterable[Iterable[int]],
        output_shapes: Iterable[Iterable[int]],
        precision: str = ops.FLOAT32,
        **attrs: Any,
    ) -> Node:
        try:
            node = Node(
                name=check_name(name, "node"),
                op=check_name(op, f"node {show_value(name)}: op"),
                inputs=[self.resolve(i) for i in inputs],
                input_shapes=[check_shape(s, f"node {show_value(name)}: an input shape") for s in input_shapes],
                output_shapes=[check_shape(s, f"node {show_value(name)}: an output shape") for s in output_shapes],
                attrs=attrs,
                precision=check_precision(precision, f"node {show_value(name)}: precision"),
            )
            return self.graph.add(node)
        except ValueError as err:  # a bad shape, or a name given twice
            raise ModelFileError(f"{self.source}: {_show_error(err)}") from None

    def finish(self, outputs: Iterable[str]) -> Graph:
        from nnmeter.predictor.patterns import recognise

        self.graph.outputs = [self.resolve(o) for o in outputs]
        if not self.graph.nodes:
            raise ModelFileError(f"{self.source}: the model has no operations")
        try:
            self.graph.check()
        except ValueError as err:
            raise ModelFileError(f"{self.source}: {err}") from None
        return recognise(self.graph)
