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
* A scalar ``add``/``mul`` (one activation input and a constant) carries the constant in
  ``attrs["constant"]``; the patterns of :mod:`nnmeter.predictor.patterns` read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from nnmeter import ops
from nnmeter.errors import ModelFileError

#: Version of the IR JSON written by :meth:`Graph.to_dict`.
IR_FORMAT_VERSION = 1


@dataclass
class Node:
    """One operation of a model."""

    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    input_shapes: list[list[int]] = field(default_factory=list)
    output_shapes: list[list[int]] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)

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
            graph = cls(
                name=str(data["name"]),
                inputs={k: list(v) for k, v in data["inputs"].items()},
                outputs=list(data.get("outputs", [])),
            )
            for item in data["nodes"]:
                graph.add(
                    Node(
                        name=item["name"],
                        op=item["op"],
                        inputs=list(item["inputs"]),
                        input_shapes=[list(s) for s in item["input_shapes"]],
                        output_shapes=[list(s) for s in item["output_shapes"]],
                        attrs=dict(item.get("attrs", {})),
                    )
                )
            return graph.check()
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise ModelFileError(f"{source}: malformed nnmeter IR graph: {err}") from None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path


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
        **attrs: Any,
    ) -> Node:
        return self.graph.add(
            Node(
                name=name,
                op=op,
                inputs=[self.resolve(i) for i in inputs],
                input_shapes=[[int(d) for d in s] for s in input_shapes],
                output_shapes=[[int(d) for d in s] for s in output_shapes],
                attrs=attrs,
            )
        )

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
