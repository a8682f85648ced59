"""Scores of a latency predictor on real models: per model measured and predicted, overall and per family.

Per method (nnmeter and the baselines of :mod:`nnmeter.evaluation.baselines`): the share within +-5 % and
+-10 %, RMSPE, RMSE and Spearman's rank correlation, over the models with a measurement and a prediction.

Repeatability of the ground truth: every evaluation model can be measured twice in independent passes; the
second pass scored against the first is reported beside the predictor's scores. When they agree within
+-10 % for fewer than :data:`REPEATABLE_SHARE` of the models, the device was too unsteady for the figures to
mean much (:meth:`EvaluationResult.unsteady_ground_truth`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

NNMETER = "nnmeter"
FLOPS_LINEAR = "flops-linear"
NO_FUSION = "no-fusion"
METHODS = (NNMETER, FLOPS_LINEAR, NO_FUSION)
#: The share of evaluation models whose two measurements agree within +-10 % below which the ground truth is
#: called unsteady (a repeatable ground truth does not make the score good, it only lets it be read).
REPEATABLE_SHARE = 0.95


@dataclass(frozen=True)
class Metrics:
    """Accuracy of predictions against measurements. Shares are fractions (0..1); RMSPE is in percent."""

    n: int
    within_5: float
    within_10: float
    rmspe: float
    rmse_ms: float
    spearman: float | None  # None when undefined (fewer than 3 models, or a constant side)
    mean_error: float  # mean signed relative error: > 0 means the method over-predicts

    @classmethod
    def of(cls, measured: Sequence[float], predicted: Sequence[float]) -> Metrics:
        """Metrics of ``predicted`` against ``measured`` (both ms, same order; pairs with a NaN are dropped)."""
        m = np.asarray(measured, dtype=float)
        p = np.asarray(predicted, dtype=float)
        if m.shape != p.shape:
            raise ValueError(f"{m.size} measured values but {p.size} predicted")
        keep = np.isfinite(m) & np.isfinite(p) & (m > 0)
        m, p = m[keep], p[keep]
        if m.size == 0:
            return cls(0, math.nan, math.nan, math.nan, math.nan, None, math.nan)
        err = (p - m) / m
        return cls(
            n=int(m.size),
            within_5=float(np.mean(np.abs(err) <= 0.05)),
            within_10=float(np.mean(np.abs(err) <= 0.10)),
            rmspe=float(np.sqrt(np.mean(err**2)) * 100),
            rmse_ms=float(np.sqrt(np.mean((p - m) ** 2))),
            spearman=spearman(m, p),
            mean_error=float(np.mean(err)),
        )


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties get their average rank); None when undefined."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    if np.std(ra) == 0 or np.std(rb) == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size)
    ranks[order] = np.arange(x.size, dtype=float)
    for value in np.unique(x):  # ties: the mean of their ranks
        tied = x == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


@dataclass(frozen=True)
class ModelEvaluation:
    """One evaluation model: its measurements and every method's prediction (ms; None when missing)."""

    name: str
    family: str
    model_id: str
    measured_ms: float | None
    predictions: Mapping[str, float | None] = field(default_factory=dict)  # method -> ms
    repeat_ms: float | None = None  # an independent second measurement, for repeatability
    flops: float = 0.0
    kernels: int = 0
    unsupported: tuple[str, ...] = ()  # ops the predictor has no regressor for (their nodes)
    error: str = ""  # why the model has no measurement or no prediction
    interval_ms: tuple[float, float] | None = None  # nnmeter's interval (low, high), when its predictor states one

    def relative_error(self, method: str = NNMETER) -> float | None:
        p = self.predictions.get(method)
        if p is None or self.measured_ms is None or self.measured_ms <= 0:
            return None
        return (p - self.measured_ms) / self.measured_ms


@dataclass(frozen=True)
class EvaluationResult:
    """Every model's numbers, and the metrics per method overall and per family."""

    models: tuple[ModelEvaluation, ...]
    device: Mapping[str, Any] = field(default_factory=dict)
    predictor: Mapping[str, Any] = field(default_factory=dict)
    notes: Mapping[str, str] = field(default_factory=dict)  # method -> how it was computed

    @property
    def scored(self) -> list[ModelEvaluation]:
        """Models with a measurement and an nnmeter prediction: the ones every metric is over."""
        return [m for m in self.models if m.measured_ms is not None and m.predictions.get(NNMETER) is not None]

    def metrics(self, method: str = NNMETER, family: str | None = None) -> Metrics:
        rows = [m for m in self.scored if family is None or m.family == family]
        return Metrics.of([m.measured_ms for m in rows], [_nan(m.predictions.get(method)) for m in rows])

    def interval_coverage(self) -> tuple[int, float, float] | None:
        """(models, share whose measured latency is inside nnmeter's interval, median width as a share of the
        prediction) over the scored models with an interval; None when none has one."""
        inside, widths = [], []
        for m in self.scored:
            predicted = m.predictions.get(NNMETER)
            if m.interval_ms is None or m.measured_ms is None or not predicted:
                continue
            low, high = m.interval_ms
            inside.append(low <= m.measured_ms <= high)
            widths.append((high - low) / predicted)
        return (len(inside), float(np.mean(inside)), float(np.median(widths))) if inside else None

    def repeatability(self, family: str | None = None) -> Metrics:
        """The second measurement scored against the first, as if it were a prediction."""
        rows = [
            m
            for m in self.models
            if m.measured_ms is not None and m.repeat_ms is not None and (family is None or m.family == family)
        ]
        return Metrics.of([m.measured_ms for m in rows], [m.repeat_ms for m in rows])

    def unsteady_ground_truth(self) -> str | None:
        """What to tell the user when the two measurement passes disagree too often to trust the scores."""
        rep = self.repeatability()
        if not rep.n or rep.within_10 >= REPEATABLE_SHARE:
            return None
        return (
            f"the two measurements of the evaluation models agree within ±10 % for only "
            f"{100 * rep.within_10:.1f} % of them: the device was busy or unsteady while they were measured, "
            f"and the accuracy figures are not to be trusted further than that; `nnmeter-build evaluate "
            f"--remeasure` measures them again"
        )

    @property
    def families(self) -> list[str]:
        return list(dict.fromkeys(m.family for m in self.models))

    @property
    def methods(self) -> list[str]:
        return [k for k in METHODS if any(m.predictions.get(k) is not None for m in self.models)]

    def to_json(self) -> dict[str, Any]:
        return {
            "models": [asdict(m) for m in self.models],
            "device": dict(self.device),
            "predictor": dict(self.predictor),
            "notes": dict(self.notes),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvaluationResult:
        models = tuple(
            ModelEvaluation(
                **{
                    **m,
                    "unsupported": tuple(m.get("unsupported", ())),
                    "interval_ms": tuple(m["interval_ms"]) if m.get("interval_ms") else None,
                }
            )
            for m in data["models"]
        )
        return cls(models, data.get("device", {}), data.get("predictor", {}), data.get("notes", {}))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True))
        tmp.replace(path)  # a kill never leaves half a file

    @classmethod
    def load(cls, path: Path) -> EvaluationResult:
        return cls.from_json(json.loads(Path(path).read_text()))


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)
