"""nn-Meter IR JSON -> IR graph; also the TensorFlow op table the SavedModel/.pb converter shares.

nn-Meter's IR is a dict ``{node name: {"inbounds": [...], "outbounds": [...], "attr": {"name",
"type", "attr", "input_shape", "output_shape"}}}`` whose ``type`` is a TensorFlow op name
(Conv2D, DepthwiseConv2dNative, FusedBatchNorm, BiasAdd, Relu6, Mul, Add, Mean, MatMul,
Const, Identity, Placeholder, ...). Types that already are ops of our vocabulary are
accepted as they are.

The dict is input: every key the converter reads is checked for its type (shapes are lists of integers,
``attr`` a mapping, ``inbounds`` a list of node names) and the graph must be acyclic; anything else is a
:class:`~nnmeter.errors.ModelFileError` naming the file, the node and the problem in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from nnmeter import ops
from nnmeter.errors import ModelFileError
from nnmeter.predictor.ir import Graph, GraphBuilder, check_name, check_shape, scalar_operand, show_value

#: TensorFlow op type -> vocabulary op. Types not here (and not vocabulary names) keep their name.
TF_OPS: dict[str, str] = {
    "Conv2D": ops.CONV,
    "DepthwiseConv2dNative": ops.DWCONV,
    "Conv2DBackpropInput": ops.CONVTRANS,
    "FusedBatchNorm": ops.BN,
    "FusedBatchNormV2": ops.BN,
    "FusedBatchNormV3": ops.BN,
    "Relu": ops.RELU,
    "Relu6": ops.RELU6,
    "Sigmoid": ops.SIGMOID,
    "Add": ops.ADD,
    "AddV2": ops.ADD,
    "Mul": ops.MUL,
    "RealDiv": ops.MUL,
    "MaxPool": ops.MAXPOOL,
    "AvgPool": ops.AVGPOOL,
    "Mean": ops.GLOBAL_AVGPOOL,
    "MatMul": ops.FC,
    "ConcatV2": ops.CONCAT,
    "Concat": ops.CONCAT,
    "Split": ops.SPLIT,
    "SplitV": ops.SPLIT,
    "Pad": ops.PAD,
    "StridedSlice": ops.CROP,
    "Slice": ops.CROP,
    "Softmax": ops.SOFTMAX,
    "Reshape": ops.RESHAPE,
    "Squeeze": ops.RESHAPE,
    "ExpandDims": ops.RESHAPE,
}
#: No-ops in every runtime: bypassed (Const and Placeholder are handled apart).
TF_NOOPS = {"Identity", "NoOp", "StopGradient", "Snapshot", "IdentityN", "ReadVariableOp"}
#: Ops that add a bias: absorbed into the conv / fc before them.
TF_BIAS = {"BiasAdd"}


def _pair(value: Any, default: int = 1) -> list[int]:
    """[h, w] from an int, [h, w] or TF's [1, h, w, 1]; ValueError for anything else."""
    if value is None:
        return [default, default]
    if isinstance(value, int) and not isinstance(value, bool):
        return [value, value]
    vals = check_shape(value, f"{show_value(value)} as a size or stride")
    if len(vals) not in (1, 2, 4):
        raise ValueError(f"{show_value(value)} is not a size or stride: 1, 2 or 4 integers")
    return vals[1:3] if len(vals) == 4 else (vals * 2 if len(vals) == 1 else vals[:2])


def _batch1(shape: Any) -> list[int]:
    dims = check_shape([-1 if d is None else d for d in _listed(shape or [], "a shape")], "a shape")
    return [1 if i == 0 and d <= 0 else d for i, d in enumerate(dims)]


def _listed(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{what}: {show_value(value)} is not a list")
    return value


def _check_entries(data: Mapping[str, Any], source: str) -> None:
    """Refuse a node whose keys have the wrong type (ModelFileError naming the node)."""
    for key, entry in data.items():
        try:
            check_name(key, "node name")
            for src in _listed(entry["inbounds"], "inbounds"):
                check_name(src, "an inbound")
            for dst in _listed(entry.get("outbounds") or [], "outbounds"):
                check_name(dst, "an outbound")
            attr = entry["attr"]
            if not isinstance(attr, Mapping):
                raise ValueError(f"attr: {show_value(attr)} is not a mapping")
            if not isinstance(attr.get("type", ""), str):
                raise ValueError(f"type: {show_value(attr.get('type'))} is not a string")
            if not isinstance(attr.get("attr") or {}, Mapping):
                raise ValueError(f"attr.attr: {show_value(attr.get('attr'))} is not a mapping")
            for which in ("input_shape", "output_shape"):
                for shape in _listed(attr.get(which) or [], which):
                    _batch1(shape)
            node_attrs = attr.get("attr") or {}
            for which in ("shape", "weight_shape"):
                if node_attrs.get(which) is not None:
                    check_shape([-1 if d is None else d for d in _listed(node_attrs[which], which)], which)
            for which in ("kernel_shape", "strides", "ksize"):
                _pair(node_attrs.get(which))
        except KeyError as err:
            raise ModelFileError(f"{source}: node {show_value(key)}: no key {show_value(err.args[0])}") from None
        except (ValueError, TypeError) as err:
            raise ModelFileError(f"{source}: node {show_value(key)}: {' '.join(str(err).split())[:200]}") from None


def convert_dict(data: Mapping[str, Any], name: str = "model", source: str = "<nn-Meter IR>") -> Graph:
    """Convert an nn-Meter IR dict (the same shape TensorFlow graphs are put into) to an IR graph."""
    if (
        not isinstance(data, Mapping)
        or not data
        or not all(isinstance(v, Mapping) and "attr" in v and "inbounds" in v for v in data.values())
    ):
        raise ModelFileError(f"{source}: not an nn-Meter IR graph (expected {{node: {{inbounds, attr, outbounds}}}})")
    _check_entries(data, source)
    try:
        return _convert(data, name, source)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, ZeroDivisionError) as err:
        raise ModelFileError(f"{source}: malformed nn-Meter IR graph ({' '.join(str(err).split())[:200]})") from None


def _convert(data: Mapping[str, Any], name: str, source: str) -> Graph:
    builder = GraphBuilder(name, source)
    types = {k: v["attr"].get("type", "") for k, v in data.items()}
    consts = {k: (v["attr"].get("attr") or {}).get("constant") for k, v in data.items() if types[k] == "Const"}
    folded: set[str] = set()
    for key in _topological(data, source):
        entry = data[key]
        attr = entry["attr"]
        tf_type = attr.get("type", "")
        node_attrs = attr.get("attr", {}) or {}
        out_shapes = [_batch1(s) for s in attr.get("output_shape", [])]
        if tf_type == "Const" or (entry["inbounds"] and all(i in folded for i in entry["inbounds"] if i in data)):
            folded.add(key)  # a constant, or computed from constants only (frozen variables: bn's scale)
            continue
        if tf_type == "Placeholder":
            builder.input(key, (node_attrs.get("shape") or (out_shapes or [[]])[0]))
            continue
        data_in = [i for i in entry["inbounds"] if i in data and i not in folded and builder.known(i)]
        const_in = [consts.get(i) for i in entry["inbounds"] if i in folded]
        if tf_type in TF_NOOPS or (tf_type in TF_BIAS and data_in and _is_weighted(builder, data_in[0])):
            if data_in:
                builder.bypass(key, data_in[0])
            continue
        in_shapes = [_output_shape(builder, data, i) for i in data_in]
        op = tf_type if tf_type in ops.OPS else TF_OPS.get(tf_type, ops.ADD if tf_type in TF_BIAS else tf_type)
        extra: dict[str, Any] = {}
        if op in (ops.CONV, ops.DWCONV, ops.CONVTRANS):
            weight = node_attrs.get("weight_shape")
            extra["kernel_size"] = _pair(node_attrs.get("kernel_shape") or (weight[:2] if weight else None))
            extra["strides"] = _pair(node_attrs.get("strides"))
            if op == ops.DWCONV and weight:
                extra["depth_multiplier"] = int(weight[-1])
        elif op in (ops.MAXPOOL, ops.AVGPOOL):
            extra["kernel_size"] = _pair(node_attrs.get("ksize"))
            extra["strides"] = _pair(node_attrs.get("strides"))
            if in_shapes and len(in_shapes[0]) == 4 and extra["kernel_size"] == in_shapes[0][1:3] and op == ops.AVGPOOL:
                op, extra = ops.GLOBAL_AVGPOOL, {}
        elif op in (ops.ADD, ops.MUL) and len(data_in) == 1 and const_in:
            value = const_in[0]
            value = value[0] if isinstance(value, list) and len(value) == 1 else value
            if isinstance(value, (int, float)):
                extra["constant"] = scalar_operand(tf_type, float(value))
            else:
                extra["constant"] = "tensor"
        builder.node(key, op, data_in, in_shapes, out_shapes, **extra)
    outputs = [k for k, v in data.items() if not v.get("outbounds") and types[k] not in ("Const", "Placeholder")]
    return builder.finish(outputs)


def _is_weighted(builder: GraphBuilder, name: str) -> bool:
    node = builder.graph.nodes.get(builder.resolve(name))
    return node is not None and node.op in (ops.CONV, ops.DWCONV, ops.CONVTRANS, ops.FC)


def _output_shape(builder: GraphBuilder, data: Mapping[str, Any], name: str) -> list[int]:
    """The shape a producer gives (more reliable than the reader's own ``input_shape`` in nn-Meter IR)."""
    resolved = builder.resolve(name)
    if resolved in builder.graph.inputs:
        return builder.graph.inputs[resolved]
    node = builder.graph.nodes[resolved]
    return node.output_shapes[0] if node.output_shapes else []


def _topological(data: Mapping[str, Any], source: str = "<nn-Meter IR>") -> list[str]:
    """Node names so that every node comes after its inbounds (inbounds that are absent are ignored); a cycle
    is a ModelFileError naming its nodes."""
    order: list[str] = []
    done: set[str] = set()
    for root in data:
        if root in done:
            continue
        path: list[str] = [root]  # the nodes being visited, each an inbound of the one before
        on_path = {root}
        pending = [iter(data[root]["inbounds"])]
        while pending:
            src = next((s for s in pending[-1] if s in data and s not in done), None)
            if src is None:
                pending.pop()
                key = path.pop()
                on_path.discard(key)
                done.add(key)
                order.append(key)
            elif src in on_path:
                cycle = path[path.index(src) :][::-1]
                shown = " -> ".join(show_value(k) for k in cycle[:8]) + (" -> ..." if len(cycle) > 8 else "")
                raise ModelFileError(f"{source}: the graph has a cycle: {shown} -> {show_value(cycle[0])}")
            else:
                path.append(src)
                on_path.add(src)
                pending.append(iter(data[src]["inbounds"]))
    return order


def load(path: Path) -> Graph:
    try:
        data = json.loads(path.read_bytes(), parse_constant=_no_constant)
    except OSError as err:
        raise ModelFileError(f"{path}: cannot read ({err.strerror or err})") from None
    except RecursionError:
        raise ModelFileError(f"{path}: not an IR graph: JSON nested too deep") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, a number of more digits than Python reads
        raise ModelFileError(f"{path}: not a JSON file: {' '.join(str(err).split())[:200]}") from None
    if isinstance(data, dict) and data.get("format") == "nnmeter-ir":
        return Graph.from_dict(data, str(path))
    return convert_dict(data, name=path.stem, source=str(path))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a model holds")
