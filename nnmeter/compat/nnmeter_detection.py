"""nn-Meter's kernel detection and features, on nn-Meter IR graphs: what its predictors were used with.

nn-Meter (``nn_meter.kernel_detector`` and ``nn_meter.predictor.prediction``, versions 1.x and 2.0) predicts a
model as follows, and :func:`nn_meter_kernels` does the same, so an imported predictor gives its numbers:

1. op types are renamed to its short names (``Conv2D`` and ONNX ``Conv`` -> ``conv``, ``Relu6`` and ``Clip``
   -> ``relu``, ``Mean`` -> ``gap``, ...); a grouped conv with as many groups as input channels is a ``dwconv``;
   ``ksize``/``kernel_shape``/``weight_shape`` become ``ks``; an add/mul/div/sub takes the shape of its
   tensor input for every input;
2. nodes with neither inputs nor consumers are dropped (again until none is left);
3. multi-op blocks are fused in turn, each pattern matched as an induced subgraph: the chains of the rules file
   with more than two ops, then ``se``, ``hswish``, ``channelshuffle`` and ``gap`` (a pattern's ``dummy`` node
   matches any op and stays out of the block);
4. nodes are visited in topological order (networkx's, generation by generation); a node is fused with its
   consumer when the rules file fuses the pair (``BF_<a>_<b>``, obey true), and with several consumers as
   ``MON`` says (0: never, 1: the first fusible one, any other value: every one);
5. a kernel's op is its nodes' types joined by ``-`` (Const, Identity, Placeholder left out); its config comes
   from its first node;
6. features per op, by the substrings of its name in nn-Meter's order (conv, fc, pool, global pool, channel
   shuffle, split, se, concat, hswish, bn/relu, add); **an op with none of them is skipped**, and so is a kernel
   whose predictor is missing. :class:`NnMeterKernel` lists both kinds of skip with the reason.

Its quirks are kept, since the trees were trained and are used with them: a global pool's HW feature is
always 1, and a concat of more than four inputs keeps the first four with a count of 6.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

from nnmeter.errors import ModelFileError, NnmeterError

#: nn-Meter's short names for framework ops (TensorFlow, then ONNX).
OP_ALIASES = {
    "Relu6": "relu",
    "Relu": "relu",
    "Add": "add",
    "Biasadd": "add",
    "Conv2D": "conv",
    "Reshape": "reshape",
    "FusedBatchNorm": "bn",
    "FusedBatchNormV3": "bn",
    "MatMul": "fc",
    "MaxPool": "maxpool",
    "AvgPool": "avgpool",
    "Mean": "gap",
    "Mul": "mul",
    "DepthwiseConv2dNative": "dwconv",
    "ConcatV2": "concat",
    "Split": "split",
    "Conv": "conv",
    "BatchNormalization": "bn",
    "Slice": "split",
    "Concat": "concat",
    "AveragePool": "avgpool",
    "Gemm": "fc",
    "GlobalAveragePool": "gap",
    "Clip": "relu",
    "Div": "div",
    "HardSigmoid": "hardsigmoid",
    "Flatten": "reshape",
    "Transpose": "transpose",
    "ReduceMean": "gap",
    "Pad": "pad",
}
#: Ops that are not part of a kernel's name.
DUMMY_TYPES = ("Const", "Identity", "Placeholder")
DUMMY = "dummy"

#: The multi-op blocks, in nn-Meter's order: each pattern as (op types, edges); ``dummy`` matches any op.
MULTIOP_BLOCKS: tuple[tuple[str, tuple[tuple[tuple[str, ...], tuple[tuple[int, int], ...]], ...]], ...] = (
    (
        "se",
        (
            (
                (DUMMY, "add", "relu", "mul", "mul", "avgpool", "relu", "BiasAdd", "conv", "BiasAdd", "conv"),
                ((9, 1), (1, 2), (2, 3), (3, 4), (0, 4), (0, 5), (7, 6), (8, 7), (5, 8), (10, 9), (6, 10)),
            ),
            (
                (DUMMY, "gap", "conv", "relu", "conv", "hardsigmoid", "mul"),
                ((0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (0, 6), (5, 6)),
            ),
            (
                ("gap", "gap", "conv", "relu", "conv", "add", "relu", "div", "mul", "mul"),
                ((0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (4, 8), (7, 8), (8, 9)),
            ),
        ),
    ),
    (
        "hswish",
        (
            ((DUMMY, "relu", "add", "mul", "mul"), ((2, 1), (0, 2), (1, 3), (3, 4), (0, 4))),
            ((DUMMY, "add", "relu", "div", "mul"), ((0, 1), (1, 2), (2, 3), (0, 4), (3, 4))),
            (("add", "relu", "mul", "mul"), ((0, 1), (1, 2), (2, 3))),
            (("add", "relu", "div", "mul"), ((0, 1), (1, 2), (2, 3))),
        ),
    ),
    (
        "channelshuffle",
        (
            (
                ("reshape", "Pack", "StridedSlice", "transpose", "reshape", "Pack", "StridedSlice"),
                ((1, 0), (2, 1), (0, 3), (3, 4), (5, 4), (6, 5)),
            ),
            (("reshape", "transpose", "reshape"), ((1, 0), (2, 1))),
        ),
    ),
    ("gap", ((("gap", "reshape"), ((0, 1),)),)),
)


@dataclass(frozen=True)
class NnMeterRules:
    """What nn-Meter's detector reads of a ``fusion_rules.json``: the fused pairs, the longer chains, MON."""

    pairs: frozenset[tuple[str, str]]
    chains: tuple[tuple[str, ...], ...]
    mon: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str) -> NnMeterRules:
        """The rules of an nn-Meter rules file (``BF_<op>_<op>...`` and ``MON`` entries, each with ``obey``)."""
        pairs: set[tuple[str, str]] = set()
        chains: list[tuple[str, ...]] = []
        mon = 0
        for name, rule in data.items():
            if not isinstance(rule, Mapping) or "obey" not in rule:
                raise NnmeterError(f"{source}: {name}: not an nn-Meter rule (a mapping with obey)")
            if name.startswith("BF") and rule["obey"]:
                chain = tuple(name.split("_")[1:])
                if len(chain) == 2:
                    pairs.add((chain[0], chain[1]))
                elif len(chain) > 2:
                    chains.append(chain)
            elif name == "MON" and rule["obey"] is not None:
                # nn-Meter tests for 0 and 1; anything else (2, its rule tester's "case3" or "case1") fuses with all
                mon = 0 if rule["obey"] == 0 else 1 if rule["obey"] == 1 else 2
        return cls(frozenset(pairs), tuple(chains), mon)


@dataclass
class NnMeterKernel:
    """A kernel as nn-Meter sees it: its op, nodes and config; ``features`` empty when it is ``skipped``."""

    op: str
    nodes: list[str]
    config: dict[str, Any]
    features: list[float] = field(default_factory=list)
    predictor: str = ""  # nn-Meter's kernel predictor name (get_kernel_name)
    group: str = ""  # the op as nn-Meter groups kernels to predict them (merge_conv_kernels)
    skipped: str = ""  # why nn-Meter leaves it out of the sum


class _Graph:
    """nn-Meter's ModelGraph as far as detection uses it: name -> {attr, inbounds, outbounds}, in file order."""

    def __init__(self, nodes: dict[str, dict[str, Any]]) -> None:
        self.nodes = nodes

    def refresh(self) -> None:
        """Rebuild consumers from inputs, dropping unknown inputs, then nodes without edges (repeatedly)."""
        removed_last = -1
        while True:
            for node in self.nodes.values():
                node["outbounds"] = []
            for name, node in self.nodes.items():
                node["inbounds"] = [i for i in node["inbounds"] if i in self.nodes]
                for i in node["inbounds"]:
                    self.nodes[i]["outbounds"].append(name)
            spare = [n for n, v in self.nodes.items() if not v["outbounds"] and not v["inbounds"]]
            if removed_last == 0 and not spare:
                return
            removed_last = len(spare)
            for n in spare:
                del self.nodes[n]

    def order(self) -> list[str]:
        """Node names in networkx's order (first mention, inputs after their consumer) and the successors."""
        seen: dict[str, None] = {}
        for name, node in self.nodes.items():
            seen.setdefault(name)
            for i in node["inbounds"]:
                seen.setdefault(i)
        return list(seen)

    def successors(self) -> dict[str, dict[str, int]]:
        """Per node, its consumers with the number of edges, in the order networkx adds them."""
        succ: dict[str, dict[str, int]] = {n: {} for n in self.order()}
        for name, node in self.nodes.items():
            for i in node["inbounds"]:
                succ[i][name] = succ[i].get(name, 0) + 1
        return succ

    def topological(self) -> list[str]:
        """networkx's ``topological_sort`` of the graph: generation by generation."""
        succ = self.successors()
        indegree: dict[str, int] = {n: 0 for n in succ}
        for children in succ.values():
            for child, count in children.items():
                indegree[child] += count
        pending = {n: d for n, d in indegree.items() if d > 0}
        generation = [n for n, d in indegree.items() if d == 0]
        out: list[str] = []
        while generation:
            following: list[str] = []
            for node in generation:
                for child, count in succ[node].items():
                    pending[child] -= count
                    if pending[child] == 0:
                        following.append(child)
                        del pending[child]
            out += generation
            generation = following
        if pending:
            raise ModelFileError(f"nn-Meter IR graph has a cycle through {', '.join(sorted(pending)[:5])}")
        return out

    def fuse(self, members: Sequence[str], op: str) -> None:
        """Replace ``members`` by one node of type ``op`` with the attributes of their first node (ModelGraph.fuse)."""
        if any(m not in self.nodes for m in members):
            return
        root = members[0]
        moved = True
        while moved:
            moved = False
            for i in self.nodes[root]["inbounds"]:
                if i in members:
                    root, moved = i, True
                    break
        attr = self.nodes[root]["attr"]
        attr["type"] = op
        attr["attr"]["primitive_nodes"] = list(members)
        name = ";".join(members)
        fused: dict[str, Any] = {"attr": attr, "inbounds": [], "outbounds": []}
        self.nodes[name] = fused
        for m in members:
            for i in self.nodes[m]["inbounds"]:
                if i not in members:
                    _add_once(fused["inbounds"], i)
                    _remove_first(self.nodes[i]["outbounds"], m)
                    _add_once(self.nodes[i]["outbounds"], name)
            for o in self.nodes[m]["outbounds"]:
                if o not in members:
                    _add_once(fused["outbounds"], o)
                    _remove_first(self.nodes[o]["inbounds"], m)
                    _add_once(self.nodes[o]["inbounds"], name)
        for m in members:
            del self.nodes[m]

    def type(self, name: str) -> str:
        return str(self.nodes[name]["attr"]["type"])


def _add_once(items: list[str], item: str) -> None:
    if item not in items:
        items.append(item)


def _remove_first(items: list[str], item: str) -> None:
    if item in items:
        items.remove(item)


def _matches(graph: _Graph, types: tuple[str, ...], edges: tuple[tuple[int, int], ...]) -> Iterator[list[str]]:
    """Every node-induced match of the pattern (``types``, ``edges``) in ``graph``: the graph's nodes for the
    pattern's nodes other than ``dummy``, in pattern order."""
    succ = graph.successors()
    names = graph.order()
    count = {(a, b): 0 for a in range(len(types)) for b in range(len(types))}
    for a, b in edges:
        count[(a, b)] += 1
    neighbours: dict[int, set[int]] = {i: set() for i in range(len(types))}
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    adjacent: dict[str, list[str]] = {n: [] for n in names}
    for u, children in succ.items():
        for v in children:
            adjacent[u].append(v)
            adjacent[v].append(u)
    order = [types.index(next(t for t in types if t != DUMMY))]  # then each one touching an earlier one
    while len(order) < len(types):
        order.append(min(i for i in range(len(types)) if i not in order and neighbours[i] & set(order)))
    rank = {n: k for k, n in enumerate(names)}

    def edges_between(u: str, v: str) -> int:
        return succ.get(u, {}).get(v, 0)

    def extend(mapping: dict[int, str]) -> Iterator[dict[int, str]]:
        if len(mapping) == len(types):
            yield dict(mapping)
            return
        p = order[len(mapping)]
        anchors = [q for q in neighbours[p] if q in mapping]
        candidates = names
        if anchors:
            q = anchors[0]
            candidates = sorted(set(adjacent[mapping[q]]), key=rank.__getitem__)
        used = set(mapping.values())
        for n in candidates:
            if n in used or n not in graph.nodes or (types[p] != DUMMY and graph.type(n) != types[p]):
                continue
            if (
                all(
                    edges_between(mapping[q], n) == count[(q, p)] and edges_between(n, mapping[q]) == count[(p, q)]
                    for q in mapping
                )
                and edges_between(n, n) == count[(p, p)]
            ):
                mapping[p] = n
                yield from extend(mapping)
                del mapping[p]

    for found in extend({}):
        yield [found[i] for i in range(len(types)) if types[i] != DUMMY]


def _chain_pattern(chain: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...]]:
    return chain, tuple((i, i + 1) for i in range(len(chain) - 1))


def _rename(graph: _Graph) -> None:
    """Step 1 of the module doc (nn-Meter's ``convert_nodes``)."""
    for node in graph.nodes.values():
        attr = node["attr"]
        op = OP_ALIASES.get(attr["type"], attr["type"])
        params = attr["attr"]
        if "kernel_shape" in params:
            params["ks"] = params.pop("kernel_shape")
        if params.get("weight_shape") is not None:
            params["ks"] = params.pop("weight_shape")[0:2]
        if "ksize" in params:
            params["ks"] = params.pop("ksize")
        if op == "split" and "axis" in params:
            params["split_dim"] = params.pop("axis")
        if op in ("add", "mul", "div", "sub") and "input_shape" in attr:
            shapes = attr["input_shape"]
            shape = shapes[0] if shapes[0] else shapes[1]
            attr["input_shape"] = [shape] * len(shapes)
        if (
            op == "conv"
            and "group" in params
            and "input_shape" in attr
            and params["group"] == attr["input_shape"][0][3]
        ):
            op = "dwconv"
        attr["type"] = op


def _checked(ir: Mapping[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """A private copy of the IR's nodes with the fields detection reads, each of its type; ModelFileError else."""
    nodes: dict[str, dict[str, Any]] = {}
    for name, node in ir.items():
        attr = node.get("attr") if isinstance(node, Mapping) else None
        inbounds = node.get("inbounds", []) if isinstance(node, Mapping) else None
        if not isinstance(name, str) or not isinstance(attr, Mapping) or not isinstance(attr.get("type"), str):
            raise ModelFileError(f"{source}: node {name!r}: not an nn-Meter IR node (attr with a type)")
        if not isinstance(inbounds, list) or not all(isinstance(i, str) for i in inbounds):
            raise ModelFileError(f"{source}: node {name}: inbounds is not a list of node names")
        params = attr.get("attr", {})
        if not isinstance(params, Mapping):
            raise ModelFileError(f"{source}: node {name}: attr.attr is not a mapping")
        for key in ("input_shape", "output_shape"):
            shapes = attr.get(key)
            if not isinstance(shapes, list) or not all(isinstance(s, list) for s in shapes):
                raise ModelFileError(f"{source}: node {name}: {key} is not a list of shapes")
        copied = copy.deepcopy({k: v for k, v in attr.items() if k != "attr"})
        copied["attr"] = copy.deepcopy(dict(params))
        nodes[name] = {"attr": copied, "inbounds": list(inbounds), "outbounds": []}
    return nodes


def _blocks(graph: _Graph, rules: NnMeterRules) -> list[list[str]]:
    """Steps 3 and 4: the basic blocks (each a list of node names in topological order)."""
    for chain in rules.chains:
        types, edges = _chain_pattern(chain)
        for members in list(_matches(graph, types, edges)):
            graph.fuse(members, "-".join(chain))
    for op, patterns in MULTIOP_BLOCKS:
        for types, edges in patterns:
            for members in list(_matches(graph, types, edges)):
                graph.fuse(members, op)
    dag = graph.topological()
    index = {n: i for i, n in enumerate(dag)}
    outbounds = [{index[o] for o in graph.nodes[n]["outbounds"]} for n in dag]
    op_types = [graph.type(n) for n in dag]
    parent = list(range(len(dag)))

    def find(p: int) -> int:
        while p != parent[p]:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    i = -1
    while i < len(dag) - 1:
        i += 1
        if find(i) != i or not outbounds[i]:
            continue
        if rules.mon == 0 and len(outbounds[i]) > 1:
            continue
        fused = False
        for j in outbounds[i]:
            if find(j) != j or (op_types[i], op_types[j]) not in rules.pairs:
                continue
            parent[find(j)] = find(i)
            if rules.mon == 0:
                outbounds[i] = outbounds[j]
            else:  # in place, as nn-Meter does (a set that grows while it is iterated raises RuntimeError)
                outbounds[i].update(outbounds[j])
            fused = True
            if rules.mon == 1:
                break
        if fused:
            i -= 1
    blocks: list[list[str]] = [[] for _ in dag]
    for k, name in enumerate(dag):
        blocks[find(k)].append(name)
    return [b for b in blocks if b]


def nn_meter_kernels(
    ir: Mapping[str, Any], rules: NnMeterRules, predictors: Sequence[str], source: str = "model"
) -> list[NnMeterKernel]:
    """The kernels nn-Meter finds in the nn-Meter IR graph ``ir`` (name -> node), with their features, the
    predictor each goes to and, for those it leaves out, why (see the module doc). ``predictors``: the kernel
    predictors available."""
    graph = _Graph(_checked(ir, source))
    try:
        _rename(graph)
        graph.refresh()
        blocks = _blocks(graph, rules)
    except (KeyError, IndexError, TypeError) as err:
        raise ModelFileError(
            f"{source}: nn-Meter's detection fails on this graph ({type(err).__name__}: {err})"
        ) from None
    except RuntimeError:  # MON 2 grows the consumers nn-Meter iterates over, and so does this code
        raise ModelFileError(f"{source}: nn-Meter's detection fails on this graph (MON 2: consumers changed)") from None
    kernels: list[NnMeterKernel] = []
    for block in blocks:
        types = [graph.type(n) for n in block if graph.type(n) and graph.type(n) not in DUMMY_TYPES]
        if not types:
            continue
        kernel = _kernel(graph, block, types)
        try:
            kernel.features = _features(kernel.op, kernel.config)
        except (KeyError, IndexError, TypeError, ValueError, NameError) as err:
            raise ModelFileError(
                f"{source}: kernel {kernel.op} at {block[0]}: nn-Meter cannot take its features ({type(err).__name__}: "
                f"{err})"
            ) from None
        if not kernel.features:
            kernel.skipped = f"nn-Meter has no features for op {kernel.op}"
        else:
            kernel.group = conv_group(kernel.op)
            kernel.predictor = predictor_name(kernel.group)
            if kernel.predictor not in predictors:
                kernel.skipped = f"no kernel predictor {kernel.predictor}"
        kernels.append(kernel)
    return kernels


def _kernel(graph: _Graph, block: list[str], types: list[str]) -> NnMeterKernel:
    """Step 5: a block's kernel dict, as nn-Meter's ``_bb_to_kernel`` makes it."""
    attr = graph.nodes[block[0]]["attr"]
    params = attr["attr"]
    inputs = attr["input_shape"]
    outputs = attr["output_shape"]
    if types[0] == "hswish":
        inputs = [inputs[0]]
    config: dict[str, Any] = {"input_tensors": inputs}
    for key in ("ks", "strides", "split_dim"):
        if key in params:
            config[key] = params[key]
    if len(inputs) >= 1:
        if len(inputs[0]) == 4:
            config["inputh"], config["inputw"] = inputs[0][1], inputs[0][2]
        config["cin"] = inputs[0][-1]
    if len(outputs) == 1:
        config["cout"] = outputs[0][-1]
    elif len(outputs) > 1:
        config["output_tensors"] = outputs
    return NnMeterKernel("-".join(types), list(block), config)


def conv_flops_params(op: str, hw: float, cin: float, cout: float, ks: float, stride: float) -> tuple[float, float]:
    """nn-Meter's FLOPs and parameters of a conv or depthwise conv (bias included; ``hw / stride`` not rounded)."""
    params = cout * (ks * ks + 1) if "dwconv" in op else cout * (ks * ks * cin + 1)
    return 2 * hw / stride * hw / stride * params, params


def _features(op: str, item: Mapping[str, Any]) -> list[float]:
    """Step 6: nn-Meter's feature vector of a kernel, or [] when it has none for ``op``."""
    if "conv" in op or "maxpool" in op or "avgpool" in op:
        cout, cin, ks, inputh = item["cout"], item["cin"], item["ks"][1], item["inputh"]
        stride = item["strides"][1] if "strides" in item else 1
    if op in ("channelshuffle", "split"):
        _, inputh, _, cin = item["input_tensors"][0]
    if "conv" in op:
        flops, params = conv_flops_params(op, inputh, cin, cout, ks, stride)
        return [inputh, cin, cout, ks, stride, flops / 2e6, params / 1e6]
    if "fc" in op:
        cin, cout = item["cin"], item["cout"]
        flop = (2 * cin + 1) * cout
        return [cin, cout, flop / 2e6, flop / 1e6]
    if "pool" in op and "global" not in op:
        return [inputh, cin, cout, ks, stride]
    if "global-pool" in op or "global-avgpool" in op or "gap" in op:
        return [1, item["cin"]]
    if "channelshuffle" in op or "split" in op:
        return [inputh, cin]
    if "se" in op or "SE" in op:
        return [item["input_tensors"][-1][-2], item["input_tensors"][-1][-1]]
    if "concat" in op:
        tensors = item["input_tensors"]
        values = [tensors[0][1], len(tensors)] + [t[-1] for t in tensors]
        if len(values) > 6:
            values = values[:6]
            values[1] = 6
        return values + [0] * (6 - len(values))
    if op == "hswish":
        first = item["input_tensors"][0]
        inputh = item["inputh"] if "inputh" in item else first[0] if len(first) == 2 else first[1]
        return [inputh, item["cin"]]
    if op in ("bn", "relu", "bn-relu"):
        first = item["input_tensors"][0]
        return [first[1], first[3]] if len(first) == 4 else [first[0], first[1]]
    if op in ("add-relu", "add"):
        tensors = item["input_tensors"]
        return [tensors[0][1], tensors[0][3], tensors[1][3]]
    return []


def conv_group(op: str) -> str:
    """nn-Meter's grouping of kernels before prediction: every conv kernel as conv-bn-relu, dwconv as dwconv-bn-relu."""
    if "conv" in op and "dwconv" not in op:
        return "conv-bn-relu"
    if "dwconv" in op:
        return "dwconv-bn-relu"
    return op


def predictor_name(op: str) -> str:
    """The kernel predictor nn-Meter uses for a kernel op (its ``get_kernel_name``)."""
    op = conv_group(op)
    renamed = {
        "fc-relu": "fc",
        "max-pool": "maxpool",
        "avg-pool": "avgpool",
        "global-pool": "global-avgpool",
        "gap": "global-avgpool",
        "channel_shuffle": "channelshuffle",
        "bn-relu": "bnrelu",
        "add-relu": "addrelu",
        "SE": "se",
        "SE-relu": "se",
        "se-relu": "se",
    }
    return renamed.get(op, op)
