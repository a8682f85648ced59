"""How well a regressor predicts kernel latencies: nn-Meter's measures, plus the split at fast kernels."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import numpy as np

#: Kernels faster than this are dominated by timer noise; metrics report them apart.
FAST_KERNEL_MS = 0.05


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyMetrics:
        """From :meth:`to_dict` (a mapping with every field)."""
        return cls(**{f.name: data[f.name] for f in fields(cls)})


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
    )
