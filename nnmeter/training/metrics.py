"""How well a regressor predicts kernel latencies: nn-Meter's measures, the split at fast kernels, and the
width of an interval that holds the held-out latencies at :data:`INTERVAL_COVERAGE` (split conformal)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import numpy as np

#: Kernels faster than this are dominated by timer noise; metrics report them apart.
FAST_KERNEL_MS = 0.05
#: The nominal coverage of the intervals predictors give: the share of latencies they hold.
INTERVAL_COVERAGE = 0.9


def conformal_quantile(scores: Any, coverage: float = INTERVAL_COVERAGE) -> float | None:
    """The split-conformal quantile of ``scores`` (nonconformity scores of held-out points, here |log(predicted /
    measured)|): a new point's score is at most it with probability >= ``coverage``. None when there are too
    few scores for that guarantee (fewer than ``coverage / (1 - coverage)``: 9 at 90 %)."""
    values = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    rank = math.ceil((len(values) + 1) * coverage)
    return float(values[rank - 1]) if 0 < rank <= len(values) else None


@dataclass(frozen=True)
class LatencyMetrics:
    """Accuracy of predicted against measured latencies (nn-Meter's measures, plus the fast-kernel split).

    ``acc5`` / ``acc10``: share of configs predicted within +-5 % / +-10 %.
    ``fast`` counts configs measured under :data:`FAST_KERNEL_MS`, where timer
    noise alone approaches 10 %; ``acc10_fast`` / ``acc10_slow`` are the
    +-10 % accuracy on each side (None when a side is empty), so that noise on
    tiny kernels is visible instead of hidden in the overall figure.
    """

    n: int
    rmse_ms: float
    rmspe: float  # root mean squared percentage error, in %
    mape: float  # mean absolute percentage error, in %
    acc5: float
    acc10: float
    fast: int
    acc10_fast: float | None
    acc10_slow: float | None
    #: half-width, in log ratio, of the interval ``[p / e^w, p * e^w]`` around a prediction ``p`` that holds the
    #: measured latency at :data:`INTERVAL_COVERAGE` (:func:`conformal_quantile`); None: too few held-out configs
    interval_log_ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyMetrics:
        """From :meth:`to_dict`; metrics stored before a field with a default existed get the default."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def latency_metrics(measured: Any, predicted: Any) -> LatencyMetrics:
    """Metrics of ``predicted`` against ``measured`` latencies (ms, same order)."""
    y = np.asarray(measured, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1 or len(y) == 0:
        raise ValueError(f"need two equal non-empty 1-D arrays, got shapes {y.shape} and {p.shape}")
    rel = np.abs(p - y) / y
    within10 = rel <= 0.10
    fast = y < FAST_KERNEL_MS

    def share(mask: np.ndarray) -> float | None:
        return float(within10[mask].mean()) if mask.any() else None

    return LatencyMetrics(
        n=len(y),
        rmse_ms=float(np.sqrt(np.mean((p - y) ** 2))),
        rmspe=float(100 * np.sqrt(np.mean(rel**2))),
        mape=float(100 * rel.mean()),
        acc5=float((rel <= 0.05).mean()),
        acc10=float(within10.mean()),
        fast=int(fast.sum()),
        acc10_fast=share(fast),
        acc10_slow=share(~fast),
        interval_log_ratio=conformal_quantile(np.abs(np.log(np.maximum(p, 1e-9) / y))),
    )
