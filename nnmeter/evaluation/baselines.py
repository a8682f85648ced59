"""Predictions of one evaluation model: nnmeter's, and nn-Meter's two baselines scored on the same measurements.

* ``flops-linear``: latency = a * FLOPs + b, least squares on the evaluation models' own measured
  latencies, *leave one family out* (leave one model out when there is a single family). A model's
  FLOPs are the sum of the FLOPs of the kernels the predictor detected in it.
* ``no-fusion``: the same predictor with fusion disabled: every op is a kernel of its own, predicted by
  the artifact's regressor of that single-op kernel (conv -> conv-block, relu -> relu, ...), summed.

A method that cannot predict every part of a model gets no prediction for it: a partial sum would look
better than it is.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sklearn.linear_model import LinearRegression

from nnmeter import ops
from nnmeter.evaluation.scoring import FLOPS_LINEAR, NNMETER, NO_FUSION, ModelEvaluation
from nnmeter.predictor.artifact import Artifact
from nnmeter.predictor.engine import Predictor
from nnmeter.predictor.features import feature_names
from nnmeter.predictor.rules import MON_NONE, FusionRules, MonRule, PairRule

NOTES = {
    NNMETER: "kernels detected with the measured fusion rules, each predicted by its kernel regressor, summed",
    FLOPS_LINEAR: "latency = a * FLOPs + b, least squares on the measured evaluation models, leave one family "
    "out (each family predicted by a line fitted on the others)",
    NO_FUSION: "every op its own kernel (only bn is folded into the conv before it, as converters do), each "
    "predicted by the artifact's single-op regressor, summed",
}


def predict_model(
    artifact: Artifact,
    path: Path,
    name: str,
    model_id: str,
    family: str,
    measured: float | None,
    repeat: float | None,
    error: str = "",
) -> ModelEvaluation:
    """The nnmeter and no-fusion predictions of the model file at ``path`` with its measurements."""
    try:
        result = Predictor(artifact).predict(str(path), strict=False)
        baseline = Predictor(NoFusion(artifact)).predict(str(path), strict=False)  # type: ignore[arg-type]
    except Exception as err:  # a converter failing on one model is a result of the evaluation, not its end
        return ModelEvaluation(
            name,
            family,
            model_id,
            measured,
            repeat_ms=repeat,
            error=f"prediction failed: {type(err).__name__}: {err}".splitlines()[0],
        )
    predictions = {
        NNMETER: None if result.unsupported else result.latency_ms,
        NO_FUSION: None if baseline.unsupported else baseline.latency_ms,
    }
    flops = sum(k.features[feature_names(k.kernel).index("FLOPS")] for k in result.kernels)
    counts = Counter(f"{u.ops} ({u.reason})" for u in result.unsupported)
    unsupported = tuple(f"{n} x {what}" if n > 1 else what for what, n in counts.items())
    return ModelEvaluation(
        name,
        family,
        model_id,
        measured,
        predictions,
        repeat_ms=repeat,
        flops=flops,
        kernels=len(result.kernels),
        unsupported=unsupported,
        error=error,
        interval_ms=result.interval_ms,
    )


def with_flops_baseline(rows: Sequence[ModelEvaluation]) -> list[ModelEvaluation]:
    """``rows`` with the FLOPs-linear prediction added, fitted on the measured and fully detected models."""
    usable = [i for i, r in enumerate(rows) if r.measured_ms is not None and r.predictions.get(NNMETER) is not None]
    out = list(rows)
    if not usable:
        return out
    pred = flops_linear_predictions(
        [rows[i].flops for i in usable],
        [rows[i].measured_ms for i in usable],  # type: ignore[misc]
        [rows[i].family for i in usable],
    )
    for i, p in zip(usable, pred):
        out[i] = dataclasses.replace(
            rows[i], predictions={**rows[i].predictions, FLOPS_LINEAR: None if math.isnan(p) else float(p)}
        )
    return out


def flops_linear_predictions(flops: Sequence[float], measured_ms: Sequence[float], groups: Sequence[str]) -> np.ndarray:
    """The FLOPs-linear baseline: each model predicted by a line fitted without its group.

    Leave one group (family) out; with a single group, leave one model out. The line minimises
    relative squared error (weights 1/y^2), the measure every method is judged by; a plain fit
    would spend itself on the slowest models. A model whose held-out fit has fewer than two
    points gets NaN (no line can be fitted).
    """
    x = np.asarray(flops, dtype=float).reshape(-1, 1)
    y = np.asarray(measured_ms, dtype=float)
    g = np.asarray(groups if len(set(groups)) > 1 else [str(i) for i in range(len(y))])
    out = np.full(y.shape, np.nan)
    for group in np.unique(g):
        train = (g != group) & np.isfinite(y) & np.isfinite(x[:, 0])
        if train.sum() < 2:
            continue
        line = LinearRegression().fit(x[train], y[train], sample_weight=1.0 / y[train] ** 2)
        out[g == group] = line.predict(x[g == group])
    return out


class NoFusion:
    """An artifact seen with fusion turned off: the engine then detects one kernel per op."""

    def __init__(self, artifact: Artifact) -> None:
        self._artifact = artifact
        folded = {(op, ops.BN): PairRule(op, ops.BN, True) for op in (ops.CONV, ops.DWCONV)}
        self.rules = FusionRules(pairs=folded, mon=MonRule(MON_NONE), source="no-fusion baseline")

    @property
    def kernels(self) -> frozenset[str]:
        return self._artifact.kernels

    @property
    def invoke_overhead_ms(self) -> float:
        return self._artifact.invoke_overhead_ms

    @property
    def model_correction(self) -> Any:
        return self._artifact.model_correction

    def predict(self, kernel: str, X: np.ndarray) -> np.ndarray:
        return self._artifact.predict(kernel, X)
