"""Predicting with a predictor imported from nn-Meter, in either mode, and loading any installed predictor.

    p = nnmeter.compat.load_predictor("cortexA76cpu_tflite21")      # imported with `nnmeter-build import-nnmeter`
    p.predict("model.json").latency_ms                               # nn-Meter's number (mode nnmeter-compat)
    nnmeter.compat.load_predictor("cortexA76cpu_tflite21", mode="nnmeter").predict("model.onnx")

* ``nnmeter-compat`` (the default): nn-Meter's detection and features (:mod:`nnmeter.compat.nnmeter_detection`)
  on the model's nn-Meter IR graph: an nn-Meter IR dict or ``.json`` file as it is, any other model through
  nnmeter's converter, written as nn-Meter IR. The sum is nn-Meter's, in its order; what nn-Meter leaves out
  silently (ops it has no features for, kernels it has no predictor for) is listed in ``result.unsupported``.
* ``nnmeter``: nnmeter's engine (converters, fusion rules, strict coverage, stand-ins), each kernel's config fed
  to nn-Meter's tree for it with nn-Meter's features; no invocation overhead or model correction, as nn-Meter
  has none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from nnmeter import ops
from nnmeter.errors import ModelFileError, NnmeterError
from nnmeter.predictor.artifact import Artifact, ArtifactError, load_artifact, read_manifest
from nnmeter.predictor.converters import ModelInput, to_graph
from nnmeter.predictor.engine import (
    KernelRow,
    PredictionResult,
    Predictor,
    UnsupportedItem,
)
from nnmeter.predictor.engine import (
    load_predictor as engine_load,
)
from nnmeter.predictor.features import feature_names
from nnmeter.predictor.ir import Graph
from nnmeter.predictor.registry import find_predictor
from nnmeter.predictor.rules import FusionRules

from .files import read_json_mapping
from .nnmeter_detection import NnMeterKernel, NnMeterRules, conv_flops_params, nn_meter_kernels
from .nnmeter_format import MODE_COMPAT, MODE_NNMETER, MODES, NN_METER_RULES, nnmeter_kernels_for, read_nn_meter_rules

#: The largest nn-Meter IR JSON file read.
MAX_IR_BYTES = 256 << 20
#: nnmeter's ops as nn-Meter IR types (what nn-Meter's renaming turns into the same kernel ops).
_IR_TYPES = {
    ops.CONV: "Conv2D",
    ops.DWCONV: "DepthwiseConv2dNative",
    ops.BN: "FusedBatchNorm",
    ops.RELU: "Relu",
    ops.RELU6: "Relu6",
    ops.ADD: "Add",
    ops.MUL: "Mul",
    ops.FC: "MatMul",
    ops.MAXPOOL: "MaxPool",
    ops.AVGPOOL: "AvgPool",
    ops.GLOBAL_AVGPOOL: "Mean",
    ops.CONCAT: "ConcatV2",
    ops.SPLIT: "Split",
    ops.RESHAPE: "Reshape",
    ops.FLATTEN: "Reshape",
}


def _pair(value: Any) -> list[int]:
    return list(value)[:2] if isinstance(value, (list, tuple)) else [value, value]


def graph_to_nn_meter_ir(graph: Graph) -> dict[str, Any]:
    """nnmeter's IR graph as nn-Meter IR (TensorFlow op names, ``ks`` and NHWC ``strides``), graph inputs as
    Placeholders: what nn-Meter's detection reads."""
    ir: dict[str, Any] = {
        name: {
            "inbounds": [],
            "attr": {"name": name, "type": "Placeholder", "attr": {}, "input_shape": [], "output_shape": [shape]},
        }
        for name, shape in graph.inputs.items()
    }
    for node in graph.nodes.values():
        attrs: dict[str, Any] = {}
        if "kernel_size" in node.attrs:
            attrs["ks"] = _pair(node.attrs["kernel_size"])
        if "strides" in node.attrs:
            strides = _pair(node.attrs["strides"])
            attrs["strides"] = [1, strides[0], strides[1], 1]
        ir[node.name] = {
            "inbounds": list(node.inputs),
            "attr": {
                "name": node.name,
                "type": _IR_TYPES.get(node.op, node.op),
                "attr": attrs,
                "input_shape": [list(s) for s in node.input_shapes],
                "output_shape": [list(s) for s in node.output_shapes],
            },
        }
    return ir


def nn_meter_ir(model: ModelInput, input_shape: Sequence[int] | None = None) -> tuple[str, Mapping[str, Any]]:
    """The name and nn-Meter IR graph of ``model``: an nn-Meter IR dict or ``.json`` file as it is, any other
    model nnmeter reads through its converter (:func:`graph_to_nn_meter_ir`)."""
    if isinstance(model, Mapping) and model.get("format") != "nnmeter-ir":
        return "model", model
    if isinstance(model, (str, os.PathLike)) and Path(model).suffix.lower() == ".json":
        path = Path(model)
        _, parsed = read_json_mapping(path, MAX_IR_BYTES, "an nn-Meter IR graph", ModelFileError)
        if parsed.get("format") != "nnmeter-ir":
            return path.stem, parsed
        model = Graph.from_dict(parsed, str(path))
    graph = to_graph(model, input_shape)
    return graph.name, graph_to_nn_meter_ir(graph)


def _nn_meter_row(kernel: str, names: tuple[str, ...], row: np.ndarray) -> list[float]:
    """nn-Meter's features of one nnmeter kernel config, from its nnmeter feature row (nnmeter mode)."""
    value = dict(zip(names, row.tolist()))
    hw, cin = value.get(ops.HW, 1.0), value.get(ops.CIN, 0.0)
    main = ops.kernel_type(kernel).ops[0]
    if main in (ops.CONV, ops.DWCONV):
        cout = value[ops.COUT] if main == ops.CONV else cin
        ks, stride = value[ops.KERNEL_SIZE], value[ops.STRIDES]
        flops, params = conv_flops_params(main, hw, cin, cout, ks, stride)
        return [hw, cin, cout, ks, stride, flops / 2e6, params / 1e6]
    if kernel == ops.FC:
        flop = (2 * cin + 1) * value[ops.COUT]
        return [cin, value[ops.COUT], flop / 2e6, flop / 1e6]
    if kernel in (ops.MAXPOOL, ops.AVGPOOL):
        return [hw, cin, cin, value[ops.KERNEL_SIZE], value[ops.POOL_STRIDES]]
    if kernel == ops.GLOBAL_AVGPOOL:
        return [1.0, cin]  # nn-Meter always gives a global pool HW 1
    if kernel in (ops.ADD, "addrelu"):
        return [hw, cin, cin]
    if kernel == ops.CONCAT:
        return [hw, value["NUM_INPUTS"]] + [value[f"CIN{i}"] for i in range(1, 5)]
    return [hw, cin]


@dataclass(frozen=True)
class NnMeterTrees:
    """nn-Meter's trees as the engine's kernel model (nnmeter mode): nnmeter kernel types in, nn-Meter's
    features to its tree for them (:func:`~nnmeter.compat.nnmeter_format.nnmeter_kernels_for`)."""

    artifact: Artifact

    @property
    def rules(self) -> FusionRules:
        return self.artifact.rules

    @property
    def manifest(self) -> Any:
        return self.artifact.manifest

    @cached_property
    def routes(self) -> dict[str, str]:
        """nnmeter kernel type -> nn-Meter kernel predictor."""
        return {k: p for p in self.artifact.regressors for k in nnmeter_kernels_for(p)}

    @property
    def kernels(self) -> frozenset[str]:
        return frozenset(self.routes)

    def predict(self, kernel: str, X: np.ndarray) -> np.ndarray:
        names = feature_names(kernel)
        rows = [_nn_meter_row(kernel, names, r) for r in np.asarray(X, dtype=np.float64)]
        return self.artifact.predict(self.routes[kernel], np.array(rows, dtype=np.float64))


class CompatPredictor:
    """A predictor imported from nn-Meter, predicting in ``mode`` (see the module doc)."""

    def __init__(self, artifact: Artifact, rules: NnMeterRules, mode: str = MODE_COMPAT) -> None:
        if mode not in MODES:
            raise NnmeterError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        self.artifact = artifact
        self.nn_meter_rules = rules
        self.mode = mode
        self.name = artifact.manifest.name
        self._engine = Predictor(NnMeterTrees(artifact), self.name)

    def __repr__(self) -> str:
        return f"CompatPredictor({self.name!r}, mode={self.mode!r}, kernels={sorted(self.artifact.regressors)})"

    @property
    def kernel_predictors(self) -> list[str]:
        return sorted(self.artifact.regressors)

    def kernels(self, model: ModelInput, input_shape: Sequence[int] | None = None) -> list[NnMeterKernel]:
        """The kernels nn-Meter finds in ``model``, with their features, predictor and what it skips."""
        name, ir = nn_meter_ir(model, input_shape)
        return nn_meter_kernels(ir, self.nn_meter_rules, list(self.artifact.regressors), name)

    def predict(
        self, model: ModelInput, input_shape: Sequence[int] | None = None, strict: bool = True
    ) -> PredictionResult:
        """The latency of one model (``strict`` applies to the nnmeter mode: nnmeter-compat lists what it skips)."""
        return self.predict_many([model], input_shape, strict)[0]

    def predict_many(
        self, models: Iterable[ModelInput], input_shape: Sequence[int] | None = None, strict: bool = True
    ) -> list[PredictionResult]:
        if self.mode == MODE_NNMETER:
            return self._engine.predict_many(models, input_shape, strict)
        return [self._predict_compat(m, input_shape) for m in models]

    def _predict_compat(self, model: ModelInput, input_shape: Sequence[int] | None) -> PredictionResult:
        name, ir = nn_meter_ir(model, input_shape)
        kernels = nn_meter_kernels(ir, self.nn_meter_rules, list(self.artifact.regressors), name)
        groups: dict[str, list[NnMeterKernel]] = {}
        for k in kernels:
            if k.features:
                groups.setdefault(k.group, []).append(k)
        total = 0.0
        rows: list[KernelRow] = []
        for members in groups.values():  # nn-Meter's order: by group, then the kernels of each in model order
            predictor = members[0].predictor
            if members[0].skipped:
                continue
            ms = self.artifact.predict(predictor, np.array([k.features for k in members], dtype=np.float64))
            total += sum(ms.tolist())
            rows += [
                KernelRow(k.nodes[-1], predictor, _plain(k.config), [float(f) for f in k.features], float(v), k.nodes)
                for k, v in zip(members, ms.tolist())
            ]
        skipped = [UnsupportedItem(k.op, k.nodes, k.skipped) for k in kernels if k.skipped]
        return PredictionResult(name, total, rows, skipped)


def _plain(config: Mapping[str, Any]) -> dict[str, Any]:
    """A kernel config without its tensor shapes (they are in the IR)."""
    return {k: v for k, v in config.items() if k not in ("input_tensors", "output_tensors")}


def load_compat(name_or_path: str | os.PathLike, mode: str = MODE_COMPAT, sha256: str | None = None) -> CompatPredictor:
    """A predictor imported from nn-Meter (installed name, ``name@version`` or folder), predicting in ``mode``."""
    folder = find_predictor(name_or_path)
    artifact = load_artifact(folder, sha256=sha256, detection=MODE_COMPAT)
    _, rules = read_nn_meter_rules(folder / NN_METER_RULES)  # its checksum was verified with the others
    return CompatPredictor(artifact, rules, mode)


def load_predictor(
    name_or_path: str | os.PathLike, mode: str = MODE_COMPAT, sha256: str | None = None
) -> Predictor | CompatPredictor:
    """Any predictor: one imported from nn-Meter as a :class:`CompatPredictor` in ``mode``, one nnmeter built as
    :func:`nnmeter.load_predictor` gives it."""
    folder = find_predictor(name_or_path)
    try:
        detection = read_manifest(folder).detection
    except ArtifactError:
        detection = ""  # engine_load says what is wrong
    if detection == MODE_COMPAT:
        return load_compat(folder, mode, sha256)
    return engine_load(folder, sha256=sha256)
