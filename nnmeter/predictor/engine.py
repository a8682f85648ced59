"""The predictor: a model in, its latency out, as the sum of its kernels' predicted latencies.

    p = nnmeter.load_predictor("my-device-predictor")   # installed name, name@version, or a folder
    r = p.predict("mobilenet_v2.tflite")
    r.latency_ms, r.kernels, r.coverage, r.unsupported
    p.predict_many(models)                                # one regressor call per kernel type

A kernel's regressor was trained on the kernel measured as a model of its own, so
each prediction holds the device's fixed cost of one invocation, which a whole model
pays once: the engine takes the artifact's ``invoke_overhead_ms`` off every kernel
(never below zero) and adds it once per model. When the artifact has a
``model_correction`` (fitted on the device on calibration models), the model's sum is
corrected once: a factor on its kernels (inside a model they find their operands in
caches other layers have used), a term from the weights its small kernels fetch again
(:func:`refetched_weight_bytes`: standalone, they kept them in the core's private cache)
and a term from its total weight bytes (:func:`weight_bytes`: big models' weights stream
from memory where the standalone kernels found them in the cache).

A conv with a non-square kernel (InceptionV3's 1x7), a concat of more inputs than the
concat kernel takes, or a window of a feature map other than the crop kernel's is
predicted by a stand-in config of the same work (``KernelRow.stand_in`` says which;
:mod:`nnmeter.predictor.detection`).

Coverage is explicit: a node whose op or kernel the predictor cannot predict is listed
in ``result.unsupported``; ``strict=True`` (the default) raises
:class:`UnsupportedModelError` naming those ops and nodes instead of returning a sum
that is silently too low.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from functools import cache, lru_cache
from typing import Any, Iterable, Protocol, Sequence

import numpy as np

from nnmeter import ops
from nnmeter.errors import NnmeterError
from nnmeter.predictor.converters import ModelInput, to_graph
from nnmeter.predictor.detection import Detection, detect
from nnmeter.predictor.features import feature_names, kernel_features
from nnmeter.predictor.rules import FusionRules


class KernelModel(Protocol):
    """What the engine needs of a predictor artifact (:class:`nnmeter.predictor.artifact.Artifact`)."""

    @property
    def rules(self) -> FusionRules: ...

    @property
    def kernels(self) -> frozenset[str]: ...

    def predict(self, kernel: str, X: np.ndarray) -> np.ndarray: ...

    # optional: ``invoke_overhead_ms`` (float), the device's fixed cost of one invocation; 0 when absent
    # optional: ``model_correction`` (ModelCorrection or None), the whole-model correction; none when absent
    # optional: ``precisions`` (tuple of str), the number formats its kernels were measured in; float32 when absent
    # optional: ``interval_log_ratio(kernel)`` (float or None) and ``model_correction.interval_log_ratio``: the
    # half-widths, in log ratio, of a kernel's and a whole model's intervals; no intervals when absent


class UnsupportedModelError(NnmeterError):
    """A model holds ops or kernels the predictor cannot predict (raised in strict mode)."""


@dataclass
class KernelRow:
    """One predicted kernel of a model."""

    name: str  # the name of its last node
    kernel: str
    config: dict[str, Any]
    features: list[float]
    ms: float
    nodes: list[str]
    stand_in: str = ""  # set when ``config`` stands in for a shape no kernel type has (non-square conv, ...)
    #: the kernel's latency interval (low, high) at the predictor's stated coverage; None: it states none
    interval_ms: tuple[float, float] | None = None


@dataclass
class UnsupportedItem:
    """A part of a model the predictor cannot predict, and why."""

    ops: str  # the ops of the nodes, joined by '-'
    nodes: list[str]
    reason: str


@dataclass
class PredictionResult:
    """A model's predicted latency, its per-kernel breakdown and what was left out."""

    model: str
    latency_ms: float
    kernels: list[KernelRow]
    unsupported: list[UnsupportedItem] = field(default_factory=list)
    free_nodes: list[str] = field(default_factory=list)  # reshape/flatten: not kernels
    correction_ms: float = 0.0  # what the artifact's model correction added to the kernels' sum, in latency_ms
    #: the model's latency interval (low, high) at the predictor's stated coverage (``Predictor.interval_coverage``),
    #: calibrated on whole models; None: the predictor states none, or the model is not predicted whole
    interval_ms: tuple[float, float] | None = None

    @property
    def coverage(self) -> float:
        """Share of the model's kernel nodes that are predicted (1.0 when nothing is left out)."""
        covered = sum(len(k.nodes) for k in self.kernels)
        missing = sum(len(u.nodes) for u in self.unsupported)
        return covered / (covered + missing) if covered + missing else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "latency_ms": self.latency_ms,
            "coverage": self.coverage,
            "kernels": [asdict(k) for k in self.kernels],
            "unsupported": [asdict(u) for u in self.unsupported],
            "free_nodes": self.free_nodes,
            "correction_ms": self.correction_ms,
            "interval_ms": list(self.interval_ms) if self.interval_ms is not None else None,
        }


def weight_bytes(kernels: Iterable[Any]) -> float:
    """A model's weight bytes: the parameters of its kernels (anything with ``kernel`` and ``config``: a
    :class:`KernelRow`, a detected kernel) as ``ops.kernel_cost`` counts them (the PARAMS feature), as float32."""
    return 4.0 * sum(_features(k.kernel, k.config)[_memory_columns(k.kernel)[2]] for k in kernels)


def refetched_weight_bytes(kernels: Iterable[Any], private_cache_bytes: float) -> float:
    """The weight bytes a model fetches again that its kernels measured standalone did not: those of the kernels
    whose standalone working set (bytes read and written, weights included) fits ``private_cache_bytes``, which
    kept their weights in the core's private cache from one standalone invocation to the next (see
    :class:`nnmeter.predictor.artifact.ModelCorrection`); 0 when the cache size is unknown (0)."""
    total = 0.0
    for k in kernels:
        features = _features(k.kernel, k.config)
        read, written, params = (features[c] for c in _memory_columns(k.kernel))
        if read + written <= private_cache_bytes:
            total += 4.0 * params
    return total


@cache
def _memory_columns(kernel: str) -> tuple[int, int, int]:
    names = feature_names(kernel)
    return names.index("BYTES_READ"), names.index("BYTES_WRITTEN"), names.index("PARAMS")


def _features(kernel: str, config: dict[str, Any]) -> tuple[float, ...]:
    return _cached_features(kernel, tuple(tuple(v) if isinstance(v, list) else v for v in config.values()))


@lru_cache(maxsize=65536)
def _cached_features(kernel: str, values: tuple) -> tuple[float, ...]:
    """Features of a kernel config given as its values in key order; NAS loops repeat configs."""
    keys = ops.kernel_type(kernel).keys
    return tuple(kernel_features(kernel, {k: list(v) if isinstance(v, tuple) else v for k, v in zip(keys, values)}))


class Predictor:
    """Predicts model latency on one device from a predictor artifact."""

    def __init__(self, artifact: KernelModel, name: str = "") -> None:
        self.artifact = artifact
        manifest = getattr(artifact, "manifest", None)
        self.name = name or getattr(manifest, "name", "") or "predictor"

    @property
    def rules(self) -> FusionRules:
        return self.artifact.rules

    @property
    def kernel_types(self) -> frozenset[str]:
        return frozenset(self.artifact.kernels)

    @property
    def interval_coverage(self) -> float:
        """The nominal coverage of the intervals of its predictions (0: it states none)."""
        return float(getattr(self.artifact, "interval_coverage", 0.0))

    @property
    def precisions(self) -> tuple[str, ...]:
        """The number formats this predictor's kernels were measured in (:data:`nnmeter.ops.PRECISIONS`)."""
        return tuple(getattr(self.artifact, "precisions", (ops.FLOAT32,)))

    def __repr__(self) -> str:
        return f"Predictor({self.name!r}, kernels={sorted(self.kernel_types)})"

    def detect(self, model: ModelInput, input_shape: Sequence[int] | None = None) -> Detection:
        """The kernels of ``model`` as this predictor's device runs them (no latency)."""
        return detect(to_graph(model, input_shape), self.rules, self.kernel_types, self.precisions)

    def predict(
        self, model: ModelInput, input_shape: Sequence[int] | None = None, strict: bool = True
    ) -> PredictionResult:
        """Latency of one model: a path (.tflite, .onnx, .keras, .h5, .pb, SavedModel folder, IR .json),
        a keras.Model, an onnx.ModelProto, a torch.nn.Module (with ``input_shape``), an nn-Meter IR dict
        or an IR :class:`~nnmeter.predictor.ir.Graph`."""
        return self.predict_many([model], input_shape, strict)[0]

    def predict_many(
        self, models: Iterable[ModelInput], input_shape: Sequence[int] | None = None, strict: bool = True
    ) -> list[PredictionResult]:
        """Latency of many models, with one regressor call per kernel type across all of them."""
        detections = [self.detect(m, input_shape) for m in models]
        if strict:
            self._check_supported(detections)
        rows: dict[str, list[tuple[int, int]]] = {}  # kernel type -> (model index, kernel index)
        features: dict[str, list[tuple[float, ...]]] = {}
        row_features: dict[tuple[int, int], tuple[float, ...]] = {}
        for mi, det in enumerate(detections):
            for ki, k in enumerate(det.kernels):
                if not k.problem:
                    rows.setdefault(k.kernel, []).append((mi, ki))
                    row_features[(mi, ki)] = _features(k.kernel, k.config)
                    features.setdefault(k.kernel, []).append(row_features[(mi, ki)])
        latency: dict[tuple[int, int], float] = {}
        overhead = float(getattr(self.artifact, "invoke_overhead_ms", 0.0))
        correction = getattr(self.artifact, "model_correction", None)
        for kernel, where in rows.items():
            unique = list(dict.fromkeys(features[kernel]))  # NAS loops repeat configs: predict each once
            ms = np.asarray(self.artifact.predict(kernel, np.array(unique, dtype=np.float64)))
            by_features = dict(zip(unique, np.maximum(ms - overhead, 0.0).tolist()))
            latency.update((w, by_features[f]) for w, f in zip(where, features[kernel]))
        kernel_interval = getattr(self.artifact, "interval_log_ratio", None)
        widths = {k: kernel_interval(k) if kernel_interval else None for k in rows}
        model_width = getattr(correction, "interval_log_ratio", None) if self.interval_coverage else None
        results = []
        for mi, det in enumerate(detections):
            kernel_rows = [
                KernelRow(
                    k.name,
                    k.kernel,
                    k.config,
                    list(row_features[(mi, ki)]),
                    latency[(mi, ki)],
                    k.nodes,
                    k.stand_in,
                    _interval(latency[(mi, ki)], widths[k.kernel]),
                )
                for ki, k in enumerate(det.kernels)
                if not k.problem
            ]
            unsupported = [UnsupportedItem("-".join(k.ops), list(k.nodes), k.problem) for k in det.unsupported]
            kernels_ms = sum(r.ms for r in kernel_rows) + (overhead if kernel_rows else 0.0)
            total = (
                correction.apply(
                    kernels_ms,
                    weight_bytes(kernel_rows),
                    refetched_weight_bytes(kernel_rows, 1e6 * correction.private_cache_mb),
                )
                if correction is not None
                else kernels_ms
            )
            correction_ms = total - kernels_ms
            results.append(
                PredictionResult(
                    det.graph,
                    float(total),
                    kernel_rows,
                    unsupported,
                    list(det.free_nodes),
                    float(correction_ms),
                    _interval(float(total), model_width) if kernel_rows and not unsupported else None,
                )
            )
        return results

    def _check_supported(self, detections: list[Detection]) -> None:
        problems = [(d.graph, k) for d in detections for k in d.unsupported]
        if not problems:
            return
        formats = [(g, k) for g, k in problems if k.precision not in self.precisions]
        if formats:
            needed = sorted({k.precision for _, k in formats})
            nodes = [n for _, k in formats for n in k.nodes]
            shown = ", ".join(nodes[:4]) + (f" and {len(nodes) - 4} more" if len(nodes) > 4 else "")
            raise UnsupportedModelError(
                f"{formats[0][0]} computes in {' and '.join(needed)} at {len(nodes)} node(s) ({shown}); "
                f"predictor {self.name} has {', '.join(self.precisions)} kernels only, and predicting them "
                "as such would be wrong",
                f"predict the model before quantization, or with a predictor whose kernels are {needed[0]}; "
                "strict=False (--no-strict) lists these nodes as left out instead",
            )
        shown = "; ".join(f"{g}: {'-'.join(k.ops)} at {', '.join(k.nodes[:3])} ({k.problem})" for g, k in problems[:5])
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        ops_list = sorted({op for _, k in problems for op in k.ops})
        raise UnsupportedModelError(
            f"predictor {self.name} cannot predict {len(problems)} part(s) of the model "
            f"(ops {', '.join(ops_list)}): {shown}{more}",
            "pass strict=False (--no-strict) to get the sum of the rest with the list of what is left out, "
            f"or train the missing kernels; this predictor has: {', '.join(sorted(self.kernel_types))}",
        )


def _interval(ms: float, log_ratio: float | None) -> tuple[float, float] | None:
    """``[ms / e^w, ms * e^w]`` for a half-width ``w`` in log ratio; None when there is none."""
    if log_ratio is None:
        return None
    factor = math.exp(log_ratio)
    return (ms / factor, ms * factor)


def load_predictor(name_or_path: str | os.PathLike | KernelModel, sha256: str | None = None) -> Predictor:
    """A :class:`Predictor` from an installed predictor name (``name`` or ``name@version``), a predictor
    folder, or an already loaded artifact.

    ``sha256``: the predictor's digest (the sha256 of its manifest.yaml, as ``nnmeter-build predictors`` and
    ``package`` show it), to pin exactly which predictor is used: one whose digest differs is refused with an
    :class:`~nnmeter.predictor.artifact.ArtifactError` naming both."""
    # a str or a path never has predict and rules: the isinstance test only narrows the type
    if (
        hasattr(name_or_path, "predict")
        and hasattr(name_or_path, "rules")
        and not isinstance(name_or_path, (str, os.PathLike))
    ):
        if sha256 is not None:
            from nnmeter.predictor.artifact import ArtifactError, normalize_digest

            digest, expected = getattr(name_or_path, "digest", ""), normalize_digest(sha256)
            if digest != expected:
                where = getattr(name_or_path, "path", "predictor")
                raise ArtifactError(f"{where}: predictor digest {digest or '(none)'} is not the expected {expected}")
        return Predictor(name_or_path)
    from nnmeter.predictor.artifact import load_artifact
    from nnmeter.predictor.registry import find_predictor

    return Predictor(load_artifact(find_predictor(name_or_path), sha256=sha256))
